# Two entry points (see README):  `make book`  and  `make test`.
# Both create .venv on first use and reinstall when pyproject.toml changes.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: book test verify lint clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e ".[book,test]"
	touch $@

## Execute every notebook in order (outputs saved in place) and regenerate the book's figures.
book: $(VENV)/.installed
	$(BIN)/python scripts/run_book.py

## The test suite: lint, unit tests, and the notebooks under nbval.
test: $(VENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

## Symbolic + autograd verification of every objective, one row per method.
verify: $(VENV)/.installed
	$(BIN)/unified-rlhf verify --all

clean:
	rm -rf $(VENV) build *.egg-info
