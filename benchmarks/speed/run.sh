#!/usr/bin/env bash
# The speed benchmark in one command: specad, then anomalib 2.7.0 in its own venv, then the table.
# Options (--reps N, --warmup N, --match TEXT) go to both sides; --tta also measures the time to
# accuracy on tray6 first (a training run of up to ~15 minutes on 2 cores).
set -euo pipefail
cd "$(dirname "$0")/.."

py=${SPECAD_PYTHON:-.venv/bin/python}
venv=benchmarks/.venv-anomalib
tta=0
args=()
for arg in "$@"; do
  if [ "$arg" = --tta ]; then tta=1; else args+=("$arg"); fi
done

if ! "$venv/bin/python" -c "import anomalib" 2>/dev/null; then
  echo "setting up $venv (anomalib 2.7.0 with torch 2.14.1; takes a while)" >&2
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet -r scripts/torch-vision.txt "anomalib==2.7.0"
fi

if [ "$tta" = 1 ]; then
  "$py" benchmarks/time_to_accuracy.py
fi
"$py" benchmarks/bench_specad.py "${args[@]}"
PYTHONWARNINGS=ignore::FutureWarning "$venv/bin/python" benchmarks/bench_anomalib.py "${args[@]}"
"$py" benchmarks/compare.py
