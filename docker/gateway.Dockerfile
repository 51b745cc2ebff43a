# The gateway: HTTP routes, input decoding, auth, metrics, and Redis Streams to the workers.
# Slim on purpose: no CUDA and no torch. In distributed mode the gateway never runs a network
# (tests/integration/test_redis_serving.py starts one with torch unimportable to prove it), so
# this image cannot serve embedded mode: for one process on one machine use the worker image
# (`spikeserve serve` without --redis) or `make serve`.
#
#   docker build -f docker/gateway.Dockerfile -t spikeserve-gateway .
FROM python:3.11-slim-bookworm

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY pyproject.toml README.md ./
COPY models ./models
COPY registry ./registry
COPY workers ./workers
COPY service ./service
COPY training ./training
COPY eventio ./eventio

# Every runtime dependency except torch, read from pyproject.toml so the two never disagree,
# then the project itself without dependencies (which would pull torch back in).
RUN python -c "import tomllib; deps = tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']; print('\n'.join(d for d in deps if not d.startswith('torch')))" > /tmp/requirements.txt \
 && pip install -r /tmp/requirements.txt \
 && pip install --no-deps . \
 && useradd --create-home --uid 10001 spikeserve

USER spikeserve
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s \
  CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2)"
ENTRYPOINT ["spikeserve"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000", "--registry", "/registry", "--redis", "redis://redis:6379/0"]
