"""Backbone training speed (issue 2, "Speed and memory"). Prints figures and ratios; not a test.

1. CiteULike-t training throughput (interactions/s, and the implied seconds per epoch) of
   BPR-MF (d = 400, 20) and LightGCN (d = 2000, 20; 3 layers) with the authors' settings:
   batch 2048, one uniform negative, dense Adam with weight decay. A step is everything the
   trainer does: sampling, propagate, loss, backward, optimizer step.
2. Gowalla, MF d = 400, one thread: step time of dense Adam (weight decay 1e-4) over
   ``sparse_grad=True`` + ``torch.optim.SparseAdam`` (the "about 7x" of issue 2), and of
   dense Adam with ``fused=True`` (same update, one fused kernel).
3. LightGCN propagation forward + backward (d = 64, 2000): ours against the textbook autograd
   version; and the Adam step over the 2000-d tables, default (foreach) vs ``fused=True``.

Usage::

    python benchmarks/bench_backbones.py [--data-dir DIR] [--steps 8] [--threads N]
                                         [--no-gowalla] [--json OUT]

The data folder defaults to $FREQD_DATA_DIR, else ../shared/data next to the repository.
"""
from __future__ import annotations

import argparse
import gzip
import os
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = Path(os.environ.get("FREQD_DATA_DIR") or REPO.parent / "shared" / "data")
FOLDERS = {"citeulike-t": "citeulike", "gowalla": "gowalla"}


# -- data ----------------------------------------------------------------------------------
def _read_pairs(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        fh.readline()  # header USER\tITEM
        arr = np.array(fh.read().split(), dtype=np.int64)
    return arr.reshape(-1, 2)


def load_train(name: str, data_dir: Path):
    """Training CSR matrix: ``freqd.data.load_dataset`` when available, else the processed
    TSV files (shape from all three splits)."""
    try:
        from freqd.data import load_dataset  # type: ignore[attr-defined]

        return load_dataset(name, data_dir=data_dir).train
    except ImportError:
        pass
    import scipy.sparse as sp

    folder = data_dir / FOLDERS[name] / "processed"
    splits = {s: _read_pairs(folder / f"{s}.txt.gz") for s in ("train", "valid", "test")}
    n_users = int(max(a[:, 0].max() for a in splits.values())) + 1
    n_items = int(max(a[:, 1].max() for a in splits.values())) + 1
    tr = splits["train"]
    m = sp.csr_matrix((np.ones(len(tr), np.float32), (tr[:, 0], tr[:, 1])), shape=(n_users, n_items))
    m.sum_duplicates()
    m.data[:] = 1.0
    return m


# -- measurements --------------------------------------------------------------------------
def train_throughput(name: str, dim: int, train, wd: float, steps: int, batch: int = 2048,
                     fused: bool = False, **cfg) -> dict:
    """Median step time over ``steps`` steps (after 2 warm-up steps)."""
    from freqd.data.sampling import TrainSampler
    from freqd.models import build_backbone

    torch.manual_seed(0)
    t0 = time.perf_counter()
    model = build_backbone(name, *train.shape, {"dim": dim, **cfg}, train)
    build_s = time.perf_counter() - t0
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=wd,
                           **({"fused": True} if fused else {}))
    sampler = TrainSampler(train, batch, n_neg=model.n_neg, seed=0)
    it = sampler.epoch()
    times = []
    for s in range(steps + 2):
        t = time.perf_counter()
        b = next(it)
        out = model.loss(b, model.propagate())
        opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        opt.step()
        if s >= 2:
            times.append(time.perf_counter() - t)
    step = float(np.median(times))
    return {"model": f"{name}-{dim}", "fused_adam": fused, "step_s": step, "interactions_per_s": batch / step,
            "epoch_s_est": sampler.n_batches * step, "build_s": build_s}


def adam_vs_sparse_adam(train, dim: int, steps: int, batch: int = 2048) -> dict:
    """Per-step time (sample + forward + backward + optimizer) of MF with dense Adam vs
    sparse gradients + SparseAdam; also the optimizer step alone."""
    from freqd.data.sampling import TrainSampler
    from freqd.models.mf import MF, MFConfig

    res = {}
    for label, sparse, fused in (("dense_adam", False, False), ("dense_adam_fused", False, True),
                                 ("sparse_adam", True, False)):
        torch.manual_seed(0)
        model = MF(*train.shape, MFConfig(dim=dim, sparse_grad=sparse), train)
        opt = (torch.optim.SparseAdam(list(model.parameters()), lr=1e-3) if sparse else
               torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-4,
                                **({"fused": True} if fused else {})))
        it = TrainSampler(train, batch, seed=0).epoch()
        full, opt_only = [], []
        for s in range(steps + 2):
            t = time.perf_counter()
            b = next(it)
            out = model.loss(b, model.propagate())
            opt.zero_grad(set_to_none=True)
            out["loss"].backward()
            t1 = time.perf_counter()
            opt.step()
            t2 = time.perf_counter()
            if s >= 2:
                full.append(t2 - t)
                opt_only.append(t2 - t1)
        res[label] = {"step_s": float(np.median(full)), "opt_step_s": float(np.median(opt_only))}
    res["ratio_step"] = res["dense_adam"]["step_s"] / res["sparse_adam"]["step_s"]
    res["ratio_opt_step"] = res["dense_adam"]["opt_step_s"] / res["sparse_adam"]["opt_step_s"]
    res["ratio_step_fused"] = res["dense_adam_fused"]["step_s"] / res["sparse_adam"]["step_s"]
    return res


def propagation_vs_naive(train, dim: int, n_layers: int, repeats: int) -> dict:
    """Forward + backward of LightGCN's propagation: ours (one linear operator, in-place
    layer sums into reused scratch buffers, backward = the same operator) against the
    textbook autograd version (cat, torch.sparse.mm per layer, stack + mean)."""
    from freqd.models.lightgcn import LightGCN, LightGCNConfig

    model = LightGCN(*train.shape, LightGCNConfig(dim=dim, n_layers=n_layers), train)
    nu = train.shape[0]

    def naive():
        g = model.graph
        e = torch.cat([model.user_emb.weight, model.item_emb.weight])
        layers = [e]
        for _ in range(n_layers):
            layers.append(torch.sparse.mm(g, layers[-1]))
        out = torch.stack(layers, 0).mean(0)
        return out[:nu], out[nu:]

    def run(fn) -> float:
        times = []
        for _ in range(repeats + 1):
            t = time.perf_counter()
            u, i = fn()
            (u.sum() + i.sum()).backward()
            times.append(time.perf_counter() - t)
            model.zero_grad(set_to_none=True)
        return float(np.median(times[1:]))

    ours = run(model.propagate)
    theirs = run(naive)
    return {"dim": dim, "n_layers": n_layers, "ours_s": ours, "naive_s": theirs,
            "ratio": theirs / ours}


def adam_variants(n_params: int, steps: int = 3) -> dict:
    """Optimizer step alone over one table of ``n_params`` floats: torch's default Adam
    (foreach) against ``fused=True`` (for the trainer's choice; both apply weight decay)."""
    p = torch.nn.Parameter(torch.randn(n_params))
    p.grad = torch.randn(n_params)
    out = {}
    for label, kw in (("foreach", {}), ("fused", {"fused": True})):
        try:
            opt = torch.optim.Adam([p], lr=1e-3, weight_decay=1e-7, **kw)
        except (RuntimeError, TypeError) as e:  # fused not available on this build
            out[label] = str(e)
            continue
        times = []
        for _ in range(steps + 1):
            t = time.perf_counter()
            opt.step()
            times.append(time.perf_counter() - t)
        out[label] = float(np.median(times[1:]))
    return out


# -- main ----------------------------------------------------------------------------------
def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--steps", type=int, default=8, help="timed steps per configuration")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads for parts 1 and 3 (default 1: stable on a shared machine)")
    ap.add_argument("--no-gowalla", action="store_true")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    results: dict = {"threads": torch.get_num_threads(), "torch": torch.__version__}

    train = load_train("citeulike-t", args.data_dir)
    print(f"CiteULike-t train: {train.shape[0]} users x {train.shape[1]} items, {train.nnz} "
          f"interactions; {torch.get_num_threads()} thread(s), batch 2048, dense Adam "
          f"(torch default foreach, and fused=True)")
    rows = []
    for name, dim, wd, cfg in (("mf", 20, 1e-3, {}), ("mf", 400, 1e-3, {}),
                               ("lightgcn", 20, 1e-3, {"n_layers": 3}),
                               ("lightgcn", 2000, 1e-7, {"n_layers": 3})):
        steps = max(3, args.steps // 2) if dim >= 2000 else args.steps
        for fused in (False, True):
            r = train_throughput(name, dim, train, wd, steps, fused=fused, **cfg)
            rows.append(r)
            label = f"{r['model']} {'fused Adam' if fused else 'Adam'}"
            print(f"  {label:>24}: {r['interactions_per_s']:>10,.0f} interactions/s  "
                  f"step {r['step_s'] * 1e3:8.1f} ms  ~{r['epoch_s_est']:7.1f} s/epoch")
    results["citeulike_train"] = rows

    for dim in (64, 2000):
        r = propagation_vs_naive(train, dim, 3, repeats=2)
        results.setdefault("lightgcn_propagation", []).append(r)
        print(f"LightGCN-{dim} propagate fwd+bwd: ours {r['ours_s'] * 1e3:.1f} ms, textbook "
              f"autograd {r['naive_s'] * 1e3:.1f} ms -> {r['ratio']:.2f}x faster")
    n = (train.shape[0] + train.shape[1]) * 2000
    r = adam_variants(n)
    results["adam_lightgcn2000_table"] = r
    if isinstance(r.get("fused"), float) and isinstance(r.get("foreach"), float):
        print(f"Adam step over the LightGCN-2000 tables ({n / 1e6:.0f}M floats): default "
              f"{r['foreach'] * 1e3:.0f} ms, fused=True {r['fused'] * 1e3:.0f} ms "
              f"-> {r['foreach'] / r['fused']:.1f}x")

    if not args.no_gowalla:
        gow = load_train("gowalla", args.data_dir)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            r = adam_vs_sparse_adam(gow, 400, args.steps)
        finally:
            torch.set_num_threads(threads)
        results["gowalla_mf400_adam_vs_sparse_adam"] = r
        print(f"Gowalla MF-400, 1 thread: dense Adam step {r['dense_adam']['step_s'] * 1e3:.1f} ms "
              f"(optimizer {r['dense_adam']['opt_step_s'] * 1e3:.1f} ms), SparseAdam step "
              f"{r['sparse_adam']['step_s'] * 1e3:.1f} ms (optimizer "
              f"{r['sparse_adam']['opt_step_s'] * 1e3:.1f} ms) -> {r['ratio_step']:.1f}x per step, "
              f"{r['ratio_opt_step']:.1f}x optimizer alone; dense Adam fused=True step "
              f"{r['dense_adam_fused']['step_s'] * 1e3:.1f} ms -> {r['ratio_step_fused']:.1f}x "
              f"SparseAdam's")
    if args.json is not None:
        from freqd.utils.atomic import write_json

        write_json(args.json, results)
    return results


if __name__ == "__main__":
    main()
