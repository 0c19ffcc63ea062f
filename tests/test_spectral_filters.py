"""Polynomial filters: coefficients, the filter identity, edge dropout."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from freqd.errors import ConfigError
from freqd.spectral.filters import (
    PolyFilter,
    ahat_to_lambda,
    edge_dropout,
    edge_dropout_mask,
    filter_weights,
    full_filter,
    identity,
    lambda_to_ahat,
    linear,
    make_filter,
    polynomial,
    quadratic,
    sample_hops,
)
from freqd.spectral.graphs import cooccurrence_topk, normalize_adjacency


def _tiny_ahat(tiny_dir, side="user") -> sp.csr_matrix:
    pairs = np.loadtxt(tiny_dir / "train.txt", dtype=np.int64, skiprows=1, ndmin=2)
    R = sp.csr_matrix((np.ones(len(pairs), np.float32), (pairs[:, 0], pairs[:, 1])))
    R.data[:] = 1
    return normalize_adjacency(cooccurrence_topk(R, side=side, k=5))


def test_coefficients_by_hand():
    f = linear(0.3)
    assert f.factors == ((0.7, 0.3),) and f.hops == 1
    np.testing.assert_allclose(f.coeffs_lambda(), (1.0, -0.3))
    q = quadratic(0.3)
    assert q.hops == 2
    np.testing.assert_allclose(q.coeffs_ahat(), (0.49, 0.42, 0.09))
    np.testing.assert_allclose(q.coeffs_lambda(), (1.0, -0.6, 0.09))  # (1 - .3 l)^2
    lam = np.array([0.0, 0.5, 1.0, 2.0])
    np.testing.assert_allclose(q.h(lam), (1 - 0.3 * lam) ** 2)
    np.testing.assert_allclose(filter_weights(lam, q), (1 - 0.3 * lam) ** 4)
    # alpha 0 is the identity with no hop at all
    assert linear(0.0).hops == 0 and linear(0.0) == identity()
    # lambda basis: h = 1 - 2 l + l^2 = (1 - l)^2 = a^2
    p = polynomial([1.0, -2.0, 1.0], basis="lambda")
    np.testing.assert_allclose(p.coeffs_ahat(), (0.0, 0.0, 1.0), atol=1e-12)
    assert make_filter("quadratic", alpha=0.3) == q
    assert make_filter([0.7, 0.3]) == linear(0.3)


def test_basis_conversion_roundtrip_and_values():
    rng = np.random.default_rng(0)
    c = rng.normal(size=5)
    b = ahat_to_lambda(c)
    np.testing.assert_allclose(lambda_to_ahat(b), c, atol=1e-12)
    lam = np.linspace(0, 2, 11)
    h_from_ahat = sum(cj * (1 - lam) ** j for j, cj in enumerate(c))
    h_from_lam = sum(bj * lam**j for j, bj in enumerate(b))
    np.testing.assert_allclose(h_from_ahat, h_from_lam, atol=1e-10)
    np.testing.assert_allclose(polynomial(c).h(lam), h_from_ahat, atol=1e-10)


def test_weight_monotonicity_documented_behaviour():
    lam = np.linspace(0, 2, 401)
    for a in (0.1, 0.3, 0.5):
        for f in (linear(a), quadratic(a)):
            assert np.all(np.diff(filter_weights(lam, f)) <= 1e-12)
    for a in (0.6, 0.9):
        w = filter_weights(lam, linear(a))
        assert w[-1] > w.min() + 1e-3  # rises again near lambda = 2
        np.testing.assert_allclose(w[-1], (1 - 2 * a) ** 2)


def test_bad_options_raise_config_error():
    with pytest.raises(ConfigError, match="alpha"):
        linear(1.5)
    with pytest.raises(ConfigError, match="alpha"):
        quadratic(-0.1)
    with pytest.raises(ConfigError, match="keep_prob"):
        edge_dropout(sp.identity(3, format="csr"), 0.0)
    with pytest.raises(ConfigError, match="filter"):
        make_filter("cubic")
    with pytest.raises(ConfigError, match="mask_mode"):
        sample_hops(sp.identity(3, format="csr"), linear(), 0.5, mask_mode="sometimes")


@pytest.mark.parametrize(
    "filt",
    [linear(0.5), linear(0.8), quadratic(0.5), polynomial([0.2, -0.5, 0.7, 0.3])],
    ids=["linear", "linear-0.8", "quadratic", "cubic"],
)
def test_filter_identity_on_tiny_graph(tiny_dir, filt):
    """||H P - H T||² = Σ_k h(λ_k)² ||u_kᵀ (P - T)||² (MSE, all rows, no dropout)."""
    Ah = _tiny_ahat(tiny_dir)
    n = Ah.shape[0]
    L = np.eye(n) - Ah.toarray().astype(np.float64)
    lam, U = np.linalg.eigh(L)
    g = torch.Generator().manual_seed(0)
    P = torch.randn(n, 6, generator=g, dtype=torch.float64)
    T = torch.randn(n, 6, generator=g, dtype=torch.float64)
    lhs = float(((full_filter(Ah, filt, P) - full_filter(Ah, filt, T)) ** 2).sum())
    per = ((U.T @ (P - T).numpy()) ** 2).sum(1)
    rhs = float((filter_weights(lam, filt) * per).sum())
    assert lhs == pytest.approx(rhs, rel=1e-5)
    # and H itself is Σ c_j Â^j
    dense_h = sum(c * np.linalg.matrix_power(Ah.toarray().astype(np.float64), j)
                  for j, c in enumerate(filt.coeffs_ahat()))
    np.testing.assert_allclose(full_filter(Ah, filt, P).numpy(), dense_h @ P.numpy(),
                               rtol=1e-5, atol=1e-6)


def test_edge_dropout_mask_and_rescale(tiny_dir):
    Ah = _tiny_ahat(tiny_dir, side="item")
    g = torch.Generator().manual_seed(1)
    dropped, mask = edge_dropout(Ah, 0.5, g)
    assert mask.dtype == torch.bool and mask.shape == (Ah.nnz,)
    frac = mask.float().mean().item()
    sd = (0.25 / Ah.nnz) ** 0.5
    assert abs(frac - 0.5) < 5 * sd
    d = dropped.scipy().toarray()
    coo = Ah.tocoo()  # CSR order == COO order of a canonical CSR
    keep = mask.numpy()
    ref = np.zeros(Ah.shape, np.float32)
    ref[coo.row[keep], coo.col[keep]] = coo.data[keep] / 0.5
    np.testing.assert_allclose(d, ref)
    assert dropped.nnz == int(keep.sum())  # dropped entries leave the structure
    # the same mask rebuilds the same operator; keep_prob 1 keeps everything
    again, _ = edge_dropout(Ah, 0.5, mask=mask)
    assert torch.equal(again.values, dropped.values)
    assert edge_dropout_mask(Ah, 1.0).all()


def test_sample_hops_modes(tiny_dir):
    Ah = _tiny_ahat(tiny_dir)
    q = quadratic(0.5)
    g = torch.Generator().manual_seed(2)
    per = sample_hops(Ah, q, 0.5, g, mask_mode="per_hop")
    assert len(per.ops) == 2 and not torch.equal(per.masks[0], per.masks[1])
    shared = sample_hops(Ah, q, 0.5, g, mask_mode="shared")
    assert torch.equal(shared.masks[0], shared.masks[1])
    none = sample_hops(Ah, q, 1.0, g)
    assert none.masks == [None, None]
    # shared mask: H = (αÂ_d + (1-α)I)²; per hop: product of two different dropped operators
    X = torch.randn(Ah.shape[0], 3, dtype=torch.float64, generator=g)
    eye = np.eye(Ah.shape[0])
    d0 = shared.ops[0].scipy().toarray().astype(np.float64)
    h = 0.5 * eye + 0.5 * d0
    np.testing.assert_allclose(full_filter(shared, q, X).numpy(), h @ h @ X.numpy(), atol=1e-6)
    p0, p1 = (o.scipy().toarray().astype(np.float64) for o in per.ops)
    ref = (0.5 * eye + 0.5 * p1) @ (0.5 * eye + 0.5 * p0) @ X.numpy()
    np.testing.assert_allclose(full_filter(per, q, X).numpy(), ref, atol=1e-6)
    # expected value of a dropped operator is Â (unbiased rescaling)
    acc = np.zeros(Ah.shape)
    g2 = torch.Generator().manual_seed(3)
    for _ in range(200):
        acc += edge_dropout(Ah, 0.5, g2)[0].scipy().toarray()
    assert np.abs(acc / 200 - Ah.toarray()).max() < 0.35


def test_custom_factored_filter_matches_dense():
    rng = np.random.default_rng(4)
    A = sp.random(30, 30, density=0.15, random_state=5, format="csr")
    A = ((A + A.T) > 0).astype(np.float32)
    Ah = normalize_adjacency(A)
    f = PolyFilter(((0.3, 0.5, 0.2), (1.0, -0.4)))  # degree 3: p2(Â) p1(Â)
    assert f.hops == 3
    a = Ah.toarray().astype(np.float64)
    eye = np.eye(30)
    H = (1.0 * eye - 0.4 * a) @ (0.3 * eye + 0.5 * a + 0.2 * a @ a)
    X = torch.as_tensor(rng.normal(size=(30, 4)))
    np.testing.assert_allclose(full_filter(Ah, f, X).numpy(), H @ X.numpy(), atol=1e-6)
    np.testing.assert_allclose(f.expanded().coeffs_ahat(), f.coeffs_ahat())
