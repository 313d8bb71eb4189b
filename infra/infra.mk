# Infrastructure checks, packaging and deployment. Included by the root Makefile
# (`-include infra/infra.mk`), which runs $(INFRA_TEST_TARGETS) as part of `make test`.
# Paths are relative to the repository root, where make runs.
#
# Two virtualenvs on purpose: aws-sam-cli pins click (and more) to exact versions that would
# fight with cfn-lint / zizmor / check-jsonschema, so SAM lives alone in .venv-sam.

INFRA_TEST_TARGETS := infra-check infra-test rehearse

INFRA_PYTHON ?= python3
INFRA_VENV := .venv-infra
SAM_VENV := .venv-sam
INFRA_TEMPLATE := infra/template.yaml
SAM_BUILD_DIR := .aws-sam/build
INFRA_WORKFLOWS = $(wildcard .github/workflows/*.yml)
PIP_INSTALL = bin/pip install --quiet --disable-pip-version-check

# Lambda CPU architecture of `make package`. The template's Architecture parameter defaults to
# arm64; building x86_64 means adding "Architecture=x86_64" to every samconfig.toml environment
# (a --parameter-overrides on the deploy command line would replace samconfig's, Stage included).
ARCH ?= arm64

# sam wants a region and credentials even offline; these dummies never reach AWS.
SAM_OFFLINE_ENV := AWS_DEFAULT_REGION=us-east-1 AWS_REGION=us-east-1 \
	AWS_ACCESS_KEY_ID=offline-dummy AWS_SECRET_ACCESS_KEY=offline-dummy \
	SAM_CLI_TELEMETRY=0

.PHONY: infra-venv sam-venv infra-check infra-test package infra-deploy

# Stamp files make each venv install once; editing this file (versions live here) reinstalls.
infra-venv: $(INFRA_VENV)/.stamp
$(INFRA_VENV)/.stamp: infra/infra.mk
	$(INFRA_PYTHON) -m venv $(INFRA_VENV)
	@# zizmor pinned too: a new release adds audits, which must not fail `make test` unannounced.
	$(INFRA_VENV)/$(PIP_INSTALL) 'cfn-lint==1.58.*' 'zizmor==1.32.*' 'check-jsonschema==0.39.*'
	touch $@

sam-venv: $(SAM_VENV)/.stamp
$(SAM_VENV)/.stamp: infra/infra.mk
	$(INFRA_PYTHON) -m venv $(SAM_VENV)
	@# aws-sam-translator: the SAM transform the deploy rehearsal runs (the one aws-sam-cli 1.170 uses).
	$(SAM_VENV)/$(PIP_INSTALL) 'aws-sam-cli==1.170.*' 'aws-sam-translator==1.115.*'
	touch $@

# Build tools only `make package` needs (deploy jobs skip them): cargo-lambda cross-compiles
# with zig, so both land on PATH through the sam venv's bin.
$(SAM_VENV)/.stamp-build: $(SAM_VENV)/.stamp
	$(SAM_VENV)/$(PIP_INSTALL) 'cargo-lambda==1.9.2' 'ziglang'
	touch $@

infra-check: infra-venv sam-venv
	$(INFRA_VENV)/bin/cfn-lint $(INFRA_TEMPLATE)
	@# The lifecycle-event rules of docs/events.md (its SNS e-mail half is checked only statically).
	$(INFRA_VENV)/bin/cfn-lint docs/examples/needs_reauthorization_rules.yaml
	$(SAM_OFFLINE_ENV) $(SAM_VENV)/bin/sam validate --lint -t $(INFRA_TEMPLATE)
	@# Without --lint, sam runs its own transform, which --lint skips (bad event properties etc.).
	$(SAM_OFFLINE_ENV) $(SAM_VENV)/bin/sam validate -t $(INFRA_TEMPLATE)
	$(INFRA_VENV)/bin/check-jsonschema --builtin-schema vendor.github-workflows $(INFRA_WORKFLOWS)
	$(INFRA_VENV)/bin/zizmor --offline --config infra/checks/zizmor.yml .github/workflows/

infra-test: infra-venv
	$(INFRA_VENV)/bin/python infra/checks/test_template.py $(INFRA_TEMPLATE)
	$(INFRA_VENV)/bin/python infra/checks/test_workflows.py .github/workflows
	$(INFRA_VENV)/bin/python infra/checks/test_names.py $(INFRA_TEMPLATE)

# Deploy rehearsal (docs/deploy.md, "Deploy rehearsal"): the SAM transform of the template with
# the overlay for what moto cannot create, the stack created in moto's CloudFormation (the
# emulator venv's moto), and each function's environment as the created stack gives it checked
# against Config's names and the Rust code's indexes; broken copies must fail it. The walk
# through the binaries (tests/tests/it/rehearsal_walk.rs, in cargo-test, after this) creates the
# same stack in the test emulator and checks every recorded request against the roles
# (infra/checks/rehearse_iam.py).
REHEARSE_DIR := target/rehearse
.PHONY: rehearse
rehearse: sam-venv venv
	@mkdir -p $(REHEARSE_DIR)
	$(SAM_OFFLINE_ENV) $(SAM_VENV)/bin/python infra/checks/rehearse_transform.py $(INFRA_TEMPLATE) $(REHEARSE_DIR)/stack.json
	$(SAM_OFFLINE_ENV) $(VENV_PYTHON) -W ignore infra/checks/rehearse_stack.py $(REHEARSE_DIR)/stack.json $(REHEARSE_DIR)/env.json
	@# The walk (cargo test's rehearsal_walk, which needs stack.json) records requests.json and
	@# evaluates it against the roles; here the last walk's log meets the current template.
	@if [ -f $(REHEARSE_DIR)/requests.json ]; then \
	  $(VENV_PYTHON) infra/checks/rehearse_iam.py $(INFRA_TEMPLATE) $(REHEARSE_DIR)/requests.json; \
	else echo "no $(REHEARSE_DIR)/requests.json yet: the walk (cargo test rehearsal_walk) writes it and checks the roles"; fi

# Not part of `make test`: release builds of the three functions (3-6 min cold on 2 cores).
package: $(SAM_VENV)/.stamp-build
	PATH="$(CURDIR)/$(SAM_VENV)/bin:$$PATH" $(SAM_OFFLINE_ENV) \
		$(SAM_VENV)/bin/sam build -t $(INFRA_TEMPLATE) --build-dir $(SAM_BUILD_DIR) \
		--parameter-overrides Architecture=$(ARCH)

# Deploys what `make package` built to STAGE (dev, stage or prod: samconfig.toml environments).
# Real AWS credentials come from the caller (CI: OIDC role). SAM_DEPLOY_FLAGS: CI passes
# --no-confirm-changeset; humans get the change set shown and confirm it.
SAM_DEPLOY_FLAGS ?=
infra-deploy: sam-venv
	@test -n "$(STAGE)" || { echo "usage: make infra-deploy STAGE=dev|stage|prod" >&2; exit 2; }
	@test -f $(SAM_BUILD_DIR)/template.yaml || { echo "run make package first" >&2; exit 2; }
	SAM_CLI_TELEMETRY=0 $(SAM_VENV)/bin/sam deploy \
		--template-file $(SAM_BUILD_DIR)/template.yaml \
		--config-file $(CURDIR)/infra/samconfig.toml --config-env $(STAGE) $(SAM_DEPLOY_FLAGS)
