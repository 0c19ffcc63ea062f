"""FreqD training-step cost: the batch-local path against the full-table reference.

The full-table path (``method.path=full``) is the authors' computation: project every
user row and every item row (twice: positive and negative call) through the 5-expert
projector and filter the whole tables on every step. The batch-local path projects only
the batch rows' neighbourhood. Both compute the same loss (tests/test_distill_freqd.py).

Prints, measured side by side in one run: seconds per training step (student BPR +
FreqD loss + backward + Adam) for local and full paths, their ratio, seconds per epoch
extrapolated from the measured steps, and FreqD step / fd step, in wall seconds and in
this process's CPU seconds (steadier on a machine shared with other jobs: time spent
waiting for a core does not count; contention for memory bandwidth still does), and how
many rows the batch-local path touches per call (the batch rows' neighbourhood under the
step's dropped graph) against fd's batch rows and the full tables: the ratios follow them.

    python benchmarks/bench_freqd.py --dataset citeulike-t --steps 5
    python benchmarks/bench_freqd.py --dataset gowalla --steps 3 --teacher-dim 300
    python benchmarks/bench_freqd.py --teacher-dim 2000 --skip-full --filters linear --precision fp32,bf16

``--precision fp32,bf16`` also times every variant with the step's forward under bfloat16
autocast (``train.precision=bf16``) and prints the bf16/fp32 ratios and how far the bf16
loss is from the fp32 loss on the same batch and dropout masks.

``benchmarks/bench_heap.py`` runs this script with ``--heap system`` and ``--heap keep`` in
separate processes and prints the ratio.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="citeulike-t")
    ap.add_argument("--data-dir", default=os.environ.get("FREQD_DATA_DIR"))
    ap.add_argument("--teacher-dim", type=int, default=400)
    ap.add_argument("--student-dim", type=int, default=20)
    ap.add_argument("--steps", type=int, default=5, help="timed steps per variant (after 1 warm-up)")
    ap.add_argument("--batch-size", type=int, default=2048)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--filters", default="linear,quadratic")
    ap.add_argument("--skip-full", action="store_true", help="skip the (slow) full-table reference")
    ap.add_argument("--heap", choices=["keep", "system"], default="keep",
                    help="keep: freed memory stays in the heap, as in training (train.keep_freed_memory, "
                         "the default); system: glibc's default (large blocks mapped afresh each time)")
    ap.add_argument("--precision", default="fp32",
                    help="comma list of fp32, bf16 (train.precision): each variant is timed under each")
    a = ap.parse_args()
    precs = [p for p in a.precision.split(",") if p]
    if not precs or any(p not in ("fp32", "bf16") for p in precs):
        ap.error(f"--precision: expected a comma list of fp32, bf16, got {a.precision!r}")
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.heap == "keep":
        from freqd.utils.memory import keep_freed_memory

        keep_freed_memory()
    from freqd.data.load import load_dataset
    from freqd.data.sampling import TrainSampler
    from freqd.distill.registry import build_distiller
    from freqd.models.registry import build_backbone

    ds = load_dataset(a.dataset, data_dir=a.data_dir)
    dev = torch.device(a.device)
    torch.manual_seed(0)
    teacher = build_backbone("mf", ds.n_users, ds.n_items, {"dim": a.teacher_dim, "init_std": 0.1}, ds.train).to(dev)
    sampler = TrainSampler(ds.train, a.batch_size, 1, torch.Generator().manual_seed(0))
    batches = [{k: v.to(dev) for k, v in b.items()} for b in sampler.epoch()]
    n_batches = len(batches)
    print(f"{a.dataset}: {ds.n_users} users, {ds.n_items} items, {ds.train.nnz} train, {n_batches} steps/epoch, "
          f"teacher {a.teacher_dim} -> student {a.student_dim}, device {dev}, threads {torch.get_num_threads()}")

    cpu: dict = {}  # variant -> median CPU seconds of this process per step
    dists: dict = {}  # variant -> its distiller (for the neighbourhood sizes)

    def neighbourhoods(dist) -> str:
        """Mean rows the batch-local path runs the experts' hidden layer on, per call, over
        the timed batches (fresh dropout masks, as in a step), against the full table's."""
        from freqd.spectral.filters import sample_hops
        from freqd.spectral.local import local_filter_plan

        c = dist.cfg
        got = {"users": [], "pos": [], "neg": []}
        for i in range(1, a.steps + 1):
            b = batches[i % n_batches]
            for key, side in (("users", "user"), ("pos", "item"), ("neg", "item")):
                op = dist._op(side)
                hops = sample_hops(op, dist.filt, c.keep_prob, None, mask_mode=c.mask_mode)
                rows = torch.unique(b[key])
                got[key].append((rows.numel(), local_filter_plan(hops, dist.filt, rows).cols.numel()))
        n = {"users": ds.n_users, "pos": ds.n_items, "neg": ds.n_items}
        parts, loc_rows, batch_rows = [], 0.0, 0.0
        for key, vals in got.items():
            r = statistics.mean(v[0] for v in vals)
            m = statistics.mean(v[1] for v in vals)
            loc_rows, batch_rows = loc_rows + m, batch_rows + r
            parts.append(f"{key} {r:,.0f} -> {m:,.0f} ({m / n[key]:.0%} of {n[key]:,})")
        full_rows = ds.n_users + 2 * ds.n_items
        return (f"  rows per call, batch -> neighbourhood: {'; '.join(parts)}; per step {loc_rows:,.0f} "
                f"neighbourhood rows (fd: {batch_rows:,.0f} batch rows, {loc_rows / batch_rows:.2f}x; "
                f"full table: {full_rows:,}, {full_rows / loc_rows:.2f}x)")

    first_loss: dict = {}  # (variant, precision) -> loss of the first (warm-up) step

    def time_variant(method: str, prec: str = "fp32", **over) -> tuple[float, float]:
        torch.manual_seed(1)
        student = build_backbone("mf", ds.n_users, ds.n_items, {"dim": a.student_dim}, ds.train).to(dev)
        dist = build_distiller(method, teacher, student, ds, dict(over)).to(dev)
        t0 = time.perf_counter()
        dist.prepare(None)
        prep = time.perf_counter() - t0
        opt = torch.optim.Adam(list(student.parameters()) + list(dist.parameters()), lr=1e-3, weight_decay=1e-3)
        times, cpus = [], []
        for i in range(a.steps + 1):
            b = batches[i % n_batches]
            if dev.type == "cuda":
                torch.cuda.synchronize()
            t0, c0 = time.perf_counter(), time.process_time()
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=prec == "bf16"):
                reps = student.propagate()
                loss = student.loss(b, reps)["loss"] + dist.cfg.weight * dist.loss(b, reps)["loss"]
            loss = loss.float()
            if i == 0:
                first_loss[(method, prec, tuple(sorted(over.items())))] = float(loss.detach())
            opt.zero_grad()
            loss.backward()
            opt.step()
            if dev.type == "cuda":
                torch.cuda.synchronize()
            if i > 0:
                times.append(time.perf_counter() - t0)
                cpus.append(time.process_time() - c0)
        if prec == "fp32":
            cpu[(method, tuple(sorted(over.items())))] = statistics.median(cpus)
            dists[(method, tuple(sorted(over.items())))] = dist
        return statistics.median(times), prep

    rows = []
    fd, prep_fd = time_variant("fd")
    rows.append(("fd (H = I)", fd))
    for filt in [f for f in a.filters.split(",") if f]:
        loc, prep = time_variant("freqd", filter=filt, path="local")
        rows.append((f"freqd {filt}, batch-local", loc))
        line = f"freqd {filt}: local {loc:.3f} s/step ({loc * n_batches:.1f} s/epoch)"
        if not a.skip_full:
            full, _ = time_variant("freqd", filter=filt, path="full")
            rows.append((f"freqd {filt}, full-table reference", full))
            line += f", full-table {full:.3f} s/step ({full * n_batches:.1f} s/epoch): speed-up x{full / loc:.2f}"
        loc_cpu = cpu[("freqd", (("filter", filt), ("path", "local")))]
        line += (f"; freqd/fd step ratio {loc / fd:.2f}, in CPU seconds {loc_cpu / cpu[('fd', ())]:.2f} "
                 f"(graph build/load {prep:.2f} s)")
        print(line)
        print(neighbourhoods(dists[("freqd", (("filter", filt), ("path", "local")))]))
    if "bf16" in precs:
        print("\nbf16 autocast (train.precision=bf16) against fp32, same batches and dropout masks:")
        for method, over, label in [("fd", {}, "fd")] + [
                ("freqd", {"filter": f, "path": "local"}, f"freqd {f}, batch-local")
                for f in a.filters.split(",") if f]:
            t32 = dict(rows)[label if method == "freqd" else "fd (H = I)"]
            t16, _ = time_variant(method, "bf16", **over)
            rows.append((f"{label}, bf16", t16))
            key = tuple(sorted(over.items()))
            l32, l16 = first_loss[(method, "fp32", key)], first_loss[(method, "bf16", key)]
            print(f"  {label}: fp32 {t32:.3f} s/step, bf16 {t16:.3f} s/step: x{t32 / t16:.2f}; "
                  f"first-step loss {l32:.6g} vs {l16:.6g} (relative difference {abs(l16 - l32) / abs(l32):.1e})")
    print("\n| variant | s/step | s/epoch (x%d steps) |\n|---|---|---|" % n_batches)
    for name, t in rows:
        print(f"| {name} | {t:.4f} | {t * n_batches:.1f} |")
    import resource

    print(f"\npeak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GB (heap: {a.heap})")


if __name__ == "__main__":
    main()
