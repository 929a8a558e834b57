# Every target sets itself up: a fresh clone needs only python3 (3.11+) and, ideally, redis-server.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast lint bench dist clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[proxy,dev]"
	touch $(STAMP)

venv: $(STAMP)

## make demo: Redis + fake Akto + LiteLLM proxy on :4000 (block mode) + one worker; Ctrl-C stops all.
demo: $(STAMP)
	$(BIN)/python scripts/demo.py

## make test: lint, type-check and the whole suite (unit, integration, fault injection).
test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/python scripts/with_redis.py $(BIN)/pytest -q -rs

## make test-fast: unit tests only (fakeredis; no proxy, no worker processes).
test-fast: $(STAMP)
	$(BIN)/pytest -q tests/unit

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

## make bench: the benchmarks; prints one table and writes BENCHMARKS.md.
bench: $(STAMP)
	$(BIN)/python scripts/with_redis.py $(BIN)/python -m bench

## make dist: a wheel and an sdist in dist/, checked with twine; `pip install dist/*.whl` installs it.
dist: $(STAMP)
	rm -rf dist
	$(BIN)/python -m build --outdir dist .
	$(BIN)/twine check --strict dist/*

clean:
	rm -rf $(VENV) dist .pytest_cache .mypy_cache .ruff_cache
