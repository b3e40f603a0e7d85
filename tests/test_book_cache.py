"""The chapters a reader runs are the ones CI executed.

`make notebooks` executes each chapter's `.md` source into the book's execution cache, and the
HTML is built from that cache. A reader runs the paired `.ipynb` (Colab, `pytest --nbmake
book/`) or the `.md` (Jupytext). These tests, run after `make notebooks`, check that both files
of every chapter hash to a notebook in the cache — the same code cells, in the same order, with
the same cell metadata — so neither can differ from what was executed and shown.
"""
import importlib.util
from pathlib import Path

import nbformat
import pytest

pytestmark = pytest.mark.built

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("execute_book", ROOT / "tools" / "execute_book.py")
execute_book = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(execute_book)


@pytest.fixture(scope="module")
def cache():
    from jupyter_cache import get_cache

    if not (execute_book.CACHE / "global.db").exists():
        pytest.fail(f"{execute_book.CACHE} holds no executed chapters: run `make notebooks` first")
    return get_cache(str(execute_book.CACHE))


@pytest.mark.parametrize("md", execute_book.chapters(), ids=lambda p: p.stem)
def test_the_md_and_the_ipynb_are_the_executed_notebook(md, cache):
    try:
        executed = cache.match_cache_notebook(execute_book.read_notebook(md))
    except KeyError:
        pytest.fail(f"{md.name} as it is now was not executed: run `make notebooks`")
    paired = nbformat.read(md.with_suffix(".ipynb"), as_version=4)
    try:
        assert cache.match_cache_notebook(paired).pk == executed.pk
    except (KeyError, AssertionError):
        pytest.fail(f"{md.with_suffix('.ipynb').name} differs from the {md.name} that was "
                    "executed (run `make sync`)")
    outputs = [cell.outputs for cell in cache.get_cache_bundle(executed.pk).nb.cells
               if cell.cell_type == "code"]
    assert any(outputs), f"the cached {md.stem} has no outputs at all"
