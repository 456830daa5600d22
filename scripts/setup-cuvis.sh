#!/usr/bin/env bash
# Set up ./.venv-cuvis for the cuvis.ai integration. It is separate from .venv because
# cuvis-ai-core needs torchvision, which pins the CUDA build of torch 2.14.1 (several GB).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv-cuvis/bin/python ] || "$PY" -m venv .venv-cuvis
export PIP_DISABLE_PIP_VERSION_CHECK=1
# torch and torchvision first, pinned together, so the resolver does not pick another pair.
# They take about 5.5 GB: say so in one line rather than let pip fail half-way with ENOSPC.
if ! .venv-cuvis/bin/python -c "import torchvision" 2>/dev/null; then
    free_gb=$(df -Pk . | awk 'NR==2 {print int($4 / 1048576)}')
    if [ "$free_gb" -lt 6 ]; then
        echo "setup-cuvis: torch 2.14.1 + torchvision need about 6 GB free here; $(pwd) has ${free_gb} GB" >&2
        exit 1
    fi
    .venv-cuvis/bin/pip install -q --no-cache-dir "torch==2.14.1" "torchvision==0.29.1"
fi
.venv-cuvis/bin/pip install -q -e ".[cuvis,dev]"
