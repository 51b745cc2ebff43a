# A worker: runs the networks, on an NVIDIA GPU (CUDA base image, torch's CUDA build, triton for the
# fused LIF kernels). The host needs the NVIDIA driver and container toolkit; docker-compose.yml
# reserves the GPU. The same image runs on a CPU (`--device cpu`); for a smaller CPU-only image
# build with --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu (the compose file's
# worker-cpu service does).
#
#   docker build -f docker/worker.Dockerfile -t spikeserve-worker .
FROM nvidia/cuda:12.4.1-cudnn-runtime-ubuntu22.04

# empty: PyPI's torch, the CUDA build on Linux x86-64
ARG TORCH_INDEX_URL=""
ARG TORCH_VERSION=2.13.0

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

# gcc and the Python headers: triton and torch.compile build small launchers at run time
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3.11 python3.11-venv python3.11-dev gcc \
 && rm -rf /var/lib/apt/lists/* \
 && python3.11 -m venv /opt/venv

WORKDIR /app
COPY pyproject.toml README.md ./
COPY models ./models
COPY registry ./registry
COPY workers ./workers
COPY service ./service
COPY training ./training
COPY eventio ./eventio

RUN if [ -n "$TORCH_INDEX_URL" ]; then pip install "torch==${TORCH_VERSION}" --index-url "$TORCH_INDEX_URL"; \
    else pip install "torch==${TORCH_VERSION}"; fi \
 && pip install ".[gpu]" \
 && useradd --create-home --uid 10001 spikeserve

USER spikeserve
# Prometheus /metrics of this worker (spikeserve worker --metrics-port)
EXPOSE 9100
ENTRYPOINT ["spikeserve"]
CMD ["worker", "--redis", "redis://redis:6379/0", "--registry", "/registry", "--device", "cuda", "--metrics-port", "9100"]
