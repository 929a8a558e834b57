# Every target sets itself up: a fresh clone needs only python3 (3.11+) and, ideally, redis-server.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast lint bench dist clean compat

# The dev venv runs one LiteLLM release, pinned with its [proxy] extra; the project's own `proxy` extra
# is the supported range (README.md, Compatibility), which keeps this pin.
LITELLM ?= 1.108.7
# The ends of the supported range that `make compat` proves (hook/akto_hook/litellm_version.py).
COMPAT_OLDEST ?= 1.81.14
COMPAT_NEWEST ?= 1.110.2

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[proxy,dev]" "litellm[proxy]==$(LITELLM)"
	$(BIN)/pip check
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
	$(BIN)/pip check
	$(BIN)/python scripts/with_redis.py $(BIN)/pytest -q -rs -m "not compat"

## make compat: the proxy-level core (tests/compat) on the oldest and the newest supported LiteLLM,
## each in a virtualenv of its own (.venv-litellm-VERSION, built once).
compat: .venv-litellm-$(COMPAT_OLDEST)/.installed .venv-litellm-$(COMPAT_NEWEST)/.installed
	for version in $(COMPAT_OLDEST) $(COMPAT_NEWEST); do \
		echo "== LiteLLM $$version"; \
		.venv-litellm-$$version/bin/pip check || exit 1; \
		LITELLM_LOCAL_MODEL_COST_MAP=True .venv-litellm-$$version/bin/pytest -q -rs -p no:cacheprovider -m compat tests/compat || exit 1; \
	done

.venv-litellm-%/.installed: scripts/compat_venv.py pyproject.toml
	$(PYTHON) scripts/compat_venv.py $* .venv-litellm-$*
	touch $@

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
	rm -rf $(VENV) .venv-litellm-* dist .pytest_cache .mypy_cache .ruff_cache
