#!/usr/bin/env bash
# Set up, then run the utility and scale benchmarks.
#   bash scripts/benchmark.sh           full runs -> benchmarks/results/{utility,scale}.json
#   bash scripts/benchmark.sh --quick   smoke runs (minutes) -> *-quick.json
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 MLFLOW_DISABLE_TELEMETRY=true
.venv/bin/python benchmarks/utility.py "$@"
.venv/bin/python benchmarks/scale.py "$@"
