# rnnstream: the README's two commands are `make serve` and `make test`.
#   make serve   create .venv, install the server (no torch), serve the bundled models on :50051
#   make test    create .venv, install everything (haproxy, redis-server, nodejs and npm
#                too, when missing: apt-get as root; promtool if it can), run ruff, mypy
#                and pytest
#   make proto   regenerate rnnstream/v1 from proto/ (committed; a test fails when stale)
#   make bench   run the benchmark harness (see bench/ and docs/benchmarks.md)
# GPU users: `make serve GPU=1` installs onnxruntime-gpu with its CUDA 13 and cuDNN pip
# libraries instead of onnxruntime (only the NVIDIA driver is needed on the host).

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

# Everything: torch pinned first so pip takes the local CPU build, then the extras (tracing too).
$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet '$(TORCH_PIN)'
	$(BIN)/python -m pip install --quiet $(EDITABLE) '.[server,train,dev,otel]'
	touch $@

serve: $(VENV)/.installed-$(SERVER_EXTRA)
	$(BIN)/rnnstream serve $(ARGS)

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(VENV)/.installed-dev
	$(BIN)/mypy rnnstream tests bench

# The tests run a real HAProxy (tests/deploy), a real Redis (the session store) and the
# Node.js example client (tests/examples), as command:Debian package. promtool (package
# prometheus) is optional: without it the alert rules' promtool checks are skipped, so a
# failed install of it is no error.
SYSTEM_TOOLS := haproxy:haproxy redis-server:redis-server node:nodejs npm:npm
OPTIONAL_TOOLS := promtool:prometheus
missing_packages = $$(for t in $(1); do command -v $${t%%:*} >/dev/null || echo $${t\#*:}; done)
system-deps:
	@missing="$(call missing_packages,$(SYSTEM_TOOLS))"; \
	optional="$(call missing_packages,$(OPTIONAL_TOOLS))"; \
	if [ -n "$$missing$$optional" ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing $$missing $$optional (apt-get)"; \
	  apt-get update -qq; \
	  for p in $$missing; do DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$p >/dev/null; done; \
	  for p in $$optional; do DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$p >/dev/null \
	    || echo "$$p not installed: its checks are skipped"; done; \
	  missing="$(call missing_packages,$(SYSTEM_TOOLS))"; \
	fi; \
	if [ -n "$$missing" ]; then \
	  echo "the tests need: $$missing (Debian/Ubuntu: sudo apt-get install $$missing)" >&2; exit 1; \
	fi

# Without ARGS the suite runs as three pytest processes rather than one. The in-process
# servers of hundreds of tests (grpc.aio servers and clients on many event loops and
# threads) accumulate in one process, and the one process crashed with SIGSEGV in 3 of
# 5 runs that got that far, always late in tests/service; every part alone has passed each time
# (see docs/architecture.md, "Testing"). ARGS runs one pytest with those arguments.
PYTEST_SERVICE_LATE := tests/service/test_[p-z]*
pytest: $(VENV)/.installed-dev system-deps
ifeq ($(strip $(ARGS)),)
	$(BIN)/python -m pytest tests --ignore=tests/service
	$(BIN)/python -m pytest tests/service --ignore-glob='$(PYTEST_SERVICE_LATE)'
	$(BIN)/python -m pytest $(PYTEST_SERVICE_LATE)
else
	$(BIN)/python -m pytest $(ARGS)
endif

test: lint typecheck pytest

proto: $(VENV)/.installed-dev
	$(BIN)/python proto/generate.py

bench: $(VENV)/.installed-dev
	$(BIN)/python -m bench.harness $(ARGS)

clean:
	rm -rf $(VENV) build *.egg-info .mypy_cache .ruff_cache .pytest_cache
