#!/usr/bin/env bash
# Check a preset's findings across a task family (issue #17 item 4): run PRESET once per task
# instance -- every ORDER (the timing task's dial: 0 rate-coded ... 1 order-coded) x every SEED
# (the instance) -- then tabulate the members' verdicts and claims side by side with
# `stllr report --family`. Each member is an ordinary study (the preset with dataset.options.order
# and .seed replaced, name PRESET-o<ORDER>-s<SEED>) under runs/findings/PRESET/; an existing
# member folder is resumed, never re-run. Output: docs/findings/PRESET/ (family.md, family.csv, and
# each member's summary.md, claims.csv, verdict.csv, study.yaml, floors.json).
# Usage: bash scripts/family.sh [PRESET] [ORDERS] [SEEDS]
#        (defaults: family_timing "0 0.5 1" "0 1 2")
set -euo pipefail
cd "$(dirname "$0")/.."
STLLR=${STLLR:-.venv/bin/stllr}
PYTHON=${PYTHON:-.venv/bin/python}
preset=${1:-family_timing}
orders=${2:-"0 0.5 1"}
seeds=${3:-"0 1 2"}
root=runs/findings/$preset
docs=docs/findings/$preset
mkdir -p "$root/members"
dirs=()
for order in $orders; do
  for seed in $seeds; do
    tag=o${order}-s${seed}
    member=$root/members/$tag.yaml
    "$PYTHON" - "spaces/$preset.yaml" "$member" "$order" "$seed" "$preset-$tag" <<'PY'
import sys
import yaml
import spaces

src, dst, order, seed, name = sys.argv[1:]
doc = yaml.safe_load(open(src))
doc["name"] = name
doc["dataset"].setdefault("options", {}).update(order=float(order), seed=int(seed))
doc["description"] = f"{doc.get('description', '')} [order {float(order)}, instance {int(seed)}]"
with open(dst, "w") as f:
    yaml.safe_dump(doc, f, sort_keys=False)
spaces.load_study(dst)  # a bad member is refused here, before any run
PY
    dir=$root/$tag
    if [ -f "$dir/study.yaml" ]; then
      "$STLLR" sweep --resume "$dir"
    else
      "$STLLR" sweep "$member" --out "$dir"
    fi
    dirs+=("$dir")
  done
done
rm -rf "$docs"
mkdir -p "$docs"
for dir in "${dirs[@]}"; do
  tag=$(basename "$dir")
  mkdir -p "$docs/$tag"
  cp "$dir/report/summary.md" "$dir/report/claims.csv" "$dir/report/verdict.csv" "$dir/study.yaml" "$docs/$tag/"
  [ -f "$dir/floors.json" ] && cp "$dir/floors.json" "$docs/$tag/"
done
"$STLLR" report --family "${dirs[@]}" --out "$docs"
