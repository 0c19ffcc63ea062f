"""Where a FreqD training step spends its time, next to fd's, in this process's CPU seconds.

Times each phase of a training step (student propagate + BPR loss, the KD loss forward,
the backward pass, Adam) for ``fd`` and ``freqd`` (the authors' settings, batch-local
path) on the same batches, and prints the medians and the freqd / fd ratio per phase.
CPU seconds of this process are steadier than wall seconds on a shared machine (waiting
for a core does not count; contention for memory bandwidth still does). Use this rather
than torch's profiler to decide what to optimise: on this CPU the profiler inflated the
ReLU backward (``threshold_backward``) about tenfold.

    python benchmarks/bench_freqd_breakdown.py --steps 8 --threads 1
    THP_MEM_ALLOC_ENABLE=1 python benchmarks/bench_freqd_breakdown.py   # torch's huge-page allocations
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

PHASES = ("student fwd", "kd fwd", "backward", "optimizer")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="citeulike-t")
    ap.add_argument("--data-dir", default=os.environ.get("FREQD_DATA_DIR"))
    ap.add_argument("--teacher-dim", type=int, default=400)
    ap.add_argument("--steps", type=int, default=8, help="timed steps per method (after 1 warm-up)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--methods", default="fd,freqd")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    from freqd.utils.memory import keep_freed_memory

    keep_freed_memory()  # as the trainer does
    from freqd.data.load import load_dataset
    from freqd.data.sampling import TrainSampler
    from freqd.distill.registry import build_distiller
    from freqd.models.registry import build_backbone

    ds = load_dataset(a.dataset, data_dir=a.data_dir)
    torch.manual_seed(0)
    teacher = build_backbone("mf", ds.n_users, ds.n_items, {"dim": a.teacher_dim, "init_std": 0.1}, ds.train)
    batches = list(TrainSampler(ds.train, 2048, 1, torch.Generator().manual_seed(0)).epoch())
    res: dict = {}
    for method in a.methods.split(","):
        torch.manual_seed(1)
        student = build_backbone("mf", ds.n_users, ds.n_items, {"dim": 20}, ds.train)
        dist = build_distiller(method, teacher, student, ds, {})
        dist.prepare(None)
        opt = torch.optim.Adam(list(student.parameters()) + list(dist.parameters()), lr=1e-3, weight_decay=1e-3)
        times: dict = {p: [] for p in PHASES}
        for i in range(a.steps + 1):
            b = batches[i % len(batches)]
            c = [time.process_time()]
            reps = student.propagate()
            l_student = student.loss(b, reps)["loss"]
            c.append(time.process_time())
            l_kd = dist.loss(b, reps)["loss"]
            c.append(time.process_time())
            opt.zero_grad()
            (l_student + dist.cfg.weight * l_kd).backward()
            c.append(time.process_time())
            opt.step()
            c.append(time.process_time())
            if i:
                for p, t0, t1 in zip(PHASES, c, c[1:]):
                    times[p].append(t1 - t0)
        res[method] = {p: statistics.median(v) for p, v in times.items()}
    print(f"{a.dataset}, teacher {a.teacher_dim} -> 20, {a.steps} steps, threads {a.threads}, "
          f"THP_MEM_ALLOC_ENABLE={os.environ.get('THP_MEM_ALLOC_ENABLE', 'unset')}; median CPU seconds per step\n")
    names = list(res)
    print("| phase | " + " | ".join(names) + (" | ratio |" if len(names) == 2 else " |"))
    print("|---" * (len(names) + 1 + (len(names) == 2)) + "|")
    for p in (*PHASES, "step"):
        vals = [sum(res[m].values()) if p == "step" else res[m][p] for m in names]
        cells = " | ".join(f"{v:.3f}" for v in vals)
        ratio = f" | {vals[1] / vals[0]:.2f}x" if len(names) == 2 and vals[0] > 0 else ""
        print(f"| {p} | {cells}{ratio} |")


if __name__ == "__main__":
    main()
