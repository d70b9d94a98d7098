#!/usr/bin/env bash
# The README's test command: set everything up, then lint and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 MLFLOW_DISABLE_TELEMETRY=true
.venv/bin/ruff check src tests benchmarks
.venv/bin/python -m pytest -q "$@"
