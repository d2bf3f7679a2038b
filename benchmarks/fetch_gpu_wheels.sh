#!/usr/bin/env bash
# Downloads the pure-Python wheels the GPU check needs beside torch into benchmarks/wheels/.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p benchmarks/wheels
python -m pip download -q --no-deps -d benchmarks/wheels --python-version 3.11 --only-binary=:all: \
    --platform manylinux2014_x86_64 diffusers transformers huggingface_hub safetensors tokenizers regex \
    hf-xet
ls benchmarks/wheels
