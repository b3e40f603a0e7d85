# Two commands for a newcomer: `make book` and `make test`. Both create .venv when missing.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
JB     := $(VENV)/bin/jupyter-book
export PYDEVD_DISABLE_FILE_VALIDATION := 1

.PHONY: install book test unit notebooks browser clean sync colab-check

install: $(STAMP)

$(STAMP): pyproject.toml tools/install_torch.sh
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	tools/install_torch.sh $(PY)
	$(PY) -m pip install -e ".[book,test]"
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $(STAMP)

# Execute every chapter once, in parallel (one worker per core; BOOK_JOBS=N to choose), into the
# book's execution cache (_build/.jupyter_cache): tools/execute_book.py. This is the notebook
# test: a failing chapter fails it with the cell and its error shown. Chapters that read other
# chapters' records run after them. tools/book_cache_key.py first wipes the cache when aigc_lib,
# the installed dependencies or the profile change, so no chapter keeps outputs of older code.
notebooks: $(STAMP)
	$(PY) tools/book_cache_key.py
	tools/timed.sh notebooks $(PY) tools/execute_book.py

# Build the HTML into _build/html from that cache: `jupyter-book build . -W -n --keep-going`
# (warnings fail it). tools/build_book.py fails if the build had to execute a chapter itself.
book: notebooks
	tools/timed.sh build $(PY) tools/build_book.py

# Everything CI checks; any failing part fails `make test`. Each chapter executes once.
test: unit book browser

unit: $(STAMP)
	tools/timed.sh unit $(PY) tools/pytest_strict.py tests -m "not browser and not built" -n 2

browser: $(STAMP)
	tools/timed.sh browser $(PY) tools/pytest_strict.py tests -m "browser or built"

# Run one chapter as Colab does: alone in an empty folder, from the built wheel in a bare
# virtual environment, with an empty cache (default: the verdict, which runs what it reads).
CHAPTER ?= 12_gold_or_bubble
colab-check: $(STAMP)
	$(PY) tools/colab_check.py $(CHAPTER)

# Re-pair every chapter after editing its .md (the .md is the source of truth).
sync: $(STAMP)
	$(VENV)/bin/jupytext --sync book/[0-9]*.md

clean:
	rm -rf _build
