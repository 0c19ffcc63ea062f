"""Top-K ranking shared by evaluation and serving, and the ``recommend`` API.

Ranking rule (everywhere in freqd): items are ordered by descending score; equal scores are
ordered by ascending item id. ``torch.topk`` alone leaves the order of ties unspecified, so
:func:`topk_ranked` takes the top ``k + 1`` and re-ranks, with a stable full sort, only the
rows where two of those values are equal (rare with real-valued scores).

Excluded (masked) items get score ``-inf``: they rank after every scorable item and are
never returned by :func:`recommend` (padded with item ``-1`` when a user has fewer than ``k``
candidates).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Callable, TextIO

import numpy as np
import torch
from torch import Tensor

from ..errors import FreqdError

if TYPE_CHECKING:  # pragma: no cover
    import scipy.sparse as sp

    from ..data.dataset import Dataset

__all__ = [
    "DEFAULT_MEMORY_BUDGET",
    "ScoreFn",
    "default_chunk_size",
    "recommend",
    "topk_ranked",
    "write_recommendations",
]

#: ``score_fn(users: LongTensor[B]) -> Tensor[B, n_items]``; higher is better. The tensor
#: must be fresh (the evaluator writes the mask into it in place).
ScoreFn = Callable[[Tensor], Tensor]

#: bytes of scores one chunk may hold (chunk users x n_items x 4 bytes)
DEFAULT_MEMORY_BUDGET = 256 * 1024 * 1024

SPLITS = ("train", "valid", "test")


def default_chunk_size(n_items: int, budget_bytes: int = DEFAULT_MEMORY_BUDGET) -> int:
    """Users per chunk so that one float32 score chunk fits in ``budget_bytes``."""
    return max(1, int(budget_bytes) // (4 * max(1, int(n_items))))


def topk_ranked(scores: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Top-``k`` ``(values, indices)`` of each row, best first, ties by ascending index.

    ``k`` is clipped to the row length. Raises :class:`~freqd.errors.FreqdError` when a
    row's top contains NaN (``torch.topk`` ranks NaN first), i.e. the model diverged.
    """
    n = scores.shape[1]
    k = min(int(k), n)
    if scores.shape[0] == 0 or k == 0:
        return scores[:, :k], torch.zeros(
            scores.shape[0], k, dtype=torch.long, device=scores.device
        )
    if k + 1 > n:
        vals, idx = torch.sort(scores, dim=1, descending=True, stable=True)
        has_nan = bool(torch.isnan(vals[:, 0]).any())
    else:
        vals, idx = torch.topk(scores, k + 1, dim=1, largest=True, sorted=True)
        tied = (vals[:, :-1] == vals[:, 1:]).any(1)
        # one host sync for both checks (NaN ranks first in topk, and never compares equal)
        has_nan, any_tied = torch.stack([torch.isnan(vals[:, 0]).any(), tied.any()]).tolist()
        if any_tied and not has_nan:
            rows = tied.nonzero().squeeze(1)
            v2, i2 = torch.sort(scores[rows], dim=1, descending=True, stable=True)
            vals[rows] = v2[:, : k + 1]
            idx[rows] = i2[:, : k + 1]
    if has_nan:
        raise FreqdError("the model's scores contain NaN (training diverged?); cannot rank items")
    return vals[:, :k], idx[:, :k]


class CSRRows:
    """A binary scipy CSR matrix as torch ``indptr`` / ``indices``, gathered by user rows.

    Copies on a device are cached, so repeated evaluations move the data once.
    """

    def __init__(self, m: sp.csr_matrix):
        m = m.tocsr()
        if not m.has_canonical_format:
            m = m.copy()
            m.sum_duplicates()
        if m.nnz and (m.data == 0).any():
            m = m.copy()
            m.eliminate_zeros()
        self.shape = m.shape
        self.nnz = int(m.nnz)
        self._on: dict[torch.device, tuple[Tensor, Tensor]] = {}
        cpu = torch.device("cpu")
        self._on[cpu] = (
            torch.from_numpy(m.indptr.astype(np.int64, copy=False)),
            torch.from_numpy(m.indices.astype(np.int64, copy=False)),
        )

    @classmethod
    def union(cls, mats: Sequence[sp.csr_matrix], shape: tuple[int, int]) -> CSRRows:
        """The binary union of several CSR matrices (an empty one for no matrices)."""
        import scipy.sparse as sp

        if not mats:
            return cls(sp.csr_matrix(shape, dtype=np.float32))
        m = mats[0].tocsr().astype(np.float32)
        for other in mats[1:]:
            m = m + other.tocsr().astype(np.float32)
        m = sp.csr_matrix(m)
        m.sum_duplicates()
        m.eliminate_zeros()
        m.data[:] = 1.0
        m.sort_indices()
        return cls(m)

    def on(self, device: torch.device) -> tuple[Tensor, Tensor]:
        device = torch.device(device)
        if device not in self._on:
            ip, ix = self._on[torch.device("cpu")]
            self._on[device] = (ip.to(device), ix.to(device))
        return self._on[device]

    def counts(self, users: Tensor) -> Tensor:
        """Row lengths ``[B]`` of ``users``."""
        ip, _ = self.on(users.device)
        return ip[users + 1] - ip[users]

    def gather(
        self, users: Tensor, users_cpu: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """``(rows, cols, counts)``: entry ``j`` is ``(rows[j], cols[j])`` with ``rows``
        indexing ``users`` (0..B-1, ascending) and ``cols`` ascending within a row.

        ``users_cpu`` (the same ids on the CPU) lets an accelerator skip a host sync.
        """
        dev = users.device
        ip, ix = self.on(dev)
        start = ip[users]
        cnt = ip[users + 1] - start
        if users_cpu is None:
            total = int(cnt.sum())
        else:
            ip_cpu = self.on(torch.device("cpu"))[0]
            total = int((ip_cpu[users_cpu + 1] - ip_cpu[users_cpu]).sum())
        rows = torch.arange(len(users), device=dev).repeat_interleave(cnt, output_size=total)
        if total == 0:
            return rows, rows.clone(), cnt
        # position of entry j inside ix: start[row] + (j - first entry of row)
        first = torch.cumsum(cnt, 0) - cnt
        shift = (start - first).repeat_interleave(cnt, output_size=total)
        return rows, ix[torch.arange(total, device=dev) + shift], cnt


def _check_users(users: Tensor | np.ndarray | Iterable[int], n_users: int) -> Tensor:
    u = torch.as_tensor(
        np.asarray(users, dtype=np.int64) if not isinstance(users, Tensor) else users
    )
    u = u.reshape(-1).to(torch.long).cpu()
    if u.numel():
        lo, hi = int(u.min()), int(u.max())
        if lo < 0 or hi >= n_users:
            bad = lo if lo < 0 else hi
            raise FreqdError(
                f"users: id {bad} is out of range (the dataset has users 0..{n_users - 1})"
            )
    return u


def _fresh(scores: Tensor, expect: tuple[int, int]) -> Tensor:
    """The score chunk as a tensor safe to mask in place."""
    if tuple(scores.shape) != expect:
        raise ValueError(f"score_fn returned shape {tuple(scores.shape)}, expected {expect}")
    if scores.requires_grad:
        scores = scores.detach().clone()
    elif scores._base is not None:  # a view into someone's storage: do not write into it
        scores = scores.clone()
    if not scores.is_floating_point():
        scores = scores.float()
    return scores


def recommend(
    score_fn: ScoreFn,
    dataset: Dataset,
    users: Tensor | np.ndarray | Iterable[int] | None = None,
    k: int = 20,
    exclude: Sequence[str] = SPLITS,
    chunk_size: int | None = None,
    device: str | torch.device | None = None,
) -> tuple[Tensor, Tensor]:
    """Top-``k`` unseen items for ``users`` (default: all users), best first.

    ``exclude`` names the splits whose items are never recommended; serving excludes every
    known interaction (train, valid and test) by default, ``exclude=("train",)`` mimics the
    validation view. Returns CPU tensors ``(items LongTensor[len(users), k],
    scores FloatTensor[len(users), k])``; when fewer than ``k`` items are left for a user the
    tail is padded with item ``-1`` and score ``-inf``. ``score_fn`` receives the user ids
    on ``device`` (default CPU).
    """
    if int(k) < 1:
        raise FreqdError(f"k: must be a positive integer, got {k}")
    k = int(k)
    bad = [s for s in exclude if s not in SPLITS]
    if bad:
        raise FreqdError(f"exclude: unknown split {bad[0]!r}; expected some of {list(SPLITS)}")
    n_users, n_items = dataset.n_users, dataset.n_items
    u_all = torch.arange(n_users) if users is None else _check_users(users, n_users)
    mask = CSRRows.union([dataset.split(s) for s in dict.fromkeys(exclude)], (n_users, n_items))
    cs = int(chunk_size) if chunk_size else default_chunk_size(n_items)
    dev = torch.device(device) if device is not None else torch.device("cpu")
    out_items = torch.full((len(u_all), k), -1, dtype=torch.long)
    out_scores = torch.full((len(u_all), k), float("-inf"))
    with torch.no_grad():
        for s in range(0, len(u_all), cs):
            u_cpu = u_all[s : s + cs]
            scores = _fresh(score_fn(u_cpu.to(dev)), (len(u_cpu), n_items))
            rows, cols, _ = mask.gather(u_cpu.to(scores.device), u_cpu)
            scores.index_put_((rows, cols), scores.new_full((), float("-inf")))
            vals, idx = topk_ranked(scores, k)
            idx = torch.where(torch.isneginf(vals), torch.full_like(idx, -1), idx)
            out_items[s : s + len(u_cpu), : idx.shape[1]] = idx.cpu()
            out_scores[s : s + len(u_cpu), : vals.shape[1]] = vals.float().cpu()
    return out_items, out_scores


def _format_lines(
    users: Sequence[int], items: Sequence[Sequence[int]], user_ids, item_ids
) -> Iterable[str]:
    for u, row in zip(users, items):
        row = [i for i in row if i >= 0]
        if item_ids is not None:
            row = [item_ids[i] for i in row]
        name = user_ids[u] if user_ids is not None else u
        yield f"{name}\t{','.join(map(str, row))}\n"


def write_recommendations(
    out: str | os.PathLike | TextIO | None,
    users: Tensor | np.ndarray | Sequence[int],
    items: Tensor | np.ndarray | Sequence[Sequence[int]],
    user_ids: Sequence | None = None,
    item_ids: Sequence | None = None,
) -> None:
    """Write ``user<TAB>item1,item2,...`` lines, best item first.

    ``out`` is a file path (written atomically), ``"-"`` or ``None`` for stdout, or an open
    text stream. ``user_ids`` / ``item_ids`` (e.g. ``Dataset.user_ids``) map internal ids to
    raw ids; ``-1`` padding from :func:`recommend` is dropped.
    """
    users_l = users.tolist() if hasattr(users, "tolist") else list(users)
    items_l = items.tolist() if hasattr(items, "tolist") else [list(r) for r in items]
    if len(users_l) != len(items_l):
        raise ValueError(f"{len(users_l)} users but {len(items_l)} rows of items")
    lines = _format_lines(users_l, items_l, user_ids, item_ids)
    if out is None or (isinstance(out, str) and out == "-"):
        sys.stdout.writelines(lines)
        sys.stdout.flush()
    elif hasattr(out, "write"):
        out.writelines(lines)  # type: ignore[union-attr]
    else:
        from ..utils.atomic import atomic_path

        with atomic_path(out) as tmp, open(tmp, "w", encoding="utf-8") as fh:
            fh.writelines(lines)
