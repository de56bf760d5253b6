# rnnstream: the README's two commands are `make serve` and `make test`.
#   make serve   create .venv, install the server (no torch), serve the bundled models on :50051
#   make test    create .venv, install everything (haproxy and redis-server too, when
#                missing: apt-get as root), run ruff, mypy and pytest
#   make proto   regenerate rnnstream/v1 from proto/ (committed; a test fails when stale)
#   make bench   run the benchmark harness (see bench/ and docs/benchmarks.md)
# GPU users: `make serve GPU=1` installs onnxruntime-gpu instead of onnxruntime.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_PIN := torch==2.13.0
SERVER_EXTRA := $(if $(GPU),server-gpu,server)
ARGS ?=

.PHONY: serve test lint typecheck pytest proto bench clean system-deps

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Editable installs put the checkout on sys.path (compat mode) rather than an import hook: a
# hook answers only after every sys.path entry, so a folder named rnnstream in the working
# directory (a clone, run from its parent) would shadow the SDK as a namespace package.
EDITABLE := --config-settings editable_mode=compat -e

# Serving install: the SDK plus the server runtime; torch stays out.
$(VENV)/.installed-$(SERVER_EXTRA): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet $(EDITABLE) '.[$(SERVER_EXTRA)]'
	touch $@

# Everything: torch pinned first so pip takes the local CPU build, then the extras.
$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet '$(TORCH_PIN)'
	$(BIN)/python -m pip install --quiet $(EDITABLE) '.[server,train,dev]'
	touch $@

serve: $(VENV)/.installed-$(SERVER_EXTRA)
	$(BIN)/rnnstream serve $(ARGS)

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(VENV)/.installed-dev
	$(BIN)/mypy rnnstream tests bench

# The tests run a real HAProxy (tests/deploy) and a real Redis (the session store).
SYSTEM_TOOLS := haproxy redis-server
system-deps:
	@missing=$$(for t in $(SYSTEM_TOOLS); do command -v $$t >/dev/null || echo $$t; done); \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing $$missing (apt-get)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else \
	    echo "the tests need: $$missing (Debian/Ubuntu: sudo apt-get install $$missing)" >&2; exit 1; \
	  fi; \
	fi

pytest: $(VENV)/.installed-dev system-deps
	$(BIN)/python -m pytest $(ARGS)

test: lint typecheck pytest

proto: $(VENV)/.installed-dev
	$(BIN)/python proto/generate.py

bench: $(VENV)/.installed-dev
	$(BIN)/python -m bench.harness $(ARGS)

clean:
	rm -rf $(VENV) build *.egg-info .mypy_cache .ruff_cache .pytest_cache
