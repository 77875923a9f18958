#!/usr/bin/env bash
# Regenerate requirements/cpu.lock: exact versions of the runtime dependencies and the
# `dev` extra in pyproject.toml, for CPU machines (Linux x86_64, Python 3.11), newest
# releases that fit pyproject.toml's ranges, torch held at the CPU build pinned in
# requirements/cpu-constraints.txt.
#
#   bash scripts/lock.sh                          # re-resolve everything to the newest
#   bash scripts/lock.sh --upgrade-package ray    # extra arguments go to pip-compile
#
# pip-compile (pip-tools) runs in a throw-away venv and resolves with pip, so it sees
# pip's configuration: here the local CPU wheel torch-2.13.0+cpu (find-links). On a
# machine without it, give pip the CPU index first
# (PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu), or PyPI's torch, with its
# nvidia-* dependencies, is locked and this script refuses the result.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
LOCK=requirements/cpu.lock
PIP_TOOLS_PINS=(pip==26.3 pip-tools==7.7.0)

"$PY" - <<'PYEOF'
import platform, sys
if sys.version_info[:2] != (3, 11) or platform.system() != "Linux" or platform.machine() != "x86_64":
    sys.exit(f"lock.sh: the lock is for Linux x86_64 and Python 3.11, not "
             f"{platform.system()} {platform.machine()} Python {platform.python_version()}")
PYEOF

tools=$(mktemp -d)
out=$(mktemp)
trap 'rm -rf "$tools" "$out"' EXIT
"$PY" -m venv "$tools"
"$tools/bin/python" -m pip install -q "${PIP_TOOLS_PINS[@]}"

# The exact command (also written into the lock's header by pip-compile):
"$tools/bin/pip-compile" --quiet --upgrade --extra dev --allow-unsafe --strip-extras \
  --no-emit-index-url --no-emit-find-links --no-emit-trusted-host \
  --constraint requirements/cpu-constraints.txt \
  --output-file "$LOCK" "$@" pyproject.toml

if grep -q -E '^(nvidia-|triton==)' "$LOCK"; then
  echo "lock.sh: $LOCK holds a CUDA build of torch (nvidia-*/triton): the CPU wheel was not found" >&2
  exit 1
fi
if ! grep -q -E '^torch==[0-9.]+\+cpu$' "$LOCK"; then
  echo "lock.sh: $LOCK does not pin the CPU build of torch (torch==X+cpu)" >&2
  exit 1
fi

{
  cat <<HDR
# CPU lock of stllr: exact versions for Linux x86_64, Python 3.11 (runtime dependencies
# and the dev extra of pyproject.toml; pyproject.toml itself keeps ranges).
# Made by \`bash scripts/lock.sh\` with ${PIP_TOOLS_PINS[*]}; it runs the pip-compile
# command below from the repository root. Regenerate the same way.
# torch is the CPU build (+cpu): this machine's pip finds it on local disk; elsewhere add
# --extra-index-url https://download.pytorch.org/whl/cpu. No nvidia-* packages.
# Install: bash scripts/setup.sh (does: pip install -r requirements/cpu.lock, then
# pip install --no-deps -e .); STLLR_LATEST=1 bash scripts/setup.sh takes the newest.
HDR
  cat "$LOCK"
} > "$out"
cp "$out" "$LOCK"
echo "lock.sh: wrote $LOCK ($(grep -c -E '^[A-Za-z0-9].*==' "$LOCK") pins)"
