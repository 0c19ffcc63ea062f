"""Data-parallel training throughput (issue 6): 1 process vs N processes (torchrun, gloo).

Trains a backbone at its preset teacher settings (default: the Gowalla BPR-MF teacher,
d = 300, batch 2048, Adam, lr 1e-3, weight decay 1e-4) for ``--steps`` timed steps after ``--warmup`` steps, through the real
:class:`freqd.train.trainer.Trainer` (sampler shards, ``Trainer.step``, the gradient
all-reduce), and prints interactions/s (global batch triples per second) per setting,
the scaling ratio, and where the time of a step goes (sampling, forward/backward +
optimizer; DDP's dense all-reduce runs inside the backward pass, the sparse all-gather is
timed on its own).

Settings (each in a fresh subprocess; peak RSS per process from ``ru_maxrss``):

* ``1p x 1t``  one process, one intra-op thread
* ``1p x Nt``  one process, N threads (the same cores as N processes)
* ``Np x 1t``  N processes under ``torch.distributed.run`` (gloo), one thread each

``--weak`` gives each of the P processes its own ``--batch-size`` (global batch P times
larger: weak scaling); by default the global batch is fixed (what training equivalence
needs). ``--sparse`` adds the same with ``model.sparse_grad`` + SparseAdam (no weight decay): the
gradient exchanged is then the batch's rows (all-gathered), not the full tables.

Usage::

    python benchmarks/bench_ddp.py [--dataset gowalla] [--data-dir DIR] [--procs 2]
                                   [--steps 200] [--warmup 20] [--sparse] [--weak] [--json OUT]
    # a few steps of a large model, one process (seconds/epoch estimate, peak RSS):
    python benchmarks/bench_ddp.py --backbone lightgcn --dim 2000 --settings 1x2 --steps 3 --warmup 1
    # a FreqD student (d = 20) from a random MF-300 teacher, 1 vs 2 processes:
    python benchmarks/bench_ddp.py --method freqd --dim 20 --settings 1x1,2x1 --steps 3 --warmup 1
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = Path(os.environ.get("FREQD_DATA_DIR") or REPO.parent / "shared" / "data")


# -- worker (runs in each process) -----------------------------------------------------------
def worker(a: argparse.Namespace) -> None:
    import torch

    from freqd.api import build_model, load_dataset
    from freqd.runs import resolve_config, typed
    from freqd.train.distributed import init_from_env
    from freqd.train.trainer import Trainer, seed_everything

    torch.set_num_threads(a.threads)
    ctx = init_from_env(a.device)
    ds = load_dataset(a.dataset, data_dir=a.data_dir)
    # the preset teacher settings of (dataset, backbone), at --dim / --batch-size
    over = {"model": {"dim": a.dim}, "train": {"batch_size": a.batch_size, "progress": False,
                                               "threads": a.threads, "device": str(ctx.device(a.device))}}
    if a.sparse:
        over["model"]["sparse_grad"] = True
        over["train"].update(optimizer="sparse_adam", weight_decay=0.0)
    role = "student" if a.method else "teacher"
    cfg = resolve_config("train", a.dataset, backbone=a.backbone, role=role, overrides=over)
    seed_everything(0)
    model = build_model(cfg, ds)
    tcfg = typed(cfg)[2]
    distiller, weight = None, 0.0
    if a.method:  # a student distilled from a random MF teacher of --teacher-dim (cost, not accuracy)
        from freqd.distill.registry import build_distiller
        from freqd.models.registry import build_backbone

        teacher = build_backbone("mf", ds.n_users, ds.n_items, {"dim": a.teacher_dim, "init_std": 0.1}, ds.train)
        distiller = build_distiller(a.method, teacher, model, ds, {})
        distiller.to(tcfg.device)
        distiller.prepare(None)
        weight = distiller.cfg.weight
    tr = Trainer(model, ds, tcfg, distiller=distiller, kd_weight=weight)
    comm = [0.0]
    if tr._sparse_reducer is not None:  # time the sparse gradient exchange separately
        reducer = tr._sparse_reducer

        def timed() -> None:
            t = time.perf_counter()
            reducer()
            comm[0] += time.perf_counter() - t

        tr._sparse_reducer = timed

    def batches():
        while True:
            yield from tr.sampler.epoch()

    it = batches()
    t_sample = t_step = 0.0
    for i in range(a.warmup + a.steps):
        if i == a.warmup:
            ctx.barrier()
            t_sample = t_step = comm[0] = 0.0
            t0 = time.perf_counter()
        ts = time.perf_counter()
        batch = next(it)
        t1 = time.perf_counter()
        tr.step(batch)
        t2 = time.perf_counter()
        t_sample += t1 - ts
        t_step += t2 - t1
    ctx.barrier()
    wall = time.perf_counter() - t0
    walls = ctx.gather_objects(wall)
    res = {
        "processes": ctx.world_size, "threads": a.threads, "sparse": a.sparse, "steps": a.steps,
        "backbone": a.backbone, "method": a.method, "batch_size": a.batch_size, "dim": a.dim, "seconds": max(walls),
        "steps_per_epoch": tr.sampler.n_batches,
        "seconds_per_epoch_est": tr.sampler.n_batches * max(walls) / a.steps,
        "interactions_per_s": a.steps * a.batch_size / max(walls),
        "ms_per_step": 1e3 * max(walls) / a.steps,
        "ms_sample": 1e3 * t_sample / a.steps,
        "ms_compute": 1e3 * (t_step - comm[0]) / a.steps,
        "ms_allreduce": 1e3 * comm[0] / a.steps,  # sparse all-gather; DDP's all-reduce is inside backward
        "ddp": tr._forward is not tr.objective,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "device": str(tr.device),
    }
    if tr.device.type == "cuda":
        res["peak_gpu_mb"] = torch.cuda.max_memory_allocated(tr.device) / 2**20
        res["gpu"] = torch.cuda.get_device_name(tr.device)
    rss = ctx.gather_objects(res["peak_rss_mb"])
    res["peak_rss_mb_per_process"] = rss
    if ctx.is_main:
        print("RESULT " + json.dumps(res), flush=True)


# -- driver ----------------------------------------------------------------------------------
def run_setting(a: argparse.Namespace, procs: int, threads: int, sparse: bool) -> dict:
    batch = a.batch_size * (procs if a.weak else 1)
    args = [__file__, "--worker", "--dataset", a.dataset, "--data-dir", str(a.data_dir),
            "--steps", str(a.steps), "--warmup", str(a.warmup), "--threads", str(threads),
            "--dim", str(a.dim), "--batch-size", str(batch), "--backbone", a.backbone,
            "--device", a.device] + (["--method", a.method, "--teacher-dim", str(a.teacher_dim)] if a.method else [])
    args += ["--sparse"] if sparse else []
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "FREQD_NO_PROGRESS": "1"}
    if procs > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc_per_node", str(procs)] + args
    else:
        env.pop("WORLD_SIZE", None)
        cmd = [sys.executable] + args
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")]
    if p.returncode != 0 or not lines:
        raise SystemExit(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stdout[-2000:]}\n{p.stderr[-4000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--dataset", default="gowalla")
    ap.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--procs", type=int, default=2, help="processes of the data-parallel setting")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--backbone", default="mf", choices=["mf", "lightgcn", "simplex"],
                    help="preset teacher settings of this backbone (default mf)")
    ap.add_argument("--dim", type=int, default=300)
    ap.add_argument("--device", default="cpu", help="cpu | cuda (N processes need N GPUs)")
    ap.add_argument("--method", help="distil a student with this method (e.g. freqd; use --dim 20) "
                                     "from a random MF teacher of --teacher-dim")
    ap.add_argument("--teacher-dim", type=int, default=300)
    ap.add_argument("--settings", default=None,
                    help="comma-separated PxT (processes x threads), default 1x1,1xN,Nx1 for N = --procs")
    ap.add_argument("--batch-size", type=int, default=2048)
    ap.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--sparse", action="store_true", help="also measure sparse gradients + SparseAdam")
    ap.add_argument("--weak", action="store_true",
                    help="weak scaling: P processes train a global batch of P x --batch-size")
    ap.add_argument("--json", type=Path, help="write the results here")
    a = ap.parse_args()
    if a.worker:
        worker(a)
        return
    load0 = os.getloadavg()
    settings = [(1, 1), (1, a.procs), (a.procs, 1)]
    if a.settings:
        settings = [tuple(int(x) for x in s.split("x")) for s in a.settings.split(",")]
    what = f"{a.backbone} d={a.dim}" + (f" student, {a.method} from MF d={a.teacher_dim}" if a.method else "")
    print(f"{a.dataset}: {what}, batch {a.batch_size}, {a.steps} timed steps after {a.warmup}; "
          f"{os.cpu_count()} CPU cores; load average {load0[0]:.1f} at start "
          f"(the machine is shared: absolute figures are noisy, ratios less so)")
    results = []
    modes = [False, True] if a.sparse else [False]
    for sparse in modes:
        for procs, threads in settings:
            r = run_setting(a, procs, threads, sparse)
            results.append(r)
            print(f"  {'sparse' if sparse else 'dense '} {procs}p x {threads}t, batch {r['batch_size']}: "
                  f"{r['interactions_per_s']:>9,.0f} "
                  f"interactions/s  {r['ms_per_step']:7.1f} ms/step (sample {r['ms_sample']:.1f}, "
                  f"compute+optimizer {r['ms_compute']:.1f}"
                  + (", DDP all-reduce overlapped in backward" if r.get("ddp") else "")
                  + (f", sparse all-gather {r['ms_allreduce']:.1f}" if r["sparse"] and procs > 1 else "") + "); "
                  f"~{r['seconds_per_epoch_est']:.0f} s/epoch ({r['steps_per_epoch']} steps); "
                  f"peak RSS {'/'.join(f'{x:.0f}' for x in r['peak_rss_mb_per_process'])} MB"
                  + (f", peak GPU {r['peak_gpu_mb']:.0f} MB ({r['gpu']})" if "gpu" in r else ""), flush=True)
        if a.settings:
            continue
        base, threads_n, ddp = results[-3:]
        print(f"  scaling ({'sparse' if sparse else 'dense'}): {a.procs}p/1p = "
              f"{ddp['interactions_per_s'] / base['interactions_per_s']:.2f}x, "
              f"{a.procs}p/(1p x {a.procs}t) = {ddp['interactions_per_s'] / threads_n['interactions_per_s']:.2f}x")
    load1 = os.getloadavg()
    print(f"load average {load1[0]:.1f} at the end")
    if a.json:
        from freqd.utils.atomic import write_json

        write_json(a.json, {"load_average": [load0[0], load1[0]], "results": results})


if __name__ == "__main__":
    main()
