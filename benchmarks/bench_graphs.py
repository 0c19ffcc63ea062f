"""Benchmarks for freqd.spectral: graph construction memory/time and batch-local filtering.

    python benchmarks/bench_graphs.py build [--cases gowalla:item yelp2018:user ...] [--k 5]
    python benchmarks/bench_graphs.py local [--dataset citeulike] [--batch 2048] [--dim 400]

``build`` runs each case in a fresh subprocess and reports its peak resident memory
(``ru_maxrss``: whole process, interpreter and data included, plus the peak before the
build started) and the build time of ``cooccurrence_topk``. Target (issue 3): < 2 GB for
Gowalla items and Yelp2018 users.

``local`` measures how the batch-local filter (:mod:`freqd.spectral.local`) grows with the
filter degree k = 1..4 (h(λ) = (1 - αλ)^k, one fresh dropout mask per hop) on the
CiteULike-t item graph, for the unique positive items of a batch of interactions, against
the full-table filter. Data: ``$FREQD_DATA_DIR`` or ../shared/data, ``<name>/processed/``
(TSV ``USER\\tITEM`` with header, gzipped), read with a minimal reader so the benchmark does
not depend on the loader's state.
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = Path(os.environ.get("FREQD_DATA_DIR") or ROOT.parent / "shared" / "data")


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KB on Linux


def read_train(data_dir: Path, name: str):
    """Minimal reader: processed/train.txt.gz -> binary CSR (n_users x n_items)."""
    import scipy.sparse as sp

    folder = data_dir / name / "processed"
    with gzip.open(folder / "train.txt.gz", "rb") as fh:
        fh.readline()  # header USER\tITEM
        arr = np.array(fh.read().split(), dtype=np.int64).reshape(-1, 2)
    n_users, n_items = int(arr[:, 0].max()) + 1, int(arr[:, 1].max()) + 1
    cfg = folder / "config.yaml"
    if cfg.exists():
        for line in cfg.read_text().splitlines():
            key, _, val = line.partition(":")
            if key.strip() == "num_users":
                n_users = max(n_users, int(val))
            elif key.strip() == "num_items":
                n_items = max(n_items, int(val))
    m = sp.csr_matrix(
        (np.ones(len(arr), np.float32), (arr[:, 0], arr[:, 1])), shape=(n_users, n_items)
    )
    m.sum_duplicates()
    m.data[:] = 1
    return m


def _case(data_dir: Path, name: str, side: str, k: int) -> dict:
    """One build, in this (fresh) process."""
    from freqd.spectral.graphs import cooccurrence_topk, normalize_adjacency

    R = read_train(data_dir, name)
    before = _rss_mb()
    t0 = time.perf_counter()
    A = cooccurrence_topk(R, side=side, k=k)
    t_build = time.perf_counter() - t0
    Ah = normalize_adjacency(A)
    t_total = time.perf_counter() - t0
    deg = np.diff(A.indptr)
    return {
        "dataset": name,
        "side": side,
        "k": k,
        "nodes": int(A.shape[0]),
        "interactions": int(R.nnz),
        "edges_stored": int(A.nnz),
        "isolated_nodes": int((deg == 0).sum()),
        "mutual_fraction": float((A.data == 1.0).mean()) if A.nnz else 0.0,
        "max_degree": int(deg.max()) if len(deg) else 0,
        "build_s": round(t_build, 2),
        "build_plus_normalize_s": round(t_total, 2),
        "peak_rss_before_build_mb": round(before, 1),
        "peak_rss_mb": round(_rss_mb(), 1),
        "torch_loaded": "torch" in sys.modules,
        "ahat_nnz": int(Ah.nnz),
    }


def cmd_build(args) -> None:
    rows = []
    for case in args.cases:
        name, side = case.split(":")
        cmd = [sys.executable, __file__, "_case", name, side, str(args.k), "--data", str(args.data)]
        out = subprocess.run(cmd, check=False, capture_output=True, text=True)
        if out.returncode != 0:
            print(out.stderr, file=sys.stderr)
            raise SystemExit(f"case {case} failed")
        res = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append(res)
        print(
            f"{name:>10} {side:>4}  nodes {res['nodes']:>6}  inter {res['interactions']:>8}  "
            f"edges {res['edges_stored']:>7}  isolated {res['isolated_nodes']:>5}  "
            f"build {res['build_s']:>6.2f}s  peak RSS {res['peak_rss_mb']:>7.1f} MB "
            f"(before build {res['peak_rss_before_build_mb']:.1f} MB)"
        )
    if args.json:
        print(json.dumps(rows, indent=2))


def _median_time(fn, reps: int) -> float:
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts))


def _measure_local(Ah, X, rows, k: int, keep: float, args, g) -> dict:
    """Time masks, plan, local and full filtering (forward + backward) for degree k."""
    import torch

    from freqd.spectral.filters import PolyFilter, full_filter, sample_hops
    from freqd.spectral.local import local_filter_plan

    n = Ah.shape[0]
    filt = PolyFilter(((1 - args.alpha, args.alpha),) * k)
    hops = sample_hops(Ah, filt, keep, g)
    t_mask = _median_time(lambda: sample_hops(Ah, filt, keep, g), args.reps)
    t_plan = _median_time(lambda: local_filter_plan(hops, filt, rows), args.reps)
    plan = local_filter_plan(hops, filt, rows)

    def local_step():
        xc = X[plan.cols].requires_grad_(True)
        plan.apply(xc).square().sum().backward()

    def full_step():
        xf = X.clone().requires_grad_(True)
        full_filter(hops, filt, xf)[rows].square().sum().backward()

    t_local = _median_time(local_step, args.reps)
    t_full = _median_time(full_step, max(1, args.reps // 2))
    with torch.no_grad():
        diff = (plan.apply(X[plan.cols]) - full_filter(hops, filt, X)[rows]).abs().max()
    return {
        "k": k, "keep_prob": keep, "rows": int(rows.numel()),
        "cols": int(plan.cols.numel()), "cols_over_n": plan.cols.numel() / n,
        "plan_nnz": plan.nnz, "mask_ms": 1e3 * t_mask, "plan_ms": 1e3 * t_plan,
        "local_fwd_bwd_ms": 1e3 * t_local, "full_fwd_bwd_ms": 1e3 * t_full,
        "max_abs_diff": float(diff),
    }


def cmd_local(args) -> None:
    import torch

    from freqd.spectral.graphs import cooccurrence_topk, normalize_adjacency

    torch.set_num_threads(args.threads)
    R = read_train(args.data, args.dataset)
    t0 = time.perf_counter()
    Ah = normalize_adjacency(cooccurrence_topk(R, side="item", k=args.K))
    print(f"{args.dataset} item graph: {Ah.shape[0]} nodes, {Ah.nnz} stored entries, "
          f"built in {time.perf_counter() - t0:.2f}s; threads={args.threads}, d={args.dim}")
    n = Ah.shape[0]
    rng = np.random.default_rng(0)
    users = np.repeat(np.arange(R.shape[0]), np.diff(R.indptr))
    X = torch.randn(n, args.dim, generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(1)
    print(f"{'k':>2} {'keep':>4} {'rows':>5} {'cols':>6} {'cols/N':>6} {'plan nnz':>9} "
          f"{'masks ms':>8} {'plan ms':>8} {'local f+b ms':>12} {'full f+b ms':>11} {'max|diff|':>9}")
    results = []
    for keep in args.keep:
        for k in range(1, args.max_degree + 1):
            batch = rng.integers(0, len(users), args.batch)
            rows = torch.as_tensor(np.unique(R.indices[batch]))  # unique positive items
            res = _measure_local(Ah, X, rows, k, keep, args, g)
            results.append(res)
            print(f"{k:>2} {keep:>4} {res['rows']:>5} {res['cols']:>6} "
                  f"{res['cols_over_n']:>6.3f} {res['plan_nnz']:>9} {res['mask_ms']:>8.1f} "
                  f"{res['plan_ms']:>8.1f} {res['local_fwd_bwd_ms']:>12.1f} "
                  f"{res['full_fwd_bwd_ms']:>11.1f} {res['max_abs_diff']:>9.2e}")
    if args.json:
        print(json.dumps(results, indent=2))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="peak memory and time of graph construction")
    b.add_argument("--cases", nargs="+", default=["gowalla:item", "yelp2018:user"])
    b.add_argument("--k", type=int, default=5)
    b.add_argument("--data", type=Path, default=DEFAULT_DATA)
    b.add_argument("--json", action="store_true")
    c = sub.add_parser("_case")
    c.add_argument("name")
    c.add_argument("side")
    c.add_argument("k", type=int)
    c.add_argument("--data", type=Path, default=DEFAULT_DATA)
    loc = sub.add_parser("local", help="batch-local filter cost vs degree k")
    loc.add_argument("--dataset", default="citeulike")
    loc.add_argument("--data", type=Path, default=DEFAULT_DATA)
    loc.add_argument("--K", type=int, default=5, help="top-K of the co-occurrence graph")
    loc.add_argument("--batch", type=int, default=2048, help="interactions per batch")
    loc.add_argument("--dim", type=int, default=400, help="feature width (teacher dim)")
    loc.add_argument("--alpha", type=float, default=0.5)
    loc.add_argument("--keep", type=float, nargs="+", default=[0.5, 1.0])
    loc.add_argument("--max-degree", type=int, default=4)
    loc.add_argument("--reps", type=int, default=5)
    loc.add_argument("--threads", type=int, default=1)
    loc.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    if args.cmd == "build":
        cmd_build(args)
    elif args.cmd == "_case":
        print(json.dumps(_case(args.data, args.name, args.side, args.k)))
    else:
        cmd_local(args)


if __name__ == "__main__":
    main()
