# A worker on the CPU: runs the networks for gateways in distributed mode, with torch's CPU build
# (no CUDA libraries: about a tenth of the CUDA build's size). For a GPU use docker/worker.Dockerfile.
# The same image also serves one process on one machine: `spikeserve serve` without a Redis URL.
#
#   docker build -f docker/worker-cpu.Dockerfile -t spikeserve-worker-cpu .
#
# Settings come from the environment only (SPIKESERVE_*, see service/settings.py); the registry is
# a volume at /registry, read-only is enough. Build arguments:
#   BASE_IMAGE       any Debian bookworm with python3 (3.11) and its venv module
#   TORCH_INDEX_URL  where torch==$TORCH_VERSION+cpu comes from (and its dependencies)
#   WHEELS           a folder of wheels pip prefers (e.g. a torch wheel mounted into the build)
ARG BASE_IMAGE=python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS build
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG TORCH_VERSION=2.13.0
ARG WHEELS=""
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# torch first, pinned to the CPU build: the project's plain "torch>=2.5" would pull the CUDA one
RUN python3 -m venv /opt/venv \
 && /opt/venv/bin/pip install ${WHEELS:+--find-links "$WHEELS"} --index-url "$TORCH_INDEX_URL" \
      "torch==${TORCH_VERSION}+cpu"
WORKDIR /src
COPY pyproject.toml README.md ./
COPY models ./models
COPY registry ./registry
COPY workers ./workers
COPY service ./service
COPY training ./training
COPY eventio ./eventio
# the project and its other dependencies (torch is there already); pip leaves with the build stage,
# and so do torch's C++ headers and test programs (a sixth of the image; nothing here compiles or
# runs them: without a compiler the "auto" neuron backend never tries torch.compile)
RUN /opt/venv/bin/pip install . \
 && /opt/venv/bin/python -c "import torch; assert torch.version.cuda is None, torch.version.cuda" \
 && /opt/venv/bin/pip uninstall --yes pip setuptools \
 && cd /opt/venv/lib/python3.*/site-packages/torch \
 && rm -rf include test bin/*Test bin/test_* bin/protoc*

FROM ${BASE_IMAGE}
RUN useradd --create-home --uid 10001 spikeserve \
 && mkdir /registry && chown spikeserve:spikeserve /registry
COPY --from=build /opt/venv /opt/venv
# No C++ compiler here, so the "auto" neuron backend settles on torch's eager path at once
# instead of timing torch.compile (inductor) at start-up.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    SPIKESERVE_REGISTRY=/registry \
    SPIKESERVE_DEVICE=cpu \
    SPIKESERVE_METRICS_PORT=9100
VOLUME /registry
USER spikeserve
# Prometheus /metrics of this worker
EXPOSE 9100
# A worker has no HTTP API: it opens its metrics port only once its models are loaded and warmed
# up, so the port answering is its readiness (the gateway's probe is /readyz).
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
  CMD python3 -c "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/metrics' % os.environ.get('SPIKESERVE_METRICS_PORT', '9100'), timeout=2)"
ENTRYPOINT ["spikeserve"]
CMD ["worker"]
