# One entry point for people and CI. Every target sets up what it needs.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
REGISTRY ?= zoo
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: setup system-deps test test-fast test-containers test-gpu-image-here lint serve bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# The CPU build of torch lies on this disk; an unpinned torch would pull a multi-GB CUDA build.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev]'
	# Test reference for the importers. --no-deps: its declared torchvision/torchaudio would pull
	# another torch build; the few modules it imports at run time are in the dev extra.
	$(BIN)/pip install --quiet --no-deps spikingjelly==2.0.0
	touch $(STAMP)

setup: $(STAMP)

# System packages the tests need: TorchServe's frontend runs on Java 17; the console's browser tests
# drive Debian's chromium through its WebDriver. Prometheus needs no install: the tests unpack
# Debian's package into a cache (tests/prometheus_support.py). The inductor neuron backend compiles
# C++ with g++ (tests/e2e/test_new_time_steps.py serves through it).
system-deps:
	command -v g++ >/dev/null || (apt-get update -q && apt-get install -y -q -o DPkg::Lock::Timeout=600 g++)
	command -v java >/dev/null || (apt-get update && apt-get install -y --no-install-recommends openjdk-17-jre-headless)
	(test -x /usr/bin/chromium && test -x /usr/bin/chromedriver) || \
		(apt-get update -q && apt-get install -y -q -o DPkg::Lock::Timeout=600 chromium chromium-driver)

test: $(STAMP) system-deps
	$(BIN)/python -m pytest tests

test-fast: $(STAMP)
	$(BIN)/python -m pytest tests -m "not slow"

# Builds the gateway and CPU worker images with podman and runs the compose stack against the host's
# Redis (docs/DEPLOY.md). Root, minutes; installs podman, runc and debootstrap when missing.
test-containers: $(STAMP)
	bash tests/containers/setup_podman.sh
	SPIKESERVE_CONTAINER_TESTS=1 $(BIN)/python -m pytest tests/containers -v --ignore=tests/containers/test_gpu_image.py

# docker/worker.Dockerfile built on the local Debian base with CPU torch (no CUDA base can be pulled
# here): every step but the base and torch's CUDA build. About 9 minutes and 2.6 GB, so not above.
test-gpu-image-here: $(STAMP)
	bash tests/containers/setup_podman.sh
	SPIKESERVE_CONTAINER_TESTS=1 SPIKESERVE_BUILD_GPU_IMAGE=1 $(BIN)/python -m pytest tests/containers/test_gpu_image.py -v

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

serve: $(STAMP)
	$(BIN)/spikeserve serve --host $(HOST) --port $(PORT) --registry $(REGISTRY)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
