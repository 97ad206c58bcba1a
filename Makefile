# reid_nb: every set-up step lives here. `make demo` and `make test` work on a fresh clone.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
export PYTHONHASHSEED := 0

.PHONY: venv demo test test-slow nbtest pytest sync-check lint lint-check export clean-nbs docs browser-deps bench clean

venv: $(STAMP)

$(STAMP): settings.ini setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --disable-pip-version-check -q -e ".[dev]"
	$(BIN)/python -m ipykernel install --user --name reid_nb --display-name "Python (reid_nb)" >/dev/null
	touch $(STAMP)

## The main job: synthetic data -> train -> evaluate -> inference -> export, with a summary.
demo: $(STAMP)
	$(BIN)/python -m reid_nb.demo

## Notebooks and package in sync, lint, notebook tests, then pytest (the fast suite).
test: $(STAMP) sync-check lint-check nbtest pytest

sync-check: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" bash .ci/check-sync

nbtest: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/nbdev_test --n_workers 2

pytest: $(STAMP)
	$(BIN)/python -m pytest -m "not slow" tests

## Everything, the slow checks included.
test-slow: $(STAMP) sync-check
	OMP_NUM_THREADS=1 $(BIN)/nbdev_test --n_workers 2 --flags slow
	$(BIN)/python -m pytest tests

## ruff (pinned in settings.ini, configured in ruff.toml): the notebooks, tests, benchmarks, docs.
LINTED := nbs tests benchmarks docs
lint-check: $(STAMP)
	$(BIN)/ruff check --no-cache $(LINTED)
	$(BIN)/ruff format --check --no-cache $(LINTED)

## Fix what ruff can fix, and format (run before committing a notebook).
lint: $(STAMP)
	$(BIN)/ruff format $(LINTED)
	$(BIN)/ruff check --fix $(LINTED)

## Regenerate reid_nb/ from nbs/ and strip notebook noise (run after editing a notebook).
export: $(STAMP)
	$(BIN)/nbdev_export
	$(BIN)/nbdev_clean

## The documentation site, built offline from nbs/ into _site/ (open _site/index.html):
## every notebook a page with the outputs of a fresh run, and the API from the docstrings.
docs: $(STAMP)
	$(BIN)/python docs/build.py

## Headless Chromium, for the test that opens the built site (Debian package; apt-get needs root).
browser-deps:
	@if command -v chromium >/dev/null 2>&1; then echo "chromium: $$(command -v chromium)"; \
	else SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q chromium; fi

bench: $(STAMP)
	$(BIN)/python benchmarks/run.py

clean:
	rm -rf _docs _site _proc .pytest_cache
