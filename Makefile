# Two commands for a newcomer: `make book` and `make test`. Both create .venv when missing.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
JB     := $(VENV)/bin/jupyter-book
export PYDEVD_DISABLE_FILE_VALIDATION := 1

.PHONY: install book test unit notebooks book-strict browser lint clean sync

install: $(STAMP)

$(STAMP): pyproject.toml tools/install_torch.sh
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	tools/install_torch.sh $(PY)
	$(PY) -m pip install -e ".[book,test]"
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $(STAMP)

# Execute every chapter (cached by jupyter-cache under _build/.jupyter_cache) and build
# HTML into _build/html. -W turns warnings into errors; execution errors fail the build.
# tools/book_cache_key.py wipes that cache when aigc_lib, the dependencies or the profile change.
book: $(STAMP)
	$(PY) tools/book_cache_key.py
	$(JB) build . -W -n --keep-going

# Everything CI checks; any failing part fails `make test`.
test: unit notebooks book browser

unit: $(STAMP)
	$(PY) tools/pytest_strict.py tests -m "not browser" -n 2

# The verdict chapter reads what the other chapters recorded, so it runs after them.
VERDICT := book/12_gold_or_bubble.ipynb
notebooks: $(STAMP)
	$(PY) tools/pytest_strict.py --nbmake -n 2 book/ --ignore=$(VERDICT)
	$(PY) tools/pytest_strict.py --nbmake $(VERDICT)

browser: $(STAMP)
	$(PY) tools/pytest_strict.py tests -m browser

# Re-pair every chapter after editing its .md (the .md is the source of truth).
sync: $(STAMP)
	$(VENV)/bin/jupytext --sync book/[0-9]*.md

clean:
	rm -rf _build
