# Entry points (see README):  `make book`,  `make test`  (what CI runs, .ci/run)  and  `make check`.
# All create .venv on first use and reinstall when pyproject.toml changes.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# chapters executed at once by `make book`, and pytest-xdist workers: one per core of the 2-core machine
# the book is written on (each kernel and each worker uses one torch thread)
JOBS   ?= 2

.PHONY: book site test check check-data verify frontier clean

# pip -qq: errors only. Then matplotlib's font cache, built here rather than in the first chapter that
# draws (where its "building the font cache" warning would land in the chapter's outputs).
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -qq --disable-pip-version-check -e ".[book,test]"
	$(BIN)/python -c "import matplotlib.font_manager"
	touch $@

## Execute every notebook (outputs saved in place, figures inline and under notebooks/figures/),
## $(JOBS) at a time, then build the book's web site from them (book_html/index.html).
book: $(VENV)/.installed
	$(BIN)/python scripts/run_book.py --jobs $(JOBS)
	$(BIN)/python scripts/build_book.py

## Only the web site, from the committed notebooks (nothing executed): Sphinx and myst-nb, into book_html/.
site: $(VENV)/.installed
	$(BIN)/python scripts/build_book.py

## The test suite: lint, unit tests, and every notebook under nbval (every text output compared).
test: $(VENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -n $(JOBS)

## The fast tier, about a minute: lint and the unit tests not marked slow (no notebooks, no training
## runs; conftest.py lists the slow tests). One process: for this little, workers cost more than they save.
check: $(VENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -m "not slow" tests

## The slow tier outside CI: rebuild data/ and the reference model from their seed (about 11 minutes on
## one core) and check every file against the sha256 recorded in data/build_report.json.
check-data: $(VENV)/.installed
	$(BIN)/python -m pytest -p no:xdist --data-build -m data_build tests/test_build.py

## Symbolic + autograd verification of every objective, one row per method.
verify: $(VENV)/.installed
	$(BIN)/unified-rlhf verify --all

## The reward-KL frontier behind chapter 17: every method over its main knob, three seeds each ($(JOBS) points
## at a time; about 2 hours 15 minutes on 2 CPU cores, minutes on a GPU); finished points in runs/compare are reused.
frontier: $(VENV)/.installed
	$(BIN)/unified-rlhf compare --workers $(JOBS) --out results/frontier

clean:
	rm -rf $(VENV) build *.egg-info book_html
