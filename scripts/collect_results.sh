#!/usr/bin/env bash
# Copy a bench's small result files (no checkpoints, no data) into docs/results/NAME.
#   bash scripts/collect_results.sh BENCH_DIR NAME
set -euo pipefail
src=$1; dst=docs/results/$2
mkdir -p "$dst"
for f in results.csv table.md table_paper.md efficiency.md user_tests.md user_tests_paper.md bars.png curves.png; do
  [ -f "$src/$f" ] && cp "$src/$f" "$dst/"
done
if [ -d "$src/runs" ]; then
  for d in "$src"/runs/*/; do
    n=$(basename "$d"); mkdir -p "$dst/runs/$n"
    for f in "$d"/config.yaml "$d"/metrics.json "$d"/metrics_*.json "$d"/users_*.npz "$d"/history.csv; do [ -f "$f" ] && cp "$f" "$dst/runs/$n/"; done
  done
fi
echo "collected $src -> $dst"
