"""Rayleigh quotient tr(XᵀLX)/tr(XᵀX) of runs' own final representations over a side's
co-occurrence graph (L = I - Â of freqd's top-K co-occurrence graph): how smooth each
model's users / items are over the graph (0 = constant on connected parts, higher = rougher),
and the mean Euclidean norm of the rows (the scale of the dot-product scores: a student whose
rows stay near their initial norm scores every item near 0).
Any run works (teacher, student from scratch, any distilled student), unlike
``freqd spectrum``, which needs a projector into the teacher's space.

Run:  python scripts/rayleigh_quotients.py RUN [RUN ...] [--k 5] [--sides user,item]
"""
from __future__ import annotations

import argparse


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--sides", default="user,item")
    a = ap.parse_args()
    import numpy as np
    import torch

    from freqd.api import Run
    from freqd.spectral.analysis import rayleigh_quotient
    from freqd.spectral.graphs import build_graph, laplacian, normalize_adjacency

    runs = [Run(r) for r in a.runs]
    ds = runs[0].dataset
    print("side\trun\trayleigh_quotient\tmean_row_norm")
    for side in a.sides.split(","):
        L = laplacian(normalize_adjacency(build_graph("cooccurrence", ds.train, side=side, k=a.k)))
        for path, run in zip(a.runs, runs):
            if run.dataset.fingerprint() != ds.fingerprint():
                raise SystemExit(f"{path}: trained on other data than {a.runs[0]}")
            with torch.no_grad():
                X = run.model.propagate()[0 if side == "user" else 1].detach().cpu().double().numpy()
            norm = float(np.linalg.norm(X, axis=1).mean())
            print(f"{side}\t{path.rstrip('/').split('/')[-1]}\t{rayleigh_quotient(L, X):.4f}\t{norm:.4f}", flush=True)


if __name__ == "__main__":
    main()
