"""Batch-local filtering: (H X)[B] from X on the k-hop neighbourhood of B only (FREQD.md §4).

The authors' FreqD filters the whole user and item tables on every step, so its cost grows
with |U| + |I|. Only the batch rows of H X are used, and

    (H X)[B] = H[B, :] X = H[B, N] X[N],     N = N_k(B) = the nodes within k hops of B,

where k is the filter's degree (1 for linear, 2 for quadratic). :func:`local_filter_plan`
builds the sparse block H[B, N] for one set of per-hop operators (the same dropped Â's the
full path would use), and :class:`LocalFilterPlan` applies it. A distiller then computes
the expensive features (e.g. the projector's output) only for ``plan.cols``::

    hops = sample_hops(A_hat, filt, keep_prob, generator)         # one step's masks
    plan = local_filter_plan(hops, filt, batch_rows)
    z_s = plan.apply(projector(student_table[plan.cols]))         # [len(rows), d]
    z_t = plan.apply(teacher_table[plan.cols])

This equals ``full_filter(hops, filt, X)[rows]`` to float rounding, and so do the gradients
w.r.t. X (tests/test_spectral_local.py).

How H[B, :] is built (row space, no Python loop over nodes): start from the selector
S = I[B, :]; a factor p(Â) with coefficients c_0..c_m and hop operators O_1..O_m (Horner
order, see :mod:`freqd.spectral.filters`) gives S p = Σ_i c_i Q_i with Q_0 = S and
Q_i = Q_{i-1} O_{m-i+1}. Each product Q O of a sparse row block with a CSR operator expands
every stored (r, c, v) of Q into row c of O (gather with repeat_interleave) and merges
duplicates (coalesce). Factors are processed last-applied first.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .filters import PolyFilter, SparseOp, _hop_list

__all__ = ["LocalFilterPlan", "local_filter", "local_filter_plan"]


def _coalesce(r: Tensor, c: Tensor, v: Tensor, shape: tuple[int, int]) -> tuple[Tensor, ...]:
    m = torch.sparse_coo_tensor(
        torch.stack([r, c]), v, shape, check_invariants=False
    ).coalesce()
    idx = m.indices()
    return idx[0], idx[1], m.values()


def _expand(r: Tensor, c: Tensor, v: Tensor, op: SparseOp) -> tuple[Tensor, Tensor, Tensor]:
    """Triplets of Q @ op for Q given by triplets (r, c, v) (not coalesced)."""
    start = op.indptr[c]
    cnt = op.indptr[c + 1] - start
    total = int(cnt.sum()) if cnt.numel() else 0
    if total == 0:
        e = torch.zeros(0, dtype=torch.int64, device=r.device)
        return e, e.clone(), torch.zeros(0, dtype=v.dtype, device=v.device)
    rr = torch.repeat_interleave(r, cnt, output_size=total)
    vv = torch.repeat_interleave(v, cnt, output_size=total)
    # position of each expanded entry inside op's arrays
    offset = start - (torch.cumsum(cnt, 0) - cnt)
    idx = torch.arange(total, device=r.device) + torch.repeat_interleave(
        offset, cnt, output_size=total
    )
    return rr, op.indices[idx], vv * op.values[idx].to(vv.dtype)


@dataclass
class LocalFilterPlan:
    """H[rows, cols] for one filter application, as a sparse matrix.

    ``rows``: the batch node ids (as given, duplicates allowed); ``cols``: sorted unique ids
    of the nodes whose features are needed (the k-hop neighbourhood of ``rows`` under the
    dropped operators, restricted to paths with nonzero coefficients); ``matrix``: the
    ``len(rows) x len(cols)`` torch sparse COO block.
    """

    rows: Tensor
    cols: Tensor
    matrix: Tensor

    @property
    def nnz(self) -> int:
        return int(self.matrix._nnz())

    def apply(self, X_cols: Tensor) -> Tensor:
        """(H X)[rows] from ``X_cols = X[cols]`` (``[len(cols), d]``); autograd flows to X_cols."""
        if X_cols.shape[0] != self.cols.numel():
            raise ValueError(
                f"X_cols has {X_cols.shape[0]} rows, the plan needs {self.cols.numel()} "
                "(one per entry of plan.cols)"
            )
        m = self.matrix
        if m.device != X_cols.device or m.dtype != X_cols.dtype:
            m = m.to(device=X_cols.device, dtype=X_cols.dtype)
        return torch.sparse.mm(m, X_cols)

    def apply_full(self, X: Tensor) -> Tensor:
        """Same as ``apply(X[cols])`` for a full table ``X``."""
        return self.apply(X[self.cols.to(X.device)])

    def to_dense(self) -> Tensor:
        """The block H[rows, cols] as a dense tensor (for tests and small cases)."""
        return self.matrix.to_dense()


def local_filter_plan(
    ops: Any, filt: PolyFilter, rows: Any, *, dtype: torch.dtype = torch.float32
) -> LocalFilterPlan:
    """Build H[rows, N_k(rows)] for the filter ``filt`` and the hop operators ``ops``.

    ``ops``: Â (scipy / torch sparse / :class:`SparseOp`, same operator for every hop, no
    dropout), a list of per-hop operators, or a :class:`~freqd.spectral.filters.HopOps`
    from :func:`~freqd.spectral.filters.sample_hops` (pass the *same* object to
    :func:`~freqd.spectral.filters.full_filter` to get the same numbers).
    ``rows``: node ids (LongTensor, array or list). The plan lives on the operators' device.
    Entries are accumulated in ``dtype``.
    """
    hops = _hop_list(ops, filt)
    if hops:
        device, n = hops[0].device, hops[0].n
    else:
        device, n = None, None
    rows_t = torch.as_tensor(rows, dtype=torch.int64, device=device).reshape(-1)
    device = rows_t.device
    b = rows_t.numel()
    if n is None:  # a hop-free filter: n is only needed as a shape bound
        n = int(rows_t.max()) + 1 if b else 1
    if b and (int(rows_t.min()) < 0 or int(rows_t.max()) >= n):
        raise IndexError(f"row ids must lie in [0, {n}), got [{int(rows_t.min())}, {int(rows_t.max())}]")
    shape = (b, n)
    r = torch.arange(b, device=device)
    c = rows_t
    v = torch.ones(b, dtype=dtype, device=device)
    # hop ranges of the factors, in application order
    bounds, t = [], 0
    for f in filt.factors:
        bounds.append((t, t + len(f) - 1))
        t += len(f) - 1
    for f, (h0, h1) in zip(reversed(filt.factors), reversed(bounds)):
        fops = hops[h0:h1]  # O_1..O_m
        m = len(f) - 1
        parts = [(r, c, v * f[0])] if f[0] != 0.0 else []
        qr, qc, qv = r, c, v
        for i in range(1, m + 1):
            qr, qc, qv = _expand(qr, qc, qv, fops[m - i])
            qr, qc, qv = _coalesce(qr, qc, qv, shape)
            if f[i] != 0.0:
                parts.append((qr, qc, qv * f[i]))
        if parts:
            r, c, v = _coalesce(
                torch.cat([p[0] for p in parts]),
                torch.cat([p[1] for p in parts]),
                torch.cat([p[2] for p in parts]),
                shape,
            )
        else:
            r = c = torch.zeros(0, dtype=torch.int64, device=device)
            v = torch.zeros(0, dtype=dtype, device=device)
    cols, local = torch.unique(c, sorted=True, return_inverse=True)
    matrix = torch.sparse_coo_tensor(
        torch.stack([r, local]), v, (b, cols.numel()), check_invariants=False
    ).coalesce()
    return LocalFilterPlan(rows_t, cols, matrix)


def local_filter(ops: Any, filt: PolyFilter, rows: Any, X: Tensor) -> Tensor:
    """(H X)[rows] through a :func:`local_filter_plan` (convenience for a full table X)."""
    return local_filter_plan(ops, filt, rows).apply_full(X)
