#!/usr/bin/env bash
# One-shot evidence run on a lent GPU (see docs/RESULTS.md): CiteULike-t BPR-MF 400 -> 20,
# teacher + scratch + fd + freqd over 3 seeds in parallel processes, each run under a
# wall-clock budget (train.time_limit), then the FreqD step benchmark. Small result files
# only are copied to $OUT.
set -u
export PYTHONPATH=$PWD/src FREQD_DATA_DIR=${FREQD_DATA_DIR:-$PWD/gpu_data} FREQD_CACHE_DIR=/tmp/fc
export FREQD_NO_PROGRESS=1 PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1
OUT=${OUT:-/tmp/out}; B=/tmp/bench
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.is_available())"
T0=$(date +%s)
timeout ${BENCH_TIMEOUT:-250} python3 -m freqd bench citeulike-t --methods fd,freqd --seeds 3 --jobs 9 \
  --device cuda --out $B train.time_limit=${STUDENT_LIMIT:-150} teacher.train.time_limit=${TEACHER_LIMIT:-60} \
  > $OUT/bench.log 2>&1
echo "bench exit $? after $(( $(date +%s) - T0 )) s"
tail -20 $OUT/bench.log
timeout 40 python3 benchmarks/bench_freqd.py --device cuda --steps 5 > $OUT/bench_freqd_cuda.txt 2>&1
cat $OUT/bench_freqd_cuda.txt | tail -8
cp $B/table.md $B/results.csv $B/efficiency.md $OUT/ 2>/dev/null
cd $B && tar czf $OUT/runs_small.tgz $(find runs -name metrics.json -o -name config.yaml -o -name history.csv) 2>/dev/null
ls -la $OUT
