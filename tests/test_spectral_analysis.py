"""Eigen analysis: closed-form spectra, Parseval, bands, Rayleigh quotient, exact reweighting."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from freqd.errors import ConfigError
from freqd.spectral.analysis import (
    band_losses,
    eigendecomposition,
    exact_reweighted_loss,
    per_frequency_loss,
    rayleigh_quotient,
    weight_function,
)
from freqd.spectral.filters import full_filter, linear, quadratic
from freqd.spectral.graphs import cooccurrence_topk, laplacian, normalize_adjacency


def _path(n: int) -> sp.csr_matrix:
    i = np.arange(n - 1)
    a = sp.csr_matrix((np.ones(n - 1), (i, i + 1)), shape=(n, n))
    return (a + a.T).tocsr()


def _cycle(n: int) -> sp.csr_matrix:
    i = np.arange(n)
    a = sp.csr_matrix((np.ones(n), (i, (i + 1) % n)), shape=(n, n))
    return (a + a.T).tocsr()


def test_path_graph_closed_form():
    # normalised Laplacian of the path P_n: λ_k = 1 - cos(π k / (n - 1)), k = 0..n-1
    n = 12
    spec = eigendecomposition(laplacian(normalize_adjacency(_path(n))))
    expected = np.sort(1 - np.cos(np.pi * np.arange(n) / (n - 1)))
    assert spec.exact and spec.n == n
    np.testing.assert_allclose(spec.lambdas, expected, atol=1e-6)
    np.testing.assert_allclose(spec.U.T @ spec.U, np.eye(n), atol=1e-6)
    # from Â directly
    spec2 = eigendecomposition(normalize_adjacency(_path(n)), operator="adjacency")
    np.testing.assert_allclose(spec2.lambdas, expected, atol=1e-6)


def test_cycle_partial_spectrum_closed_form():
    # cycle C_n: λ_k = 1 - cos(2π k / n)
    n = 200
    closed = np.sort(1 - np.cos(2 * np.pi * np.arange(n) / n))
    L = laplacian(normalize_adjacency(_cycle(n)))
    spec = eigendecomposition(L, exact=False, n_low=5, n_high=4)
    assert not spec.exact and spec.U.shape == (n, 9)
    np.testing.assert_allclose(spec.lambdas[:5], closed[:5], atol=1e-8)
    np.testing.assert_allclose(spec.lambdas[5:], closed[-4:], atol=1e-8)
    # eigenpairs really are eigenpairs
    Ld = L.toarray().astype(np.float64)
    np.testing.assert_allclose(Ld @ spec.U, spec.U * spec.lambdas, atol=1e-5)


def test_exact_refused_above_limit_names_option():
    L = laplacian(normalize_adjacency(_cycle(50)))
    with pytest.raises(ConfigError, match="max_nodes"):
        eigendecomposition(L, exact=True, max_dense=40, option="max_nodes")
    # auto mode falls back to the partial spectrum
    spec = eigendecomposition(L, max_dense=40, n_low=3, n_high=3)
    assert not spec.exact and len(spec.lambdas) == 6


def test_float32_path_above_float64_limit():
    n = 30
    spec = eigendecomposition(laplacian(normalize_adjacency(_path(n))), float64_max=10)
    assert spec.U.dtype == np.float32
    np.testing.assert_allclose(
        spec.lambdas, np.sort(1 - np.cos(np.pi * np.arange(n) / (n - 1))), atol=1e-5
    )


@pytest.fixture(scope="module")
def tiny_graph(tiny_dir):
    pairs = np.loadtxt(tiny_dir / "train.txt", dtype=np.int64, skiprows=1, ndmin=2)
    R = sp.csr_matrix((np.ones(len(pairs), np.float32), (pairs[:, 0], pairs[:, 1])))
    R.data[:] = 1
    Ah = normalize_adjacency(cooccurrence_topk(R, side="user", k=5))
    return Ah, eigendecomposition(Ah, operator="adjacency")


def test_parseval_on_tiny_cooccurrence_graph(tiny_graph):
    Ah, spec = tiny_graph
    rng = np.random.default_rng(0)
    P, T = rng.normal(size=(2, Ah.shape[0], 7))
    per = per_frequency_loss(spec.U, P - T)
    assert per.shape == (Ah.shape[0],)
    assert per.sum() == pytest.approx(((P - T) ** 2).sum(), rel=1e-10)
    # torch path agrees and keeps gradients
    X = torch.as_tensor(P - T).requires_grad_(True)
    pt = per_frequency_loss(torch.as_tensor(spec.U), X)
    assert pt.sum().item() == pytest.approx(per.sum(), rel=1e-10)
    pt.sum().backward()
    torch.testing.assert_close(X.grad, 2 * X.detach())  # d||X||²/dX


def test_band_losses(tiny_graph):
    _, spec = tiny_graph
    rng = np.random.default_rng(1)
    per = rng.random(len(spec.lambdas))
    for mode in ("count", "width"):
        b = band_losses(spec.lambdas, per, 7, mode=mode)
        assert b["loss"].sum() == pytest.approx(per.sum())
        assert b["count"].sum() == len(per)
    b = band_losses(spec.lambdas, per, 4, mode="count")
    assert b["count"].max() - b["count"].min() <= 1
    w = band_losses(np.array([0.0, 0.1, 1.5, 2.0]), np.array([1.0, 2.0, 3.0, 4.0]), 2,
                    mode="width")
    np.testing.assert_array_equal(w["count"], [2, 2])
    np.testing.assert_array_equal(w["loss"], [3.0, 7.0])


def test_rayleigh_quotient(tiny_graph):
    Ah, spec = tiny_graph
    L = laplacian(Ah)
    rng = np.random.default_rng(2)
    X = rng.normal(size=(Ah.shape[0], 5))
    per = per_frequency_loss(spec.U, X)
    ref = float((spec.lambdas * per).sum() / per.sum())
    assert rayleigh_quotient(L, X) == pytest.approx(ref, rel=1e-6)
    assert rayleigh_quotient(L, torch.as_tensor(X)) == pytest.approx(ref, rel=1e-6)
    # a constant-over-D^1/2 signal is the λ=0 eigenvector of a connected graph's L
    Lp = laplacian(normalize_adjacency(_path(6)))
    v = np.sqrt(np.array([1, 2, 2, 2, 2, 1.0]))
    assert rayleigh_quotient(Lp, v) == pytest.approx(0.0, abs=1e-7)
    assert np.isnan(rayleigh_quotient(Lp, np.zeros(6)))


@pytest.mark.parametrize("filt", [linear(0.5), quadratic(0.3)])
def test_exact_reweighting_with_filter_weights_equals_filtered_mse(tiny_graph, filt):
    Ah, spec = tiny_graph
    g = torch.Generator().manual_seed(3)
    X = torch.randn(Ah.shape[0], 6, dtype=torch.float64, generator=g)
    lam, U = spec.torch(dtype=torch.float64)
    loss = exact_reweighted_loss(U, lam, weight_function("filter", filter=filt), X)
    ref = (full_filter(Ah, filt, X) ** 2).sum()
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5)


def test_exact_reweighting_step_and_exp(tiny_graph):
    Ah, spec = tiny_graph
    rng = np.random.default_rng(4)
    X = rng.normal(size=(Ah.shape[0], 3))
    U, lam = spec.U.astype(np.float64), spec.lambdas
    for fn, w in (
        (weight_function("step", cutoff=0.8), (lam <= 0.8).astype(float)),
        (weight_function("exp", t=2.0), np.exp(-2.0 * lam)),
        (weight_function("equal"), np.ones_like(lam)),
    ):
        dense = U @ np.diag(w) @ U.T
        ref = float(np.trace(X.T @ dense @ X))
        assert exact_reweighted_loss(U, lam, fn, X) == pytest.approx(ref, rel=1e-8)
    # step with a cutoff keeps exactly the low band's energy; torch grads flow
    Xt = torch.as_tensor(X).requires_grad_(True)
    lt = torch.as_tensor(lam)
    loss = exact_reweighted_loss(torch.as_tensor(U), lt, weight_function("step", cutoff=0.8), Xt)
    loss.backward()
    low = U[:, lam <= 0.8]
    np.testing.assert_allclose(Xt.grad.numpy(), 2 * low @ low.T @ X, atol=1e-8)
    with pytest.raises(ConfigError, match="cutoff"):
        weight_function("step")
