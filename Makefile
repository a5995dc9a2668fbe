# ArtLens: every set-up step lives here, so a fresh clone needs only Python 3.11, Node and apt.
#   make run     the local stack with the shipped model (http://127.0.0.1:$(PORT))
#   make test    every test: unit, integration (real PostgreSQL + pgvector), infra (cdk synth,
#                cdk-nag, cfn-lint), e2e (local stack + headless Chromium)
#   make token / ingest DIR=… / reindex / rollback / redrive / key ARGS=…   (local stack)
#   make duplicates / export-labels [OUT=…] / renditions [ENV=… PREFIX=gallery/…]   (curators)
#   make backfill [PREFIX=incoming/] / backfill-reindex [VERSION=…]   (Distributed Map logic;
#                with ENV=… on the deployed state machine, printing progress until done;
#                ENV=… MANIFEST=s3://…/manifest.json|latest: items from an S3 Inventory report)
#   make train DATA=… / bench / bench-int8 / stress / bench-million [ARGS="--rows N"]
#   make register-model [ENV=…] [CARD=…]   (the model registry: artifacts bucket or local)
#   make synth / diff / layer / deploy ENV=… / bootstrap   (AWS: only .venv-infra + the CDK CLI)
#   make lock    re-resolve requirements/*.lock (hashes, transitive pins) after editing a .txt
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
        bench stress key synth diff layer deploy bootstrap preflight lock browser clean redrive \
        backfill backfill-reindex duplicates export-labels renditions register-model \
        bench-million bench-int8

help:
	@grep -E '^#   make' Makefile | sed 's/^#   //'

# --- environments ---------------------------------------------------------------------------
$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip

# The checkout on the venv's path (what `pip install -e` would do), so the README's
# `python -m training|client|local_stack` work from the venv without this Makefile's PYTHONPATH.
$(VENV)/.checkout-on-path: | $(VENV)/bin/python
	printf '%s\n' "$(CURDIR)/layers/python" "$(CURDIR)" > \
	  "$$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/artlens-checkout.pth"
	touch $@

# The local stack needs only the runtime + embedded PostgreSQL (no TensorFlow).
$(VENV)/.local-installed: requirements/runtime.txt requirements/local.txt | $(VENV)/.checkout-on-path
	$(VENV)/bin/pip install --quiet -r requirements/local.txt
	touch $@

# Tests need everything: training (to export real tiny models), infra, browser driver.
$(VENV)/.dev-installed: requirements/*.txt | $(VENV)/.checkout-on-path
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
	@$(PY) -m local_stack.token $(ARGS)

ingest: $(VENV)/.local-installed
	@test -n "$(DIR)" || { echo "usage: make ingest DIR=<folder of images>"; exit 2; }
	$(PY) -m local_stack.ingest "$(DIR)"

reindex: $(VENV)/.local-installed
	$(PY) -m local_stack.reindex

rollback: $(VENV)/.local-installed
	$(PY) -m local_stack.reindex --rollback

# The backfill / reindex state machine's map logic (docs/operations.md, "Backfill and reindex
# at scale"): locally on the running stack, or with ENV=dev|prod on the deployed one.
PREFIX ?=
VERSION ?=
MANIFEST ?=
ON_AWS = $(filter command line,$(origin ENV))
backfill: $(if $(ON_AWS),,$(VENV)/.local-installed)
	$(if $(ON_AWS),MANIFEST="$(MANIFEST)" infra/run_backfill.sh "$(ENV)" backfill "$(or $(PREFIX),incoming/)",\
	  $(PY) -m local_stack.backfill --mode backfill --prefix "$(or $(PREFIX),incoming/)" $(ARGS))

backfill-reindex: $(if $(ON_AWS),,$(VENV)/.local-installed)
	$(if $(ON_AWS),MANIFEST="$(MANIFEST)" infra/run_backfill.sh "$(ENV)" reindex "$(or $(PREFIX),gallery/)" "$(VERSION)",\
	  $(PY) -m local_stack.backfill --mode reindex --prefix "$(or $(PREFIX),gallery/)" \
	  $(if $(VERSION),--version "$(VERSION)") $(ARGS))

# Curators (local stack): near-duplicate groups, and the reviewed labels for `make train
# TRAIN_ARGS="--labels FILE"` (docs/architecture.md, "Curation").
OUT ?= reviewed-labels.csv
# Renditions (256 / 1,024 px, no metadata) for works indexed before ingest wrote them: locally,
# or with ENV=… on the deployed state machine (renditions mode of the Distributed Map).
renditions: $(if $(ON_AWS),,$(VENV)/.local-installed)
	$(if $(ON_AWS),MANIFEST="$(MANIFEST)" infra/run_backfill.sh "$(ENV)" renditions "$(or $(PREFIX),gallery/)",\
	  $(PY) -m local_stack.renditions $(ARGS))

duplicates: $(VENV)/.local-installed
	$(PY) -m local_stack.curation duplicates $(ARGS)

export-labels: $(VENV)/.local-installed
	$(PY) -m local_stack.curation export-labels --out "$(OUT)"

# Put dead-lettered ingestion messages back (docs/operations.md); ARGS="--list" shows them.
redrive: $(VENV)/.local-installed
	$(PY) -m local_stack.redrive $(ARGS)

# The model registry (docs/operations.md, "Roll back a model"): publish CARD's card + ONNX file
# as models/<version>/ of the stack's artifacts bucket with ENV=…, else in the local stack's
# registry (.artlens/models/). Idempotent; another model under a registered version is refused.
CARD ?= models/artlens.json
ARTIFACTS_BUCKET_OF = $$(aws cloudformation describe-stacks --stack-name "ArtLens-$(ENV)" \
  --query "Stacks[0].Outputs[?OutputKey=='ArtifactsBucketName'].OutputValue" --output text)
register-model: $(VENV)/.local-installed
	$(PY) -m artlens.models.registry \
	  $(if $(ON_AWS),--bucket "$(ARTIFACTS_BUCKET_OF)",--folder "$${ARTLENS_STATE_DIR:-.artlens}/models") \
	  register "$(CARD)"

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

# The lock is what the image and the layer install, transitive packages included.
audit: $(VENV)/.dev-installed
	$(PY) -m tests.audit requirements/runtime.lock

bench: $(VENV)/.dev-installed
	$(PY) -m bench

# int8 against fp32 on the card's grouped test split (issue 10's rule); never writes models/
bench-int8: $(VENV)/.dev-installed
	$(PY) -m bench.quantize

# k-NN at 1,000,000 rows with the bulk-load path (tens of minutes on 2 cores): bench/million.json
bench-million: $(VENV)/.dev-installed
	$(PY) -m bench.million $(ARGS)

stress: $(VENV)/.dev-installed
	$(PY) -m bench.stress

key: $(VENV)/.local-installed
	$(PY) -m client.keys $(ARGS)

# --- infrastructure -------------------------------------------------------------------------
# synth, diff, deploy need only the CDK app's requirements (requirements/infra.lock, hashed) in
# their own virtualenv and the pinned CDK CLI: no TensorFlow, no Playwright. cdk.json runs the
# app as `python3 -m infra.app`, so that virtualenv goes first on PATH (an activated one works
# the same with a bare `npx cdk ...`).
ENV ?= dev
CDK_ARGS ?=
INFRA_VENV := .venv-infra
INFRA_PY := $(INFRA_VENV)/bin/python
CDK := PATH="$(CURDIR)/$(INFRA_VENV)/bin:$$PATH" CDK_DISABLE_CLI_TELEMETRY=true \
       node_modules/.bin/cdk

$(INFRA_VENV)/.installed: requirements/infra.lock
	$(PYTHON) -m venv $(INFRA_VENV)
	$(INFRA_VENV)/bin/pip install --quiet --upgrade pip
	$(INFRA_VENV)/bin/pip install --quiet --require-hashes -r requirements/infra.lock
	touch $@

synth: $(INFRA_VENV)/.installed node_modules/.bin/cdk
	$(CDK) synth --no-notices -q -c env=$(ENV) $(CDK_ARGS)

diff: $(INFRA_VENV)/.installed node_modules/.bin/cdk
	$(CDK) diff --no-notices -c env=$(ENV) $(CDK_ARGS)

# Once per account and region (the CDK asset bucket, ECR repository and deploy roles).
bootstrap: $(INFRA_VENV)/.installed node_modules/.bin/cdk
	$(CDK) bootstrap --no-notices -c env=$(ENV) $(CDK_ARGS)

# The zip functions' layer: the runtime lock minus onnxruntime (image only), wheels for the
# zip functions' real runtime (python3.12 on Amazon Linux 2023, x86_64) whatever this machine
# is, hashes required, plus layers/python/artlens (infra/packaging.py).
layer: $(INFRA_VENV)/.installed
	$(INFRA_PY) -m infra.packaging layer --out build/layer

# Fails before CloudFormation is touched when an artifact is missing or stale: the layer, the
# model files, the lock, a running Docker engine (the image is built during cdk deploy).
preflight: $(INFRA_VENV)/.installed
	$(INFRA_PY) -m infra.packaging preflight --layer-dir build/layer

deploy: layer node_modules/.bin/cdk
	$(INFRA_PY) -m infra.packaging preflight --layer-dir build/layer
	$(CDK) deploy --all --no-notices -c env=$(ENV) $(CDK_ARGS)

# Lock files: every package, transitive ones included, pinned with the hashes of all its
# published files (so one lock serves Python 3.11 here and 3.12 on Lambda). uv runs from a
# throwaway virtualenv pinned here.
UV_VERSION := 0.13.8
LOCK_VENV := .venv-lock
$(LOCK_VENV)/bin/uv:
	$(PYTHON) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/pip install --quiet uv==$(UV_VERSION)

lock: $(LOCK_VENV)/bin/uv
	for name in runtime infra; do \
	  $(LOCK_VENV)/bin/uv pip compile requirements/$$name.txt --universal --python-version 3.11 \
	    --generate-hashes --custom-compile-command "make lock" --quiet \
	    -o requirements/$$name.lock || exit 1; \
	done

clean:
	rm -rf cdk.out build test-artifacts .pytest_cache .ruff_cache
