#!/usr/bin/env bash
# Set up, then run the main job. Extra arguments go to `specad demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/specad demo "$@"
