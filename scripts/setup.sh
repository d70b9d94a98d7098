#!/usr/bin/env bash
# Idempotent set-up: the virtual environment in .venv, the package, Fashion-MNIST,
# PostgreSQL (for the ledger tests).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! [ -d /usr/share/datasets/fashion-mnist ] && [ -z "${DPSYNTH_FASHION_MNIST_DIR:-}" ]; then
  echo ">> installing Debian's dataset-fashion-mnist"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  if ! $SUDO apt-get install -y -q dataset-fashion-mnist >/dev/null; then
    $SUDO apt-get update -q >/dev/null && $SUDO apt-get install -y -q dataset-fashion-mnist >/dev/null
  fi
fi

# PostgreSQL: the tests start a throwaway cluster to check the ledger's restricted role.
if ! compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null; then
  echo ">> installing Debian's postgresql (the ledger tests run a throwaway cluster)"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  if ! $SUDO apt-get install -y -q postgresql >/dev/null; then
    $SUDO apt-get update -q >/dev/null && $SUDO apt-get install -y -q postgresql >/dev/null
  fi
fi

PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
if ! [ -x .venv/bin/python ]; then
  echo ">> creating .venv with $($PY --version)"
  "$PY" -m venv .venv
fi
# pip (not uv/poetry): it uses this machine's wheel cache for the pinned torch.
stamp=.venv/.dpsynth-installed
if ! [ -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo ">> installing dpsynth and its dependencies into .venv (first time: several minutes)"
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e '.[dev]'
  touch "$stamp"
fi
