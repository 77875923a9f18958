#!/usr/bin/env bash
# Publish the answers to the paper's open questions on the embedded tasks: run the balance
# (Q1) and scaling (Q2) presets, build each report, and copy its summary.md and CSV tables
# to docs/findings/<study>/. The study folders (checkpoints, journal) stay under runs/findings/.
# Usage: bash scripts/findings.sh [STUDY[:TRIALS] ...]   (default: the six presets, full budgets)
# TRIALS is the number of S-TLLR configurations (default: the preset's budget.trials). An existing
# folder is resumed and extended to that budget; runs already finished are kept, never re-run. A
# folder started from a different version of the preset (other than its budget.trials) is refused:
# resuming it would silently keep the old settings.
set -euo pipefail
cd "$(dirname "$0")/.."
STLLR=${STLLR:-.venv/bin/stllr}
PYTHON=${PYTHON:-.venv/bin/python}
studies=("$@")
if [ ${#studies[@]} -eq 0 ]; then
  studies=(balance_synthetic_factorial scaling_synthetic balance_digits_factorial scaling_digits
           balance_synthetic balance_digits balance_spoken scaling_spoken)  # *_spoken: needs espeak-ng
fi
for item in "${studies[@]}"; do
  name=${item%%:*}
  if [ "$item" != "$name" ]; then
    trials=${item#*:}
    if ! [[ "$trials" =~ ^[1-9][0-9]*$ ]]; then
      echo "findings.sh: $item: TRIALS must be a positive number of configurations (e.g. $name:40)" >&2
      exit 2
    fi
  else
    # the preset's own budget: a resumed folder would otherwise keep the budget it was started with
    trials=$("$PYTHON" -c "import spaces, sys; print(spaces.load_study(sys.argv[1]).trials)" "spaces/$name.yaml")
  fi
  dir=runs/findings/$name
  if [ -f "$dir/study.yaml" ]; then
    "$PYTHON" - "$dir/study.yaml" "spaces/$name.yaml" <<'PY'
import sys
import yaml
import spaces

def settings(path):
    doc = yaml.safe_load(spaces.load_study(path).to_yaml())
    doc.get("budget", {}).pop("trials", None)
    return doc

frozen, preset = settings(sys.argv[1]), settings(sys.argv[2])
if frozen != preset:
    keys = sorted(k for k in set(frozen) | set(preset) if frozen.get(k) != preset.get(k))
    sys.exit(f"findings.sh: {sys.argv[1]} was started from another version of {sys.argv[2]} "
             f"(differs in: {', '.join(keys)}); move the folder away to run the preset afresh")
PY
    "$STLLR" sweep --resume "$dir" --trials "$trials"
  else
    "$STLLR" sweep "spaces/$name.yaml" --out "$dir" --trials "$trials"
  fi
  rm -rf "docs/findings/$name"  # the report's files only: no table of an older report stays behind
  mkdir -p "docs/findings/$name"
  cp "$dir/report/summary.md" "$dir"/report/*.csv "docs/findings/$name/"
  cp "$dir/study.yaml" "$dir/budget.json" "docs/findings/$name/"
  [ -f "$dir/floors.json" ] && cp "$dir/floors.json" "docs/findings/$name/"
  echo "docs/findings/$name: $(ls "docs/findings/$name" | wc -l) files"
done
