#!/usr/bin/env bash
# Publish the answers to the paper's open questions on the embedded tasks: run the balance
# (Q1) and scaling (Q2) presets, build each report, and copy its summary.md and CSV tables
# to docs/findings/<study>/. The study folders (checkpoints, journal) stay under runs/findings/.
# Usage: bash scripts/findings.sh [STUDY[:TRIALS] ...]   (default: the four presets, full budgets)
# TRIALS is the number of S-TLLR configurations (default: the preset's budget.trials). An existing
# folder is resumed and extended to that budget; runs already finished are kept, never re-run.
set -euo pipefail
cd "$(dirname "$0")/.."
STLLR=${STLLR:-.venv/bin/stllr}
studies=("$@")
if [ ${#studies[@]} -eq 0 ]; then
  studies=(balance_digits balance_synthetic scaling_digits scaling_synthetic)
fi
for item in "${studies[@]}"; do
  name=${item%%:*}
  trials=""
  if [ "$item" != "$name" ]; then
    trials="--trials ${item#*:}"
  else
    # the preset's own budget: a resumed folder would otherwise keep the budget it was started with
    trials="--trials $(.venv/bin/python -c "import spaces, sys; print(spaces.load_study(sys.argv[1]).trials)" "spaces/$name.yaml")"
  fi
  dir=runs/findings/$name
  if [ -f "$dir/study.yaml" ]; then
    $STLLR sweep --resume "$dir" $trials
  else
    $STLLR sweep "spaces/$name.yaml" --out "$dir" $trials
  fi
  mkdir -p "docs/findings/$name"
  cp "$dir/report/summary.md" "$dir"/report/*.csv "docs/findings/$name/"
  cp "$dir/study.yaml" "$dir/budget.json" "docs/findings/$name/"
  echo "docs/findings/$name: $(ls docs/findings/$name | wc -l) files"
done
