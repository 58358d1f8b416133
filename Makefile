# Two commands do everything on a fresh machine:  make up  (run the system)  and  make test.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml requirements.lock | sha1sum | cut -c1-12)

.PHONY: venv tools models up down test test-unit test-integration test-faults test-nodes scan bench bench-isolation bench-freshness skew loadtest package clean

$(STAMP): pyproject.toml requirements.lock
	@command -v $(PYTHON) >/dev/null || { echo "$(PYTHON) not found; set PYTHON=/path/to/python3.11"; exit 1; }
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet --progress-bar off -c requirements.lock -e ".[dev]"
	@rm -f $(VENV)/.installed-* && touch $@

venv: $(STAMP)

# Debian packages the tests use when present: Prometheus (to scrape the stack with the shipped config).
tools:
	@command -v prometheus >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
		&& { echo "installing Debian's prometheus for its scrape test ..."; \
		     (apt-get install -y -qq prometheus || { apt-get update -qq && apt-get install -y -qq prometheus; }) >/dev/null; } \
		|| echo "prometheus not installed (needs root and apt): its scrape test will be skipped"; }

models: venv  ## version 1 of every configured model into the model repository, where it has none
	$(VENV)/bin/rts models init

up: models  ## Triton + Ray (dashboard :8265) + Serve gateway (:8000); Ctrl-C stops all of it
	$(VENV)/bin/rts up

down: venv  ## end what an earlier `make up` of this checkout left running (after a kill -9, a lost terminal)
	$(VENV)/bin/rts down

test: venv tools  ## the whole suite: unit tests, then the real Triton + Ray Serve stack
	$(PY) -m pytest -ra

test-unit: venv
	$(PY) -m pytest -ra tests/unit

test-integration: venv tools
	$(PY) -m pytest -ra tests/integration

# Inside a loopback-only network namespace when root (Ray's node traffic then stays on 127.0.0.1).
LOOPBACK_ONLY := $(shell [ "$$(id -u)" = 0 ] && unshare -n true 2>/dev/null && echo "unshare -n")
# $(call on_loopback,commands): the commands in that namespace (or as they are, when it cannot be made).
on_loopback = $(if $(LOOPBACK_ONLY),$(LOOPBACK_ONLY) bash -c 'ip link set lo up 2>/dev/null; $(1)',$(1))
test-faults: venv  ## the whole fault matrix under bounded load: table + plot -> loadtests/results/faults-*/
	$(call on_loopback,$(PY) -m loadtests.faults)

# The test runs itself in a loopback-only network namespace (as root), or skips saying why.
test-nodes: venv  ## node autoscaling alone: Ray's autoscaler adds worker nodes for a load spike, removes them after -> loadtests/results/test-nodes-*/
	$(PY) -m pytest -ra -s -m nodes tests/integration/test_node_autoscaling.py

package: venv  ## serverless artefacts: AWS Lambda zip + Cloud Functions gen2 folder -> dist/serverless/ (Lambda's wheels from PyPI)
	$(PY) -m services.retraining.artefacts --out dist/serverless

scan:  ## checkov over infra/ in its own venv (.venv-scan/); fails on a finding infra/.checkov.yaml does not explain
	infra/scan.sh

# BENCH_PEERS=0 skips the peers; BENCH_ARGS go to bench and bench_peers (e.g. "--duration 2 --concurrency 1 32").
BENCH_PEERS ?= 1
BENCH_ARGS ?=
BENCH_TIME := $(shell date +%Y%m%d-%H%M%S)
BENCH_OUT ?= loadtests/results/bench-$(BENCH_TIME)
SKIP_PEERS = $(filter 0 no false,$(BENCH_PEERS))
bench: venv  ## Triton direct vs the gateway at concurrency 1/8/32, tracing and routing costs in-process, then the peers (KServe, BentoML, Triton alone) -> loadtests/results/
	@command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; }
	$(if $(SKIP_PEERS),@echo "peers skipped (BENCH_PEERS=$(BENCH_PEERS))",$(PY) -m loadtests.peers.launch)
	$(call on_loopback,$(PY) -m loadtests.bench --out $(BENCH_OUT) $(BENCH_ARGS) && $(PY) -m loadtests.bench_tracing && $(PY) -m loadtests.bench_routing$(if $(SKIP_PEERS),, && $(PY) -m loadtests.bench_peers --out $(BENCH_OUT)/peers $(BENCH_ARGS)))

bench-isolation: venv  ## the gateway with and without a retraining run on the same cores (shipped isolation, and none) -> loadtests/results/
	@command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; }
	$(call on_loopback,$(PY) -m loadtests.bench_isolation)

bench-freshness: venv  ## new data -> a candidate serving, and the cold start from zero, a few trials each -> loadtests/results/
	$(call on_loopback,$(PY) -m loadtests.bench_freshness)

skew: venv  ## digits as the files users send vs exact 8x8, shipped training vs no augmentation -> loadtests/results/
	$(PY) -m loadtests.skew

PROFILE ?= ramp
loadtest: venv  ## Locust profile (ci|ramp|spike|soak) headless against a running `make up` -> loadtests/results/
	$(PY) -m loadtests.run --profile $(PROFILE) --host http://127.0.0.1:8000 --dashboard http://127.0.0.1:8265

clean:
	rm -rf var loadtests/results dist
