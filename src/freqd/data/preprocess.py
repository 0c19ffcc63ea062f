"""Pure, vectorised preprocessing of interaction arrays.

Every function takes plain numpy arrays (one entry per interaction, ids non-negative
integers) and returns a mask, new ids or index arrays; nothing is modified in place.

* :func:`rating_mask` -- keep ratings >= a threshold;
* :func:`dedup_mask` -- keep the first occurrence of each (user, item) pair;
* :func:`kcore_mask` -- iterative k-core on users and/or items;
* :func:`reindex` -- compact ids to ``0..n-1`` in ascending raw-id order;
* :func:`split_bounds` / :func:`split_per_user` -- per-user train/valid/test split, in file
  order, by timestamp or seeded random, with the paper's rounding rule.

The paper's split (FreqD authors, PROTOCOL.md): a user with ``n`` interactions gets
``l = max(floor(0.8 n), 1)`` training, ``[l, r)`` validation and ``[r, n)`` test items, with
``r = floor(0.9 n)``. For ratios ``(a, b, c)``: ``l = max(floor(a n), 1)``,
``r = floor((a + b) n)``, computed exactly in rational arithmetic (``0.8`` means ``4/5``).
Rule ``"paper-clamped"`` uses ``r = max(floor((a + b) n), l)`` (how the gowalla / yelp2018
``processed/`` folders were made). The two rules differ only for users so small that
``floor((a + b) n) < l`` (``n = 1`` at 0.8/0.1/0.1), where the authors' slicing would also
copy the training item into test; freqd never puts a pair in two splits, so those users get
no test item under either rule.
"""
from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction
from typing import Literal

import numpy as np

__all__ = [
    "dedup_mask",
    "kcore_mask",
    "rating_mask",
    "reindex",
    "split_bounds",
    "split_per_user",
]

SplitOrder = Literal["file", "timestamp", "random"]
SplitRule = Literal["paper", "paper-clamped"]


def rating_mask(ratings: np.ndarray, threshold: float) -> np.ndarray:
    """Boolean mask of interactions with ``rating >= threshold`` (positives)."""
    ratings = np.asarray(ratings, dtype=np.float64)
    return ratings >= threshold


def dedup_mask(users: np.ndarray, items: np.ndarray) -> np.ndarray:
    """Boolean mask keeping the first occurrence (in array order) of each (user, item)."""
    users = np.asarray(users, dtype=np.int64)
    items = np.asarray(items, dtype=np.int64)
    if len(users) == 0:
        return np.zeros(0, dtype=bool)
    key = users * (int(items.max()) + 1) + items
    order = np.argsort(key, kind="stable")  # fast on the usual partly grouped input
    sk = key[order]
    is_first = np.ones(len(sk), dtype=bool)
    is_first[1:] = sk[1:] != sk[:-1]
    mask = np.zeros(len(users), dtype=bool)
    mask[order[is_first]] = True
    return mask


def kcore_mask(
    users: np.ndarray, items: np.ndarray, user_k: int = 0, item_k: int = 0
) -> np.ndarray:
    """Boolean mask of the iterative (user_k, item_k)-core.

    Repeatedly drops interactions of users with fewer than ``user_k`` and items with fewer
    than ``item_k`` remaining interactions until nothing changes; the result is the largest
    subset in which every remaining user and item meets its threshold (0 = no filter).
    Degrees count rows, so de-duplicate first if duplicates must not count.
    """
    users = np.asarray(users, dtype=np.int64)
    items = np.asarray(items, dtype=np.int64)
    mask = np.ones(len(users), dtype=bool)
    if len(users) == 0 or (user_k <= 1 and item_k <= 1):
        return mask
    nu, ni = int(users.max()) + 1, int(items.max()) + 1
    while True:
        changed = False
        for ids, k, n in ((users, user_k, nu), (items, item_k, ni)):
            if k <= 1:
                continue
            deg = np.bincount(ids[mask], minlength=n)
            drop = mask & (deg[ids] < k)
            if drop.any():
                mask &= ~drop
                changed = True
        if not changed or not mask.any():
            return mask


def reindex(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(new_ids, uniques)``: ids compacted to ``0..n-1`` in ascending order of the raw id.

    ``uniques[new_ids] == ids``. Non-negative integer ids with a moderate range use an
    O(n) presence table; anything else (strings, huge or negative ids) uses ``np.unique``.
    """
    ids = np.asarray(ids)
    if ids.dtype.kind in "iu" and len(ids):
        lo, hi = int(ids.min()), int(ids.max())
        if lo >= 0 and hi < 4 * len(ids) + (1 << 20):
            present = np.zeros(hi + 1, dtype=bool)
            present[ids] = True
            uniques = np.flatnonzero(present)
            code = np.cumsum(present, dtype=np.int64) - 1
            return code[ids], uniques.astype(ids.dtype, copy=False)
    uniques, inverse = np.unique(ids, return_inverse=True)
    return inverse.reshape(-1).astype(np.int64), uniques


def _fraction(x: float) -> Fraction:
    # the decimal the user wrote (0.8 -> 4/5), not the binary float nearest to it
    return Fraction(repr(float(x))).limit_denominator(10**6)


def split_bounds(
    n: np.ndarray, ratios: Sequence[float] = (0.8, 0.1, 0.1), rule: SplitRule = "paper"
) -> tuple[np.ndarray, np.ndarray]:
    """Per-user cut points ``(l, r)``: train = ``[0, l)``, valid = ``[l, r)``, test = ``[r, n)``.

    ``l = max(floor(a n), 1)`` (capped at ``n``), ``r = floor((a + b) n)``, and for
    ``"paper-clamped"`` ``r = max(r, l)``. Exact rational arithmetic. With rule ``"paper"``
    ``r < l`` can happen for tiny ``n``; :func:`split_per_user` then gives no valid/test item.
    """
    if rule not in ("paper", "paper-clamped"):
        raise ValueError(f"unknown split rule {rule!r}")
    n = np.asarray(n, dtype=np.int64)
    a = _fraction(ratios[0])
    ab = a + _fraction(ratios[1])
    l = np.minimum(np.maximum(n * a.numerator // a.denominator, 1), n)
    r = n * ab.numerator // ab.denominator
    if rule == "paper-clamped":
        r = np.maximum(r, l)
    return l, r


def split_per_user(
    users: np.ndarray,
    ratios: Sequence[float] = (0.8, 0.1, 0.1),
    order: SplitOrder = "file",
    rule: SplitRule = "paper",
    timestamps: np.ndarray | None = None,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Indices ``(train, valid, test)`` into the input arrays, split per user.

    Each user's interactions are ordered by ``order``: ``"file"`` (array order),
    ``"timestamp"`` (ascending, ties in array order) or ``"random"`` (a permutation drawn
    from ``numpy.random.default_rng(seed)``), then cut with :func:`split_bounds`. The
    three index arrays are disjoint, cover every interaction, and list rows grouped by
    user (ascending) in that order.
    """
    users = np.asarray(users, dtype=np.int64)
    n = len(users)
    if order == "file":
        perm = np.argsort(users, kind="stable")
    elif order == "timestamp":
        if timestamps is None:
            raise ValueError("split order 'timestamp' needs timestamps")
        ts = np.asarray(timestamps, dtype=np.float64)
        perm = np.lexsort((np.arange(n), ts, users))
    elif order == "random":
        keys = np.random.default_rng(seed).random(n)
        perm = np.lexsort((keys, users))
    else:
        raise ValueError(f"unknown split order {order!r}")
    if n == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty.copy(), empty.copy()
    su = users[perm]
    counts = np.bincount(su)
    group_start = np.concatenate(([0], np.cumsum(counts)[:-1]))
    pos = np.arange(n, dtype=np.int64) - group_start[su]
    l, r = split_bounds(counts, ratios, rule)
    lu, ru = l[su], np.maximum(r, l)[su]
    train = perm[pos < lu]
    valid = perm[(pos >= lu) & (pos < ru)]
    test = perm[pos >= ru]
    return train, valid, test
