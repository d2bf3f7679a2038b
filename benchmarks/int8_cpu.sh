#!/usr/bin/env bash
# INT8 vs fp32 SDK engines vs the torch pipeline on the CPU (issue 13), in one command:
#
#   bash benchmarks/int8_cpu.sh CKPT [OUT [HELD_OUT_DIR]]
#
# CKPT: an IGR checkpoint folder (the small demo model's, e.g. runs/full-fine/final); OUT (default
# out/int8_cpu) receives the two engine folders and the reports. Builds the fp32 and the int8
# engines of CKPT (kept when up to date), then measures SDK int8, SDK fp32, torch naive and torch
# cached side by side, end to end and per stage, at 1 and 2 threads (latency_int8.{json,md}). Run it
# on an otherwise idle machine: other processes on the same cores make the ratios meaningless.
# With HELD_OUT_DIR (a held-out split in VITON-HD layout, e.g. the demo's 90 test pairs), it also
# scores int8 against fp32 on its first 45 pairs: SSIM, PSNR, LPIPS and the paired differences
# int8 - fp32 with 95% intervals (quality_int8.{json,md}; LPIPS needs
# python benchmarks/fetch_metric_weights.py once).
set -euo pipefail

if [[ $# -lt 1 ]]; then
    echo "usage: bash benchmarks/int8_cpu.sh CKPT [OUT]" >&2
    exit 2
fi
ckpt=$1
out=${2:-out/int8_cpu}
root=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-$root/.venv/bin/python}
mkdir -p "$out"

"$python" "$root/export/build_engines.py" --checkpoint "$ckpt" --out "$out/engines-fp32"
"$python" "$root/export/build_engines.py" --checkpoint "$ckpt" --out "$out/engines-int8" --precision int8
"$python" "$root/benchmarks/latency.py" --checkpoint "$ckpt" --systems naive,cached --threads 1,2 \
    --engines "$out/engines-fp32" --engines-int8 "$out/engines-int8" --repeats 5 --warmup 1 \
    --json "$out/latency_int8.json" | tee "$out/latency_int8.md"

if [[ $# -ge 3 ]]; then
    "$python" "$root/benchmarks/quality.py" --data "$3" --split test --limit 45 --lpips \
        --engines fp32="$out/engines-fp32" int8="$out/engines-int8" --compare fp32:int8 \
        --out "$out/quality_int8"
fi
