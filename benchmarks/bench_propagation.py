"""LightGCN propagation (forward + backward of ``mean_l Â^l``, 3 layers): nodes in id order
against the locality order LightGCN propagates in (reverse Cuthill-McKee,
``freqd.models.lightgcn.locality_order``), same model, alternated in one process.

The locality order makes the sparse products read neighbouring rows of X from cache; it
costs one extra gather of the [n, d] result each way (the tables are scattered into the
order in place of the concatenation). Prints min and median seconds of each and the ratio.

    python benchmarks/bench_propagation.py --dataset citeulike-t --dim 2000
    python benchmarks/bench_propagation.py --dataset gowalla --dim 512
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
    ap.add_argument("--dim", type=int, default=2000)
    ap.add_argument("--layers", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=6)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    from freqd.data.load import load_dataset
    from freqd.models.lightgcn import LightGCN, LightGCNConfig, Workspace, _LayerMean, csr_buffer
    from freqd.utils.memory import keep_freed_memory

    keep_freed_memory()  # as in training
    ds = load_dataset(a.dataset, data_dir=a.data_dir)
    m = LightGCN(ds.n_users, ds.n_items, LightGCNConfig(dim=a.dim, n_layers=a.layers), ds.train)
    n = ds.n_users + ds.n_items
    variants = {
        "id order": (m.graph, torch.arange(n), Workspace()),
        "locality order": (csr_buffer(m, "graph_local"), m.node_pos, Workspace()),
    }
    times: dict = {k: [] for k in variants}
    for rep in range(a.repeats + 1):
        for name, (g, pos, ws) in variants.items():
            m.zero_grad(set_to_none=True)
            t0 = time.perf_counter()
            u, i = _LayerMean.apply(g, pos, a.layers, ws, m.user_emb.weight, m.item_emb.weight)
            (u.sum() + i.sum()).backward()
            if rep:  # the first round warms up
                times[name].append(time.perf_counter() - t0)
    print(f"{a.dataset}: {n:,} nodes, {m.graph.values().numel():,} stored entries, d = {a.dim}, "
          f"{a.layers} layers, {a.threads} thread(s), {a.repeats} repeats")
    for name, ts in times.items():
        print(f"  {name:15s} min {min(ts):.3f} s  median {statistics.median(ts):.3f} s")
    idm, loc = statistics.median(times["id order"]), statistics.median(times["locality order"])
    print(f"  id / locality (medians): {idm / loc:.2f}x")


if __name__ == "__main__":
    main()
