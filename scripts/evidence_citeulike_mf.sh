#!/usr/bin/env bash
# CiteULike-t, BPR-MF teacher 400 -> students 20: the evidence grid of docs/RESULTS.md.
# Resumable: rerun (with a larger EPOCHS) to continue every run where it stopped.
#   TEACHER=runs/cul-mf400-std-s0 EPOCHS=15 SEEDS=3 JOBS=2 bash scripts/evidence_citeulike_mf.sh
set -euo pipefail
: "${FREQD_DATA_DIR:?set FREQD_DATA_DIR to the shared data folder}"
TEACHER=${TEACHER:?a finished teacher run directory}
OUT=${OUT:-bench/citeulike-mf}
freqd bench citeulike-t --backbone mf --teacher "$TEACHER" \
  --methods "${METHODS:-fd,freqd,freqd+filter=quadratic,kd,rrd}" \
  --seeds "${SEEDS:-3}" --jobs "${JOBS:-2}" --epochs "${EPOCHS:-15}" --out "$OUT" train.threads=1
