"""Shared pieces of the ranking (response-based) distillers, written once and unit-tested.

Everything here works on user chunks or on per-user lists; nothing of size |U| x |I| is
ever built whole:

- :func:`teacher_topk`: train-masked top-K lists from any ``score_fn(users) -> [B, |I|]``.
- :func:`count_higher`: the rank of given items in a model's full (train-masked) ranking,
  as the number of items scoring strictly higher, without sorting any score row.
- :func:`rank_sampling_probs`, :func:`sample_without_replacement`: rank-based sampling
  (p proportional to exp(-r/T)), vectorised over users with the Gumbel top-k trick.
- :func:`relaxed_ranking_loss`: RRD's list loss, computed with ``logcumsumexp``.
- :class:`ItemExclusion`: per-user excluded item sets (training items, top lists) as
  sorted keys; uniform sampling from the complement without a dense mask.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Callable

import numpy as np
import torch
from torch import Tensor

ScoreFn = Callable[[Tensor], Tensor]


# --------------------------------------------------------------------------------------
# CSR helpers
# --------------------------------------------------------------------------------------
def csr_entries(indptr: np.ndarray, indices: np.ndarray, users: np.ndarray):
    """Row positions and column ids of the given users' CSR entries (vectorised).

    Returns ``(rows, cols)`` int64 arrays; ``rows`` index into ``users`` (0..len-1).
    """
    users = np.asarray(users, dtype=np.int64)
    starts = indptr[users].astype(np.int64)
    counts = (indptr[users + 1] - indptr[users]).astype(np.int64)
    total = int(counts.sum())
    rows = np.repeat(np.arange(len(users), dtype=np.int64), counts)
    if total == 0:
        return rows, np.zeros(0, dtype=np.int64)
    # position of each entry = start of its row + offset within the row
    offsets = np.arange(total, dtype=np.int64) - np.repeat(np.cumsum(counts) - counts, counts)
    cols = indices[np.repeat(starts, counts) + offsets].astype(np.int64)
    return rows, cols


def _mask_rows(scores: Tensor, train_csr, users: np.ndarray, value: float = float("-inf")) -> Tensor:
    """Set the training items of ``users`` (rows of ``scores``) to ``value``, in place."""
    rows, cols = csr_entries(train_csr.indptr, train_csr.indices, users)
    if len(rows):
        dev = scores.device
        scores[torch.as_tensor(rows, device=dev), torch.as_tensor(cols, device=dev)] = value
    return scores


def _as_users(users, n_users: int) -> np.ndarray:
    if users is None:
        return np.arange(n_users, dtype=np.int64)
    if isinstance(users, Tensor):
        return users.detach().cpu().numpy().astype(np.int64)
    return np.asarray(users, dtype=np.int64)


# --------------------------------------------------------------------------------------
# top-K lists and ranks, in user chunks
# --------------------------------------------------------------------------------------
@torch.no_grad()
def teacher_topk(
    score_fn: ScoreFn,
    train_csr,
    k: int,
    chunk_size: int = 1024,
    users: np.ndarray | Tensor | Sequence[int] | None = None,
    mask_train: bool = True,
    return_scores: bool = False,
    device: torch.device | None = None,
):
    """Top-``k`` items per user by ``score_fn``, training items excluded, in user chunks.

    ``score_fn(users) -> [B, |I|]`` gives full score rows for a CPU LongTensor of user ids
    (it moves them to its model's device). Works for any model, teacher or student.
    Returns a LongTensor ``[len(users), k]`` of item ids in descending score order (and
    their scores if ``return_scores``) on ``device`` (default: the device of the scores).
    Only ``chunk_size`` x |I| scores exist at a time. Raises ``ValueError`` if a user has
    fewer than ``k`` non-training items.
    """
    n_users, n_items = train_csr.shape
    users = _as_users(users, n_users)
    if k > n_items:
        raise ValueError(f"k={k} exceeds the number of items ({n_items})")
    if mask_train and len(users):
        most = int((train_csr.indptr[users + 1] - train_csr.indptr[users]).max())
        if k > n_items - most:
            raise ValueError(
                f"k={k} exceeds the {n_items - most} non-training items of the most active user"
            )
    items_out, scores_out = [], []
    for lo in range(0, len(users), chunk_size):
        uc = users[lo:lo + chunk_size]
        s = score_fn(torch.from_numpy(uc)).float().clone()
        if mask_train:
            _mask_rows(s, train_csr, uc)
        val, idx = torch.topk(s, k, dim=1)
        dev = device if device is not None else s.device
        items_out.append(idx.to(dev))
        if return_scores:
            scores_out.append(val.to(dev))
    if not items_out:
        items_out = [torch.zeros(0, k, dtype=torch.long, device=device)]
        scores_out = [torch.zeros(0, k, device=device)]
    items = torch.cat(items_out)
    return (items, torch.cat(scores_out)) if return_scores else items


@torch.no_grad()
def count_higher(
    score_fn: ScoreFn,
    train_csr,
    items: Tensor,
    chunk_size: int = 256,
    users: np.ndarray | Tensor | Sequence[int] | None = None,
    mask_train: bool = True,
    cap: int | None = None,
) -> Tensor:
    """0-based rank of ``items[r, j]`` in user ``users[r]``'s ranking: the number of items
    scoring strictly higher.

    ``items`` is ``[len(users), m]``; the result has its shape and device. With
    ``mask_train`` training items never count as higher (the rank among non-training
    items, like a train-masked top list). Ties count as not higher (tied items share the
    best rank; an argsort would break them arbitrarily).

    No score row is sorted and no |U| x |I| argsort is built: per chunk, each of the |I|
    scores is bucketed among the m sorted target scores (``searchsorted``, O(|I| log m))
    and the buckets are counted.

    ``cap``: return ``min(rank, cap)``, for callers that only need exact ranks below
    ``cap``. Then only each row's top-``cap`` scores are selected (``topk``, several times
    cheaper than bucketing every score) and the targets are located among them: fewer
    than ``cap`` higher scores in the top-``cap`` means the count is exact.
    """
    n_users, n_items = train_csr.shape
    users = _as_users(users, n_users)
    m = items.shape[1]
    out = []
    for lo in range(0, len(users), chunk_size):
        uc = users[lo:lo + chunk_size]
        s = score_fn(torch.from_numpy(uc)).float().clone()
        if mask_train:
            _mask_rows(s, train_csr, uc)
        b = len(uc)
        target = s.gather(1, items[lo:lo + b].to(s.device))           # [b, m]
        if cap is not None and cap < n_items:
            top = torch.topk(s, cap, dim=1).values.flip(1).contiguous()  # ascending
            higher = cap - torch.searchsorted(top, target.contiguous(), right=True)
            out.append(higher.to(items.device))
            continue
        tsorted, order = torch.sort(target, dim=1)                    # m per row only
        # bucket(x) = number of targets strictly below x; x > tsorted[p] <=> bucket(x) > p.
        # Masked (-inf) scores land in bucket 0 and are never higher than a target.
        bucket = torch.searchsorted(tsorted.contiguous(), s)
        bucket += torch.arange(b, device=s.device)[:, None] * (m + 1)
        counts = torch.bincount(bucket.view(-1), minlength=b * (m + 1)).view(b, m + 1)
        higher_sorted = n_items - torch.cumsum(counts, dim=1)[:, :m]
        higher = torch.empty_like(higher_sorted).scatter_(1, order, higher_sorted)
        out.append(higher.to(items.device))
    if not out:
        return torch.zeros(0, m, dtype=torch.long, device=items.device)
    return torch.cat(out)


# --------------------------------------------------------------------------------------
# rank-based sampling
# --------------------------------------------------------------------------------------
def rank_sampling_probs(k: int, temperature: float, device=None) -> Tensor:
    """p_r proportional to exp(-r / T) for ranks r = 1..k (normalised; float32 [k])."""
    r = torch.arange(1, k + 1, dtype=torch.float64, device=device)
    logits = -r / float(temperature)
    return torch.softmax(logits, 0).float()


def gumbel(shape, generator: torch.Generator | None = None, device=None) -> Tensor:
    """Standard Gumbel noise ``-log(-log U)``, drawn on CPU from ``generator``."""
    u = torch.rand(shape, generator=generator, dtype=torch.float64)
    u = u.clamp_(min=1e-300, max=1 - 1e-16)
    g = -torch.log(-torch.log(u))
    return g.float().to(device) if device is not None else g.float()


def sample_without_replacement(
    weights: Tensor, n: int, generator: torch.Generator | None = None, log: bool = False
) -> Tensor:
    """``n`` distinct column indices per row, row r drawn with p proportional to ``weights[r]``.

    Same distribution as ``torch.multinomial(weights, n, replacement=False)`` (successive
    draws, each proportional to the remaining weights), and the result is in draw order.
    Implemented with the Gumbel top-k trick: ``topk(log w + Gumbel)``. ``weights`` is
    ``[B, K]`` (or ``[K]``, giving ``[n]``); pass ``log=True`` if they are log-weights.
    Zero weights are never drawn; raises ``ValueError`` if a row has fewer than ``n``.
    """
    squeeze = weights.dim() == 1
    w = weights[None] if squeeze else weights
    if n > w.shape[1]:
        raise ValueError(f"cannot draw {n} distinct items from {w.shape[1]}")
    logw = w.float() if log else torch.log(w.float())
    if n > 0:
        n_pos = torch.isfinite(logw).sum(1)
        if bool((n_pos < n).any()):
            raise ValueError(f"a row has fewer than {n} items with positive weight")
    keys = logw + gumbel(tuple(logw.shape), generator, device=logw.device)
    idx = torch.topk(keys, n, dim=1).indices
    return idx[0] if squeeze else idx


def sample_with_replacement_cdf(
    probs: Tensor, lengths: Tensor, n: int, generator: torch.Generator | None = None
) -> Tensor:
    """``n`` iid draws per row from ``probs[:length_r]`` (renormalised), by inverse CDF.

    ``probs`` is one shared ``[K]`` distribution, ``lengths`` ``[B]`` (>= 1) truncates it per
    row. Returns ``[B, n]`` indices in ``[0, length_r)``. Drawn on CPU from ``generator``.
    """
    cdf = torch.cumsum(probs.double().cpu(), 0)
    lengths = lengths.cpu().long().clamp(min=1)
    total = cdf[lengths - 1]                                          # [B]
    u = torch.rand(len(lengths), n, generator=generator, dtype=torch.float64) * total[:, None]
    idx = torch.searchsorted(cdf, u, right=True)
    return torch.minimum(idx, (lengths - 1)[:, None])


# --------------------------------------------------------------------------------------
# losses
# --------------------------------------------------------------------------------------
def relaxed_ranking_loss(
    s1: Tensor,
    s2: Tensor | None = None,
    clip: float | None = 80.0,
    log_mass: Tensor | None = None,
    floor: float | None = None,
    reduction: str = "sum",
) -> Tensor:
    """RRD's relaxed ranking loss (Kang et al., CIKM'20).

    For each row (user) with ordered scores ``s1 = [S1_1..S1_K]`` ("interesting" items in
    the teacher's order) and ``s2 = [S2_1..S2_L]`` (items that only need to rank below)::

        loss_u = -sum_k [ S1_k - log( sum_{j>=k} exp(S1_j) + sum_l exp(S2_l) ) ]

    computed stably: the inner sums are a reversed ``logcumsumexp`` of ``s1`` combined
    with ``logsumexp(s2)`` by ``logaddexp``; nothing overflows whatever the scores.

    ``clip``: scores are clipped from above at this value first (``min(S, clip)``), as the
    authors do (at 80) to keep ``exp`` finite. With the log-space computation this is no
    longer needed for stability; it is kept so that gradients match the authors' (zero for
    scores above the clip). ``None`` disables it.
    ``log_mass``: instead of ``s2``, give ``log(sum_l exp(S2_l))`` directly, shape ``[B]``
    (HetComp's "all other items" mass). ``floor``: clamp each log term at ``log(floor)``
    (HetComp clamps the sum at 1e-5). Returns the sum over rows (``reduction="sum"``) or
    the per-row losses (``"none"``).
    """
    if clip is not None:
        s1 = torch.clamp(s1, max=clip)
        if s2 is not None:
            s2 = torch.clamp(s2, max=clip)
    if log_mass is None:
        if s2 is None:
            raise ValueError("give s2 or log_mass")
        log_mass = torch.logsumexp(s2, dim=1)
    # tail[k] = log sum_{j>=k} exp(s1_j)
    tail = torch.logcumsumexp(s1.flip(-1), dim=-1).flip(-1)
    below = torch.logaddexp(tail, log_mass[:, None])
    if floor is not None:
        below = torch.clamp(below, min=float(np.log(floor)))
    per = (below - s1).sum(1)
    if reduction == "none":
        return per
    if reduction == "sum":
        return per.sum()
    raise ValueError(f"unknown reduction {reduction!r}")


# --------------------------------------------------------------------------------------
# excluded sets and uniform sampling from their complement
# --------------------------------------------------------------------------------------
class ItemExclusion:
    """Per-user sets of excluded items (e.g. training items plus a top list).

    Stored as globally sorted int64 keys ``u * n_items + i`` (no dense |U| x |I| mask).
    :meth:`contains` tests membership with ``searchsorted``; :meth:`sample` draws items
    uniformly from each user's complement by mapping uniform "free ranks" to items.
    """

    def __init__(self, n_users: int, n_items: int, users: Tensor, items: Tensor):
        self.n_users, self.n_items = int(n_users), int(n_items)
        users = torch.as_tensor(users).long().reshape(-1).cpu()
        items = torch.as_tensor(items).long().reshape(-1).cpu()
        keys = torch.unique(users * self.n_items + items)             # sorted, deduplicated
        self.keys = keys
        ku = keys // self.n_items
        counts = torch.bincount(ku, minlength=self.n_users)
        self.indptr = torch.zeros(self.n_users + 1, dtype=torch.long)
        self.indptr[1:] = torch.cumsum(counts, 0)
        self.n_excluded = counts
        # f_j = e_j - (position of e_j within its user): non-decreasing within a user and in
        # [0, n_items), so u * n_items + f_j is globally sorted. The r-th free item (0-based)
        # of user u is r + #{j in u : f_j <= r}.
        pos = torch.arange(len(keys)) - self.indptr[ku]
        self._shift_keys = ku * self.n_items + (keys - ku * self.n_items - pos)

    @classmethod
    def from_csr(cls, csr, extra: Tensor | None = None) -> ItemExclusion:
        """Training items of ``csr`` plus, optionally, a per-user list ``extra`` [U, k]."""
        n_users, n_items = csr.shape
        u = np.repeat(np.arange(n_users, dtype=np.int64), np.diff(csr.indptr))
        users = [torch.from_numpy(u)]
        items = [torch.from_numpy(csr.indices.astype(np.int64))]
        if extra is not None:
            extra = extra.cpu().long()
            users.append(torch.arange(n_users).repeat_interleave(extra.shape[1]))
            items.append(extra.reshape(-1))
        return cls(n_users, n_items, torch.cat(users), torch.cat(items))

    def n_free(self, users: Tensor) -> Tensor:
        return self.n_items - self.n_excluded[users.cpu()]

    def contains(self, users: Tensor, items: Tensor) -> Tensor:
        """Bool tensor (shape of ``items``): is ``items[b, ...]`` excluded for ``users[b]``?"""
        dev = items.device
        u = users.cpu().long().reshape(-1, *([1] * (items.dim() - 1)))
        q = (u * self.n_items + items.cpu().long()).reshape(-1)
        if len(self.keys) == 0:
            return torch.zeros(items.shape, dtype=torch.bool, device=dev)
        pos = torch.searchsorted(self.keys, q).clamp(max=len(self.keys) - 1)
        return (self.keys[pos] == q).reshape(items.shape).to(dev)

    def _rank_to_item(self, users: Tensor, ranks: Tensor) -> Tensor:
        q = users[:, None] * self.n_items + ranks
        c = torch.searchsorted(self._shift_keys, q.reshape(-1), right=True).reshape(q.shape)
        return ranks + (c - self.indptr[users][:, None])

    def sample(
        self,
        users: Tensor,
        n: int,
        generator: torch.Generator | None = None,
        replacement: bool = False,
        max_rounds: int = 64,
    ) -> Tensor:
        """``n`` items per user drawn uniformly from the non-excluded items, ``[B, n]``.

        Without replacement the draws are distinct per row: duplicate free ranks are
        redrawn (rejection) until none remain; rows where ``n`` is more than half the
        free items fall back to Gumbel top-k over a dense row of just those users.
        Drawn on CPU from ``generator``; returned on the device of ``users``.
        """
        dev = users.device
        users = users.cpu().long()
        m = self.n_free(users)                                         # [B]
        if n == 0 or len(users) == 0:
            return torch.zeros(len(users), n, dtype=torch.long, device=dev)
        if bool((m < (1 if replacement else n)).any()):
            raise ValueError(
                f"a user has only {int(m.min())} non-excluded items, cannot draw {n}"
                + ("" if replacement else " distinct ones")
            )

        def draw(rows: Tensor, k: int) -> Tensor:
            u = torch.rand(len(rows), k, generator=generator, dtype=torch.float64)
            return torch.minimum((u * m[rows, None]).long(), m[rows, None] - 1)

        all_rows = torch.arange(len(users))
        ranks = draw(all_rows, n)
        if not replacement and n > 1:
            dense = (2 * n > m)
            sparse_rows = all_rows[~dense]
            for _ in range(max_rounds):
                sub = ranks[sparse_rows]
                srt, order = torch.sort(sub, dim=1)
                dup_sorted = torch.zeros_like(srt, dtype=torch.bool)
                dup_sorted[:, 1:] = srt[:, 1:] == srt[:, :-1]
                if not bool(dup_sorted.any()):
                    break
                dup = torch.zeros_like(dup_sorted)
                dup.scatter_(1, order, dup_sorted)
                r, c = dup.nonzero(as_tuple=True)
                fresh = draw(sparse_rows[r], 1)[:, 0] if len(r) else r
                # draw one fresh rank per duplicate slot (row-specific range)
                sub[r, c] = fresh
                ranks[sparse_rows] = sub
            else:  # pragma: no cover - astronomically unlikely with 2n <= m
                dense = torch.ones_like(dense)
            if bool(dense.any()):
                drows = all_rows[dense]
                ranks[drows] = self._dense_ranks(users[drows], m[drows], n, generator)
        items = self._rank_to_item(users, ranks)
        return items.to(dev)

    def _dense_ranks(self, users: Tensor, m: Tensor, n: int, generator) -> Tensor:
        """Distinct free ranks for a few users via Gumbel top-k over their free ranks."""
        width = int(m.max())
        logw = torch.where(torch.arange(width)[None, :] < m[:, None], 0.0, float("-inf"))
        return sample_without_replacement(logw, n, generator, log=True)
