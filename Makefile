# VisionInApp developer entry points. Everything installs into one virtual environment that is
# reused across clones (torch alone is 5.5 GB), so a second run is fast.
SHELL := /bin/bash
VENV ?= $(HOME)/.venvs/visioninapp
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
DEPS_STAMP := $(VENV)/.deps-$(shell cat pyproject.toml constraints.txt | sha256sum | cut -c1-16)

.PHONY: help install editable console kubernetes test test-fast lint crds demo bench mutate images images-l4t clean

help: ## Show the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

$(PY):
	python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip

$(DEPS_STAMP): | $(PY)
	$(PIP) install -q -c constraints.txt torch torchvision
	$(PIP) install -q -c constraints.txt -e '.[all,dev]'
	touch $@

CONSOLE_STAMP := frontend/node_modules/.stamp-$(shell cat frontend/package-lock.json | sha256sum | cut -c1-16)

$(CONSOLE_STAMP):
	cd frontend && npm ci --no-audit --no-fund --loglevel=error
	touch $@

console: $(CONSOLE_STAMP) ## Vendor the console's browser libraries from npm into frontend/vendor
	cd frontend && node vendor.mjs

install: editable console kubernetes ## Install the project and every extra (reuses what is installed)

# The shared virtualenv's editable install points at whichever clone installed last (maybe one since
# deleted): point it at this clone, cheaply, before anything here runs the `visioninapp` command.
editable: $(DEPS_STAMP)
	$(PIP) install -q --no-deps --no-build-isolation -e . 2>&1 | grep -v -i warning || true
	@$(PY) -c "import visioninapp.operator, visioninapp.trainer" || { echo "install failed" >&2; exit 1; }

kubernetes: editable ## Build the Kubernetes control plane from source once per machine (5 min on 2 cores; Go 1.25+)
	$(VENV)/bin/visioninapp cluster build

test: install ## Install what the tests need, start the services and run the whole suite
	$(PY) -m pytest

test-fast: install ## The unit tests only
	$(PY) -m pytest tests/unit -m "not slow"

lint: install ## ruff (with complexity limits), strict mypy over all five packages, import-linter's contracts
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) tools/typecheck.py
	$(PY) tools/lint_imports.py

crds: install ## Regenerate crds/ from the typed models
	$(VENV)/bin/visioninapp crds generate
	$(VENV)/bin/visioninapp crds generate --out charts/visioninapp/crds

demo: install ## The whole loop on this machine through local mode: train, register, roll out, detect (~4 min)
	$(VENV)/bin/visioninapp validate -f manifests/examples/
	$(VENV)/bin/visioninapp demo

bench: install ## Run the benchmarks: every goal met or missed; exits non-zero naming what missed
	@missed=""; for b in benchmarks/*.py; do [ "$$b" = benchmarks/goals.py ] && continue; \
		echo "== $$b"; $(PY) $$b || missed="$$missed $$b"; done; \
	if [ -n "$$missed" ]; then echo "goals missed by:$$missed" >&2; exit 1; fi

MUTATE_ARGS ?=
mutate: install ## Mutation testing of the decision modules, by hand (~4 min on 2 cores; docs/mutation.md)
	$(PY) tools/mutate.py $(MUTATE_ARGS)

IMAGE_REGISTRY ?= ghcr.io/visioninapp
IMAGE_TAG ?= $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
DOCKER_OK = docker info >/dev/null 2>&1 || { echo "this target needs a running Docker daemon" >&2; exit 1; }

images: ## Build the operator, api (with console), trainer and x86 edge images (needs Docker)
	@$(DOCKER_OK)
	@for image in operator api trainer edge; do \
		docker build -f docker/$$image.Dockerfile -t $(IMAGE_REGISTRY)/$$image:$(IMAGE_TAG) . || exit 1; \
	done

images-l4t: ## Build the Jetson (JetPack 6, arm64) edge image with buildx
	@$(DOCKER_OK)
	docker buildx build -f docker/edge-l4t.Dockerfile --platform linux/arm64 \
		-t $(IMAGE_REGISTRY)/edge:$(IMAGE_TAG)-l4t-r36 --load .

clean: ## Remove build outputs of this clone (keeps the shared virtual environment)
	rm -rf build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache .visioninapp frontend/node_modules frontend/vendor
