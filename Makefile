# keapalive's one test command is `make test` (CI runs it through .ci/run).
# Needs only cargo (with clippy and rustfmt) and python3; everything else it installs itself.

SHELL := /bin/bash
CARGO ?= cargo
PYTHON ?= python3
# The virtualenv with moto, the AWS emulator. Override to build one elsewhere: `make venv VENV=/tmp/v`.
VENV ?= .venv
VENV_PYTHON := $(VENV)/bin/python
VENV_STAMP := $(VENV)/.keapalive-requirements-installed
EMULATOR_REQUIREMENTS := tests/emulator/requirements.txt

# infra/infra.mk (optional) adds its checks here, e.g. `INFRA_TEST_TARGETS := infra-check infra-test`.
INFRA_TEST_TARGETS ?=
-include infra/infra.mk

.DEFAULT_GOAL := test

# The test harness starts moto with this interpreter (see tests/src/emulator.rs).
export KEAPALIVE_TEST_PYTHON := $(abspath $(VENV_PYTHON))

.PHONY: test venv fmt-check clippy build cargo-test local

test: venv fmt-check clippy $(INFRA_TEST_TARGETS) cargo-test

venv: $(VENV_STAMP)

# Reinstalls only when the requirements change (the stamp is older) or the venv is new.
$(VENV_STAMP): $(EMULATOR_REQUIREMENTS)
	@command -v $(PYTHON) >/dev/null 2>&1 || { \
	  echo "error: '$(PYTHON)' not found. Install Python 3.10 or newer: the tests run the AWS emulator (moto) with it." >&2; \
	  exit 1; }
	@if [ ! -x "$(VENV_PYTHON)" ]; then \
	  echo "==> creating $(VENV) with $(PYTHON)"; \
	  $(PYTHON) -m venv "$(VENV)" || { \
	    echo "error: '$(PYTHON) -m venv' failed (on Debian/Ubuntu: apt-get install python3-venv)." >&2; \
	    exit 1; }; \
	fi
	@echo "==> installing moto into $(VENV) (first run ~1 min)…"
	@"$(VENV_PYTHON)" -m pip install --quiet --disable-pip-version-check -r $(EMULATOR_REQUIREMENTS)
	@touch "$@"

fmt-check:
	@echo "==> cargo fmt --check"
	@$(CARGO) fmt --all -- --check

clippy:
	@echo "==> cargo clippy (first run compiles the workspace, several minutes on 2 cores)…"
	@$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

# The function binaries that tests run as child processes.
build:
	@echo "==> building (first build ~6 min on 2 cores)…"
	@$(CARGO) build --workspace --bins --locked

# The docs-examples tests run the Node example (node, npm) and the admin CLI test needs a
# terminal (util-linux `script`); under CI=true a missing tool fails them, so install what is
# missing when apt-get can (CI runs as root), and say so otherwise.
.PHONY: test-tools
test-tools:
	@missing=""; for tool in node npm script; do \
	  command -v $$tool >/dev/null 2>&1 || missing="$$missing $$tool"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "==> installing$$missing (apt-get: nodejs npm bsdutils)"; \
	    apt-get update -qq && apt-get install -y -qq --no-install-recommends nodejs npm bsdutils >/dev/null; \
	  else \
	    echo "note:$$missing not found: the tests that need them fail under CI=true and skip otherwise" >&2; \
	  fi; \
	fi

# KEAPALIVE_TEST_PREBUILT: `build` just made every binary fresh, so the harness skips its own
# per-binary `cargo build -p` (which resolves features per package and would compile a second
# variant of the dependencies). --no-fail-fast: one run reports every failing test binary.
# The randomized soak runs for 60 s here (SOAK_SECS unset: its own default), 10 minutes in
# `make soak` (docs/development.md, "The soak").
cargo-test: venv build test-tools
	@echo "==> cargo test"
	@KEAPALIVE_TEST_PREBUILT=1 $(CARGO) test --workspace --locked --no-fail-fast

# The randomized soak (tests/tests/it/soak.rs, docs/development.md "The soak"), 10 minutes by
# default (`make test` runs it for 60 s). Replay a run with the seed it printed: `make soak SOAK_SEED=…`;
# `SOAK_SECS=…` sets another length.
SOAK_SECS ?= 600
SOAK_SEED ?=
.PHONY: soak
soak: venv
	@echo "==> soak for $(SOAK_SECS) s (figures printed at the end of each phase)…"
	@SOAK_SECS=$(SOAK_SECS) SOAK_SEED=$(SOAK_SEED) $(CARGO) test --locked -p keapalive-tests --test it -- soak --nocapture

# The whole flow on this machine (README, "Quick start"): moto and the Keap sandbox on
# 127.0.0.1, the real function binaries, a line per step; stops everything it started.
local: venv
	@echo "==> building the functions and the local driver (first build ~6 min on 2 cores)…"
	@$(CARGO) build --locked -p oauth-callback -p token-refresher -p contact-upsert -p operator -p keap-proxy -p access-token -p keap-hooks -p keapalive-tests --bins
	@$(CARGO) run --quiet --locked -p keapalive-tests --bin keapalive-local -- --no-build

# Only moto and the Keap sandbox (connection `default` authorized), for `cargo lambda watch`
# (docs/development.md): writes .local/dev.env, runs until Ctrl-C.
.PHONY: dev-services
dev-services: venv
	@$(CARGO) run --quiet --locked -p keapalive-tests --bin keapalive-dev-services

# The same flow against the real Keap, never in CI (docs/deploy.md, "Run it against the real Keap"):
#   make local-keap KEAP_CLIENT_ID=… KEAP_CLIENT_SECRET_FILE=keap-secret.txt \
#     KEAP_REDIRECT_URI=https://<your-tunnel>/oauth/callback [CALLBACK_PORT=8787]
KEAP_CLIENT_ID ?=
KEAP_CLIENT_SECRET_FILE ?=
KEAP_REDIRECT_URI ?=
CALLBACK_PORT ?= 8787
LOCAL_KEAP_ARGS ?=
.PHONY: local-keap status
local-keap: venv
	@test -n "$(KEAP_CLIENT_ID)" -a -n "$(KEAP_CLIENT_SECRET_FILE)" -a -n "$(KEAP_REDIRECT_URI)" || { \
	  echo "usage: make local-keap KEAP_CLIENT_ID=… KEAP_CLIENT_SECRET_FILE=path KEAP_REDIRECT_URI=https://…/oauth/callback [CALLBACK_PORT=8787]" >&2; \
	  exit 2; }
	@echo "==> building the functions and the local driver…"
	@$(CARGO) build --locked -p oauth-callback -p token-refresher -p contact-upsert -p operator -p keap-proxy -p access-token -p keap-hooks -p keapalive-tests --bins
	@$(CARGO) run --quiet --locked -p keapalive-tests --bin keapalive-local -- --no-build --real-keap \
	  --client-id "$(KEAP_CLIENT_ID)" --client-secret-file "$(KEAP_CLIENT_SECRET_FILE)" \
	  --redirect-uri "$(KEAP_REDIRECT_URI)" --callback-port "$(CALLBACK_PORT)" $(LOCAL_KEAP_ARGS)

# Connections of a deployed stage (KEAPALIVE_TABLE = the stack's TableName output; standard AWS
# credentials). `make status STATUS_ARGS=--json` for scripts.
STATUS_ARGS ?=
status:
	@$(CARGO) run --quiet --locked -p keapalive-admin -- status $(STATUS_ARGS)

# Benchmarks (bench/, docs/performance.md): one release build of the functions, the
# hello-world baseline and the bench, then one table, also written to bench-results.json.
# The bench runs the binaries next to itself; `BENCH_ARGS=--quick` for a smoke run.
BENCH_ARGS ?=
.PHONY: bench
bench: venv
	@echo "==> building release binaries (LTO, one codegen unit: ~10 min cold on 2 cores)…"
	@$(CARGO) build --release --bins --locked -p oauth-callback -p token-refresher -p contact-upsert -p keap-proxy -p access-token -p keap-hooks -p keapalive-bench
	@"$${CARGO_TARGET_DIR:-target}/release/keapalive-bench" $(BENCH_ARGS)
