#!/usr/bin/env bash
# Download into ./wheels (git-ignored) the wheels that the GPU machine lacks: it has no package
# index, so bench/gpu_check.sh installs them from there (the folder travels with `carry`).
#
# The machine's image (Python 3.12, torch 2.11, triton 3.6, torchvision, numpy, safetensors,
# pytest, pytest-timeout, matplotlib, scipy, h5py, tensorboard, tqdm, requests ...) lacks only
# SpikingJelly 2.0 and its logger, loguru. SpikingJelly's other requirements are there, except
# SciencePlots, which it imports only inside a plotting helper; they are installed --no-deps.
# For the serving step it also lacks the gateway's packages (FastAPI, uvicorn, pydantic, the event
# decoders' aedat/lz4/zstandard, redis): wheels/serve/ holds them with their dependencies, and
# gpu_check.sh lets pip take from there only what the image does not already satisfy.
#
#   bash bench/fetch_wheels.sh          # run here, before a GPU run; about 2 MB
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
WHEELS=(spikingjelly==2.0.0 loguru==0.7.3)

mkdir -p wheels
"$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: \
  --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d wheels "${WHEELS[@]}"
# the gateway's requirements, as pyproject.toml states them, resolved for the GPU machine's Python
SERVE=$("$PYTHON" - <<'PY'
import tomllib
deps = tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]
print(" ".join(d.split(";")[0].replace(" ", "") for d in deps if not d.startswith(("torch", "numpy", "pillow"))))
PY
)
mkdir -p wheels/serve
echo "$SERVE" | tr ' ' '\n' > wheels/serve/requirements.txt
# shellcheck disable=SC2086
"$PYTHON" -m pip download --quiet --only-binary=:all: \
  --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d wheels/serve $SERVE
ls -l wheels wheels/serve
du -sh wheels
