#!/usr/bin/env bash
# Check the project against the newest releases of its dependencies, in a venv of its own
# (.venv-latest; VENV=path for another), leaving .venv and its locked versions alone:
#   1. install the newest releases (STLLR_LATEST=1 scripts/setup.sh: torch stays at the
#      CPU pin on CPU machines) and print the versions that matter;
#   2. with the newest optuna (5.1.x): the main job (the quickstart sweep) and the study
#      and spaces tests;
#   3. with the newest optuna 5.0.x: the quickstart sweep again and the study and spaces
#      tests on samplers and pickling.
# One summary line per step (PASS/FAIL, seconds); exits 1 if any step failed.
# CHECK_ONLY_INSTALL=1 runs the installs only (the sweeps and tests are reported as SKIP).
#   bash scripts/check_latest.sh
set -uo pipefail
cd "$(dirname "$0")/.."
export VENV=${VENV:-.venv-latest}
ONLY_INSTALL=${CHECK_ONLY_INSTALL:-0}
OUT=$(mktemp -d "${TMPDIR:-/tmp}/stllr-check-latest.XXXXXX")
PY="$VENV/bin/python"

summary=()
failed=0
show() {  # the arguments as one line, those with spaces quoted
  local a out=
  for a; do [[ $a == *" "* ]] && a="\"$a\""; out+="$a "; done
  echo "${out% }"
}
step() {  # step NAME COMMAND...: run it, record PASS/FAIL and its seconds
  local name=$1 start rc
  shift
  echo "=== $name: $(show "$@")"
  start=$SECONDS
  "$@"
  rc=$?
  if [ $rc = 0 ]; then
    summary+=("PASS  $name  ($((SECONDS - start)) s)")
  else
    summary+=("FAIL  $name  ($((SECONDS - start)) s, exit $rc)")
    failed=1
  fi
  echo "${summary[-1]}"
  return $rc
}
skip() {
  summary+=("SKIP  $1  (${2})")
}
finish() {
  echo
  echo "check_latest summary ($VENV):"
  printf '  %s\n' "${summary[@]}"
  if [ $failed = 0 ]; then
    rm -rf "$OUT"
  else
    echo "  the sweeps' study folders are kept in $OUT"
  fi
  exit $failed
}
versions() {
  "$PY" - <<'EOF'
from importlib.metadata import version
print("  " + "  ".join(f"{p} {version(p)}" for p in
      ("optuna", "ray", "pandas", "pyarrow", "numpy", "plotly", "tonic", "torch")))
EOF
}
checks() {  # checks LABEL PYTEST-ARGS...: the quickstart sweep and the tests
  local label=$1
  shift
  if [ "$ONLY_INSTALL" = 1 ]; then
    skip "quickstart sweep ($label)" "CHECK_ONLY_INSTALL=1"
    skip "pytest $(show "$@") ($label)" "CHECK_ONLY_INSTALL=1"
    return
  fi
  step "quickstart sweep ($label)" "$VENV/bin/stllr" sweep spaces/quickstart.yaml --out "$OUT/quickstart-$label"
  step "pytest $(show "$@") ($label)" "$PY" -m pytest "$@"
}

# 1. the newest releases
step "install newest releases" env STLLR_LATEST=1 bash scripts/setup.sh || finish
export VIRTUAL_ENV="$(cd "$VENV" && pwd)"
export PATH="$VIRTUAL_ENV/bin:$PATH"
versions

# 2. newest optuna (5.1.x at the time of writing)
label="optuna-$("$PY" -c 'import optuna; print(optuna.__version__)')"
checks "$label" tests/study tests/spaces -q

# 3. the newest optuna 5.0.x
step "install optuna 5.0.x" "$PY" -m pip install -q "optuna>=5.0,<5.1" || finish
versions
label="optuna-$("$PY" -c 'import optuna; print(optuna.__version__)')"
checks "$label" tests/study tests/spaces -q -k "sampler or pickle"

finish
