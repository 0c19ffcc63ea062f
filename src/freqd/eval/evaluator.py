"""Full-ranking evaluation in user chunks, with the two masking protocols of PROTOCOL.md.

``standard`` (default; RecBole, the HetComp/TD authors)
    valid: training items masked; test: training and validation items masked. Metrics are
    averaged over the users with at least one ground-truth item in the split.
``paper`` (the FreqD authors' code)
    training items masked for both splits (validation items stay rankable at test). Metrics
    are averaged over all users; users without ground truth count 0.

Per chunk of users: ``score_fn`` gives fresh scores ``[B, n_items]``; one ``index_put`` writes
``-inf`` at the masked (user, item) pairs; :func:`~freqd.eval.topk.topk_ranked` takes the
top ``max(ks)`` (ties: lower item id first); hits come from a sorted-key membership test
against the chunk's ground-truth CSR rows. Memory is one score chunk (``chunk_size`` users,
by default what fits in 256 MB) plus O(B * K); no ``|U| x |I|`` matrix is built. Users
without ground truth are never scored (they contribute 0 under either protocol).
Masked items never count as hits.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from ..errors import ConfigError
from .metrics import DEFAULT_KS, METRICS, metric_keys, metric_matrix
from .topk import DEFAULT_MEMORY_BUDGET, CSRRows, ScoreFn, _fresh, default_chunk_size, topk_ranked

if TYPE_CHECKING:  # pragma: no cover
    from ..data.dataset import Dataset

__all__ = ["PROTOCOLS", "Evaluator", "evaluate", "hits_from_topk"]

#: masking protocols (PROTOCOL.md, "Evaluation")
PROTOCOLS = ("standard", "paper")
EVAL_SPLITS = ("valid", "test")


def _check_ks(ks: Iterable[int]) -> tuple[int, ...]:
    try:
        out = tuple(sorted({int(k) for k in ks}))
    except (TypeError, ValueError):
        raise ConfigError(
            f"option 'ks': expected a list of positive integers, got {ks!r}"
        ) from None
    if not out or out[0] < 1:
        raise ConfigError(
            f"option 'ks': expected a non-empty list of positive integers, got {ks!r}"
        )
    return out


def hits_from_topk(idx: Tensor, gt_rows: Tensor, gt_cols: Tensor, n_items: int) -> Tensor:
    """``hits[b, r] = idx[b, r]`` is among row ``b``'s ground-truth items.

    ``(gt_rows, gt_cols)`` are the chunk's ground-truth entries sorted by (row, col), as
    :meth:`CSRRows.gather` returns them; the test is a binary search on ``row * n_items + col``.
    """
    if gt_rows.numel() == 0:
        return torch.zeros(idx.shape, dtype=torch.bool, device=idx.device)
    keys = gt_rows * n_items + gt_cols
    q = torch.arange(idx.shape[0], device=idx.device).unsqueeze(1) * n_items + idx
    pos = torch.searchsorted(keys, q).clamp_(max=keys.numel() - 1)
    return keys[pos] == q


class Evaluator:
    """Reusable full-ranking evaluator for one dataset and protocol.

    Builds the mask and ground-truth index once per split, so calling :meth:`evaluate`
    every epoch costs only the scoring and ranking.
    """

    def __init__(
        self,
        dataset: Dataset,
        protocol: str = "standard",
        ks: Iterable[int] = DEFAULT_KS,
        chunk_size: int | None = None,
        device: str | torch.device | None = None,
        memory_budget: int = DEFAULT_MEMORY_BUDGET,
        metrics: Sequence[str] = tuple(METRICS),
    ):
        if protocol not in PROTOCOLS:
            raise ConfigError(f"option 'protocol': {protocol!r} is not one of {list(PROTOCOLS)}")
        if chunk_size is not None and int(chunk_size) < 1:
            raise ConfigError(f"option 'chunk_size': must be a positive integer, got {chunk_size}")
        unknown = [m for m in metrics if m not in METRICS]
        if unknown:
            raise ConfigError(
                f"option 'metrics': unknown metric {unknown[0]!r}; expected some of {list(METRICS)}"
            )
        self.dataset = dataset
        self.protocol = protocol
        self.ks = _check_ks(ks)
        self.metrics = tuple(metrics)
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.chunk_size = (
            int(chunk_size) if chunk_size else default_chunk_size(dataset.n_items, memory_budget)
        )
        self._prepared: dict[str, tuple[CSRRows, CSRRows, Tensor, int]] = {}

    # -- protocol ---------------------------------------------------------------------------
    def masked_splits(self, split: str) -> tuple[str, ...]:
        """The splits whose items are masked when ranking for ``split``."""
        if self.protocol == "standard" and split == "test":
            return ("train", "valid")
        return ("train",)

    def _prepare(self, split: str) -> tuple[CSRRows, CSRRows, Tensor, int]:
        if split not in EVAL_SPLITS:
            raise ConfigError(f"option 'split': {split!r} is not one of {list(EVAL_SPLITS)}")
        if split not in self._prepared:
            ds = self.dataset
            shape = (ds.n_users, ds.n_items)
            mask = CSRRows.union([ds.split(s) for s in self.masked_splits(split)], shape)
            gt = CSRRows(ds.split(split))
            ip, _ = gt.on(torch.device("cpu"))
            users = torch.nonzero(ip[1:] > ip[:-1]).squeeze(1)  # users with ground truth
            denom = len(users) if self.protocol == "standard" else ds.n_users
            self._prepared[split] = (mask, gt, users, denom)
        return self._prepared[split]

    # -- evaluation ---------------------------------------------------------------------------
    def _chunks(self, score_fn: ScoreFn, split: str):
        """Yield ``(users, metric matrix)`` per chunk of the users with ground truth in
        ``split`` (columns in :func:`~freqd.eval.metrics.metric_keys` order)."""
        mask, gt, users, _ = self._prepare(split)
        n_items = self.dataset.n_items
        kmax = self.ks[-1]
        with torch.no_grad():
            for s in range(0, len(users), self.chunk_size):
                u_cpu = users[s : s + self.chunk_size]
                scores = _fresh(score_fn(u_cpu.to(self.device)), (len(u_cpu), n_items))
                u = u_cpu.to(scores.device)
                rows, cols, _ = mask.gather(u, u_cpu)
                scores.index_put_((rows, cols), scores.new_full((), float("-inf")))
                vals, idx = topk_ranked(scores, kmax)
                del scores
                g_rows, g_cols, n_gt = gt.gather(u, u_cpu)
                hits = hits_from_topk(idx, g_rows, g_cols, n_items) & ~torch.isneginf(vals)
                if hits.shape[1] < kmax:  # fewer items than K
                    hits = torch.nn.functional.pad(hits, (0, kmax - hits.shape[1]))
                yield u_cpu, metric_matrix(hits, n_gt, self.ks, self.metrics)

    def evaluate(self, score_fn: ScoreFn, split: str = "valid") -> dict[str, object]:
        """Metrics ``{"recall@10": float, ..., "n_users": int, "protocol": str}``.

        ``score_fn(users)`` gets a LongTensor of user ids on ``self.device`` and must return
        a fresh ``[len(users), n_items]`` score tensor (any device; it is masked in place).
        """
        denom = self._prepare(split)[3]
        sums: Tensor | None = None
        for _, mat in self._chunks(score_fn, split):
            chunk = mat.sum(0, dtype=torch.float64)
            sums = chunk if sums is None else sums + chunk
        keys = metric_keys(self.ks, self.metrics)
        totals = sums.tolist() if sums is not None else [0.0] * len(keys)
        out: dict[str, object] = {
            key: (t / denom if denom else 0.0) for key, t in zip(keys, totals)
        }
        out["n_users"] = int(denom)
        out["protocol"] = self.protocol
        return out

    def per_user(self, score_fn: ScoreFn, split: str = "test") -> tuple[Tensor, Tensor, list[str]]:
        """Each user's metrics, for per-user significance tests: ``(users, values, keys)``
        with ``users`` the ids (ascending) of the users with ground truth in ``split``,
        ``values`` a float64 ``[len(users), len(keys)]`` tensor on the CPU.

        Under ``standard`` the mean of a column is :meth:`evaluate`'s number; under ``paper``
        :meth:`evaluate` also counts the users without ground truth (as 0), so its number is
        the column sum over ``dataset.n_users``."""
        us, vs = [], []
        for u, mat in self._chunks(score_fn, split):
            us.append(u)
            vs.append(mat.to("cpu", torch.float64))
        keys = metric_keys(self.ks, self.metrics)
        if not us:
            return torch.zeros(0, dtype=torch.long), torch.zeros(0, len(keys), dtype=torch.float64), keys
        return torch.cat(us), torch.cat(vs), keys


def evaluate(
    score_fn: ScoreFn,
    dataset: Dataset,
    split: str = "valid",
    protocol: str = "standard",
    ks: Iterable[int] = DEFAULT_KS,
    chunk_size: int | None = None,
    device: str | torch.device | None = None,
) -> dict[str, object]:
    """Full-ranking metrics of ``score_fn`` on ``split`` under ``protocol``.

    One-shot form of :class:`Evaluator` (use the class to evaluate repeatedly). Keys:
    ``recall@K``, ``ndcg@K``, ``precision@K``, ``hitrate@K``, ``mrr@K`` for each ``K`` in
    ``ks``, plus ``n_users`` (the users averaged over) and ``protocol``.
    """
    return Evaluator(
        dataset, protocol=protocol, ks=ks, chunk_size=chunk_size, device=device
    ).evaluate(score_fn, split)
