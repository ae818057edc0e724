#!/usr/bin/env bash
# GPU readiness check, the one prepared script to run when a GPU is lent (ViT-L/14 @ 518 px, random weights):
#   1. forward throughput in fp32, bf16 and fp16 at batch 1, 8 and 32 (ms/image, images/s, TFLOP/s, peak memory);
#   2. a 30-step stage-2 run at batch 8 (the real stage-2 loss on synthetic defect images with exact masks, bf16
#      autocast where the card supports it): loss curve, peak memory, images/s.
# Everything goes into ONE file, OUTPUT_DIR/report_gpu.md (tables + raw JSON); the worker log is bench_gpu.log.
# Expected: about 2 minutes on an H100/H200; a hard limit (GPU_BENCH_LIMIT_S, default 470 s) keeps it under 8.
#
#   bash benchmarks/gpu.sh [OUTPUT_DIR] [BATCHES]      defaults: benchmarks/results  1,8,32
#
# Without a CUDA GPU it prints "no CUDA GPU, skipped" and exits 0 (CI and CPU machines).
# A dry run of the same code on the CPU: python -m aaclip_hf.benchmark --gpu --gpu-device cpu --preset smoke
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python )}"
OUTPUT="${1:-benchmarks/results}"
BATCHES="${2:-1,8,32}"
LIMIT="${GPU_BENCH_LIMIT_S:-470}"
if ! "$PYTHON" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    echo "no CUDA GPU, skipped"
    exit 0
fi
"$PYTHON" -c "import torch; print('CUDA device:', torch.cuda.get_device_name(0))"
exec timeout --signal=TERM "$LIMIT" "$PYTHON" -m aaclip_hf.benchmark --gpu --output "$OUTPUT" --gpu-batches "$BATCHES"
