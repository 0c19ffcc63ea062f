#!/usr/bin/env bash
# Rebuild a bench folder's finished runs from committed result folders, so that a bench
# started in a fresh checkout skips them (its runs are matched by config hash) and its
# report covers them. Later folders overlay earlier ones (list them oldest first); runs
# being trained in BENCH_DIR (a .lock held, or no metrics.json in the source) are left alone.
# Checkpoints are not committed: --eval-protocol reuses each run's metrics_<protocol>.json,
# --user-tests and `freqd compare` its users_<split>_<protocol>.npz.
#   bash scripts/restore_results.sh BENCH_DIR docs/results/A docs/results/B ...
set -euo pipefail
dst=$1; shift
n=0
for src in "$@"; do
  for d in "$src"/runs/*/; do
    [ -f "$d/metrics.json" ] || continue
    name=$(basename "$d"); mkdir -p "$dst/runs/$name"
    if [ -f "$dst/runs/$name/.lock" ] && ! flock -n "$dst/runs/$name/.lock" true; then
      echo "skip $name (being trained)"; continue
    fi
    cp "$d"/*.yaml "$d"/*.json "$d"/users_*.npz "$dst/runs/$name/" 2>/dev/null || true
    [ -f "$d/history.csv" ] && cp "$d/history.csv" "$dst/runs/$name/"
    n=$((n + 1))
  done
done
echo "copied $n finished runs (later folders over earlier ones): $(ls "$dst/runs" | wc -l) run folders in $dst/runs"
