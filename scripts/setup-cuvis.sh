#!/usr/bin/env bash
# Set up ./.venv-cuvis for the cuvis.ai integration. It is separate from .venv because
# cuvis-ai-core needs torchvision, which pins the CUDA build of torch 2.14.1 (several GB).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv-cuvis/bin/python ] || "$PY" -m venv .venv-cuvis
export PIP_DISABLE_PIP_VERSION_CHECK=1
# torch and torchvision first, pinned together, so the resolver does not pick another pair.
.venv-cuvis/bin/python -c "import torchvision" 2>/dev/null ||
    .venv-cuvis/bin/pip install -q "torch==2.14.1" "torchvision==0.29.1"
.venv-cuvis/bin/pip install -q -e ".[cuvis,dev]"
