"""Cost of subnormal floats in a projector step, with and without flush-to-zero.

Takes the expert projectors' weights *and* Adam state from a run's checkpoint (e.g. the fd
student with a 2000-d LightGCN teacher of docs/RESULTS.md session 12, whose steps had slowed
from 1.2 s to 23 s per batch at epoch 32), counts their subnormal entries, and times, side
by side in one process, the same work with ``torch.set_flush_denormal`` off and on:
forward + backward of the projector (every expert's two layers) over ROWS random student
rows, then one Adam step from the checkpointed state. Without a checkpoint, synthetic
weights get a given fraction of subnormal entries.

    python benchmarks/bench_denormal.py --checkpoint RUN/checkpoint.pt --threads 1
    python benchmarks/bench_denormal.py --fraction 0.005 --teacher-dim 2000 --hidden 200
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

TINY = torch.finfo(torch.float32).tiny


def subnormal(t: torch.Tensor) -> int:
    a = t.abs()
    return int(((a > 0) & (a < TINY)).sum())


def load_banks(path: str):
    """The expert banks of a checkpoint's distiller, each with its Adam state. The optimizer
    holds the student's parameters first, then the distiller's in registration order (its
    state_dict order); the match is checked shape by shape."""
    ck = torch.load(path, map_location="cpu", weights_only=False)
    dist = ck["distiller"]
    opt = ck["optimizer"]
    order = [i for g in opt["param_groups"] for i in g["params"]]
    keys = [k for k, v in dist.items() if torch.is_tensor(v) and v.is_floating_point()]
    tail = order[len(order) - len(keys):]
    state = {}
    for k, i in zip(keys, tail):
        s = opt["state"].get(i)
        if s is None or s["exp_avg"].shape != dist[k].shape:
            raise SystemExit(f"{path}: optimizer state does not line up with the distiller's parameters at {k}")
        state[k] = s
    names = sorted({k.rsplit(".", 1)[0] for k in dist if k.endswith(".bank.w1")})
    return [(n, [dist[f"{n}.{p}"].float() for p in ("w1", "b1", "w2", "b2")],
             [state[f"{n}.{p}"] for p in ("w1", "b1", "w2", "b2")]) for n in names]


def synthetic(d_s, hidden, d_t, experts, fraction, seed=0):
    g = torch.Generator().manual_seed(seed)
    ps = [torch.randn(experts, d_s, hidden, generator=g) / d_s ** 0.5, torch.zeros(experts, hidden),
          torch.randn(experts, hidden, d_t, generator=g) / hidden ** 0.5, torch.zeros(experts, d_t)]
    st = []
    for p in ps:
        m = torch.randn(p.shape, generator=g) * 1e-4
        mask = torch.rand(p.shape, generator=g) < fraction
        m[mask] = 1e-39
        p2 = p.clone()
        p2[torch.rand(p.shape, generator=g) < fraction / 10] = 1e-39
        p.copy_(p2)
        st.append({"step": torch.tensor(1000.0), "exp_avg": m, "exp_avg_sq": m.abs() ** 2 + 1e-12})
    return [("synthetic", ps, st)]


def step(ps, st, x, lr=1e-3, wd=1e-3):
    w1, b1, w2, b2 = [p.detach().clone().requires_grad_(True) for p in ps]
    h = torch.relu(torch.einsum("nd,edh->enh", x, w1) + b1[:, None, :])
    y = torch.einsum("enh,eht->nt", h, w2) / w1.shape[0] + b2.mean(0)
    y.pow(2).sum().backward()
    opt = torch.optim.Adam([w1, b1, w2, b2], lr=lr, weight_decay=wd)
    for p, s in zip([w1, b1, w2, b2], st):
        if s is not None:
            opt.state[p] = {k: v.clone() for k, v in s.items()}
    t = time.perf_counter()
    opt.step()
    return time.perf_counter() - t


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint")
    ap.add_argument("--fraction", type=float, default=0.005)
    ap.add_argument("--student-dim", type=int, default=20)
    ap.add_argument("--teacher-dim", type=int, default=2000)
    ap.add_argument("--hidden", type=int, default=200)
    ap.add_argument("--experts", type=int, default=5)
    ap.add_argument("--rows", type=int, default=2000)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    banks = load_banks(a.checkpoint) if a.checkpoint else synthetic(
        a.student_dim, a.hidden, a.teacher_dim, a.experts, a.fraction)
    src = a.checkpoint or f"synthetic weights, {a.fraction:.2%} of Adam's first moments subnormal"
    print(f"{src}; {a.rows} rows, threads {a.threads}, median of {a.reps}")
    for name, ps, st in banks:
        counts = ", ".join(f"{k} {subnormal(p):,}/{p.numel():,}" for k, p in zip(("w1", "b1", "w2", "b2"), ps))
        m = ", ".join(f"{k} {subnormal(s['exp_avg']):,}" for k, s in zip(("w1", "b1", "w2", "b2"), st) if s is not None)
        print(f"{name}: subnormal weights {counts}; subnormal exp_avg {m}")
    x = torch.randn(a.rows, banks[0][1][0].shape[1], generator=torch.Generator().manual_seed(1))
    print("\n| bank | flush | fwd+bwd+Adam s | Adam step s |\n|---|---|---|---|")
    res = {}
    for name, ps, st in banks:
        for flush in (False, True):
            torch.set_flush_denormal(flush)
            tot, opt = [], []
            for _ in range(a.reps):
                t = time.perf_counter()
                o = step(ps, st, x)
                tot.append(time.perf_counter() - t)
                opt.append(o)
            res[name, flush] = statistics.median(tot)
            print(f"| {name} | {'on' if flush else 'off'} | {res[name, flush]:.3f} | {statistics.median(opt):.3f} |")
    torch.set_flush_denormal(False)
    for name, *_ in banks:
        print(f"{name}: off / on = {res[name, False] / res[name, True]:.2f}x")


if __name__ == "__main__":
    main()
