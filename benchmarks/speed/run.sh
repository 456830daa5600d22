#!/usr/bin/env bash
# The speed benchmark in one command: specad, then anomalib 2.7.0 in its own venv, then the table.
# Options (--reps N, --warmup N, --match TEXT) go to both sides; --tta also measures the time to
# accuracy on tray6 first (a training run of up to ~15 minutes on 2 cores).
set -euo pipefail
cd "$(dirname "$0")/../.."

py=${SPECAD_PYTHON:-.venv/bin/python}
venv=benchmarks/.venv-anomalib
tta=0
args=()
for arg in "$@"; do
  if [ "$arg" = --tta ]; then tta=1; else args+=("$arg"); fi
done

benchmarks/anomalib_venv.sh

if [ "$tta" = 1 ]; then
  "$py" benchmarks/speed/time_to_accuracy.py
fi
"$py" benchmarks/speed/bench_specad.py "${args[@]}"
PYTHONWARNINGS=ignore::FutureWarning \
  "$venv/bin/python" benchmarks/speed/bench_anomalib.py "${args[@]}"
"$py" benchmarks/speed/compare.py
