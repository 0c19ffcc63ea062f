"""Sparse graph builders over one side of the interaction matrix (FREQD.md sections 2-3, 5).

Every builder returns a symmetric ``scipy.sparse.csr_matrix`` of dtype float32 with sorted
indices and no stored diagonal. Nothing here ever materialises an N x N dense matrix: the
co-occurrence products and the kNN similarity blocks are computed a chunk of rows at a time,
with the chunk size chosen from a memory budget.

Only numpy and scipy are imported at module level (``knn_graph`` imports torch lazily), so
building a graph does not pay for torch.
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Literal

import numpy as np
import scipy.sparse as sp

from ..errors import ConfigError

__all__ = [
    "bipartite_graph",
    "build_graph",
    "cooccurrence_topk",
    "knn_graph",
    "laplacian",
    "normalize_adjacency",
    "symmetrize_choices",
]

#: default bound on the stored entries of one chunk of the co-occurrence product
#: (about 50 bytes per entry are alive while a chunk is ranked: ~250 MB at 5M).
DEFAULT_CHUNK_NNZ = 5_000_000
#: default bound on the entries of one dense kNN similarity block (float32 + int64 work).
DEFAULT_KNN_BLOCK = 4_000_000


def _binary_csr(R: Any) -> sp.csr_matrix:
    """R as a CSR float32 matrix with every stored value 1 (duplicates merged)."""
    if not sp.issparse(R):
        raise ConfigError(f"expected a scipy sparse interaction matrix, got {type(R).__name__}")
    m = sp.csr_matrix(R, dtype=np.float32, copy=True)
    m.sum_duplicates()
    m.eliminate_zeros()
    m.data[:] = 1.0
    m.sort_indices()
    return m


def _row_chunks(cost: np.ndarray, budget: int) -> Iterator[tuple[int, int]]:
    """Consecutive ``[lo, hi)`` row ranges whose summed ``cost`` stays under ``budget``.

    A single row costlier than the budget gets a chunk of its own. The loop runs once per
    chunk, not per row.
    """
    n = len(cost)
    cum = np.cumsum(cost, dtype=np.int64)
    lo = 0
    while lo < n:
        base = cum[lo - 1] if lo > 0 else 0
        hi = int(np.searchsorted(cum, base + budget, side="right"))
        hi = max(hi, lo + 1)
        yield lo, hi
        lo = hi


def _sort_by_row_score_col(
    rows: np.ndarray, cols: np.ndarray, scores: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(rows, cols) ordered by row, then score descending, then col ascending.

    Integer scores (co-occurrence counts) take a fast path: one ``np.sort`` of a packed int64
    key ``(row, max - score, col)``, decoded afterwards (several times faster than a
    three-key ``lexsort``). Other scores, or keys that would overflow, use ``lexsort``.
    """
    r0 = int(rows.min())
    r_span = int(rows.max()) - r0 + 1
    n_col = int(cols.max()) + 1
    s = scores.astype(np.float64)
    smax, smin = float(s.max()), float(s.min())
    s_span = smax - smin + 1
    if np.all(s == np.floor(s)) and float(r_span) * s_span * n_col < 2.0**62:
        s_span_i = int(s_span)
        key = (rows - r0) * s_span_i + (int(smax) - s.astype(np.int64))
        key = key * n_col + cols
        key.sort()
        out_cols = key % n_col
        key //= n_col
        out_rows = key // s_span_i + r0
        return out_rows, out_cols
    order = np.lexsort((cols, -scores, rows))  # last key is the primary one
    return rows[order], cols[order]


def _topk_candidates(rows: np.ndarray, scores: np.ndarray, k: int) -> np.ndarray:
    """Boolean mask of a superset of each row's top-``k`` entries (rows non-decreasing).

    Finds, per row, the k-th largest score counting multiplicity (at most ``k`` passes of
    "row max, then remove every entry equal to it", each O(entries), stopping early once
    every row has ``k`` entries at or above its level) and keeps the entries scoring at
    least that. Ties at the threshold all survive, so the exact tie-break is left to
    :func:`_topk_per_row`; the sort then only sees the few candidates.
    """
    if len(rows) == 0:
        return np.zeros(0, dtype=bool)
    change = np.empty(len(rows), dtype=bool)
    change[0] = True
    np.not_equal(rows[1:], rows[:-1], out=change[1:])
    starts = np.flatnonzero(change)
    seg = np.cumsum(change) - 1  # segment (row) index of every entry
    n_seg = len(starts)
    work = scores.astype(np.float32 if scores.dtype == np.float32 else np.float64)
    thresh = np.full(n_seg, np.inf, dtype=work.dtype)
    need = np.full(n_seg, k, dtype=np.int64)
    for _ in range(k):
        mx = np.maximum.reduceat(work, starts)
        live = (need > 0) & np.isfinite(mx)
        if not live.any():
            break
        thresh[live] = mx[live]
        at_max = (work == mx[seg]) & live[seg]
        need -= np.bincount(seg[at_max], minlength=n_seg)
        work[at_max] = -np.inf
    return scores >= thresh[seg]


def _topk_per_row(
    rows: np.ndarray, cols: np.ndarray, scores: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Keep, per row, the ``k`` entries with the highest score.

    Ties are broken deterministically: among equal scores the smaller column (node) id wins.
    ``rows`` need not be sorted. Returns the kept (rows, cols), sorted by row then rank.
    """
    if len(rows) == 0:
        return rows, cols
    rows, cols = _sort_by_row_score_col(rows, cols, scores)
    # rank of each entry inside its row: position minus the row's first position
    change = np.empty(len(rows), dtype=bool)
    change[0] = True
    np.not_equal(rows[1:], rows[:-1], out=change[1:])
    first = np.flatnonzero(change)
    run = np.diff(np.append(first, len(rows)))
    rank = np.arange(len(rows)) - np.repeat(first, run)
    keep = rank < k
    return rows[keep], cols[keep]


def symmetrize_choices(rows: np.ndarray, cols: np.ndarray, n: int) -> sp.csr_matrix:
    """A = (C + Cᵀ) / 2 for the binary one-way choice matrix C given by (rows, cols).

    Entries are 1.0 for mutual choices and 0.5 for one-way ones; diagonal entries are dropped.
    """
    rows = np.asarray(rows, dtype=np.int64)
    cols = np.asarray(cols, dtype=np.int64)
    off = rows != cols
    rows, cols = rows[off], cols[off]
    c = sp.csr_matrix(
        (np.ones(len(rows), dtype=np.float32), (rows, cols)), shape=(n, n)
    )
    c.sum_duplicates()
    c.data[:] = 1.0
    a = ((c + c.T) * np.float32(0.5)).tocsr().astype(np.float32)
    a.sum_duplicates()
    a.sort_indices()
    return a


def cooccurrence_topk(
    R: Any,
    side: Literal["user", "item"] = "user",
    k: int = 5,
    *,
    max_chunk_nnz: int = DEFAULT_CHUNK_NNZ,
) -> sp.csr_matrix:
    """Top-K co-occurrence graph of one side of the training matrix ``R`` (users x items).

    For ``side="user"`` the scores are C = R Rᵀ (items two users share), for ``"item"``
    C = Rᵀ R (users two items share). C is computed one chunk of rows at a time (chunk sizes
    come from an upper bound of each row's stored entries so that a chunk holds at most
    about ``max_chunk_nnz`` of them). Then, per row:

    * the diagonal (the node itself) is removed *before* ranking;
    * entries with score 0 are never stored, so a node that co-occurs with nobody (e.g. an
      item with no training interaction) chooses no neighbours at all; a node that
      co-occurs with fewer than ``k`` others chooses all of them;
    * the ``k`` highest scores are chosen; ties are broken by the smaller node id
      (deterministic, independent of chunking and of the platform).

    The chosen edges get binary weight 1 and are symmetrised, A = (C_k + C_kᵀ) / 2, so a
    stored entry is 1.0 when both ends chose each other and 0.5 when only one did. The
    result is an N x N CSR float32 matrix with no self loops (N = number of users or items).

    Peak memory is the chunk's product plus its ranking work, not N².
    """
    if side not in ("user", "item"):
        raise ConfigError(f"option 'side': expected 'user' or 'item', got {side!r}")
    if int(k) != k or k < 1:
        raise ConfigError(f"option 'k': must be an integer >= 1, got {k!r}")
    k = int(k)
    r = _binary_csr(R)
    m = r if side == "user" else r.T.tocsr()  # rows = nodes of this side
    mt = m.T.tocsr()  # other side x nodes
    n = m.shape[0]
    # upper bound on the stored entries of row i of C: sum over its neighbours' degrees,
    # also at most n
    other_deg = np.diff(mt.indptr).astype(np.float64)
    bound = np.minimum(np.asarray(m @ other_deg).ravel(), n).astype(np.int64)
    out_rows, out_cols = [], []
    for lo, hi in _row_chunks(bound, max(1, int(max_chunk_nnz))):
        prod = (m[lo:hi] @ mt).tocsr()  # (hi - lo) x n co-occurrence counts
        counts = np.diff(prod.indptr)
        rows = np.repeat(np.arange(lo, hi, dtype=np.int64), counts)
        cols = prod.indices.astype(np.int64)
        scores = prod.data
        keep = (cols != rows) & (scores > 0)
        rows, cols, scores = rows[keep], cols[keep], scores[keep]
        cand = _topk_candidates(rows, scores, k)
        rr, cc = _topk_per_row(rows[cand], cols[cand], scores[cand], k)
        out_rows.append(rr)
        out_cols.append(cc)
        del prod, rows, cols, scores, keep, cand
    rows = np.concatenate(out_rows) if out_rows else np.zeros(0, np.int64)
    cols = np.concatenate(out_cols) if out_cols else np.zeros(0, np.int64)
    return symmetrize_choices(rows, cols, n)


def knn_graph(
    X: Any,
    k: int = 5,
    metric: Literal["cosine", "dot", "l2"] = "cosine",
    *,
    min_score: float | None = None,
    max_block: int = DEFAULT_KNN_BLOCK,
) -> sp.csr_matrix:
    """Symmetrised top-K nearest-neighbour graph of the rows of ``X`` (N x d).

    ``X`` is a numpy array or a torch tensor (teacher embeddings); similarities are computed
    with torch on ``X``'s device, one block of rows at a time (at most ``max_block`` entries
    per block), so no N x N matrix exists. Metrics: ``cosine`` (rows with zero norm have
    similarity 0 to everything), ``dot``, ``l2`` (score = minus the squared distance).
    The node itself is excluded before ranking; ties are broken by the smaller node id.
    With ``min_score`` set, candidates scoring ``<= min_score`` are dropped (fewer than ``k``
    neighbours then). Binary weights, symmetrised as in :func:`cooccurrence_topk`
    (1.0 mutual, 0.5 one-way); float32 CSR, no self loops.
    """
    import torch

    if metric not in ("cosine", "dot", "l2"):
        raise ConfigError(f"option 'metric': expected cosine, dot or l2, got {metric!r}")
    if int(k) != k or k < 1:
        raise ConfigError(f"option 'k': must be an integer >= 1, got {k!r}")
    x = X.detach() if isinstance(X, torch.Tensor) else torch.as_tensor(np.asarray(X))
    if x.dim() != 2:
        raise ConfigError(f"knn_graph: expected a 2-d feature matrix, got shape {tuple(x.shape)}")
    x = x.to(torch.float32)
    n = x.shape[0]
    kk = min(int(k), n - 1)
    if kk <= 0:
        return sp.csr_matrix((n, n), dtype=np.float32)
    if metric == "cosine":
        norm = x.norm(dim=1, keepdim=True)
        x = torch.where(norm > 0, x / norm.clamp_min(1e-12), torch.zeros_like(x))
    sq = (x * x).sum(1) if metric == "l2" else None
    block = max(1, min(n, int(max_block) // max(1, n)))
    out_rows, out_cols = [], []
    for lo in range(0, n, block):
        hi = min(n, lo + block)
        s = x[lo:hi] @ x.T
        if metric == "l2":
            s = -(sq[lo:hi, None] - 2 * s + sq[None, :])
        idx = torch.arange(lo, hi, device=s.device)
        s[idx - lo, idx] = -torch.inf
        if min_score is not None:
            s = torch.where(s > min_score, s, torch.full_like(s, -torch.inf))
        kth = torch.topk(s, kk, dim=1).values[:, -1:]
        gt = s > kth
        eq = s == kth
        need = kk - gt.sum(1, keepdim=True)
        # among the entries tied with the k-th score, the smallest ids come first
        take = gt | (eq & (torch.cumsum(eq, dim=1) <= need))
        take &= torch.isfinite(s)
        r, c = torch.nonzero(take, as_tuple=True)
        out_rows.append((r + lo).cpu().numpy())
        out_cols.append(c.cpu().numpy())
    return symmetrize_choices(np.concatenate(out_rows), np.concatenate(out_cols), n)


def bipartite_graph(R: Any) -> sp.csr_matrix:
    """The user-item graph [[0, R], [Rᵀ, 0]] on n_users + n_items nodes.

    Node ids: users first (0 .. n_users-1), then items (n_users + item id). Weights 1.
    Float32 CSR, symmetric, no self loops.
    """
    r = _binary_csr(R)
    a = sp.bmat([[None, r], [r.T, None]], format="csr", dtype=np.float32)
    a.sort_indices()
    return a


def normalize_adjacency(A: Any, *, remove_self_loops: bool = True) -> sp.csr_matrix:
    """Â = D^-1/2 A D^-1/2 with D = diag(row sums of A); a zero degree is treated as 1.

    No self loops are added (unlike LightGCN's A + I); with ``remove_self_loops`` any stored
    diagonal entry of ``A`` is dropped first. A node without edges gets an all-zero row and
    column. Float32 CSR with sorted indices. (Degrees are summed in float64.)
    """
    a = sp.csr_matrix(A, dtype=np.float64, copy=True)
    if a.shape[0] != a.shape[1]:
        raise ConfigError(f"normalize_adjacency: expected a square matrix, got {a.shape}")
    a.sum_duplicates()
    if remove_self_loops:
        coo = a.tocoo()
        off = coo.row != coo.col
        a = sp.csr_matrix((coo.data[off], (coo.row[off], coo.col[off])), shape=a.shape)
    a.eliminate_zeros()
    deg = np.asarray(a.sum(axis=1)).ravel()
    deg[deg == 0] = 1.0
    dinv = 1.0 / np.sqrt(deg)
    a = sp.diags(dinv) @ a @ sp.diags(dinv)
    out = sp.csr_matrix(a, dtype=np.float32)
    out.sort_indices()
    return out


def laplacian(A_hat: Any) -> sp.csr_matrix:
    """L = I - Â (float32 CSR).

    With the zero-degree convention of :func:`normalize_adjacency` an isolated node has
    L_ii = 1, i.e. it is an eigenvector with λ = 1; the eigenvalues of L lie in [0, 2].
    """
    a = sp.csr_matrix(A_hat, dtype=np.float32)
    n = a.shape[0]
    out = (sp.identity(n, dtype=np.float32, format="csr") - a).tocsr().astype(np.float32)
    out.sum_duplicates()
    out.sort_indices()
    return out


def build_graph(
    kind: Literal["cooccurrence", "knn", "bipartite"],
    R: Any = None,
    *,
    side: Literal["user", "item"] = "user",
    k: int = 5,
    features: Any = None,
    metric: Literal["cosine", "dot", "l2"] = "cosine",
) -> sp.csr_matrix:
    """Dispatch on the ``graph`` option of FREQD.md section 5 (unnormalised adjacency A).

    ``cooccurrence`` needs ``R`` (and ``side``, ``k``); ``knn`` needs ``features`` (the
    teacher's embeddings of that side); ``bipartite`` needs ``R`` and ignores ``side``.
    """
    if kind == "cooccurrence":
        if R is None:
            raise ConfigError("graph 'cooccurrence' needs the training matrix")
        return cooccurrence_topk(R, side=side, k=k)
    if kind == "knn":
        if features is None:
            raise ConfigError("graph 'knn' needs the teacher's embeddings")
        return knn_graph(features, k=k, metric=metric)
    if kind == "bipartite":
        if R is None:
            raise ConfigError("graph 'bipartite' needs the training matrix")
        return bipartite_graph(R)
    raise ConfigError(
        f"option 'graph': expected cooccurrence, knn or bipartite, got {kind!r}"
    )
