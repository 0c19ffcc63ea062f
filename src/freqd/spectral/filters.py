"""Polynomial graph filters, edge dropout, and the full-table filter (FREQD.md sections 2-3).

A filter is a product of polynomial *factors* in the normalised adjacency Â::

    H = p_S(Â) ... p_2(Â) p_1(Â),      p_s(Â) = Σ_j c_{s,j} Â^j

(``p_1`` is applied to the features first). Coefficients are stored in the Â basis. In the
frequency domain Â = I - L has eigenvalue 1 - λ on the eigenvector u_k of L, so

    h(λ) = Π_s p_s(1 - λ)     and     ||H P - H T||² = Σ_k h(λ_k)² ||u_kᵀ (P - T)||².

Ready-made filters: :func:`linear` (h = 1 - αλ, one factor (1 - α, α)), :func:`quadratic`
(h = (1 - αλ)², the linear factor applied twice, as the authors' code does) and
:func:`polynomial` (custom coefficients, given in the Â basis or in the λ basis; the two are
related by the substitution x -> 1 - x, see :func:`lambda_to_ahat`).

**Monotonicity of the weights.** For the linear filter h(λ)² = (1 - αλ)² decreases
monotonically on [0, 2] when α <= 0.5 (h stays >= 0). For α > 0.5, h crosses zero at
λ = 1/α < 2 and h² rises again towards (1 - 2α)² at λ = 2, so the highest frequencies are
up-weighted relative to the middle ones. The same holds for the quadratic filter
(h² = (1 - αλ)⁴).

**Hops and edge dropout.** Applying a factor of degree m costs m sparse products with Â
(Horner's scheme). Each such product is one *hop*; a filter has ``hops = Σ_s deg p_s`` of
them, numbered in the order they are applied. Edge dropout (:func:`edge_dropout`) keeps each
stored entry of Â with probability ``keep_prob`` and scales the kept ones by ``1/keep_prob``
(no renormalisation). :func:`sample_hops` draws either one fresh mask per hop
(``mask_mode="per_hop"``, the default: the authors' code calls the dropped linear filter
twice for the quadratic one, each call drawing its own mask) or one mask shared by every hop
(``"shared"``). The full path (:func:`full_filter`) and the batch-local path
(:mod:`freqd.spectral.local`) take the same list of per-hop operators, so they compute the
same numbers.

Horner's scheme fixes which hop multiplies which coefficient: for a factor with
coefficients c_0..c_m and hop operators O_1..O_m (in application order)::

    Y_0 = c_m X,   Y_t = O_t Y_{t-1} + c_{m-t} X,   p(X) = Y_m = Σ_i c_i O_m ... O_{m-i+1} X.

With a single mask (or none) every O_t = Â and this is exactly Σ_i c_i Â^i X.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from ..utils.numerics import sparse_mm, sparse_operand

from ..errors import ConfigError

__all__ = [
    "HopOps",
    "PolyFilter",
    "SparseOp",
    "ahat_to_lambda",
    "as_sparse_op",
    "edge_dropout",
    "edge_dropout_mask",
    "filter_weights",
    "full_filter",
    "identity",
    "lambda_to_ahat",
    "linear",
    "make_filter",
    "polynomial",
    "quadratic",
    "sample_hops",
]


# --------------------------------------------------------------------------------------
# polynomial filters
# --------------------------------------------------------------------------------------
def _trim(coeffs: Sequence[float]) -> tuple[float, ...]:
    """Drop trailing zero coefficients (they would cost hops for nothing); keep >= 1."""
    c = [float(v) for v in coeffs]
    while len(c) > 1 and c[-1] == 0.0:
        c.pop()
    if not c:
        c = [0.0]
    return tuple(c)


def _substitute_one_minus(coeffs: Sequence[float]) -> tuple[float, ...]:
    """Coefficients of q(x) = p(1 - x) given those of p (an involution)."""
    from numpy.polynomial import Polynomial

    p = Polynomial(np.asarray(coeffs, dtype=np.float64))
    q = p(Polynomial([1.0, -1.0]))
    out = np.zeros(len(coeffs))
    out[: len(q.coef)] = q.coef
    return tuple(float(v) for v in out)


def lambda_to_ahat(coeffs: Sequence[float]) -> tuple[float, ...]:
    """Convert h(λ) = Σ_j b_j λ^j into Â-basis coefficients c with H = Σ_j c_j Â^j.

    Uses λ = 1 - a (L = I - Â): c are the coefficients of h(1 - a) in a.
    """
    return _substitute_one_minus(coeffs)


def ahat_to_lambda(coeffs: Sequence[float]) -> tuple[float, ...]:
    """Convert H = Σ_j c_j Â^j into h(λ) = Σ_j b_j λ^j (inverse of :func:`lambda_to_ahat`)."""
    return _substitute_one_minus(coeffs)


@dataclass(frozen=True)
class PolyFilter:
    """H = p_S(Â) ... p_1(Â); ``factors[s]`` = coefficients (c_0, c_1, ...) of p_{s+1} in Â.

    ``factors[0]`` is applied first. Trailing zero coefficients are trimmed, so e.g. the
    linear filter with α = 0 is the identity with no hop at all.
    """

    factors: tuple[tuple[float, ...], ...]
    name: str = field(default="custom", compare=False)

    def __post_init__(self):
        if len(self.factors) == 0:
            raise ConfigError("option 'filter': a filter needs at least one factor")
        fs = tuple(_trim(f) for f in self.factors)
        for f in fs:
            if not all(math.isfinite(v) for v in f):
                raise ConfigError(f"option 'filter': non-finite coefficient in {f}")
        object.__setattr__(self, "factors", fs)

    @property
    def hops(self) -> int:
        """Number of sparse products with Â one application costs (= its degree)."""
        return sum(len(f) - 1 for f in self.factors)

    @property
    def degree(self) -> int:
        """Degree of H as a polynomial in Â (the neighbourhood radius it needs)."""
        return self.hops

    def coeffs_ahat(self) -> tuple[float, ...]:
        """Expanded coefficients c_j of H = Σ_j c_j Â^j."""
        out = np.array([1.0])
        for f in self.factors:
            out = np.convolve(out, np.asarray(f, dtype=np.float64))
        return tuple(float(v) for v in out)

    def coeffs_lambda(self) -> tuple[float, ...]:
        """Expanded coefficients b_j of h(λ) = Σ_j b_j λ^j."""
        return ahat_to_lambda(self.coeffs_ahat())

    def expanded(self) -> PolyFilter:
        """The same H as a single factor (same numbers without dropout; with per-hop
        dropout the factored and expanded forms draw masks differently)."""
        return PolyFilter((self.coeffs_ahat(),), name=self.name)

    def h(self, lambdas: Any) -> Any:
        """h(λ) elementwise; ``lambdas`` is a numpy array, a torch tensor or a float."""
        a = 1 - lambdas
        out = 1.0
        for f in self.factors:
            val = 0.0 * a + f[-1]  # Horner, keeps the input's type and device
            for c in reversed(f[:-1]):
                val = val * a + c
            out = out * val
        return out

    def weights(self, lambdas: Any) -> Any:
        """w(λ) = h(λ)², the weight the filter gives to frequency λ in the MSE loss."""
        hv = self.h(lambdas)
        return hv * hv


def _check_alpha(alpha: float) -> float:
    alpha = float(alpha)
    if not (0.0 <= alpha <= 1.0) or math.isnan(alpha):
        raise ConfigError(f"option 'alpha': must be in [0, 1], got {alpha}")
    return alpha


def identity() -> PolyFilter:
    """H = I (h = 1): plain feature KD."""
    return PolyFilter(((1.0,),), name="identity")


def linear(alpha: float = 0.5) -> PolyFilter:
    """H = (1 - α) I + α Â, i.e. h(λ) = 1 - αλ (one hop).

    h² is monotone decreasing on [0, 2] for α <= 0.5; for α > 0.5 it rises again near λ = 2.
    """
    a = _check_alpha(alpha)
    return PolyFilter(((1.0 - a, a),), name="linear")


def quadratic(alpha: float = 0.5) -> PolyFilter:
    """The linear filter applied twice: h(λ) = (1 - αλ)² (two hops, two factors).

    h² = (1 - αλ)⁴ is monotone decreasing on [0, 2] for α <= 0.5; for α > 0.5 it rises again
    near λ = 2.
    """
    a = _check_alpha(alpha)
    return PolyFilter(((1.0 - a, a), (1.0 - a, a)), name="quadratic")


def polynomial(
    coeffs: Sequence[float], basis: Literal["ahat", "lambda"] = "ahat"
) -> PolyFilter:
    """A custom filter from coefficients, lowest degree first.

    ``basis="ahat"``: H = Σ_j c_j Â^j. ``basis="lambda"``: h(λ) = Σ_j b_j λ^j, converted with
    :func:`lambda_to_ahat`. The result is a single factor evaluated with Horner's scheme
    (one hop per degree). No monotonicity is implied: check ``filter_weights``.
    """
    if basis not in ("ahat", "lambda"):
        raise ConfigError(f"option 'basis': expected 'ahat' or 'lambda', got {basis!r}")
    c = [float(v) for v in coeffs]
    if not c:
        raise ConfigError("option 'coeffs': at least one coefficient is needed")
    if basis == "lambda":
        c = list(lambda_to_ahat(c))
    return PolyFilter((tuple(c),), name="custom")


def make_filter(
    spec: str | PolyFilter | Sequence[float],
    alpha: float = 0.5,
    basis: Literal["ahat", "lambda"] = "ahat",
) -> PolyFilter:
    """Filter from a config value: ``"linear"``, ``"quadratic"``, ``"identity"``, a
    :class:`PolyFilter`, or a coefficient sequence (in ``basis``)."""
    if isinstance(spec, PolyFilter):
        return spec
    if isinstance(spec, str):
        if spec == "linear":
            return linear(alpha)
        if spec == "quadratic":
            return quadratic(alpha)
        if spec == "identity":
            return identity()
        raise ConfigError(
            f"option 'filter': expected linear, quadratic, identity or coefficients, got {spec!r}"
        )
    return polynomial(spec, basis=basis)


def filter_weights(lambdas: Any, filt: PolyFilter) -> Any:
    """h(λ)² for each eigenvalue (numpy or torch in, same type out).

    For :func:`linear` / :func:`quadratic` with α <= 0.5 the weights decrease monotonically on
    [0, 2]; with α > 0.5 they rise again near λ = 2 (h turns negative past λ = 1/α).
    """
    return filt.weights(lambdas)


# --------------------------------------------------------------------------------------
# sparse operators and edge dropout
# --------------------------------------------------------------------------------------
@dataclass
class SparseOp:
    """An n x n sparse matrix in CSR form held as torch tensors on one device.

    ``indptr`` / ``indices`` are int64, ``values`` float32. This is what the filters
    multiply with; :meth:`coo` gives the (cached) torch COO tensor for ``torch.sparse.mm``.
    """

    indptr: Tensor
    indices: Tensor
    values: Tensor
    n: int

    @classmethod
    def from_scipy(cls, A: Any, device: Any = None) -> SparseOp:
        import scipy.sparse as sp

        a = sp.csr_matrix(A, dtype=np.float32)
        if a.shape[0] != a.shape[1]:
            raise ConfigError(f"expected a square operator, got shape {a.shape}")
        a.sum_duplicates()
        a.sort_indices()
        return cls(
            torch.as_tensor(a.indptr.astype(np.int64), device=device),
            torch.as_tensor(a.indices.astype(np.int64), device=device),
            torch.as_tensor(a.data, device=device),
            int(a.shape[0]),
        )

    @property
    def nnz(self) -> int:
        return int(self.indices.numel())

    @property
    def device(self) -> torch.device:
        return self.values.device

    def row_ids(self) -> Tensor:
        """Row index of every stored entry (CSR order), cached."""
        cache = self.__dict__.get("_rows")
        if cache is None:
            counts = self.indptr[1:] - self.indptr[:-1]
            cache = torch.repeat_interleave(
                torch.arange(self.n, device=self.device), counts, output_size=self.nnz
            )
            self.__dict__["_rows"] = cache
        return cache

    def coo(self) -> Tensor:
        """The operator as a coalesced torch COO tensor (cached)."""
        cache = self.__dict__.get("_coo")
        if cache is None:
            idx = torch.stack([self.row_ids(), self.indices])
            cache = torch.sparse_coo_tensor(
                idx, self.values, (self.n, self.n), is_coalesced=True, check_invariants=False
            )
            self.__dict__["_coo"] = cache
        return cache

    def to(self, device: Any) -> SparseOp:
        return SparseOp(
            self.indptr.to(device), self.indices.to(device), self.values.to(device), self.n
        )

    def masked(self, mask: Tensor, scale: float = 1.0) -> SparseOp:
        """Keep the stored entries where ``mask`` is true, multiplying them by ``scale``."""
        mask = mask.to(device=self.device, dtype=torch.bool)
        if mask.shape != (self.nnz,):
            raise ValueError(f"mask has shape {tuple(mask.shape)}, expected ({self.nnz},)")
        # one compaction (one host sync on a GPU); the kept rows stay sorted (CSR order),
        # so the new row pointers are a searchsorted, not a bincount + cumsum
        keep = mask.nonzero().squeeze(1)
        kept_rows = self.row_ids().index_select(0, keep)
        indptr = torch.searchsorted(kept_rows, torch.arange(self.n + 1, device=self.device))
        return SparseOp(indptr, self.indices.index_select(0, keep),
                        self.values.index_select(0, keep) * scale, self.n)

    def scipy(self):
        """Back to a scipy CSR matrix (on the CPU)."""
        import scipy.sparse as sp

        return sp.csr_matrix(
            (self.values.cpu().numpy(), self.indices.cpu().numpy(), self.indptr.cpu().numpy()),
            shape=(self.n, self.n),
        )


def as_sparse_op(A: Any, device: Any = None) -> SparseOp:
    """A :class:`SparseOp` from a SparseOp (moved to ``device`` if given), a scipy matrix,
    or a torch sparse (COO/CSR) tensor."""
    if isinstance(A, SparseOp):
        return A if device is None else A.to(device)
    if isinstance(A, Tensor):
        if A.layout == torch.sparse_coo:
            A = A.coalesce()
            idx = A.indices().cpu().numpy()
            import scipy.sparse as sp

            m = sp.csr_matrix(
                (A.values().detach().cpu().numpy(), (idx[0], idx[1])), shape=tuple(A.shape)
            )
            return SparseOp.from_scipy(m, device=A.device if device is None else device)
        if A.layout == torch.sparse_csr:
            op = SparseOp(
                A.crow_indices().long(),
                A.col_indices().long(),
                A.values().detach().float(),
                int(A.shape[0]),
            )
            return op if device is None else op.to(device)
        raise ConfigError("expected a sparse operator, got a dense tensor")
    return SparseOp.from_scipy(A, device=device)


def _check_keep(keep_prob: float) -> float:
    kp = float(keep_prob)
    if not (0.0 < kp <= 1.0):
        raise ConfigError(f"option 'keep_prob': must be in (0, 1], got {keep_prob}")
    return kp


def edge_dropout_mask(
    A_hat: Any, keep_prob: float, generator: torch.Generator | None = None
) -> Tensor:
    """Bernoulli(keep_prob) keep-mask over the stored entries of ``A_hat`` (CSR order).

    Drawn on the generator's device (``A_hat``'s device must match it); all True when
    ``keep_prob == 1``.
    """
    kp = _check_keep(keep_prob)
    op = as_sparse_op(A_hat)
    if kp == 1.0:
        return torch.ones(op.nnz, dtype=torch.bool, device=op.device)
    u = torch.rand(op.nnz, generator=generator, device=op.device)
    return u < kp


def edge_dropout(
    A_hat: Any,
    keep_prob: float,
    generator: torch.Generator | None = None,
    mask: Tensor | None = None,
) -> tuple[SparseOp, Tensor]:
    """Edge dropout on Â: keep each stored entry with probability ``keep_prob`` and rescale
    the kept values by ``1 / keep_prob``; no renormalisation of degrees.

    Returns ``(A_dropped, mask)``; pass ``mask`` to reuse a mask drawn before (the full and
    the batch-local path must share it to give the same numbers). Dropped entries are removed
    from the structure, so the batch-local neighbourhood shrinks with them.
    """
    kp = _check_keep(keep_prob)
    op = as_sparse_op(A_hat)
    if mask is None:
        mask = edge_dropout_mask(op, kp, generator)
    return op.masked(mask, 1.0 / kp), mask


@dataclass
class HopOps:
    """The per-hop operators of one filter application, with the masks they came from.

    ``ops[t]`` multiplies at hop t (application order); ``masks[t]`` is its keep-mask over
    Â's stored entries (``None`` without dropout).
    """

    ops: list[SparseOp]
    masks: list[Tensor | None]
    keep_prob: float = 1.0


def sample_hops(
    A_hat: Any,
    filt: PolyFilter,
    keep_prob: float = 1.0,
    generator: torch.Generator | None = None,
    *,
    mask_mode: Literal["per_hop", "shared"] = "per_hop",
    masks: Sequence[Tensor] | None = None,
) -> HopOps:
    """Draw the dropout masks of one filter application and build its hop operators.

    ``mask_mode="per_hop"``: a fresh mask for every Â product (quadratic = the dropped
    linear filter called twice, as in the authors' code); ``"shared"``: one mask for all
    hops (H is then a polynomial of one dropped Â). ``keep_prob == 1``: no dropout, every
    hop uses Â itself. Pass ``masks`` (one per hop) to rebuild the same operators.
    """
    kp = _check_keep(keep_prob)
    if mask_mode not in ("per_hop", "shared"):
        raise ConfigError(f"option 'mask_mode': expected per_hop or shared, got {mask_mode!r}")
    op = as_sparse_op(A_hat)
    n_hops = filt.hops
    if masks is not None:
        masks = list(masks)
        if len(masks) != n_hops:
            raise ValueError(f"got {len(masks)} masks for a filter with {n_hops} hops")
        return HopOps([op.masked(m, 1.0 / kp) for m in masks], masks, kp)
    if kp == 1.0 or n_hops == 0:
        return HopOps([op] * n_hops, [None] * n_hops, kp)
    if mask_mode == "shared":
        m = edge_dropout_mask(op, kp, generator)
        dropped = op.masked(m, 1.0 / kp)
        return HopOps([dropped] * n_hops, [m] * n_hops, kp)
    ms = [edge_dropout_mask(op, kp, generator) for _ in range(n_hops)]
    return HopOps([op.masked(m, 1.0 / kp) for m in ms], ms, kp)


def _hop_list(ops: Any, filt: PolyFilter) -> list[SparseOp]:
    """Normalise the ``ops`` argument of the filter functions to one operator per hop."""
    if isinstance(ops, HopOps):
        lst = list(ops.ops)
    elif isinstance(ops, (list, tuple)):
        lst = [as_sparse_op(o) for o in ops]
    else:
        lst = [as_sparse_op(ops)] * filt.hops
    if len(lst) != filt.hops:
        raise ValueError(f"got {len(lst)} hop operators for a filter with {filt.hops} hops")
    return lst


def full_filter(ops: Any, filt: PolyFilter, X: Tensor) -> Tensor:
    """H X over all rows (the reference path; autograd flows to ``X``).

    ``ops``: Â (scipy / torch sparse / :class:`SparseOp`, used for every hop, no dropout),
    a list of per-hop operators, or a :class:`HopOps` from :func:`sample_hops`.
    """
    hops = _hop_list(ops, filt)
    t = 0
    y = X
    for f in filt.factors:
        x_in = y
        m = len(f) - 1
        y = x_in * f[m] if f[m] != 1.0 else x_in
        for j in range(m - 1, -1, -1):
            op = hops[t]
            t += 1
            coo = op.coo()
            y = sparse_operand(y)
            if coo.device != y.device or coo.dtype != y.dtype:
                coo = coo.to(device=y.device, dtype=y.dtype)
            prod = sparse_mm(coo, y)
            y = prod + x_in * f[j] if f[j] != 0.0 else prod
    return y
