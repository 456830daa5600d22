#!/usr/bin/env bash
# Set up, lint and run the test suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/install-chromium.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/lint-imports  # the layers of pyproject.toml: imports go one way
.venv/bin/python -m pytest "$@"
bash scripts/setup-cuvis.sh
SPECAD_REQUIRE_CUVIS=1 .venv-cuvis/bin/python -m pytest tests/with_cuvis -q
