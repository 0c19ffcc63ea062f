"""Batch-local filtering == full-table filtering (values and gradients, shared masks)."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from freqd.spectral.filters import (
    PolyFilter,
    full_filter,
    linear,
    polynomial,
    quadratic,
    sample_hops,
)
from freqd.spectral.graphs import cooccurrence_topk, normalize_adjacency
from freqd.spectral.local import local_filter, local_filter_plan


@pytest.fixture(scope="module")
def item_ahat(tiny_dir) -> sp.csr_matrix:
    pairs = np.loadtxt(tiny_dir / "train.txt", dtype=np.int64, skiprows=1, ndmin=2)
    n_items = int(pairs[:, 1].max()) + 1 + 2  # two items without interactions (isolated)
    R = sp.csr_matrix(
        (np.ones(len(pairs), np.float32), (pairs[:, 0], pairs[:, 1])),
        shape=(int(pairs[:, 0].max()) + 1, n_items),
    )
    R.data[:] = 1
    return normalize_adjacency(cooccurrence_topk(R, side="item", k=5))


FILTERS = {
    "linear": linear(0.5),
    "quadratic": quadratic(0.5),
    "cubic": polynomial([0.1, 0.4, -0.3, 0.2]),
    "factored4": PolyFilter(((0.5, 0.5), (0.2, 0.3, 0.5), (1.0, -0.25))),
    "identity": linear(0.0),
}


def _rows(n: int, g: torch.Generator) -> torch.Tensor:
    rows = torch.randint(0, n, (60,), generator=g)
    return torch.cat([rows, rows[:5], torch.tensor([n - 1, n - 2])])  # dups + isolated


@pytest.mark.parametrize("name", list(FILTERS))
@pytest.mark.parametrize("keep_prob,mode", [(0.5, "per_hop"), (0.5, "shared"), (1.0, "per_hop")])
def test_local_equals_full_values_and_gradients(item_ahat, name, keep_prob, mode):
    filt = FILTERS[name]
    n = item_ahat.shape[0]
    g = torch.Generator().manual_seed(7)
    hops = sample_hops(item_ahat, filt, keep_prob, g, mask_mode=mode)
    rows = _rows(n, g)
    X = torch.randn(n, 8, dtype=torch.float64, generator=g, requires_grad=True)
    W = torch.randn(n, 8, dtype=torch.float64, generator=g)

    full = full_filter(hops, filt, X)[rows]
    plan = local_filter_plan(hops, filt, rows)
    local = plan.apply(X[plan.cols])
    assert local.shape == (len(rows), 8)
    torch.testing.assert_close(local, full, rtol=1e-5, atol=1e-6)

    (g_full,) = torch.autograd.grad((full * W[rows]).sum(), X)
    (g_local,) = torch.autograd.grad((local * W[rows]).sum(), X)
    torch.testing.assert_close(g_local, g_full, rtol=1e-5, atol=1e-6)
    # no gradient outside the neighbourhood
    outside = torch.ones(n, dtype=torch.bool)
    outside[plan.cols] = False
    assert g_local[outside].abs().max().item() == 0.0 if outside.any() else True


def test_neighbourhood_is_exact_k_hop(item_ahat):
    n = item_ahat.shape[0]
    g = torch.Generator().manual_seed(11)
    rows = _rows(n, g)
    for filt in (linear(0.5), quadratic(0.5)):
        hops = sample_hops(item_ahat, filt, 0.5, g)
        plan = local_filter_plan(hops, filt, rows)
        # reference: each factor (c0 I + c1 O) maps a node set S to S ∪ N_O(S); seen from
        # the output rows the last applied hop comes first
        reach = np.zeros(n, dtype=bool)
        reach[rows.numpy()] = True
        for op in reversed(hops.ops):
            adj = op.scipy().toarray() != 0
            reach = reach | adj[reach].any(0)
        assert set(plan.cols.tolist()) == set(np.flatnonzero(reach).tolist())
        # H[rows, :] in dense form matches the plan's block
        H = np.eye(n)
        for op, (c0, c1) in zip(hops.ops, filt.factors):
            H = (c0 * np.eye(n) + c1 * op.scipy().toarray()) @ H
        block = np.zeros((len(rows), n))
        block[:, plan.cols.numpy()] = plan.to_dense().numpy()
        np.testing.assert_allclose(block, H[rows.numpy()], atol=1e-6)


def test_identity_filter_plan_is_a_gather(item_ahat):
    rows = torch.tensor([4, 1, 4, 9])
    plan = local_filter_plan(item_ahat, linear(0.0), rows)
    assert plan.cols.tolist() == [1, 4, 9]
    X = torch.randn(item_ahat.shape[0], 3)
    torch.testing.assert_close(plan.apply_full(X), X[rows])


def test_projector_gradients_match_distiller_usage(item_ahat):
    """The distiller's pattern: project only plan.cols, cosine loss summed over batch rows."""
    n = item_ahat.shape[0]
    g = torch.Generator().manual_seed(5)
    torch.manual_seed(0)
    student = torch.randn(n, 4, generator=g)
    teacher = torch.randn(n, 16, generator=g)
    proj = torch.nn.Linear(4, 16)
    filt = quadratic(0.5)
    hops = sample_hops(item_ahat, filt, 0.5, g)
    rows = torch.unique(torch.randint(0, n, (50,), generator=g))

    def cos_loss(zs, zt):
        return (1 - torch.nn.functional.cosine_similarity(zs, zt, dim=1)).sum()

    full = cos_loss(full_filter(hops, filt, proj(student))[rows],
                    full_filter(hops, filt, teacher)[rows])
    g_full = torch.autograd.grad(full, list(proj.parameters()))
    plan = local_filter_plan(hops, filt, rows)
    local = cos_loss(plan.apply(proj(student[plan.cols])), plan.apply(teacher[plan.cols]))
    g_local = torch.autograd.grad(local, list(proj.parameters()))
    assert local.item() == pytest.approx(full.item(), rel=1e-5)
    for a, b in zip(g_local, g_full):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    assert plan.cols.numel() < n  # it really is local


def test_local_filter_convenience_and_float32(item_ahat):
    n = item_ahat.shape[0]
    X = torch.randn(n, 5)
    rows = torch.arange(0, n, 7)
    torch.testing.assert_close(
        local_filter(item_ahat, quadratic(0.3), rows, X),
        full_filter(item_ahat, quadratic(0.3), X)[rows],
        rtol=1e-4, atol=1e-5,
    )


def test_plan_work_is_bounded_by_the_operators(item_ahat):
    """Each hop block is a row slice of its operator: no fill-in, even at degree 4."""
    n = item_ahat.shape[0]
    g = torch.Generator().manual_seed(13)
    filt = PolyFilter(((0.5, 0.5),) * 4)
    hops = sample_hops(item_ahat, filt, 0.5, g)
    plan = local_filter_plan(hops, filt, torch.arange(0, n, 50))
    assert plan.nnz <= sum(op.nnz for op in hops.ops)
    sizes = plan.sets
    assert sizes == sorted(sizes) and sizes[-1] == plan.cols.numel()
    assert sizes[0] == torch.arange(0, n, 50).numel()


@pytest.mark.parametrize("name", ["linear", "quadratic", "identity"])
def test_stacked_apply_equals_one_call_per_block(item_ahat, name):
    """plan.apply on an [E, n, d] stack and on the side-by-side [n, E*d] layout equals E
    separate calls, in values and in gradients."""
    filt = {"linear": linear(0.5), "quadratic": quadratic(0.4), "identity": linear(0.0)}[name]
    g = torch.Generator().manual_seed(3)
    hops = sample_hops(item_ahat, filt, 0.5, g)
    rows = _rows(item_ahat.shape[0], g)
    plan = local_filter_plan(hops, filt, rows)
    E, d = 3, 5
    X = torch.randn(E, plan.cols.numel(), d, dtype=torch.float64, generator=g, requires_grad=True)
    W = torch.randn(E, rows.numel(), d, dtype=torch.float64, generator=g)
    stacked = plan.apply(X)
    assert stacked.shape == (E, rows.numel(), d)
    (stacked * W).sum().backward()
    g_stacked = X.grad.clone()
    X.grad = None
    one = torch.stack([plan.apply(X[e]) for e in range(E)])
    (one * W).sum().backward()
    torch.testing.assert_close(stacked, one, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(g_stacked, X.grad, rtol=1e-12, atol=1e-12)
    # E = 1 and the side-by-side layout give the same again
    torch.testing.assert_close(plan.apply(X[:1].detach())[0], one[0].detach())
    flat = plan.apply(X.detach().transpose(0, 1).reshape(-1, E * d))
    torch.testing.assert_close(flat.view(-1, E, d).transpose(0, 1), one.detach(), rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="rows per block"):
        plan.apply(X[:, :-1].detach())
