#!/usr/bin/env bash
# One-shot evidence run on a lent GPU (see docs/RESULTS.md), sized for a 10-minute command:
#   - CiteULike-t BPR-MF 400 -> 20: teacher, then scratch + MF_METHODS over 3 seeds;
#   - CiteULike-t LightGCN 2000 -> 20: teacher, then scratch + LGN_METHODS, 1 seed;
# both grids at once, in parallel processes, every run under a wall-clock budget
# (train.time_limit; runs that early-stop finish sooner). Then the paper-protocol tables,
# the fd/freqd spectrum and the FreqD step benchmark. Only small result files go to $OUT.
#
# Dry run on CPU: DATASET=tiny DEVICE=cpu T_TEACH=5 T_STUD=5 OUT=/tmp/o bash scripts/gpu_evidence.sh
set -u
export PYTHONPATH=$PWD/src FREQD_DATA_DIR=${FREQD_DATA_DIR:-$PWD/gpu_data} FREQD_CACHE_DIR=/tmp/fc
export FREQD_NO_PROGRESS=1 PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1
OUT=${OUT:-/tmp/out}; B=${BENCH_DIR:-/tmp/bench}; mkdir -p "$OUT" "$B"
DATASET=${DATASET:-citeulike-t}; DEVICE=${DEVICE:-cuda}
# Session 1 of this script (docs/results/gpu-h100-citeulike) ran 16 processes at once: FreqD's
# many small synchronising operations crawled (15-18 s/epoch), the second wave was cut. So:
# first the FreqD step alone on the GPU, then fewer, longer runs (FreqD methods only for MF).
T_TEACH=${T_TEACH:-90}; T_STUD=${T_STUD:-220}; T_LGN_TEACH=${T_LGN_TEACH:-150}; T_LGN=${T_LGN:-200}
GRID_TIMEOUT=${GRID_TIMEOUT:-440}; MF_JOBS=${MF_JOBS:-8}; LGN_JOBS=${LGN_JOBS:-3}
MF_METHODS=${MF_METHODS:-fd,freqd,freqd+filter=quadratic}
LGN_METHODS=${LGN_METHODS:-fd,freqd}
PY=${PY:-python3}
T0=$(date +%s); el() { echo "[t+$(( $(date +%s) - T0 ))s] $*"; }
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null
$PY -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.cuda.is_available())"

collect() {  # small files only: metrics, configs, histories, logs, reports
  (cd "$B" && tar czf "$OUT/results_small.tgz" \
     $(find . \( -name metrics.json -o -name config.yaml -o -name history.csv -o -name '*.md' \
        -o -name results.csv -o -name '*.png' -o -name '*.csv' -o -name 'log.txt' -o -name '.*.out' \) \
        -size -2M 2>/dev/null) 2>/dev/null)
}

timeout 40 $PY benchmarks/bench_freqd.py --device $DEVICE --steps 5 --skip-full > $OUT/bench_freqd_$DEVICE.txt 2>&1
el "bench_freqd (alone on the device) exit $?"
el "grids start"
timeout $GRID_TIMEOUT $PY -m freqd bench $DATASET --backbone mf --methods $MF_METHODS --seeds 3 --jobs $MF_JOBS \
  --device $DEVICE --out $B/mf train.time_limit=$T_STUD teacher.train.time_limit=$T_TEACH \
  > $OUT/bench_mf.log 2>&1 &
P1=$!
timeout $GRID_TIMEOUT $PY -m freqd bench $DATASET --backbone lightgcn --methods $LGN_METHODS --seeds 1 --jobs $LGN_JOBS \
  --device $DEVICE --out $B/lgn train.time_limit=$T_LGN teacher.train.time_limit=$T_LGN_TEACH \
  > $OUT/bench_lgn.log 2>&1 &
P2=$!
wait $P1; el "mf grid exit $?"; wait $P2; el "lightgcn grid exit $?"
collect

for g in mf lgn; do  # reports from whatever finished (standard, then paper protocol)
  timeout 60 $PY -m freqd bench $DATASET --backbone $([ $g = mf ] && echo mf || echo lightgcn) \
    --methods $([ $g = mf ] && echo $MF_METHODS || echo $LGN_METHODS) --seeds $([ $g = mf ] && echo 3 || echo 1) \
    --device $DEVICE --out $B/$g --report-only >> $OUT/report.log 2>&1
  timeout 60 $PY -m freqd bench $DATASET --backbone $([ $g = mf ] && echo mf || echo lightgcn) \
    --methods $([ $g = mf ] && echo $MF_METHODS || echo $LGN_METHODS) --seeds $([ $g = mf ] && echo 3 || echo 1) \
    --device $DEVICE --out $B/$g --report-only --eval-protocol paper >> $OUT/report.log 2>&1
  el "report $g exit $?"
done
collect

# spectrum: trained fd vs freqd students (seed 0) of the MF grid, users and items
T=$(ls -d $B/mf/runs/teacher-* 2>/dev/null | head -1)
FD=$(ls -d $B/mf/runs/fd-mf-s0-* 2>/dev/null | head -1)
FQ=$(ls -d $B/mf/runs/freqd-mf-s0-* 2>/dev/null | head -1)
el "spectrum teacher=$T fd=$FD freqd=$FQ"
for side in user item; do
  timeout 60 $PY -m freqd spectrum --teacher "$T" --student "$FD" --student "$FQ" --side $side \
    --out $B/spectrum-$side >> $OUT/spectrum.log 2>&1; el "spectrum $side exit $?"
done
collect
ls -la $OUT
