#!/usr/bin/env bash
# `make train-gpu`: on a CUDA machine, the nvdiffrast parity check, then a fixed wall-clock
# training run of the paper-size network (configs/nets/train_gpu.toml), all in one folder:
#   OUT/gpu_check.log|json   the environment and the parity numbers (training stops if parity fails)
#   OUT/log.csv, OUT/val_fields.png, OUT/checkpoint.pt (every minute), OUT/weights.pt, OUT/best.pt
#   OUT/train.log            what the run printed
# MINUTES is the run's total budget: running again with the same OUT and a larger MINUTES
# continues it. Compare the result with the shipped weights on held-out samples:
#   python benchmarks/eval_nets.py lite=mvcap/assets/models/displacement/lite.pt gpu=OUT/best.pt \
#       --config configs/nets/train_gpu.toml
set -euo pipefail
PY=${PY:-python3}
MINUTES=${MINUTES:-10}
OUT=${OUT:-runs/train_gpu}
cd "$(dirname "$0")/.."
if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "train-gpu needs a CUDA build of torch and a GPU; this machine has none (use configs/nets/train_lite.toml on a CPU)" >&2
  exit 2
fi
"$PY" -c "import nvdiffrast.torch" 2>/dev/null || "$PY" -m pip install -q "diffrp-nvdiffrast>=0.3.3"
mkdir -p "$OUT"
"$PY" benchmarks/gpu_check.py --out "$OUT" --only env,parity
"$PY" -m mvcap train-displacement configs/nets/train_gpu.toml --out "$OUT" --resume --minutes "$MINUTES" -q \
  2>&1 | tee -a "$OUT/train.log"
