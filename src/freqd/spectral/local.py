"""Batch-local filtering: (H X)[B] from X on the k-hop neighbourhood of B only (FREQD.md §4).

The authors' FreqD filters the whole user and item tables on every step, so its cost grows
with |U| + |I|. Only the batch rows of H X are used, and

    (H X)[B] = H[B, :] X = H[B, N] X[N],     N = N_k(B) = the nodes within k hops of B,

where k is the filter's degree (1 for linear, 2 for quadratic). :func:`local_filter_plan`
works out, for one set of per-hop operators (the same dropped Â's the full path would use),
which rows every intermediate result is needed on, and :class:`LocalFilterPlan` runs the
filter on those rows only. A distiller computes the expensive features (e.g. the
projector's output) only for ``plan.cols``::

    hops = sample_hops(A_hat, filt, keep_prob, generator)         # one step's masks
    plan = local_filter_plan(hops, filt, batch_rows)
    z_s = plan.apply(projector(student_table[plan.cols]))         # [len(rows), d]
    z_t = plan.apply(teacher_table[plan.cols])

This equals ``full_filter(hops, filt, X)[rows]`` to float rounding, and so do the gradients
w.r.t. X (tests/test_spectral_local.py).

How it works (no Python loop over nodes). The full path evaluates each factor with
coefficients c_0..c_m by Horner's scheme, Y_0 = c_m X_in, Y_t = O_t Y_{t-1} + c_{m-t} X_in.
Going backwards from the output rows T = unique(B), Y_{m-i} is needed on the nested sets
R_0 = T, R_i = R_{i-1} ∪ N_{O_{m-i+1}}(R_{i-1}) (neighbours under that hop's operator), and
the factor's input X_in on R_m, which is the output set of the previous factor. Each hop
then becomes one sparse product with the row block O_t[R_{m-t}, R_{m-t+1}] (rows gathered
from the CSR operator with ``repeat_interleave``; columns mapped by ``searchsorted``); the
first hop of a factor carries c_m and the c_{m-1} X_in term in its operator
(c_m O_1 + c_{m-1} S, S selecting R_{m-1} from R_m), so a linear filter is one product. So
the cost of a hop is bounded by the edges leaving its row set, never by a fill-in product
(H[B, :] built explicitly gets nearly dense from k = 3 on; this never forms it).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from ..utils.numerics import sparse_mm, sparse_operand
from .filters import PolyFilter, SparseOp, _hop_list

__all__ = ["LocalFilterPlan", "local_filter", "local_filter_plan"]


def _gather_rows(op: SparseOp, nodes: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Stored entries of ``op`` in the rows ``nodes``: (local row, global col, value)."""
    start = op.indptr[nodes]
    cnt = op.indptr[nodes + 1] - start
    total = int(cnt.sum()) if cnt.numel() else 0
    if total == 0:
        e = torch.zeros(0, dtype=torch.int64, device=nodes.device)
        return e, e.clone(), torch.zeros(0, dtype=op.values.dtype, device=nodes.device)
    local = torch.repeat_interleave(
        torch.arange(nodes.numel(), device=nodes.device), cnt, output_size=total
    )
    offset = start - (torch.cumsum(cnt, 0) - cnt)
    idx = torch.arange(total, device=nodes.device) + torch.repeat_interleave(
        offset, cnt, output_size=total
    )
    return local, op.indices[idx], op.values[idx]


class _SpMM(torch.autograd.Function):
    """``op @ y`` for a constant sparse ``op`` with its transpose given for the backward pass.

    torch's own backward of a COO product transposes and re-sorts the operator and
    zero-fills the gradient on every call; here both directions are CSR products with
    operators built once per plan."""

    @staticmethod
    def forward(ctx, op: Tensor, op_t: Tensor, y: Tensor) -> Tensor:
        ctx.op_t = op_t
        return sparse_mm(op, y)

    @staticmethod
    def backward(ctx, g: Tensor):
        return None, None, sparse_mm(ctx.op_t, g.contiguous())


@dataclass
class _Hop:
    """One sparse product: Y_out = op @ Y_in (+ coef * X_in[x_pos])."""

    op: Tensor  # sparse COO, |R_out| x |R_in|
    coef: float  # c_{m-t}: weight of the factor's input added after the product
    x_pos: Tensor | None  # positions of R_out inside the factor's input set (None if coef 0)
    _csr: dict = field(default_factory=dict, repr=False)  # (device, dtype) -> (op, op.T) as CSR

    def mm(self, y: Tensor) -> Tensor:
        y = sparse_operand(y)
        key = (y.device, y.dtype)
        pair = self._csr.get(key)
        if pair is None:
            op = self.op.to(device=y.device, dtype=y.dtype).coalesce()
            with warnings.catch_warnings():  # "sparse CSR support is in beta": products only
                warnings.simplefilter("ignore", UserWarning)
                pair = (op.to_sparse_csr(), op.t().coalesce().to_sparse_csr())
            self._csr[key] = pair
        return _SpMM.apply(pair[0], pair[1], y)


@dataclass
class _Factor:
    top: float  # c_m for a factor without hops; else 1 (c_m is folded into the first hop)
    hops: list[_Hop]
    n_in: int  # size of the factor's input set
    n_out: int  # size of its output set


@dataclass
class LocalFilterPlan:
    """One filter application restricted to the rows a batch needs.

    ``rows``: the batch node ids as given (duplicates allowed); ``cols``: sorted unique ids
    of the nodes whose input features are needed (the k-hop neighbourhood of ``rows`` under
    the dropped operators); ``sets``: the sizes of the nested row sets, innermost first.
    """

    rows: Tensor
    cols: Tensor
    factors: list[_Factor] = field(repr=False)
    out_index: Tensor = field(repr=False)  # position of each row in the final output set

    @property
    def nnz(self) -> int:
        """Stored entries over all hop blocks (the sparse work per feature column)."""
        return sum(int(h.op._nnz()) for f in self.factors for h in f.hops)

    @property
    def sets(self) -> list[int]:
        out = [self.factors[-1].n_out] if self.factors else [int(self.out_index.numel())]
        for f in reversed(self.factors):
            out.append(f.n_in)
        return out

    def apply(self, X_cols: Tensor) -> Tensor:
        """(H X)[rows] from ``X_cols = X[cols]`` (``[len(cols), d]``); autograd flows to X_cols.

        The filter acts on rows, so the columns of ``X_cols`` may hold several feature blocks
        side by side (e.g. the hidden layers of E projector experts, ``[len(cols), E*h]``):
        one sparse product per hop filters them all. A stack ``[E, len(cols), d]`` is
        accepted too and filtered block by block as if through E separate calls (it is
        transposed to that side-by-side layout and back: pass ``[len(cols), E*d]`` directly
        to save the two copies). Returns ``[E, len(rows), d]`` then.
        """
        if X_cols.dim() == 3:
            E, n, d = X_cols.shape
            if n != self.cols.numel():
                raise ValueError(
                    f"X_cols has {n} rows per block, the plan needs {self.cols.numel()} "
                    "(one per entry of plan.cols)"
                )
            out = self.apply(X_cols.transpose(0, 1).reshape(n, E * d))
            return out.view(-1, E, d).transpose(0, 1)
        if X_cols.shape[0] != self.cols.numel():
            raise ValueError(
                f"X_cols has {X_cols.shape[0]} rows, the plan needs {self.cols.numel()} "
                "(one per entry of plan.cols)"
            )
        z = X_cols
        for f in self.factors:
            x_in = z
            y = x_in * f.top if f.top != 1.0 else x_in
            for h in f.hops:
                y = h.mm(y)
                if h.x_pos is not None:
                    y = y + x_in[h.x_pos.to(x_in.device)] * h.coef
            z = y
        return z[self.out_index.to(z.device)]

    def apply_full(self, X: Tensor) -> Tensor:
        """Same as ``apply(X[cols])`` for a full table ``X``."""
        return self.apply(X[self.cols.to(X.device)])

    def to_dense(self) -> Tensor:
        """The block H[rows, cols] as a dense tensor (for tests and small cases)."""
        eye = torch.eye(self.cols.numel(), dtype=torch.float64, device=self.cols.device)
        return self.apply(eye)


def local_filter_plan(ops: Any, filt: PolyFilter, rows: Any) -> LocalFilterPlan:
    """Plan the filter ``filt`` with hop operators ``ops`` on the rows ``rows`` only.

    ``ops``: Â (scipy / torch sparse / :class:`SparseOp`, same operator for every hop, no
    dropout), a list of per-hop operators, or a :class:`~freqd.spectral.filters.HopOps`
    from :func:`~freqd.spectral.filters.sample_hops` (pass the *same* object to
    :func:`~freqd.spectral.filters.full_filter` to get the same numbers).
    ``rows``: node ids (LongTensor, array or list). The plan lives on the operators' device.
    """
    hops = _hop_list(ops, filt)
    device = hops[0].device if hops else None
    rows_t = torch.as_tensor(rows, dtype=torch.int64, device=device).reshape(-1)
    device = rows_t.device
    if hops and rows_t.numel():
        n = hops[0].n
        if bool(((rows_t < 0) | (rows_t >= n)).any()):  # one host sync
            raise IndexError(
                f"row ids must lie in [0, {n}), got [{int(rows_t.min())}, {int(rows_t.max())}]"
            )
    cur, out_index = torch.unique(rows_t, sorted=True, return_inverse=True)
    # hop ranges of the factors, in application order
    bounds, t = [], 0
    for f in filt.factors:
        bounds.append((t, t + len(f) - 1))
        t += len(f) - 1
    planned: list[_Factor] = []
    for f, (h0, h1) in zip(reversed(filt.factors), reversed(bounds)):
        fops = hops[h0:h1]  # O_1..O_m in application order
        m = len(f) - 1
        sets = [cur]  # R_0 = this factor's output set
        blocks = []
        for i in range(1, m + 1):
            r_loc, c_glob, vals = _gather_rows(fops[m - i], sets[-1])
            sets.append(torch.unique(torch.cat([sets[-1], c_glob]), sorted=True))
            blocks.append((r_loc, c_glob, vals))
        big = sets[-1]  # the factor's input set R_m
        fhops = []
        for t in range(1, m + 1):  # hop t maps Y on R_{m-t+1} to Y on R_{m-t}
            out_set, in_set = sets[m - t], sets[m - t + 1]
            r_loc, c_glob, vals = blocks[m - t]
            c_loc = torch.searchsorted(in_set, c_glob)
            coef = f[m - t]
            if t == 1:
                # Y_1 = O_1 (c_m X_in) + c_{m-1} X_in[R_{m-1}] = (c_m O_1 + c_{m-1} S) X_in with
                # S the selection of R_{m-1} from R_m: one product, no scaled copy of X_in
                # and no gather/scatter of it (forward or backward)
                vals = vals * f[m]
                if coef != 0.0:
                    r_loc = torch.cat([r_loc, torch.arange(out_set.numel(), device=r_loc.device)])
                    c_loc = torch.cat([c_loc, torch.searchsorted(in_set, out_set)])
                    vals = torch.cat([vals, torch.full((out_set.numel(),), coef, dtype=vals.dtype,
                                                       device=vals.device)])
                coef = 0.0
            with warnings.catch_warnings():  # "invariant checks are implicitly disabled": built valid
                warnings.simplefilter("ignore", UserWarning)
                sub = torch.sparse_coo_tensor(
                    torch.stack([r_loc, c_loc]), vals, (out_set.numel(), in_set.numel()),
                    check_invariants=False,
                ).coalesce()
            x_pos = torch.searchsorted(big, out_set) if coef != 0.0 else None
            fhops.append(_Hop(sub, coef, x_pos))
        planned.append(_Factor(f[m] if m == 0 else 1.0, fhops, big.numel(), cur.numel()))
        cur = big
    planned.reverse()
    return LocalFilterPlan(rows_t, cur, planned, out_index)


def local_filter(ops: Any, filt: PolyFilter, rows: Any, X: Tensor) -> Tensor:
    """(H X)[rows] through a :func:`local_filter_plan` (convenience for a full table X)."""
    return local_filter_plan(ops, filt, rows).apply_full(X)
