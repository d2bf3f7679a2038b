#!/usr/bin/env bash
# Runs every GPU check in one call on a lent GPU machine (torch with CUDA, no diffusers, no network).
# Before the call, on a machine with PyPI:  bash benchmarks/fetch_gpu_wheels.sh
# and carry benchmarks/wheels with the working tree. Writes $OUT/gpu_check.json (or ./gpu_check.json).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! python -c "import diffusers, transformers, safetensors" 2>/dev/null; then
    pip install -q --no-index --no-deps benchmarks/wheels/*.whl
fi
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv || true
PYTHONPATH="$PWD" timeout 470 python benchmarks/gpu_check.py --json "${OUT:-.}/gpu_check.json" "$@"
