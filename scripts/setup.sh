#!/usr/bin/env bash
# Set up the project on a fresh machine: a virtualenv in .venv with everything installed.
# CPU machines get the local CPU build of torch (pinned here, not in pyproject.toml,
# so that GPU users keep their CUDA builds).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip
if ! python -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1; then
    python -m pip install -q torch
  else
    python -m pip install -q "torch==${STLLR_TORCH_VERSION:-2.13.0}"
  fi
fi
python -m pip install -q -e ".[dev]"
python -c "import torch, ray, optuna, tonic, stllr_engine; print('stllr set up: torch', torch.__version__)"
