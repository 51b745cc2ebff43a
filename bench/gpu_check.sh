#!/usr/bin/env bash
# The GPU check of the LIF kernels, in one go, on a machine with no package index (under 8 minutes):
#   1. install SpikingJelly 2.0 and loguru from ./wheels (bash bench/fetch_wheels.sh, run beforehand)
#   2. the gpu-marked tests (kernels against the reference on the device, CUDA-graph capture of a
#      whole network, fused SDPA in bf16, STA block compiled without graph breaks)
#   3. bench/lif.py --device cuda --sweep (LIF: eager, torch.compile, SpikingJelly, ours; copy bandwidth)
#   4. bench/models.py --device cuda (DANet-ResNet-50, SEW-ResNet-50 eager and compiled,
#      Spikeformer-ImageNet, ANN ResNet-50; T=4, batch 64, 224 px, bf16)
#   5. bench/serve.py --device cuda for both bundled models (zoo/): answers/s, p50/p99 at 32
#      clients, and cold start (process start to /readyz), first with an empty compile cache
#      and then warm; the gateway's packages come from ./wheels/serve
# Tables go to stdout and, when $OUT is set, to $OUT/ (with the test log and the environment).
# Each step has its own time limit, so one slow step cannot eat the others' time, and a step is
# skipped (saying so) when it would not finish within BUDGET_S seconds of the start: one call
# fits the device tool's 600 s per command. STEPS chooses the steps, so that a second call can
# take what the first had to skip:
#
#   bash bench/gpu_check.sh                       # from the repository root, ./wheels carried along
#   STEPS="serve" bash bench/gpu_check.sh         # only the serving step
# The scripts use nothing newer than the GPU machine's torch 2.11 and triton 3.6.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-}
LOG_DIR=${OUT:-$(mktemp -d)}
PY=${PYTHON:-python3}
BUDGET_S=${BUDGET_S:-570}
STEPS=${STEPS:-"tests lif models serve"}
started=$(date +%s)
elapsed() { echo $(( $(date +%s) - started )); }
# step NAME SECONDS: true when NAME was asked for and SECONDS more still fit the budget
step() {
  [[ " $STEPS " == *" $1 "* ]] || return 1
  if (( $(elapsed) + $2 > BUDGET_S )); then
    echo "== $1 skipped: $2 s more would pass the budget of $BUDGET_S s (run it with STEPS=\"$1\")"
    return 1
  fi
}

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

tests_status=0
if step tests 130; then
  echo "== gpu tests ($(elapsed) s)"
  # pytest-xdist (in the image) spreads the Triton and inductor compilations over 4 processes
  parallel=$("$PY" -c "import xdist" 2>/dev/null && echo "-n 4")
  timeout 130 "$PY" -m pytest tests/unit/models -m gpu -q -rsP -p no:cacheprovider $parallel 2>&1 | tee "$LOG_DIR/pytest.txt"
  tests_status=${PIPESTATUS[0]}
fi

if step lif 110; then
  echo "== bench/lif.py ($(elapsed) s)"
  timeout 110 "$PY" bench/lif.py --device cuda --sweep --out "$LOG_DIR"
fi

if step models 150; then
  echo "== bench/models.py ($(elapsed) s)"
  # the models bench stops starting new paths after --budget-s and reports them as skipped
  timeout 150 "$PY" bench/models.py --device cuda --budget-s 110 --out "$LOG_DIR"
fi

if step serve 240; then
  echo "== bench/serve.py --device cuda ($(elapsed) s)"
  # Only what the image lacks is installed: pip keeps every package already there that satisfies us.
  if ! "$PY" -m pip install -q --no-index --find-links wheels/serve -r wheels/serve/requirements.txt; then
    "$PY" -m pip install -q --no-index --find-links wheels/serve --target /tmp/serve-site \
      -r wheels/serve/requirements.txt && export PYTHONPATH="$PYTHONPATH:/tmp/serve-site"
  fi
  rm -rf /tmp/torchinductor_"$(id -un)"  # the first server starts with an empty compile cache
  for model in danet-mnist spikeformer-nmnist; do
    timeout 120 "$PY" bench/serve.py --model "$model" --device cuda --clients 32 --requests 200 \
      --rounds 2 --pair-seconds 2 --engine-repeats 3 2>&1 | tee "$LOG_DIR/serve_$model.md"
  done
fi

echo "== summary ($(elapsed) s; tests exit status $tests_status)"
[[ -f "$LOG_DIR/pytest.txt" ]] && tail -n 3 "$LOG_DIR/pytest.txt"
cat "$LOG_DIR"/lif_cuda.md "$LOG_DIR"/models_cuda.md 2>/dev/null
exit "$tests_status"
