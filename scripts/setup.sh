#!/usr/bin/env bash
# Set up everything specad needs in ./.venv on a fresh machine. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
export PIP_DISABLE_PIP_VERSION_CHECK=1
# torch first: without a pin pip would fetch a multi-GB CUDA build. GPU users install the torch
# build they want into .venv before running this script; an importable torch is kept.
.venv/bin/python -c "import torch" 2>/dev/null || .venv/bin/pip install -q -r scripts/torch-cpu.txt
# dask: the distributed-scoring tests run in CI too (tests/test_distributed.py)
.venv/bin/pip install -q -e ".[dev,dask]"
