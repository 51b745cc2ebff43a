# The gateway: HTTP routes, input decoding, auth, metrics, and Redis Streams to the workers.
# Slim on purpose: no CUDA and no torch. In distributed mode the gateway never runs a network
# (tests/integration/test_redis_serving.py starts one with torch unimportable to prove it), so
# this image cannot serve embedded mode: for one process on one machine use the CPU worker image
# (`spikeserve serve` without a Redis URL) or `make serve`.
#
#   docker build -f docker/gateway.Dockerfile -t spikeserve-gateway .
#
# Settings come from the environment only (SPIKESERVE_*, see service/settings.py); the registry is
# a volume at /registry. BASE_IMAGE: any Debian bookworm with python3 (3.11) and its venv module;
# `make test-containers` builds one with debootstrap where no image registry is reachable.
ARG BASE_IMAGE=python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python3 -m venv /opt/venv
WORKDIR /src
COPY pyproject.toml README.md ./
# Every runtime dependency except torch, read from pyproject.toml so the two never disagree; a
# layer of its own, so a change to the code alone does not reinstall them.
RUN python3 -c "import tomllib; deps = tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']; print('\n'.join(d for d in deps if not d.startswith('torch')))" > /tmp/requirements.txt \
 && /opt/venv/bin/pip install -r /tmp/requirements.txt
COPY models ./models
COPY registry ./registry
COPY workers ./workers
COPY service ./service
COPY training ./training
COPY eventio ./eventio
# the project without dependencies (which would pull torch back in); pip leaves with the build stage
RUN /opt/venv/bin/pip install --no-deps . \
 && /opt/venv/bin/pip uninstall --yes pip setuptools

FROM ${BASE_IMAGE}
RUN useradd --create-home --uid 10001 spikeserve \
 && mkdir /registry && chown spikeserve:spikeserve /registry
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    SPIKESERVE_HOST=0.0.0.0 \
    SPIKESERVE_PORT=8000 \
    SPIKESERVE_REGISTRY=/registry
VOLUME /registry
USER spikeserve
EXPOSE 8000
# ready = the pool answers (in distributed mode: Redis reached); follows SPIKESERVE_PORT
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
  CMD python3 -c "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/readyz' % os.environ.get('SPIKESERVE_PORT', '8000'), timeout=2)"
ENTRYPOINT ["spikeserve"]
CMD ["serve"]
