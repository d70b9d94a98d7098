#!/usr/bin/env bash
# The README's main command: set everything up, then `dpsynth run` with any arguments.
#   bash scripts/run.sh                                   Fashion-MNIST, EfficientNet-Lite0, eps=1
#   bash scripts/run.sh --config configs/fashion-mnist-pixels.yaml --out pixels-out
#   bash scripts/run.sh --set privacy.epsilon=2
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 MLFLOW_DISABLE_TELEMETRY=true
exec .venv/bin/dpsynth run "$@"
