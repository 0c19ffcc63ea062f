"""Where a FreqD training step spends its time, next to fd's, in this process's CPU seconds.

Times each phase of a training step (student propagate + BPR loss, the KD loss forward,
the backward pass, Adam) for ``fd`` and ``freqd`` (the authors' settings, batch-local
path) on the same batches, and prints the medians and the freqd / fd ratio per phase.
CPU seconds of this process are steadier than wall seconds on a shared machine (waiting
for a core does not count; contention for memory bandwidth still does). Use this rather
than torch's profiler to decide what to optimise: on this CPU the profiler inflated the
ReLU backward (``threshold_backward``) about tenfold.

``--parts`` splits FreqD's KD forward (summed over its three calls: users, positive and
negative items) into edge dropout, the local plan, the feature gathers, the projector's
hidden layer with its dropout masks on the neighbourhood rows, the filter of that hidden
stack, the d_T x d_T output layer on the batch rows, the teacher's filter and the loss,
and prints the rows touched per step and fd's KD forward and backward on the same batches. The decomposition re-runs ``FreqD._side_loss``'s
steps one by one; it is checked against ``dist.loss`` under the same random state before
anything is timed (the script stops if they differ).

    python benchmarks/bench_freqd_breakdown.py --steps 8 --threads 1
    python benchmarks/bench_freqd_breakdown.py --parts   # FreqD's KD forward, part by part
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
    ap.add_argument("--parts", action="store_true", help="time FreqD's KD forward part by part")
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
    if a.parts:
        return parts(a, ds, teacher, batches)
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


PARTS = ("edge dropout", "local plan", "gather features", "hidden layer + masks", "filter hidden",
         "output layer (batch rows)", "filter teacher", "loss")


def _side_parts(dist, side: str, rows, reps, clock: dict, sizes: dict):
    """``FreqD._side_loss(side, rows, reps)`` for the default path (co-occurrence graph,
    projector before the filter, batch-local), step by step, adding each step's CPU
    seconds to ``clock``."""
    import torch.nn.functional as F

    from freqd.spectral.filters import sample_hops
    from freqd.spectral.local import local_filter_plan

    c = dist.cfg
    t = [time.process_time()]

    def lap(name):
        t.append(time.process_time())
        clock[name] = clock.get(name, 0.0) + t[-1] - t[-2]

    op = dist._op(side)
    hops = sample_hops(op, dist.filt, c.keep_prob, None, mask_mode=c.mask_mode)
    lap("edge dropout")
    plan = local_filter_plan(hops, dist.filt, rows)
    lap("local plan")
    xs, xt = dist._node_features(side, plan.cols, reps, project=False)
    lap("gather features")
    proj = dist.proj_user if side == "user" else dist.proj_item
    h, scale = proj.expert_hidden(xs)
    lap("hidden layer + masks")
    ones = torch.ones(xs.shape[0], 1, dtype=xs.dtype)
    fh, f1 = plan.apply(h), plan.apply(ones)
    lap("filter hidden")
    zs = torch.addmm(f1 * proj.bank.b2.mean(0), fh, proj.bank.w2.reshape(-1, proj.bank.d_out), alpha=scale)
    lap("output layer (batch rows)")
    zt = plan.apply(xt)
    lap("filter teacher")
    loss = (1.0 - F.cosine_similarity(zs, zt, dim=-1, eps=1e-8)).sum() if c.loss == "cosine" else ((zs - zt) ** 2).sum()
    lap("loss")
    sizes.setdefault(side + " batch", []).append(int(torch.unique(rows).numel()))
    sizes.setdefault(side + " neighbourhood", []).append(int(plan.cols.numel()))
    return loss


def parts(a, ds, teacher, batches) -> None:
    """FreqD's KD forward part by part and its backward, with fd's KD forward and backward
    on the same batches beside them."""
    from freqd.distill.registry import build_distiller
    from freqd.models.registry import build_backbone

    torch.manual_seed(1)
    student = build_backbone("mf", ds.n_users, ds.n_items, {"dim": 20}, ds.train)
    dist = build_distiller("freqd", teacher, student, ds, {})
    dist.prepare(None)
    c = dist.cfg
    if not (c.graph == "cooccurrence" and c.placement == "before" and c.path == "local"):
        raise SystemExit("--parts follows the default FreqD path (co-occurrence graph, placement before, local)")

    def decomposed(b, reps, clock, sizes):
        lu = _side_parts(dist, "user", torch.unique(b["users"]), reps, clock, sizes)
        lp = _side_parts(dist, "item", torch.unique(b["pos"]), reps, clock, sizes)
        ln = _side_parts(dist, "item", torch.unique(b["neg"]), reps, clock, sizes)
        return lu + c.item_weight * (lp + ln)

    # the decomposition must compute what the distiller computes (same random state)
    b, reps = batches[0], student.propagate()
    state = torch.get_rng_state()
    ref = dist.loss(b, reps)["loss"]
    torch.set_rng_state(state)
    mine = decomposed(b, reps, {}, {})
    ref, mine = ref.detach(), mine.detach()
    if not torch.allclose(ref, mine, rtol=1e-5, atol=1e-4):
        raise SystemExit(f"decomposition differs from FreqD.loss: {float(mine)} vs {float(ref)}")
    print(f"check: decomposed KD loss {float(mine):.4f} = FreqD.loss {float(ref):.4f}")

    clocks, sizes, back = [], {}, []
    for i in range(a.steps + 1):
        b = batches[(i + 1) % len(batches)]
        reps = student.propagate()
        clock: dict = {}
        loss = decomposed(b, reps, clock, sizes if i else {})
        t0 = time.process_time()
        (c.weight * loss).backward()
        t1 = time.process_time()
        dist.zero_grad(set_to_none=True)
        student.zero_grad(set_to_none=True)
        if i:
            clocks.append(clock)
            back.append(t1 - t0)
    torch.manual_seed(1)
    student_fd = build_backbone("mf", ds.n_users, ds.n_items, {"dim": 20}, ds.train)
    fd = build_distiller("fd", teacher, student_fd, ds, {})
    fd.prepare(None)
    fd_fwd, fd_back = [], []
    for i in range(a.steps + 1):
        b = batches[(i + 1) % len(batches)]
        reps = student_fd.propagate()
        t0 = time.process_time()
        loss = fd.loss(b, reps)["loss"]
        t1 = time.process_time()
        (fd.cfg.weight * loss).backward()
        t2 = time.process_time()
        fd.zero_grad(set_to_none=True)
        student_fd.zero_grad(set_to_none=True)
        if i:
            fd_fwd.append(t1 - t0)
            fd_back.append(t2 - t1)
    med = {p: statistics.median(cl[p] for cl in clocks) for p in PARTS}
    fwd = sum(med.values())
    print(f"{a.dataset}, teacher {a.teacher_dim} -> 20, FreqD (authors' settings), {a.steps} steps, "
          f"threads {a.threads}; median CPU seconds per step (three calls)\n")
    print("| part | s/step | share of KD forward |")
    print("|---|---|---|")
    for p in PARTS:
        print(f"| {p} | {med[p]:.4f} | {med[p] / fwd:.0%} |")
    print(f"| KD forward | {fwd:.4f} | 100% |")
    bk, ffd, bfd = statistics.median(back), statistics.median(fd_fwd), statistics.median(fd_back)
    print(f"| backward (KD loss only) | {bk:.4f} | |")
    print(f"\nfd on the same batches: KD forward {ffd:.4f} s, backward {bfd:.4f} s; "
          f"freqd / fd: forward {fwd / ffd:.2f}x, backward {bk / bfd:.2f}x, both {(fwd + bk) / (ffd + bfd):.2f}x")
    print("\nrows per step, median: " + ", ".join(
        f"{k} {statistics.median(v):,.0f}" for k, v in sizes.items()))


if __name__ == "__main__":
    main()
