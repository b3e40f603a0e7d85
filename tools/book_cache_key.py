"""Invalidate the book's execution cache when anything it cannot see changes.

jupyter-cache (used by `make book`) re-executes a chapter only when the chapter's code changes.
Outputs also depend on the aigc_lib sources, the installed dependencies and the run profile
(cpu/gpu), so this script hashes those and, when the hash differs from the one recorded at the
last build, wipes _build/.jupyter_cache and Sphinx's saved environment (_build/.doctrees):
without the latter Sphinx would not even re-read the unchanged chapters, and the HTML would
keep the outputs of the older code.

The look of the pages has a key of its own: Sphinx copies `book/_static` and re-renders
unchanged pages only when it writes them, so when the static files or `_config.yml` change this
script removes `_build/html` (not the execution cache), and the next build writes every page anew.
"""
import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / "_build" / ".jupyter_cache"
DOCTREES = ROOT / "_build" / ".doctrees"
STAMP = ROOT / "_build" / ".jupyter_cache.key"
HTML = ROOT / "_build" / "html"
HTML_STAMP = ROOT / "_build" / ".html.key"


def current_key() -> str:
    digest = hashlib.sha256()
    for path in sorted((ROOT / "aigc_lib").rglob("*.py")) + [ROOT / "pyproject.toml"]:
        digest.update(path.relative_to(ROOT).as_posix().encode())
        digest.update(path.read_bytes())
    frozen = subprocess.run([sys.executable, "-m", "pip", "freeze", "--exclude-editable"],
                            capture_output=True, text=True, check=True).stdout
    digest.update(frozen.encode())
    from aigc_lib import runtime
    digest.update(runtime.profile().encode())
    return digest.hexdigest()


def refresh(key: str) -> bool:
    """Wipe the execution cache and Sphinx's environment unless ``key`` matches the stamp;
    record ``key``. Returns True when something was wiped."""
    if STAMP.exists() and STAMP.read_text() == key:
        return False
    wiped = CACHE.exists() or DOCTREES.exists()
    if wiped:
        print("book cache: aigc_lib, dependencies or profile changed; re-executing every chapter")
        shutil.rmtree(CACHE, ignore_errors=True)
        shutil.rmtree(DOCTREES, ignore_errors=True)
    STAMP.parent.mkdir(parents=True, exist_ok=True)
    STAMP.write_text(key)
    return wiped


def html_key() -> str:
    digest = hashlib.sha256()
    for path in sorted((ROOT / "book" / "_static").rglob("*")) + [ROOT / "_config.yml"]:
        if path.is_file():
            digest.update(path.relative_to(ROOT).as_posix().encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


def refresh_html(key: str) -> bool:
    """Remove the built HTML unless ``key`` matches its stamp; record ``key``."""
    if HTML_STAMP.exists() and HTML_STAMP.read_text() == key:
        return False
    wiped = HTML.exists()
    if wiped:
        print("book cache: static files or _config.yml changed; the pages will be written anew")
        shutil.rmtree(HTML, ignore_errors=True)
    HTML_STAMP.parent.mkdir(parents=True, exist_ok=True)
    HTML_STAMP.write_text(key)
    return wiped


if __name__ == "__main__":
    refresh(current_key())
    refresh_html(html_key())
