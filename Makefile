# ArtLens: every set-up step lives here, so a fresh clone needs only Python 3.11, Node and apt.
#   make run     the local stack with the shipped model (http://127.0.0.1:$(PORT))
#   make test    every test: unit, integration (real PostgreSQL + pgvector), infra (cdk synth,
#                cdk-nag, cfn-lint), e2e (local stack + headless Chromium)
#   make token / ingest DIR=… / reindex / rollback / redrive / key ARGS=…   (local stack)
#   make train DATA=… / bench / stress / synth / layer / deploy ENV=…
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PORT ?= 8000
DATA ?= ../shared/datasets/art
DIR ?=
export PYTHONPATH := $(CURDIR)/layers/python:$(CURDIR)
export TF_CPP_MIN_LOG_LEVEL ?= 2

.PHONY: help run token ingest test unit integration infra e2e lint audit train reindex rollback \
        bench stress key synth layer deploy browser clean redrive

help:
	@grep -E '^#   make' Makefile | sed 's/^#   //'

# --- environments ---------------------------------------------------------------------------
$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip

# The local stack needs only the runtime + embedded PostgreSQL (no TensorFlow).
$(VENV)/.local-installed: requirements/runtime.txt requirements/local.txt | $(VENV)/bin/python
	$(VENV)/bin/pip install --quiet -r requirements/local.txt
	touch $@

# Tests need everything: training (to export real tiny models), infra, browser driver.
$(VENV)/.dev-installed: requirements/*.txt | $(VENV)/bin/python
	$(VENV)/bin/pip install --quiet -r requirements/dev.txt
	touch $@ $(VENV)/.local-installed

# The AWS CDK CLI (pinned in package.json / package-lock.json) for cdk synth and deploy.
node_modules/.bin/cdk: package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

# Debian's Chromium for the page tests (Playwright drives it; no browser download).
browser:
	@command -v chromium >/dev/null || { apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

# --- local stack ----------------------------------------------------------------------------
run: $(VENV)/.local-installed
	$(PY) -m local_stack --port $(PORT)

token: $(VENV)/.local-installed
	@$(PY) -m local_stack.token

ingest: $(VENV)/.local-installed
	@test -n "$(DIR)" || { echo "usage: make ingest DIR=<folder of images>"; exit 2; }
	$(PY) -m local_stack.ingest "$(DIR)"

reindex: $(VENV)/.local-installed
	$(PY) -m local_stack.reindex

rollback: $(VENV)/.local-installed
	$(PY) -m local_stack.reindex --rollback

# Put dead-lettered ingestion messages back (docs/operations.md); ARGS="--list" shows them.
redrive: $(VENV)/.local-installed
	$(PY) -m local_stack.redrive $(ARGS)

# --- training -------------------------------------------------------------------------------
train: $(VENV)/.dev-installed
	$(PY) -m training --data "$(DATA)" $(TRAIN_ARGS)

# --- tests ----------------------------------------------------------------------------------
test: $(VENV)/.dev-installed node_modules/.bin/cdk browser lint audit
	$(PY) -m pytest tests

unit integration: $(VENV)/.dev-installed
	$(PY) -m pytest tests/$@

infra: $(VENV)/.dev-installed node_modules/.bin/cdk
	$(PY) -m pytest tests/$@

e2e: $(VENV)/.dev-installed browser
	$(PY) -m pytest tests/$@

lint: $(VENV)/.dev-installed
	$(VENV)/bin/ruff check .

audit: $(VENV)/.dev-installed
	$(PY) -m tests.audit requirements/runtime.txt

bench: $(VENV)/.dev-installed
	$(PY) -m bench

stress: $(VENV)/.dev-installed
	$(PY) -m bench.stress

key: $(VENV)/.local-installed
	$(PY) -m client.keys $(ARGS)

# --- infrastructure -------------------------------------------------------------------------
ENV ?= dev
CDK := CDK_DISABLE_CLI_TELEMETRY=true node_modules/.bin/cdk

synth: $(VENV)/.dev-installed node_modules/.bin/cdk
	$(CDK) synth --no-notices -q -c env=$(ENV)

# The zip functions' layer: our library + the runtime requirements except onnxruntime, built
# for Lambda's Linux x86_64 Python 3.11 (wheels only, so it builds on any machine).
layer: $(VENV)/.dev-installed
	rm -rf build/layer && mkdir -p build/layer/python
	grep -v '^onnxruntime' requirements/runtime.txt > build/layer/requirements.txt
	$(VENV)/bin/pip install --quiet --only-binary=:all: --platform manylinux2014_x86_64 \
	  --python-version 3.11 --implementation cp --target build/layer/python \
	  -r build/layer/requirements.txt
	cp -r layers/python/artlens build/layer/python/

deploy: layer node_modules/.bin/cdk
	$(CDK) deploy --all -c env=$(ENV)

clean:
	rm -rf cdk.out build test-artifacts .pytest_cache .ruff_cache
