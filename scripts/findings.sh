#!/usr/bin/env bash
# Publish the answers to the paper's open questions on the embedded tasks: run the balance
# (Q1) and scaling (Q2) presets, build each report, and copy its summary.md and CSV tables
# to docs/findings/<study>/. The study folders (checkpoints, journal) stay under runs/findings/.
# Usage: bash scripts/findings.sh [STUDY[:TRIALS] ...]   (default: the four presets below)
set -euo pipefail
cd "$(dirname "$0")/.."
STLLR=${STLLR:-.venv/bin/stllr}
studies=("$@")
if [ ${#studies[@]} -eq 0 ]; then
  studies=(balance_digits:40 balance_synthetic:30 scaling_digits scaling_synthetic)
fi
for item in "${studies[@]}"; do
  name=${item%%:*}
  trials=""
  [ "$item" != "$name" ] && trials="--trials ${item#*:}"
  dir=runs/findings/$name
  if [ -f "$dir/study.yaml" ]; then
    $STLLR sweep --resume "$dir" $trials
  else
    $STLLR sweep "spaces/$name.yaml" --out "$dir" $trials
  fi
  mkdir -p "docs/findings/$name"
  cp "$dir/report/summary.md" "$dir"/report/*.csv "docs/findings/$name/"
  cp "$dir/study.yaml" "docs/findings/$name/study.yaml"
  echo "docs/findings/$name: $(ls docs/findings/$name | wc -l) files"
done
