#!/usr/bin/env bash
# The layer, scale and inference benchmarks on CUDA with bf16 autocast, when a GPU exists.
#   bash benchmarks/gpu_check.sh [OUT_DIR]        (default runs/gpu; needs the project installed: pip install -e .)
# Writes one log per benchmark plus scale.json / inference.json; prints "no CUDA device" and exits 0 without a GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/gpu}
PY=${PYTHON:-python}
if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "no CUDA device: nothing measured (BENCHMARKS.md keeps 'not measured on GPU')"
  exit 0
fi
mkdir -p "$OUT"
"$PY" -c "import torch; print(torch.__version__, torch.cuda.get_device_name(0), torch.cuda.device_count(), 'GPUs')" | tee "$OUT/device.txt"
"$PY" benchmarks/bench_layers.py --device cuda --bf16 --batch 256 --repeats 20 2>&1 | tee "$OUT/layers.log"
MODES=single
if [ "$("$PY" -c 'import torch; print(torch.cuda.device_count())')" -ge 2 ]; then MODES=single,ddp,fsdp; fi
"$PY" benchmarks/bench_scale.py --device cuda --bf16 --batch 16 --seq 512 --steps 10 --modes "$MODES" \
  --out "$OUT/scale.json" 2>&1 | tee "$OUT/scale.log"
"$PY" benchmarks/bench_inference.py --device cuda --bf16 --repeats 10 --decode 128 --compile \
  --out "$OUT/inference.json" 2>&1 | tee "$OUT/inference.log"
echo "done: $OUT"
