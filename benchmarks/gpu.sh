#!/usr/bin/env bash
# CUDA benchmark: fp32 and bf16 s/image and peak memory at batch 1/8/32 (ViT-L/14 @ 518 px, random weights)
# and one stage-2 training step (fp32 and bf16 autocast), added to benchmarks/results/report.{md,json} with the
# card named (and written alone to report_gpu.{md,json}). Never needed for CI.
#
#   bash benchmarks/gpu.sh [OUTPUT_DIR] [BATCHES]      defaults: benchmarks/results  1,8,32
#
# Without a CUDA GPU it prints "no CUDA GPU, skipped" and exits 0.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python )}"
OUTPUT="${1:-benchmarks/results}"
BATCHES="${2:-1,8,32}"
if ! "$PYTHON" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    echo "no CUDA GPU, skipped"
    exit 0
fi
"$PYTHON" -c "import torch; print('CUDA device:', torch.cuda.get_device_name(0))"
exec "$PYTHON" benchmarks/run.py --gpu --output "$OUTPUT" --gpu-batches "$BATCHES"
