#!/usr/bin/env bash
# Set up the project on a fresh machine: a virtualenv in .venv with everything installed.
# By default the locked versions (requirements/cpu.lock, made by scripts/lock.sh), then the
# project itself without dependencies. STLLR_LATEST=1 installs the newest releases that
# pyproject.toml's ranges allow instead. VENV=path chooses another venv folder.
# CPU machines get the local CPU build of torch (pinned here and in the lock, not in
# pyproject.toml, so that GPU users keep their CUDA builds); a torch that already imports
# is kept, except with STLLR_LATEST=1 on a CPU machine, where torch goes to the CPU pin.
# (PYTHONWARNINGS=ignore below: setuptools' deprecation notices while it builds the project)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${VENV:-.venv}
LOCK=requirements/cpu.lock
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
. "$VENV/bin/activate"
python -m pip install -q --upgrade pip

# torch: CPU pin without nvidia-smi, the newest (CUDA) build with it
if command -v nvidia-smi >/dev/null 2>&1; then
  torch_req=torch
else
  torch_req="torch==${STLLR_TORCH_VERSION:-2.13.0}"
fi
torch_args=("$torch_req")
if python -c "import torch" 2>/dev/null; then
  # keep the torch already installed, except for the CPU pin with STLLR_LATEST=1
  if [ "${STLLR_LATEST:-0}" != 1 ] || [ "$torch_req" = torch ]; then
    torch_args=()
  fi
fi

if [ "${STLLR_LATEST:-0}" = 1 ]; then
  # the newest releases of everything (torch as above)
  PYTHONWARNINGS=ignore python -m pip install -q --upgrade --upgrade-strategy eager -e ".[dev]" \
    "${torch_args[@]}"
else
  # the lock, less its torch line (torch as above)
  reqs=$(mktemp)
  trap 'rm -f "$reqs"' EXIT
  grep -v -E '^torch==' "$LOCK" > "$reqs"
  python -m pip install -q -r "$reqs" "${torch_args[@]}"
  # the build backend (setuptools) is in the lock: no isolated build environment
  PYTHONWARNINGS=ignore python -m pip install -q --no-deps --no-build-isolation -e .
  if ! problems=$(python -m pip check 2>&1); then
    echo "$problems" >&2
    echo "setup.sh: $LOCK does not cover pyproject.toml; run: bash scripts/lock.sh" \
         "(installing what is missing, unlocked)" >&2
    PYTHONWARNINGS=ignore python -m pip install -q --no-build-isolation -e ".[dev]" "${torch_args[@]}"
  fi
fi
python -c "import torch, ray, optuna, tonic, stllr_engine; print('stllr set up: torch', torch.__version__)"
# the fused time step's CPU kernel: built once per machine now (~50 s), not inside the first run
python -c "
from stllr_engine import fused
if fused.available():
    print(f'stllr fused step: built in {fused.compile_seconds():.0f} s ({fused.build_directory()})')
else:
    print(f'stllr fused step: not built ({fused._error}); runs take the eager step')
"
