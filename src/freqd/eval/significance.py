"""Per-user significance tests between two models (or two groups of seeds).

A paired test over 3-5 training seeds has little power; the usual complement in the
recommender literature is a paired test over the *users* of the test split, each user's
metric being one paired observation. This module does that, with the users' values of a
group of runs (e.g. the seeds of one method) averaged per user first, so seed noise is
folded into each user's value rather than ignored:

    a[u] = mean over A's runs of metric(u),   b[u] likewise,   d[u] = a[u] - b[u]

and for each metric reports the means, the mean difference with its 95% t interval, how
many users each side wins, the two-sided paired t-test (``scipy.stats.ttest_rel``), the
Wilcoxon signed-rank test (``scipy.stats.wilcoxon``, zero differences dropped: the
"wilcox" method) and the t-test's p-values Holm-adjusted over the metrics compared.

What it does not say: a per-user test treats users as the only source of randomness.
Training randomness enters only through the seeds averaged in; read it beside the
over-seeds test of ``scripts/paired_tests.py``, not instead of it.
"""
from __future__ import annotations

import math
from typing import Dict, List, Sequence

import numpy as np

__all__ = ["holm", "paired_user_tests"]


def holm(pvalues: Sequence[float]) -> List[float]:
    """Holm-Bonferroni adjusted p-values (same order as given; NaN stays NaN)."""
    p = np.asarray(pvalues, dtype=np.float64)
    out = np.full_like(p, np.nan)
    ok = np.flatnonzero(~np.isnan(p))
    m = len(ok)
    if m == 0:
        return out.tolist()
    order = ok[np.argsort(p[ok], kind="stable")]
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out.tolist()


def paired_user_tests(a: np.ndarray, b: np.ndarray, keys: Sequence[str]) -> List[Dict[str, float]]:
    """Paired tests over users between ``a`` and ``b``, float arrays ``[n_users, len(keys)]``
    holding the same users in the same order. One dict per key (see the module doc)."""
    from scipy import stats

    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 2 or a.shape[1] != len(keys):
        raise ValueError(f"per-user arrays must both be [n_users, {len(keys)}], got {a.shape} and {b.shape}")
    n = a.shape[0]
    rows: List[Dict[str, float]] = []
    for j, key in enumerate(keys):
        x, y = a[:, j], b[:, j]
        d = x - y
        mean_d = float(d.mean()) if n else float("nan")
        sd = float(d.std(ddof=1)) if n > 1 else float("nan")
        if n > 1 and sd > 0:
            half = float(stats.t.ppf(0.975, n - 1)) * sd / math.sqrt(n)
            p_t = float(stats.ttest_rel(x, y).pvalue)
        else:  # no spread: every user's difference is the same (or one user)
            half = 0.0 if n > 1 else float("nan")
            p_t = float("nan") if n < 2 or mean_d == 0 else 0.0
        nonzero = int(np.count_nonzero(d))
        p_w = float(stats.wilcoxon(d[d != 0]).pvalue) if nonzero > 0 else float("nan")
        mean_b = float(y.mean()) if n else float("nan")
        rows.append({
            "metric": key,
            "users": n,
            "mean_a": float(x.mean()) if n else float("nan"),
            "mean_b": mean_b,
            "diff": mean_d,
            "rel": mean_d / mean_b if mean_b else float("nan"),
            "ci_low": mean_d - half,
            "ci_high": mean_d + half,
            "a_better": int((d > 0).sum()),
            "b_better": int((d < 0).sum()),
            "ties": n - nonzero,
            "p_t": p_t,
            "p_wilcoxon": p_w,
        })
    for r, ph in zip(rows, holm([r["p_t"] for r in rows])):
        r["p_t_holm"] = ph
    return rows
