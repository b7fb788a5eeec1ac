# heteroscale — every target sets up what it needs (a local .venv from uv.lock) on first use.
SHELL := /bin/bash
VENV := .venv
UV := .tools/bin/uv
PYTHON ?= $(shell command -v python3.11 || command -v python3)
export UV_PYTHON_DOWNLOADS := never
# The Prefect settings the project needs are applied by the package (models/settings.py).

.PHONY: setup demo serve test test-fast lint fmt clean

$(UV):
	$(PYTHON) -m venv .tools
	.tools/bin/pip install -q --disable-pip-version-check uv==0.13.8

$(VENV)/.synced: pyproject.toml uv.lock | $(UV)
	$(UV) sync --frozen --extra dev --extra k8s --compile-bytecode --python $(PYTHON)
	touch $@

setup: $(VENV)/.synced

## The main job on the embedded default: replay the bundled real trace on the twin.
demo: setup
	$(VENV)/bin/heteroscale demo --out demo-out

## Prefect UI on 127.0.0.1:4200 (SQLite), a worker, one scheduled deployment per cluster config.
serve: setup
	bash scripts/serve.sh

## All tests (unit, flows under Prefect, integration against real servers).
test: setup
	bash scripts/system-deps.sh
	$(VENV)/bin/python -m pytest -q

## Pure-logic unit tests only (seconds).
test-fast: setup
	$(VENV)/bin/python -m pytest -q tests/unit

## ruff, and the import layers (pyproject.toml [tool.importlinter]).
lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports

fmt: setup
	$(VENV)/bin/ruff format .

clean:
	rm -rf $(VENV) .tools demo-out .heteroscale .pytest_cache
