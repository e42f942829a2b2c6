#!/usr/bin/env bash
# The GPU check: everything that can only be checked on a CUDA machine, in one run (sized for under 8 minutes
# on one GPU; not yet timed on one). Run it from an environment where `make env` (or an install with
# official detectron2) has been done:
#
#   bash tools/gpu_check.sh [OUT_DIR]      # default OUT_DIR: gpu_check
#
# 1. tests/gpu (pytest -m gpu): CPU-vs-CUDA parity of the ROI head's losses on a fixed batch (plain, VOS, FFS);
#    50 training iterations of each method on CUDA with AMP off and on; the training seed reaching CUDA's
#    random stream; the synthesis stream on the device, checkpointed and resumed; train_net with 1 process
#    (and 2 where two GPUs exist); a CPU config in 2 processes beside the GPUs (gloo); apply_net + eval_ood.
# 2. tools/benchmark.py --device cuda: step times of plain / VOS / FFS (shapes heads, the papers' head sizes,
#    and the papers' whole RegNetX-4.0GF FPN detector at 800 px with 4 images), their ratios, the synthesis
#    step alone, and the peak GPU memory of a training step per method.
# OUT_DIR gets the GPU's description, the test log and the benchmark's table and JSON; the exit status is the
# tests' (or the benchmark's, when the tests pass).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-gpu_check}
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python
mkdir -p "$OUT"
if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "error: no CUDA GPU is visible to $PY (torch.cuda.is_available() is False)" >&2
    exit 2
fi
{ nvidia-smi 2>/dev/null || true; "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
  [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())])"; } > "$OUT/device.txt"
cat "$OUT/device.txt"
start=$(date +%s)
"$PY" -m pytest tests/gpu -m gpu -v -rs -p no:cacheprovider 2>&1 | tee "$OUT/tests.txt"
tests=${PIPESTATUS[0]}
echo "tests: exit $tests after $(( $(date +%s) - start )) s" | tee -a "$OUT/tests.txt"
"$PY" tools/benchmark.py --device cuda --sections training_step,synthesis,paper_detector \
    --output "$OUT/benchmark.json" 2>&1 | tee "$OUT/benchmark.txt"
bench=${PIPESTATUS[0]}
echo "gpu_check: tests exit $tests, benchmark exit $bench, $(( $(date +%s) - start )) s in all; results in $OUT/"
[ "$tests" -ne 0 ] && exit "$tests"
exit "$bench"
