"""Top-K ranking metrics as pure torch functions on a hit matrix.

Every function takes

- ``hits``: bool (or 0/1) tensor ``[B, K_max]``; ``hits[b, r]`` says whether the item ranked
  at position ``r`` (0-based, best first) for user ``b`` is a ground-truth item;
- ``n_gt``: integer tensor ``[B]``, the size of each user's ground-truth set;
- ``k``: the cut-off (``k <= K_max``),

and returns a float tensor ``[B]`` of per-user values (users with ``n_gt == 0`` get 0).
Definitions (PROTOCOL.md, "Evaluation"):

- Recall@K    = hits in top-K / |gt|
- Precision@K = hits in top-K / K
- HitRate@K   = 1 if any hit in top-K else 0
- NDCG@K      = sum_r hit_r / log2(r + 2)  /  sum_{j < min(|gt|, K)} 1 / log2(j + 2)
  (binary gains)
- MRR@K       = 1 / (rank of the first hit, 1-based) if it is within top-K else 0
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Callable

import torch
from torch import Tensor

__all__ = [
    "DEFAULT_KS",
    "METRICS",
    "compute_metrics",
    "hitrate",
    "metric_keys",
    "mrr",
    "ndcg",
    "precision",
    "recall",
]

#: default cut-offs (issue 2: "default 10, 20, 50")
DEFAULT_KS: tuple[int, ...] = (10, 20, 50)


def _top(hits: Tensor, k: int) -> Tensor:
    if k < 1 or k > hits.shape[-1]:
        raise ValueError(f"cut-off k={k} outside 1..{hits.shape[-1]} (hit matrix width)")
    return hits[..., :k].to(torch.float32)


def recall(hits: Tensor, n_gt: Tensor, k: int) -> Tensor:
    """Hits in the top ``k`` divided by the ground-truth size (0 when it is empty)."""
    h = _top(hits, k).sum(-1)
    return h / n_gt.to(h.dtype).clamp(min=1)


def precision(hits: Tensor, n_gt: Tensor, k: int) -> Tensor:
    """Hits in the top ``k`` divided by ``k``."""
    del n_gt
    return _top(hits, k).sum(-1) / k


def hitrate(hits: Tensor, n_gt: Tensor, k: int) -> Tensor:
    """1 when at least one of the top ``k`` is a hit, else 0."""
    del n_gt
    return (_top(hits, k).sum(-1) > 0).to(torch.float32)


def _discounts(k: int, device: torch.device) -> Tensor:
    return 1.0 / torch.log2(torch.arange(k, device=device, dtype=torch.float32) + 2.0)


def ndcg(hits: Tensor, n_gt: Tensor, k: int) -> Tensor:
    """Binary-gain NDCG@k; the ideal DCG places ``min(|gt|, k)`` hits at the top."""
    h = _top(hits, k)
    disc = _discounts(k, h.device)
    dcg = h @ disc
    # idcg[m] = sum of the first m discounts, m = 0..k
    idcg_table = torch.cat([disc.new_zeros(1), disc.cumsum(0)])
    n_ideal = n_gt.to(torch.long).clamp(min=0, max=k)
    idcg = idcg_table[n_ideal]
    return torch.where(n_ideal > 0, dcg / idcg.clamp(min=1e-12), torch.zeros_like(dcg))


def mrr(hits: Tensor, n_gt: Tensor, k: int) -> Tensor:
    """Reciprocal (1-based) rank of the first hit within the top ``k``, else 0."""
    del n_gt
    h = _top(hits, k)
    ranks = torch.arange(1, k + 1, device=h.device, dtype=torch.float32)
    # the largest of hit_r / rank_r is the first hit's reciprocal rank
    return (h / ranks).amax(-1)


#: name -> function, in the order the result dictionaries list them
METRICS: dict[str, Callable[[Tensor, Tensor, int], Tensor]] = {
    "recall": recall,
    "ndcg": ndcg,
    "precision": precision,
    "hitrate": hitrate,
    "mrr": mrr,
}


def metric_keys(ks: Iterable[int], metrics: Sequence[str] = tuple(METRICS)) -> list[str]:
    """The result keys, e.g. ``["recall@10", "ndcg@10", ...]`` (metric-major per K)."""
    return [f"{m}@{k}" for m in metrics for k in ks]


def compute_metrics(
    hits: Tensor, n_gt: Tensor, ks: Iterable[int], metrics: Sequence[str] = tuple(METRICS)
) -> dict[str, Tensor]:
    """Per-user values ``{"recall@10": Tensor[B], ...}`` for every metric and cut-off."""
    out: dict[str, Tensor] = {}
    ks = list(ks)
    for m in metrics:
        if m not in METRICS:
            raise ValueError(f"unknown metric {m!r}; expected one of {list(METRICS)}")
        fn = METRICS[m]
        for k in ks:
            out[f"{m}@{k}"] = fn(hits, n_gt, k)
    return out
