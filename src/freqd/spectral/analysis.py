"""Frequency analysis of features on a graph (FREQD.md sections 2 and 5).

With L = I - Â = U Λ Uᵀ (eigenvalues ascending in [0, 2]), the k-th frequency component of
a feature matrix X (N x d) has energy ||u_kᵀ X||². Because U is orthonormal (Parseval)
these energies sum to ||X||_F², which is why plain feature MSE weighs every frequency
equally; a weight function w(λ) gives the reweighted loss Σ_k w(λ_k) ||u_kᵀ X||².

* :func:`eigendecomposition`: exact dense ``eigh`` up to ``max_dense`` nodes (float64 up
  to ``float64_max`` nodes, float32 above), otherwise the lowest and highest eigenpairs by
  Lanczos (``scipy.sparse.linalg.eigsh``). Asking for an exact decomposition above the
  limit raises :class:`~freqd.errors.ConfigError` naming the option.
* :func:`per_frequency_loss`, :func:`band_losses`: energies per eigenvector and per band.
* :func:`rayleigh_quotient`: tr(XᵀLX) / tr(XᵀX), the mean frequency of X (sparse, cheap).
* :func:`exact_reweighted_loss` and :func:`weight_function` (h(λ)², step, exponential):
  the ``freqd-exact`` loss.

Functions accept numpy arrays or torch tensors (results follow the input's type/device).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Literal

import numpy as np
import scipy.sparse as sp

from ..errors import ConfigError

__all__ = [
    "Spectrum",
    "band_losses",
    "eigendecomposition",
    "exact_reweighted_loss",
    "per_frequency_loss",
    "rayleigh_quotient",
    "weight_function",
]

DEFAULT_MAX_DENSE = 30000
DEFAULT_FLOAT64_MAX = 8000


@dataclass
class Spectrum:
    """Eigenpairs of a graph Laplacian L = I - Â.

    ``lambdas``: eigenvalues, ascending (numpy float64); ``U``: the matching orthonormal
    eigenvectors as columns (numpy, N x M); ``exact``: True when all N pairs are present
    (then Parseval holds), False for the lowest/highest-M partial spectrum; ``n``: N.
    """

    lambdas: np.ndarray
    U: np.ndarray
    exact: bool
    n: int

    def torch(self, device: Any = None, dtype: Any = None):
        """(lambdas, U) as torch tensors on ``device`` (U in its own dtype unless given)."""
        import torch

        lam = torch.as_tensor(self.lambdas, device=device)
        u = torch.as_tensor(self.U, device=device)
        if dtype is not None:
            lam, u = lam.to(dtype), u.to(dtype)
        return lam, u


def _as_laplacian(M: Any, operator: str) -> sp.csr_matrix:
    if operator not in ("laplacian", "adjacency"):
        raise ConfigError(f"option 'operator': expected laplacian or adjacency, got {operator!r}")
    m = sp.csr_matrix(M, dtype=np.float64)
    if m.shape[0] != m.shape[1]:
        raise ConfigError(f"eigendecomposition: expected a square matrix, got {m.shape}")
    if operator == "adjacency":
        m = (sp.identity(m.shape[0], format="csr") - m).tocsr()
    return m


def eigendecomposition(
    M: Any,
    *,
    operator: Literal["laplacian", "adjacency"] = "laplacian",
    exact: bool | None = None,
    max_dense: int = DEFAULT_MAX_DENSE,
    n_low: int = 100,
    n_high: int = 100,
    float64_max: int = DEFAULT_FLOAT64_MAX,
    device: Any = None,
    option: str = "max_dense",
) -> Spectrum:
    """Eigenpairs of L (``operator="laplacian"``) or of L = I - M (``"adjacency"``, M = Â).

    ``exact=None`` (auto): the full dense decomposition when N <= ``max_dense``, else the
    ``n_low`` lowest and ``n_high`` highest eigenpairs (Lanczos on Â, float64).
    ``exact=True`` above ``max_dense`` raises ConfigError naming ``option`` (the caller's
    option name for the limit). The dense path runs ``torch.linalg.eigh`` on ``device``
    (CPU by default) in float64 up to ``float64_max`` nodes, float32 above (30k nodes in
    float32: ~3.6 GB per N x N matrix, ~3 of them alive at the peak).
    """
    L = _as_laplacian(M, operator)
    n = L.shape[0]
    if exact is None:
        exact = n <= max_dense
    if exact and n > max_dense:
        gb = n * n * 4 * 3 / 1e9
        raise ConfigError(
            f"option {option!r}: an exact eigendecomposition of this {n}-node graph is "
            f"refused (limit {max_dense} nodes; it would need about {gb:.0f} GB); raise "
            f"{option!r} or use the partial spectrum (lowest/highest eigenpairs)"
        )
    if exact:
        import torch

        dtype = torch.float64 if n <= float64_max else torch.float32
        dense = torch.as_tensor(L.toarray(), dtype=dtype, device=device)
        dense = 0.5 * (dense + dense.T)  # exact symmetry for eigh
        lam, U = torch.linalg.eigh(dense)
        del dense
        return Spectrum(lam.double().cpu().numpy(), U.cpu().numpy(), True, n)
    # partial: extremal eigenpairs of Â (lowest λ = largest eigenvalues of Â)
    from scipy.sparse.linalg import eigsh

    a = (sp.identity(n, format="csr") - L).tocsr()
    n_low, n_high = int(n_low), int(n_high)
    if n_low < 0 or n_high < 0 or n_low + n_high == 0:
        raise ConfigError("options 'n_low'/'n_high': need at least one eigenpair")
    if n_low + n_high >= n - 1:
        raise ConfigError(
            f"options 'n_low'/'n_high': {n_low}+{n_high} eigenpairs of a {n}-node graph; "
            "use the exact decomposition instead"
        )
    v0 = np.random.default_rng(0).standard_normal(n)
    lams, vecs = [], []
    if n_low:
        mu, v = eigsh(a, k=n_low, which="LA", v0=v0)
        lams.append(1.0 - mu)
        vecs.append(v)
    if n_high:
        mu, v = eigsh(a, k=n_high, which="SA", v0=v0)
        lams.append(1.0 - mu)
        vecs.append(v)
    lam = np.concatenate(lams)
    U = np.concatenate(vecs, axis=1)
    order = np.argsort(lam, kind="stable")
    return Spectrum(lam[order], U[:, order], False, n)


def per_frequency_loss(U: Any, X: Any) -> Any:
    """||u_kᵀ X||² for each eigenvector (column) u_k of ``U``: a vector of length M.

    With a complete U the entries sum to ||X||_F² (Parseval). ``X`` may be N x d or N.
    numpy or torch (U is cast to X's dtype/device for torch).
    """
    if _is_torch(X) or _is_torch(U):
        import torch

        X = torch.as_tensor(X)
        U = torch.as_tensor(U, device=X.device).to(X.dtype)
        proj = U.T @ (X if X.dim() == 2 else X[:, None])
        return (proj * proj).sum(dim=1)
    X = np.asarray(X)
    proj = np.asarray(U).T @ (X if X.ndim == 2 else X[:, None])
    return (proj * proj).sum(axis=1)


def band_losses(
    lambdas: Any,
    per_freq: Any,
    n_bands: int = 10,
    *,
    mode: Literal["count", "width"] = "count",
    lo: float = 0.0,
    hi: float = 2.0,
) -> dict[str, np.ndarray]:
    """Group per-frequency losses into ``n_bands`` bands of λ.

    ``mode="count"``: bands of (nearly) equal numbers of eigenvalues, in ascending order;
    ``"width"``: equal-width bands over [lo, hi] (empty bands get count 0, loss 0).
    Returns numpy arrays: ``lo``/``hi`` (band edges), ``count``, ``loss`` (sum),
    ``mean_lambda`` (NaN for an empty band). The ``loss`` entries sum to ``per_freq.sum()``.
    """
    lam = _to_numpy(lambdas).astype(np.float64).ravel()
    pf = _to_numpy(per_freq).astype(np.float64).ravel()
    if lam.shape != pf.shape:
        raise ValueError(f"lambdas {lam.shape} and per_freq {pf.shape} differ")
    if int(n_bands) < 1:
        raise ConfigError(f"option 'bands': must be >= 1, got {n_bands}")
    n_bands = int(n_bands)
    order = np.argsort(lam, kind="stable")
    lam, pf = lam[order], pf[order]
    if mode == "count":
        band = (np.arange(len(lam)) * n_bands) // max(1, len(lam))
        edges_lo = np.array([lam[band == b].min() if (band == b).any() else np.nan
                             for b in range(n_bands)])
        edges_hi = np.array([lam[band == b].max() if (band == b).any() else np.nan
                             for b in range(n_bands)])
    elif mode == "width":
        edges = np.linspace(lo, hi, n_bands + 1)
        band = np.clip(np.searchsorted(edges, lam, side="right") - 1, 0, n_bands - 1)
        edges_lo, edges_hi = edges[:-1], edges[1:]
    else:
        raise ConfigError(f"option 'mode': expected count or width, got {mode!r}")
    count = np.bincount(band, minlength=n_bands)
    loss = np.bincount(band, weights=pf, minlength=n_bands)
    lam_sum = np.bincount(band, weights=lam, minlength=n_bands)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_lam = np.where(count > 0, lam_sum / np.maximum(count, 1), np.nan)
    return {"lo": edges_lo, "hi": edges_hi, "count": count, "loss": loss,
            "mean_lambda": mean_lam}


def rayleigh_quotient(L: Any, X: Any) -> float:
    """tr(Xᵀ L X) / tr(Xᵀ X): the energy-weighted mean frequency of X (in [0, 2]).

    ``L`` sparse (scipy or torch) or dense; ``X`` numpy or torch (detached). One sparse
    product, O(nnz(L) d). NaN when X is all zero.
    """
    if _is_torch(X):
        import torch

        from .filters import as_sparse_op

        X = X.detach()
        if isinstance(L, torch.Tensor) and L.layout == torch.strided:
            LX = L.to(X.device, X.dtype) @ X
        else:
            coo = as_sparse_op(L, device=X.device).coo().to(X.dtype)
            LX = torch.sparse.mm(coo, X if X.dim() == 2 else X[:, None])
        num = float((X.reshape(LX.shape) * LX).sum())
        den = float((X * X).sum())
    else:
        X = np.asarray(X, dtype=np.float64)
        X2 = X if X.ndim == 2 else X[:, None]
        LX = L @ X2
        num = float(np.sum(X2 * np.asarray(LX)))
        den = float(np.sum(X2 * X2))
    return num / den if den > 0 else math.nan


def weight_function(
    kind: Literal["filter", "step", "exp", "equal"], **params: Any
) -> Callable[[Any], Any]:
    """A weight function w(λ) for :func:`exact_reweighted_loss` (numpy or torch in/out).

    * ``"filter"``: h(λ)² of ``filter=`` a :class:`~freqd.spectral.filters.PolyFilter`
      (or ``name=`` linear/quadratic with ``alpha=``);
    * ``"step"``: ``low`` (default 1) for λ <= ``cutoff``, ``high`` (default 0) above;
    * ``"exp"``: exp(-t λ) with ``t=`` (default 1);
    * ``"equal"``: 1 (plain feature KD).
    """
    if kind == "filter":
        from .filters import make_filter

        filt = params.get("filter")
        if filt is None:
            filt = make_filter(params.get("name", "linear"), alpha=params.get("alpha", 0.5))
        return filt.weights
    if kind == "step":
        if "cutoff" not in params:
            raise ConfigError("option 'cutoff': the step weight needs a cutoff in [0, 2]")
        cutoff = float(params["cutoff"])
        low, high = float(params.get("low", 1.0)), float(params.get("high", 0.0))

        def step(lam: Any) -> Any:
            if _is_torch(lam):
                import torch

                return torch.where(lam <= cutoff, torch.full_like(lam, low),
                                   torch.full_like(lam, high))
            lam = np.asarray(lam)
            return np.where(lam <= cutoff, low, high)

        return step
    if kind == "exp":
        t = float(params.get("t", 1.0))

        def expw(lam: Any) -> Any:
            if _is_torch(lam):
                import torch

                return torch.exp(-t * lam)
            return np.exp(-t * np.asarray(lam))

        return expw
    if kind == "equal":
        def equal(lam: Any) -> Any:
            return lam * 0 + 1

        return equal
    raise ConfigError(f"option 'weight': expected filter, step, exp or equal, got {kind!r}")


def exact_reweighted_loss(U: Any, lambdas: Any, weight_fn: Any, X: Any) -> Any:
    """Σ_k w(λ_k) ||u_kᵀ X||² (the ``freqd-exact`` loss; autograd flows to torch ``X``).

    ``weight_fn``: a callable of λ (see :func:`weight_function`) or precomputed weights.
    With a partial spectrum only the given components are counted.
    """
    per = per_frequency_loss(U, X)
    if callable(weight_fn):
        w = weight_fn(lambdas)
    else:
        w = weight_fn
    if _is_torch(per):
        import torch

        w = torch.as_tensor(w, device=per.device).to(per.dtype)
        return (w * per).sum()
    return float(np.sum(np.asarray(w, dtype=np.float64) * per))


def _is_torch(x: Any) -> bool:
    mod = type(x).__module__
    return mod.startswith("torch")


def _to_numpy(x: Any) -> np.ndarray:
    if _is_torch(x):
        return x.detach().cpu().numpy()
    return np.asarray(x)
