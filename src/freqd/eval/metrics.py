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
    "metric_matrix",
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
    """The result keys in order, metric-major: ``["recall@10", "recall@20", ..., "ndcg@10",
    ...]``."""
    return [f"{m}@{k}" for m in metrics for k in ks]


def metric_matrix(
    hits: Tensor, n_gt: Tensor, ks: Sequence[int], metrics: Sequence[str] = tuple(METRICS)
) -> Tensor:
    """All metrics at all cut-offs at once: float tensor ``[B, len(metrics) * len(ks)]``,
    columns in :func:`metric_keys` order.

    Same values as the per-metric functions, from one cumulative sum of the hits (a few
    kernels instead of a few per metric and K: what the evaluator calls per chunk).
    """
    ks = [int(k) for k in ks]
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise ValueError(f"unknown metric {unknown[0]!r}; expected one of {list(METRICS)}")
    kmax = max(ks)
    if min(ks) < 1 or kmax > hits.shape[-1]:
        raise ValueError(f"cut-offs {ks} outside 1..{hits.shape[-1]} (hit matrix width)")
    dev = hits.device
    h = hits[:, :kmax].to(torch.float32)
    col = torch.tensor([k - 1 for k in ks], device=dev)
    k_t = torch.tensor(ks, device=dev, dtype=torch.float32)
    n_hit = h.cumsum(1)[:, col]  # [B, nk]
    cols: dict[str, Tensor] = {}
    if "recall" in metrics:
        cols["recall"] = n_hit / n_gt.to(torch.float32).clamp(min=1).unsqueeze(1)
    if "precision" in metrics:
        cols["precision"] = n_hit / k_t
    if "hitrate" in metrics:
        cols["hitrate"] = (n_hit > 0).to(torch.float32)
    if "ndcg" in metrics:
        disc = _discounts(kmax, dev)
        dcg = (h * disc).cumsum(1)[:, col]
        idcg_table = torch.cat([disc.new_zeros(1), disc.cumsum(0)])
        n_ideal = torch.minimum(n_gt.to(torch.long).clamp(min=0).unsqueeze(1), col + 1)
        idcg = idcg_table[n_ideal]
        cols["ndcg"] = torch.where(n_ideal > 0, dcg / idcg.clamp(min=1e-12), torch.zeros_like(dcg))
    if "mrr" in metrics:
        first = h.argmax(1, keepdim=True)  # first hit (0 when there is none)
        has = h.gather(1, first) > 0
        rr = torch.where(
            has, 1.0 / (first + 1).to(torch.float32), torch.zeros_like(has, dtype=torch.float32)
        )
        cols["mrr"] = torch.where(first <= col.unsqueeze(0), rr, torch.zeros_like(rr))
    return torch.cat([cols[m] for m in metrics], dim=1)


def compute_metrics(
    hits: Tensor, n_gt: Tensor, ks: Iterable[int], metrics: Sequence[str] = tuple(METRICS)
) -> dict[str, Tensor]:
    """Per-user values ``{"recall@10": Tensor[B], ...}`` for every metric and cut-off."""
    ks = list(ks)
    mat = metric_matrix(hits, n_gt, ks, metrics)
    return {key: mat[:, j] for j, key in enumerate(metric_keys(ks, metrics))}
