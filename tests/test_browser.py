"""Open every page of the built book in headless Chromium and check what a reader would see.

Needs `make book` first (the HTML in _build/html) and Chromium with its driver (Debian's
`chromium` and `chromium-driver`; `.ci/run` installs them). For each page listed in _toc.yml it
saves a screenshot to _build/screenshots/ and asserts that:
  - MathJax typeset the math (no raw $$, \\( or \\[ left in the text outside code),
  - every image loaded,
  - every embedded ipywidget rendered,
  - no cell output shows a traceback or an error,
  - every resource came from the local server (the book renders offline),
  - nothing scrolls sideways at a 1280-px-wide window: no code cell, output or table is wider
    than its box (`scrollWidth <= clientWidth`),
  - every glossary link ({term} role, or any link into the glossary page) points at an anchor
    that exists on the glossary page,
  - each chapter in DIAGRAM_CHAPTERS shows at least two conceptual diagrams: figures with the
    `diagram` class, a caption and an image with alt text that loaded.
"""
import functools
import http.server
import os
import re
import shutil
import threading
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[1]
HTML = ROOT / "_build" / "html"
SHOTS = ROOT / "_build" / "screenshots"
WIDTH = 1280   # the reader's window width (px) at which every page must fit
GLOSSARY = "book/appendix/glossary"
# Every chapter page shows its conceptual diagrams (issue 19); the intro and the appendices are
# not chapters (tests/test_diagrams.py checks the chapters' sources against the same list).
DIAGRAM_CHAPTERS = [f"book/{p.stem}" for p in sorted((ROOT / "book").glob("[0-9][0-9]_*.md"))]
MIN_DIAGRAMS = 2
CHROME_FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", f"--window-size={WIDTH},1600"]


def toc_pages() -> list[str]:
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    pages = [toc["root"]]
    for part in toc.get("parts", []):
        pages += [entry["file"] for entry in part["chapters"]]
    return pages


def executable(env: str, *names: str) -> str:
    found = os.environ.get(env) or next(filter(None, map(shutil.which, names)), None)
    if not found:
        pytest.fail(f"{' or '.join(names)} not found (set {env}); install Debian's chromium and "
                    f"chromium-driver, as .ci/run does")
    return found


@pytest.fixture(scope="module")
def server():
    if not (HTML / "index.html").exists():
        pytest.fail(f"{HTML} has no built book: run `make book` before the browser test")
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    handler = functools.partial(Quiet, directory=str(HTML))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = executable("CHROME_BIN", "chromium", "chromium-browser", "google-chrome")
    for flag in CHROME_FLAGS + [f"--user-data-dir={tmp_path_factory.mktemp('chromium')}"]:
        options.add_argument(flag)
    service = Service(executable_path=executable("CHROMEDRIVER", "chromedriver"))
    driver = webdriver.Chrome(service=service, options=options)
    driver.set_page_load_timeout(60)
    driver.set_script_timeout(60)
    yield driver
    driver.quit()


WAIT_FOR_MATH = """
const done = arguments[arguments.length - 1];
const start = Date.now();
if (!document.querySelector('script[src*="mathjax"]') && !document.querySelector('.math')) { done('typeset'); return; }
(function wait() {
  if (window.MathJax && MathJax.startup && MathJax.startup.promise) {
    MathJax.startup.promise.then(() => done('typeset')).catch(e => done('error: ' + e));
  } else if (Date.now() - start > 20000) { done('MathJax never loaded'); }
  else { setTimeout(wait, 100); }
})();
"""

TEXT_OUTSIDE_CODE = """
const copy = document.querySelector('main, article, body').cloneNode(true);
copy.querySelectorAll('pre, code, script, style, mjx-container, .highlight').forEach(e => e.remove());
return copy.textContent;
"""

BROKEN_IMAGES = """
return Array.from(document.images)
  .filter(img => !(img.complete && img.naturalWidth > 0))
  .map(img => img.getAttribute('src'));
"""

WIDGETS = """
const views = document.querySelectorAll('script[type="application/vnd.jupyter.widget-view+json"]');
const rendered = document.querySelectorAll('.jupyter-widgets, .widget-interact, .widget-box');
return [views.length, rendered.length];
"""

ERROR_OUTPUTS = """
const bad = document.querySelectorAll('.cell_output .traceback, .cell_output .error, div.output.error, div.output.traceback');
const texts = Array.from(document.querySelectorAll('.cell_output')).map(e => e.innerText);
return [bad.length, texts];
"""

RESOURCES = "return performance.getEntriesByType('resource').map(r => r.name);"

# Figures marked as diagrams: [has a non-empty caption, its images all loaded, all have alt].
DIAGRAMS = """
return Array.from(document.querySelectorAll('article figure.diagram')).map(f => {
  const imgs = Array.from(f.querySelectorAll('img'));
  const caption = f.querySelector('figcaption');
  return [f.id || (f.querySelector('[id]') || {}).id || '?',
          !!caption && caption.innerText.trim().length > 0,
          imgs.length > 0 && imgs.every(i => i.complete && i.naturalWidth > 0),
          imgs.length > 0 && imgs.every(i => (i.getAttribute('alt') || '').trim().length > 0)];
});
"""

# Links into the glossary page: [href as written, the page it resolves to, its #fragment].
GLOSSARY_LINKS = """
const page = arguments[0];
return Array.from(document.querySelectorAll('article a[href]'))
  .map(a => new URL(a.getAttribute('href'), document.baseURI))
  .filter(u => u.pathname.endsWith('/' + page + '.html') && u.hash.length > 1)
  .map(u => decodeURIComponent(u.hash.slice(1)));
"""


@functools.lru_cache(maxsize=1)
def glossary_anchors() -> frozenset[str]:
    """Every id on the built glossary page (its terms' anchors among them)."""
    page = (HTML / f"{GLOSSARY}.html").read_text(encoding="utf-8")
    return frozenset(re.findall(r'\bid="([^"]+)"', page))

TOO_WIDE = """
return Array.from(document.querySelectorAll('article pre, article table'))
  .filter(e => e.offsetParent !== null && e.scrollWidth > e.clientWidth + 1)
  .map(e => [e.tagName, e.scrollWidth, e.clientWidth, e.innerText.slice(0, 70)]);
"""


@pytest.mark.parametrize("page", toc_pages())
def test_page_renders_offline(page, server, browser):
    browser.get(f"{server}/{page}.html")
    assert "404" not in browser.title, f"{page}.html is missing from the build"
    math_state = browser.execute_async_script(WAIT_FOR_MATH)
    assert math_state == "typeset", f"{page}: {math_state}"
    browser.execute_script("window.scrollTo(0, document.body.scrollHeight)")
    browser.execute_async_script("const d = arguments[0]; setTimeout(d, 500);")

    height = min(browser.execute_script("return document.body.scrollHeight"), 15000)
    browser.set_window_size(WIDTH, max(height, 800))
    SHOTS.mkdir(parents=True, exist_ok=True)
    shot = SHOTS / (page.replace("/", "__") + ".png")
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
    browser.set_window_size(WIDTH, 1600)
    assert browser.execute_script("return window.innerWidth") == WIDTH
    too_wide = browser.execute_script(TOO_WIDE)
    assert not too_wide, f"{page}: scrolls sideways at {WIDTH} px: {too_wide[:5]}"

    text = browser.execute_script(TEXT_OUTSIDE_CODE)
    raw = [token for token in ("$$", "\\(", "\\[", "\\begin{") if token in text]
    assert not raw, f"{page}: raw LaTeX left untypeset: {raw}"
    if browser.execute_script("return document.querySelectorAll('.math').length"):
        assert browser.execute_script("return document.querySelectorAll('mjx-container').length")

    broken = browser.execute_script(BROKEN_IMAGES)
    assert not broken, f"{page}: images that did not load: {broken}"

    views, rendered = browser.execute_script(WIDGETS)
    if views:
        assert rendered >= views, f"{page}: {views} embedded widgets but {rendered} rendered"

    n_bad, outputs = browser.execute_script(ERROR_OUTPUTS)
    assert n_bad == 0, f"{page}: {n_bad} cell outputs are errors"
    pattern = re.compile(r"Traceback \(most recent call last\)|^\w*(Error|Exception): ", re.M)
    failing = [t[:300] for t in outputs if pattern.search(t)]
    assert not failing, f"{page}: outputs show errors: {failing}"

    remote = [url for url in browser.execute_script(RESOURCES)
              if not url.startswith((server, "data:", "blob:"))]
    assert not remote, f"{page}: resources fetched from outside the book: {remote}"

    anchors = browser.execute_script(GLOSSARY_LINKS, GLOSSARY)
    dangling = sorted(set(anchors) - glossary_anchors())
    assert not dangling, f"{page}: glossary links to anchors that do not exist: {dangling}"
    if page in DIAGRAM_CHAPTERS:
        diagrams = browser.execute_script(DIAGRAMS)
        bad = [d[0] for d in diagrams if not all(d[1:])]
        assert not bad, f"{page}: diagrams without caption, loaded image or alt text: {bad}"
        assert len(diagrams) >= MIN_DIAGRAMS, \
            f"{page}: {len(diagrams)} diagrams (figure.diagram), at least {MIN_DIAGRAMS} wanted"
