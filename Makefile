# reid_nb: every set-up step lives here. `make demo` and `make test` work on a fresh clone.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
export PYTHONHASHSEED := 0

.PHONY: venv demo test test-slow nbtest pytest sync-check export clean-nbs docs bench clean

venv: $(STAMP)

$(STAMP): settings.ini setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --disable-pip-version-check -q -e ".[dev]"
	$(BIN)/python -m ipykernel install --user --name reid_nb --display-name "Python (reid_nb)" >/dev/null
	touch $(STAMP)

## The main job: synthetic data -> train -> evaluate -> inference -> export, with a summary.
demo: $(STAMP)
	$(BIN)/python -m reid_nb.demo

## Notebooks and package in sync, notebook tests, then pytest (the fast suite).
test: $(STAMP) sync-check nbtest pytest

sync-check: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" bash .ci/check-sync

nbtest: $(STAMP)
	$(BIN)/nbdev_test --n_workers 2

pytest: $(STAMP)
	$(BIN)/python -m pytest -m "not slow" tests

## Everything, the slow checks included.
test-slow: $(STAMP) sync-check
	$(BIN)/nbdev_test --n_workers 2 --flags slow
	$(BIN)/python -m pytest tests

## Regenerate reid_nb/ from nbs/ and strip notebook noise (run after editing a notebook).
export: $(STAMP)
	$(BIN)/nbdev_export
	$(BIN)/nbdev_clean

bench: $(STAMP)
	$(BIN)/python benchmarks/run.py

clean:
	rm -rf _docs _site _proc .pytest_cache
