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


def _digest(paths: list[Path]) -> "hashlib._Hash":
    """SHA-256 of the names (relative to the repository) and contents of the files ``paths``."""
    digest = hashlib.sha256()
    for path in paths:
        if path.is_file():
            digest.update(path.relative_to(ROOT).as_posix().encode())
            digest.update(path.read_bytes())
    return digest


def _refresh(stamp: Path, key: str, folders: tuple[Path, ...], message: str) -> bool:
    """Remove ``folders`` unless ``key`` matches the one recorded in ``stamp``; record ``key``.
    Returns True when something was removed."""
    if stamp.exists() and stamp.read_text() == key:
        return False
    wiped = any(folder.exists() for folder in folders)
    if wiped:
        print(message)
        for folder in folders:
            shutil.rmtree(folder, ignore_errors=True)
    stamp.parent.mkdir(parents=True, exist_ok=True)
    stamp.write_text(key)
    return wiped


def current_key() -> str:
    """The key of the execution cache: aigc_lib's sources, the installed packages, the profile."""
    digest = _digest(sorted((ROOT / "aigc_lib").rglob("*.py")) + [ROOT / "pyproject.toml"])
    frozen = subprocess.run([sys.executable, "-m", "pip", "freeze", "--exclude-editable"],
                            capture_output=True, text=True, check=True).stdout
    digest.update(frozen.encode())
    from aigc_lib import runtime
    digest.update(runtime.profile().encode())
    return digest.hexdigest()


def refresh(key: str) -> bool:
    """Wipe the execution cache and Sphinx's environment unless ``key`` matches the stamp;
    record ``key``. Returns True when something was wiped."""
    return _refresh(STAMP, key, (CACHE, DOCTREES), "book cache: aigc_lib, dependencies or "
                    "profile changed; re-executing every chapter")


def html_key() -> str:
    """The key of the built pages: the static files and `_config.yml`."""
    return _digest(sorted((ROOT / "book" / "_static").rglob("*")) +
                   [ROOT / "_config.yml"]).hexdigest()


def refresh_html(key: str) -> bool:
    """Remove the built HTML unless ``key`` matches its stamp; record ``key``."""
    return _refresh(HTML_STAMP, key, (HTML,), "book cache: static files or _config.yml "
                    "changed; the pages will be written anew")


if __name__ == "__main__":
    refresh(current_key())
    refresh_html(html_key())
