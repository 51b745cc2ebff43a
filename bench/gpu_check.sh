#!/usr/bin/env bash
# The GPU check of the LIF kernels, in one go, on a machine with no package index (under 8 minutes):
#   1. install SpikingJelly 2.0 and loguru from ./wheels (bash bench/fetch_wheels.sh, run beforehand)
#   2. the gpu-marked tests (kernels against the reference on the device, CUDA-graph capture of a
#      whole network, fused SDPA in bf16, STA block compiled without graph breaks)
#   3. bench/lif.py --device cuda --sweep (LIF: eager, torch.compile, SpikingJelly, ours; copy bandwidth)
#   4. bench/models.py --device cuda (DANet-ResNet-50, SEW-ResNet-50 eager and compiled,
#      Spikeformer-ImageNet, ANN ResNet-50; T=4, batch 64, 224 px, bf16)
# Tables go to stdout and, when $OUT is set, to $OUT/ (with the test log and the environment).
# Each step has its own time limit, so one slow step cannot eat the others' time.
#
#   bash bench/gpu_check.sh             # from the repository root, with ./wheels carried along
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-}
LOG_DIR=${OUT:-$(mktemp -d)}
PY=${PYTHON:-python3}
started=$(date +%s)
elapsed() { echo $(( $(date +%s) - started )); }

{
  date -u +"%Y-%m-%dT%H:%MZ"
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem --format=csv 2>&1
  "$PY" -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, 'cuda', torch.version.cuda)"
} | tee "$LOG_DIR/env.txt"

if compgen -G "wheels/*.whl" >/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site wheels/*.whl \
    && export PYTHONPATH=/tmp/site
else
  echo "no ./wheels: SpikingJelly rows will say it is missing (run bench/fetch_wheels.sh here first)"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

echo "== gpu tests ($(elapsed) s)"
# pytest-xdist (in the image) spreads the Triton and inductor compilations over 4 processes
parallel=$("$PY" -c "import xdist" 2>/dev/null && echo "-n 4")
timeout 130 "$PY" -m pytest tests/unit/models -m gpu -q -rsP -p no:cacheprovider $parallel 2>&1 | tee "$LOG_DIR/pytest.txt"
tests_status=${PIPESTATUS[0]}

echo "== bench/lif.py ($(elapsed) s)"
timeout 110 "$PY" bench/lif.py --device cuda --sweep --out "$LOG_DIR"

echo "== bench/models.py ($(elapsed) s)"
# the models bench stops starting new paths after --budget-s and reports them as skipped
timeout 190 "$PY" bench/models.py --device cuda --budget-s 140 --out "$LOG_DIR"

echo "== summary ($(elapsed) s; tests exit status $tests_status)"
tail -n 3 "$LOG_DIR/pytest.txt"
cat "$LOG_DIR"/lif_cuda.md "$LOG_DIR"/models_cuda.md 2>/dev/null
exit "$tests_status"
