#!/usr/bin/env bash
# Set up ./.venv-cuvis for the cuvis.ai integration. It is separate from .venv because
# cuvis-ai-core declares torchvision, which pins the CUDA build of torch 2.14.1 (5.5 GB).
#
# SPECAD_CUVIS_TORCH picks the torch of a new .venv-cuvis:
#   cuda  scripts/torch-vision.txt (CUDA torch + torchvision), as `pip install 'specad[cuvis]'`;
#   cpu   scripts/torch-cpu.txt (the CPU torch of .venv) and no torchvision, which cuvis-ai-core
#         never imports (about 2 GB in all);
#   auto  (default) cuda where 7 GB are free, else cpu. An existing .venv-cuvis keeps its torch.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
mode=${SPECAD_CUVIS_TORCH:-auto}
case "$mode" in auto | cuda | cpu) ;; *)
    echo "setup-cuvis: SPECAD_CUVIS_TORCH must be auto, cuda or cpu, not '$mode'" >&2
    exit 2
    ;;
esac
if [ "$mode" = auto ] && [ -x .venv-cuvis/bin/python ] && .venv-cuvis/bin/python -c "import torch" 2>/dev/null; then
    if .venv-cuvis/bin/python -c "import torchvision" 2>/dev/null; then mode=cuda; else mode=cpu; fi
fi
if [ "$mode" = auto ]; then
    free_gb=$(df -Pk . | awk 'NR==2 {print int($4 / 1048576)}')
    if [ "$free_gb" -ge 7 ]; then mode=cuda; else
        mode=cpu
        echo "setup-cuvis: ${free_gb} GB free, too little for the CUDA torch that torchvision needs; using the CPU torch without torchvision (SPECAD_CUVIS_TORCH=cuda to insist)"
    fi
fi
[ -x .venv-cuvis/bin/python ] || "$PY" -m venv .venv-cuvis
pip=(.venv-cuvis/bin/pip install -q)
case "$mode" in
cuda)
    # torch and torchvision first, so the resolver does not pick another pair.
    .venv-cuvis/bin/python -c "import torchvision" 2>/dev/null ||
        "${pip[@]}" -r scripts/torch-vision.txt
    "${pip[@]}" -e ".[cuvis,dev]"
    ;;
cpu)
    .venv-cuvis/bin/python -c "import torch" 2>/dev/null || "${pip[@]}" -r scripts/torch-cpu.txt
    torch_pin=$(.venv-cuvis/bin/python -c "import torch; print(torch.__version__)")
    "${pip[@]}" -e ".[dev]"
    "${pip[@]}" --no-deps "$(.venv-cuvis/bin/python scripts/cuvis_requirements.py core)"
    "${pip[@]}" "torch==${torch_pin}" -r <(.venv-cuvis/bin/python scripts/cuvis_requirements.py)
    ;;
esac
