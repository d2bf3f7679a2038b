#!/usr/bin/env bash
# Creates .venv and installs igr_sdk with the dependencies of the demo, the tests and the tools in
# train/, export/ and benchmarks/ (which run from this checkout; the [dev] extra brings theirs).
# torch is pinned first so pip takes the CPU build rather than a multi-GB CUDA one.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q "torch==2.13.0"
# editable: igr_sdk (the installed package) runs from this checkout; setuptools' note that every editable
# install gets ("Editable installation. Please be careful with folders ...") is not printed
PYTHONWARNINGS="ignore:Editable installation" .venv/bin/python -m pip install -q -e ".[dev]"
