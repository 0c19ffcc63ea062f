"""Cost of every distiller: response- (KD, RD, CD, RRD, DCD, UnKD, HetComp), feature-
(FitNet, DE, PHR, VkD, fd, FreqD, FreqD-exact) and relation-based (HTD).

1. Speed on CiteULike-t, random BPR-MF teacher (d=400) -> student (d=20): seconds for
   ``prepare`` + ``on_epoch_start`` + one epoch of ``n_batches`` loss/backward/Adam steps
   (base BPR + lambda * KD) per method, printed next to, and as a ratio to, a scratch BPR
   epoch (the same steps without distillation) measured in the same run. Times are CPU
   seconds of this process, by default with one torch thread (CPU time of one thread is
   the measure least disturbed by other jobs on a shared machine; ``--threads`` to change);
   the last column gives the wall-clock ratio as well.
2. Peak memory on Gowalla and Yelp2018 (MF 300 -> 20; ``--memory-datasets``): each method
   in a fresh subprocess runs ``prepare`` (graphs, teacher top-K lists, groups) +
   ``on_epoch_start`` + ``--memory-batches`` steps and reports its peak RSS
   from the moment the data is loaded (VmHWM reset through /proc/self/clear_refs, so the
   loader's own transient peak does not hide the method's), and ``ru_maxrss`` (peak of the
   whole process), next to a subprocess that only loads the data and builds the models.
   A method that refuses the dataset (FreqD-exact: no dense eigendecomposition of a graph
   above ``method.max_nodes``) is listed with its message: the refusal is the expected
   behaviour, checked here at scale.

Method settings are the CiteULike-t MF presets (src/freqd/configs/methods/...) where they
exist, else the method defaults; RD starts its dynamic weights at epoch 0 so that they are
timed; HetComp reads a fake trajectory of random teacher checkpoints written to a temp folder.

Run:  python benchmarks/bench_methods.py [--data-dir DIR] [--skip-memory] [--skip-speed]
          [--methods kd,rrd] [--memory-datasets gowalla,yelp2018] [--memory-batches 5]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
PRESETS = ROOT / "src" / "freqd" / "configs" / "methods"
RESPONSE = ["kd", "rd", "cd", "rrd", "rrd-nosample", "dcd", "unkd", "hetcomp"]
FEATURE = ["fitnet", "de", "phr", "vkd", "fd", "freqd", "freqd-exact"]
RELATION = ["htd"]
METHODS = RESPONSE + FEATURE + RELATION


# -- data and models -----------------------------------------------------------------------
def load(name: str, data_dir: str):
    """The dataset via freqd.data.load_dataset, else a minimal reader of processed/*.txt.gz."""
    try:
        from freqd.data import load_dataset

        return load_dataset(name, data_dir=data_dir)
    except ImportError:
        import gzip

        from freqd.data.dataset import Dataset

        folder = Path(data_dir) / {"citeulike-t": "citeulike"}.get(name, name) / "processed"

        def pairs(split):
            with gzip.open(folder / f"{split}.txt.gz", "rt") as fh:
                a = np.loadtxt(fh, dtype=np.int64, skiprows=1, delimiter="\t")
            return a[:, 0], a[:, 1]

        return Dataset.from_pairs(name, pairs("train"), pairs("valid"), pairs("test"))


def mf(ds, dim: int, seed: int):
    from freqd.models.mf import MF, MFConfig

    torch.manual_seed(seed)
    return MF(ds.n_users, ds.n_items, MFConfig(dim=dim))


def batches(ds, n: int, size: int, seed: int = 0):
    g = np.random.default_rng(seed)
    u, i = ds.train_pairs()
    out = []
    for _ in range(n):
        idx = g.integers(0, len(u), size)
        out.append({"users": torch.as_tensor(u[idx]), "pos": torch.as_tensor(i[idx]),
                    "neg": torch.as_tensor(g.integers(0, ds.n_items, (size, 1)))})
    return out


def method_settings(method: str, dataset: str, traj: Path | None) -> tuple[str, dict]:
    from freqd.config import load_yaml

    name = "rrd" if method == "rrd-nosample" else method
    p = PRESETS / dataset / "mf" / f"{name}.yaml"
    if not p.exists():
        p = PRESETS / "citeulike-t" / "mf" / f"{name}.yaml"
    cfg = dict(load_yaml(p).get("method", {})) if p.exists() else {}
    if method == "rrd-nosample":
        cfg["sampling"] = False
    if name == "rd":
        cfg["start_epoch"] = 0
    if name == "hetcomp":
        cfg["trajectory_dir"] = str(traj)
    return name, cfg


def write_trajectory(ds, dim: int, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for e in (10, 20):
        torch.save({"model": mf(ds, dim, 1000 + e).state_dict(), "epoch": e},
                   folder / f"epoch_{e:04d}.pt")
    return folder


def _clock():
    return time.process_time(), time.perf_counter()


def _since(t):
    cpu, wall = _clock()
    return cpu - t[0], wall - t[1]


def run_epoch(student, steps, distiller=None, weight=0.0, epoch=1):
    """((cpu, wall) seconds of on_epoch_start, (cpu, wall) seconds of the steps)."""
    opt = torch.optim.Adam(list(student.parameters())
                           + (list(distiller.parameters()) if distiller is not None else []),
                           lr=1e-3)
    t0 = _clock()
    if distiller is not None:
        distiller.on_epoch_start(epoch)
    start = _since(t0)
    t1 = _clock()
    for b in steps:
        reps = student.propagate()
        loss = student.loss(b, reps)["loss"]
        if distiller is not None:
            loss = loss + weight * distiller.loss(b, reps)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return start, _since(t1)


def one_method(method: str, ds, teacher_dim: int, steps, tmp: Path, dataset: str) -> dict:
    from freqd.distill.registry import build_distiller

    teacher = mf(ds, teacher_dim, 100)
    student = mf(ds, 20, 200)
    traj = write_trajectory(ds, teacher_dim, tmp / "trajectory") if method == "hetcomp" else None
    name, cfg = method_settings(method, dataset, traj)
    dist = build_distiller(name, teacher, student, ds, cfg)
    t0 = _clock()
    dist.prepare(None)
    prep = _since(t0)
    # HetComp: an epoch where the dynamic knowledge construction runs (epoch = period)
    epoch = dist.cfg.period if name == "hetcomp" else 1
    start, run = run_epoch(student, steps, dist, dist.cfg.weight, epoch)
    return {"method": method, "prepare": prep, "epoch_start": start, "steps": run}


# -- 1. speed on CiteULike-t -------------------------------------------------------------------
def speed(args) -> None:
    ds = load("citeulike-t", args.data_dir)
    steps = batches(ds, args.batches, args.batch_size)
    print(f"CiteULike-t: {ds.n_users} users, {ds.n_items} items; MF 400 -> 20; "
          f"{args.batches} batches of {args.batch_size}; torch threads {torch.get_num_threads()}")
    student = mf(ds, 20, 200)
    run_epoch(student, steps[:3])                      # warm-up
    _, scratch = run_epoch(mf(ds, 20, 200), steps)
    rows = []
    methods = list(args.methods)
    if "freqd-exact" in methods and not args.methods_named:
        methods.remove("freqd-exact")
        print("(freqd-exact left out of the speed part: its prepare is a dense eigendecomposition of the "
              "25,181-node item graph; name it in --methods to time it)")
    with tempfile.TemporaryDirectory() as tmp:
        for m in methods:
            rows.append(one_method(m, ds, 400, steps, Path(tmp), "citeulike-t"))
    _, again = run_epoch(mf(ds, 20, 200), steps)       # scratch again: take the faster
    scratch = min(scratch, again)
    print(f"CPU seconds ({torch.get_num_threads()} thread(s)); ratios to the scratch epoch "
          "(the faster of two, before and after the methods); wall = wall-clock ratio")
    print(f"{'method':<14}{'prepare':>9}{'epoch start':>12}{'steps':>8}"
          f"{'epoch/scratch':>15}{'total/scratch':>15}{'epoch wall':>12}")
    sc, sw = scratch
    print(f"{'scratch BPR':<14}{0:>9.2f}{0:>12.2f}{sc:>8.2f}{1:>15.2f}{1:>15.2f}{1:>12.2f}")
    for m, r in zip(methods, rows):
        ep = r["epoch_start"][0] + r["steps"][0]
        ep_wall = r["epoch_start"][1] + r["steps"][1]
        print(f"{m:<14}{r['prepare'][0]:>9.2f}{r['epoch_start'][0]:>12.2f}{r['steps'][0]:>8.2f}"
              f"{ep / sc:>15.2f}{(ep + r['prepare'][0]) / sc:>15.2f}{ep_wall / sw:>12.2f}")


# -- 2. peak RSS on Gowalla --------------------------------------------------------------------
def _reset_peak() -> bool:
    """Reset this process's peak RSS (VmHWM) to its current RSS (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _peak_gb() -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return None


def child(args) -> None:
    """Subprocess body: one method on one dataset, print a JSON line with peak RSS (GB)."""
    import gc

    from freqd.errors import ConfigError

    ds = load(args.dataset, args.data_dir)
    steps = batches(ds, args.memory_batches, args.batch_size)
    gc.collect()
    reset = _reset_peak()
    t0 = time.perf_counter()
    r: dict
    if args.child == "none":
        mf(ds, 300, 100), mf(ds, 20, 200)
        r = {"method": "data+models only"}
    else:
        try:
            with tempfile.TemporaryDirectory() as tmp:
                one_method(args.child, ds, 300, steps, Path(tmp), args.dataset)
            r = {"method": args.child}
        except ConfigError as e:
            r = {"method": args.child, "refused": str(e)}
    r["seconds"] = time.perf_counter() - t0
    r["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    r["peak_after_load_gb"] = _peak_gb() if reset else None
    print(json.dumps(r))


def memory(args) -> None:
    for dataset in args.memory_datasets:
        print(f"\n{dataset} peak RSS (MF 300 -> 20; prepare + epoch start + {args.memory_batches} "
              f"batches of {args.batch_size}; one subprocess per method)")
        print(f"{'method':<18}{'peak after load GB':>19}{'process peak GB':>16}{'seconds':>9}")
        for m in ["none", *args.methods]:
            cmd = [sys.executable, __file__, "--child", m, "--dataset", dataset,
                   "--data-dir", args.data_dir, "--memory-batches", str(args.memory_batches),
                   "--batch-size", str(args.batch_size), "--threads", str(args.threads)]
            out = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy(), check=False)
            if out.returncode != 0:
                tail = (out.stderr.strip().splitlines() or ["(no message)"])[-1]
                print(f"{m:<18} FAILED: {tail}", flush=True)
                continue
            r = json.loads(out.stdout.strip().splitlines()[-1])
            after = r["peak_after_load_gb"]
            after = f"{after:>19.2f}" if after is not None else f"{'n/a':>19}"
            line = f"{r['method']:<18}{after}{r['peak_rss_gb']:>16.2f}{r['seconds']:>9.1f}"
            if "refused" in r:
                line += f"  refused, as it should: {r['refused']}"
            print(line, flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data-dir", default=os.environ.get("FREQD_DATA_DIR",
                                                         str(ROOT.parent / "shared" / "data")))
    ap.add_argument("--methods", default=None,
                    help="comma-separated; 'response', 'feature' and 'relation' name the families")
    ap.add_argument("--batches", type=int, default=48, help="steps per CiteULike-t epoch")
    ap.add_argument("--batch-size", type=int, default=2048)
    ap.add_argument("--threads", type=int, default=1, help="torch threads for the timings "
                    "(0 = torch's default)")
    ap.add_argument("--memory-datasets", default="gowalla,yelp2018")
    ap.add_argument("--memory-batches", type=int, default=5,
                    help="steps per dataset in the memory part (the peak is reached in the first steps)")
    ap.add_argument("--skip-speed", action="store_true")
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--dataset", default="gowalla", help=argparse.SUPPRESS)
    args = ap.parse_args()
    families = {"response": RESPONSE, "feature": FEATURE, "relation": RELATION}
    args.methods_named = args.methods is not None
    args.methods = [x for m in (args.methods or ",".join(METHODS)).split(",") if m for x in families.get(m, [m])]
    unknown = [m for m in args.methods if m not in METHODS]
    if unknown:
        ap.error(f"--methods: unknown {', '.join(unknown)}; available: {', '.join(METHODS)}")
    args.memory_datasets = [d for d in args.memory_datasets.split(",") if d]
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child:
        child(args)
        return
    if not args.skip_speed:
        speed(args)
    if not args.skip_memory:
        memory(args)


if __name__ == "__main__":
    main()
