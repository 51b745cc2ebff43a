# A worker on an NVIDIA GPU: runs the networks for gateways in distributed mode, with torch's CUDA
# build and triton for the fused LIF kernels. The host needs the NVIDIA driver and the NVIDIA
# Container Toolkit; docker-compose.yml reserves the GPU. Without a GPU use docker/worker-cpu.Dockerfile
# (a tenth of the size).
#
#   docker build -f docker/worker.Dockerfile -t spikeserve-worker .
#
# Settings come from the environment only (SPIKESERVE_*, see service/settings.py); the registry is
# a volume at /registry, read-only is enough. Build arguments:
#   BASE_IMAGE       an NVIDIA CUDA runtime image (Ubuntu 22.04: python3.11 from its archive)
#   TORCH_INDEX_URL  empty: PyPI, whose torch is the CUDA build on Linux x86-64
#   WHEELS           a folder of wheels pip prefers (e.g. one mounted into the build)
ARG BASE_IMAGE=nvidia/cuda:12.4.1-cudnn-runtime-ubuntu22.04

FROM ${BASE_IMAGE} AS build
ARG TORCH_INDEX_URL=""
ARG TORCH_VERSION=2.13.0
ARG WHEELS=""
ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3.11 python3.11-venv ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && python3.11 -m venv /opt/venv \
 && /opt/venv/bin/pip install ${WHEELS:+--find-links "$WHEELS"} \
      ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} "torch==${TORCH_VERSION}"
WORKDIR /src
COPY pyproject.toml README.md ./
COPY models ./models
COPY registry ./registry
COPY workers ./workers
COPY service ./service
COPY training ./training
COPY eventio ./eventio
# the project, its other dependencies and triton (the gpu extra); pip leaves with the build stage
RUN /opt/venv/bin/pip install ${WHEELS:+--find-links "$WHEELS"} ".[gpu]" \
 && /opt/venv/bin/pip uninstall --yes pip

FROM ${BASE_IMAGE}
ENV DEBIAN_FRONTEND=noninteractive
# The one build tool that stays: triton compiles a small launcher for each kernel with the system C
# compiler and the Python headers the first time it runs, on the serving machine.
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3.11 gcc libc6-dev python3.11-dev \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --create-home --uid 10001 spikeserve \
 && mkdir /registry && chown spikeserve:spikeserve /registry
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    SPIKESERVE_REGISTRY=/registry \
    SPIKESERVE_DEVICE=cuda \
    SPIKESERVE_METRICS_PORT=9100
VOLUME /registry
USER spikeserve
# Prometheus /metrics of this worker
EXPOSE 9100
# A worker has no HTTP API: it opens its metrics port only once its models are loaded and warmed
# up, so the port answering is its readiness (the gateway's probe is /readyz).
HEALTHCHECK --interval=10s --timeout=3s --start-period=120s --retries=3 \
  CMD python3 -c "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/metrics' % os.environ.get('SPIKESERVE_METRICS_PORT', '9100'), timeout=2)"
ENTRYPOINT ["spikeserve"]
CMD ["worker"]
