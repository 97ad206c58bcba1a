# reid_nb: every set-up step lives here. `make demo` and `make test` work on a fresh clone.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
export PYTHONHASHSEED := 0

.PHONY: venv peers demo test test-slow nbtest pytest sync-check lint lint-check export clean-nbs docs browser-deps bench gpu-check-dry clean

venv: $(STAMP)

$(STAMP): settings.ini setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --disable-pip-version-check -q -e ".[dev]"
	$(BIN)/python -m ipykernel install --user --name reid_nb --display-name "Python (reid_nb)" >/dev/null
	touch $(STAMP)

## Peer tools for tests/test_import.py (fast-reid 1.4.0, torchreid 0.2.5): test-only, without
## their own dependencies (see tests/peers.txt); the import tests skip when they are missing.
PEERS := $(VENV)/.peers
peers: $(PEERS)

$(PEERS): $(STAMP) tests/peers.txt
	$(BIN)/pip install --disable-pip-version-check -q --no-deps -r tests/peers.txt
	touch $(PEERS)

## The main job: synthetic data -> train -> evaluate -> inference -> export, with a summary.
demo: $(STAMP)
	$(BIN)/python -m reid_nb.demo

## Notebooks and package in sync, lint, notebook tests, then pytest (the fast suite).
test: $(STAMP) sync-check lint-check nbtest pytest

sync-check: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" bash .ci/check-sync

nbtest: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/nbdev_test --n_workers 2

pytest: $(STAMP) $(PEERS)
	$(BIN)/python -m pytest -m "not slow" tests

## The slow checks: every notebook with its slow cells, and the pytest marked slow. Together with
## `make test` (the rest), this is everything; CI runs both.
test-slow: $(STAMP) $(PEERS) sync-check
	OMP_NUM_THREADS=1 $(BIN)/nbdev_test --n_workers 2 --flags slow
	$(BIN)/python -m pytest -m slow tests

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

## The GPU check's steps at a tiny size on the CPU (the real run: bash benchmarks/gpu_check.sh).
gpu-check-dry: $(STAMP)
	PYTHON=$(BIN)/python bash benchmarks/gpu_check.sh --dry-run --out $(or $(TMPDIR),/tmp)/gpu_check_dry.json

clean:
	rm -rf _docs _site _proc .pytest_cache
