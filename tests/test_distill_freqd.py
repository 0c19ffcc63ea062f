"""FreqD distiller: fast path == full-table path, fd == freqd(alpha 0, keep 1), the filter
identity at the distiller level, option validation, and the shared distiller contract."""
import numpy as np
import pytest
import torch

from distill_mixin import DistillerContract, TinyMF, make_batch, read_tiny
from freqd.distill.registry import build_distiller
from freqd.errors import ConfigError


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FREQD_CACHE_DIR", str(tmp_path / "cache"))


class TestFreqDContract(DistillerContract):
    method = "freqd"
    overrides = {"experts": 2}


class TestFreqDQuadraticContract(DistillerContract):
    method = "freqd"
    overrides = {"experts": 2, "filter": "quadratic"}


class TestFDContract(DistillerContract):
    method = "fd"
    overrides = {"experts": 2}


class TestFreqDExactContract(DistillerContract):
    method = "freqd-exact"
    overrides = {"experts": 2}


def _build(ds, method, **over):
    teacher = TinyMF(ds.n_users, ds.n_items, 16, seed=100)
    student = TinyMF(ds.n_users, ds.n_items, 4, seed=200)
    torch.manual_seed(0)
    d = build_distiller(method, teacher, student, ds, dict(over))
    d.prepare(None)
    return student, d


def _loss_and_grads(student, d, batch, seed):
    student.zero_grad()
    d.zero_grad()
    torch.manual_seed(seed)
    loss = d.loss(batch, student.propagate())["loss"]
    loss.backward()
    grads = [p.grad.clone() for p in list(student.parameters()) + list(d.parameters())]
    return loss.item(), grads


@pytest.mark.parametrize("filt", ["linear", "quadratic"])
@pytest.mark.parametrize("placement", ["before", "after"])
@pytest.mark.parametrize("mask_mode", ["per_hop", "shared"])
def test_local_path_equals_full_table_path(tiny_dir, filt, placement, mask_mode):
    ds = read_tiny(tiny_dir)
    batch = make_batch(ds, 128, seed=1)
    common = dict(filter=filt, placement=placement, mask_mode=mask_mode, keep_prob=0.5, dropout=0.0, experts=3)
    s1, local = _build(ds, "freqd", path="local", **common)
    s2, full = _build(ds, "freqd", path="full", **common)
    full.load_state_dict(local.state_dict())
    s2.load_state_dict(s1.state_dict())
    l1, g1 = _loss_and_grads(s1, local, batch, seed=5)
    l2, g2 = _loss_and_grads(s2, full, batch, seed=5)  # same seed -> same edge masks
    assert l1 == pytest.approx(l2, rel=1e-5)
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    # and the dropout really changes the loss (the test is not vacuous)
    l3, _ = _loss_and_grads(s1, local, batch, seed=6)
    assert l3 != pytest.approx(l1, rel=1e-6)


def test_fd_equals_freqd_with_alpha0_keep1(tiny_dir):
    ds = read_tiny(tiny_dir)
    batch = make_batch(ds, 128, seed=2)
    s1, fd = _build(ds, "fd", experts=2)
    s2, fq = _build(ds, "freqd", experts=2, alpha=0.0, keep_prob=1.0)
    fq.load_state_dict(fd.state_dict())
    s2.load_state_dict(s1.state_dict())
    fd.eval(), fq.eval()
    l1, g1 = _loss_and_grads(s1, fd, batch, 0)
    l2, g2 = _loss_and_grads(s2, fq, batch, 0)
    assert l1 == pytest.approx(l2, rel=1e-6)
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b)
    # with alpha 0 the filter is the identity: loss = plain per-row cosine loss
    s1.eval()
    d = fd
    with torch.no_grad():
        u = torch.unique(batch["users"])
        ps = d.proj_user(s1.user_emb.weight[u])
        t = d.teacher_features("final")[0][u]
        expect_u = (1 - torch.nn.functional.cosine_similarity(ps, t, dim=-1)).sum()
        got = d.loss(batch, s1.propagate())["user"]
    assert got.item() == pytest.approx(expect_u.item(), rel=1e-5)


@pytest.mark.parametrize("filt", ["linear", "quadratic"])
def test_filter_identity_exact_equals_filtered(tiny_dir, filt):
    """With MSE, no dropout and h >= 0 (alpha <= 0.5): ||H P - H T||² on the batch rows equals
    the eigendecomposition-based loss with weights h(λ)² (M = U |h| Uᵀ = H)."""
    ds = read_tiny(tiny_dir)
    batch = make_batch(ds, 128, seed=3)
    kw = dict(filter=filt, alpha=0.4, keep_prob=1.0, loss="mse", dropout=0.0, experts=2)
    s1, fq = _build(ds, "freqd", **kw)
    s2, ex = _build(ds, "freqd-exact", weight_fn="filter", **kw)
    ex.load_state_dict(fq.state_dict())
    s2.load_state_dict(s1.state_dict())
    l1, g1 = _loss_and_grads(s1, fq, batch, 0)
    l2, g2 = _loss_and_grads(s2, ex, batch, 0)
    assert l1 == pytest.approx(l2, rel=1e-4)
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-5)


def test_exact_parseval_all_rows(tiny_dir):
    """freqd-exact with equal weights on all rows = plain MSE over all rows (Parseval)."""
    ds = read_tiny(tiny_dir)
    s, ex = _build(ds, "freqd-exact", weight_fn="equal", dropout=0.0, experts=2, loss="mse")
    ex.eval()
    users = torch.arange(ds.n_users)
    with torch.no_grad():
        got = ex._side_loss("user", users, s.propagate())
        resid = ex.residuals()["user"]
    assert got.item() == pytest.approx((resid ** 2).sum().item(), rel=1e-4)


@pytest.mark.parametrize("over,option", [
    ({"alpha": 1.5}, "method.alpha"),
    ({"keep_prob": 0}, "method.keep_prob"),
    ({"experts": 0}, "method.experts"),
    ({"filter": "custom"}, "method.coeffs"),
    ({"coeffs": [1, 2]}, "method.coeffs"),
    ({"alhpa": 0.3}, "alpha"),
])
def test_bad_options_are_refused(tiny_dir, over, option):
    ds = read_tiny(tiny_dir)
    with pytest.raises(ConfigError, match=option):
        _build(ds, "freqd", **over)


def test_fd_refuses_filter_options(tiny_dir):
    ds = read_tiny(tiny_dir)
    with pytest.raises(ConfigError, match="method.alpha"):
        _build(ds, "fd", alpha=0.5)


def test_exact_refuses_large_graph(tiny_dir):
    ds = read_tiny(tiny_dir)
    with pytest.raises(ConfigError, match="max_nodes"):
        _build(ds, "freqd-exact", max_nodes=100)


def test_exact_refuses_before_building_any_graph(tiny_dir, monkeypatch):
    """The refusal comes from the constructor: no graph is built, nothing is eigendecomposed
    (on Gowalla the 29,858-node user graph alone would take an hour), and it names every
    side that is too large."""
    import freqd.spectral.analysis as analysis
    import freqd.spectral.graphs as graphs

    def boom(*a, **k):
        raise AssertionError("built or decomposed a graph before refusing")

    monkeypatch.setattr(graphs, "build_graph", boom)
    monkeypatch.setattr(analysis, "eigendecomposition", boom)
    ds = read_tiny(tiny_dir)
    teacher = TinyMF(ds.n_users, ds.n_items, 16, seed=100)
    student = TinyMF(ds.n_users, ds.n_items, 4, seed=200)
    small = min(ds.n_users, ds.n_items)
    with pytest.raises(ConfigError, match="max_nodes") as e:
        build_distiller("freqd-exact", teacher, student, ds, {"max_nodes": max(ds.n_users, ds.n_items) - 1})
    big_side = "user" if ds.n_users > ds.n_items else "item"
    assert f"the {big_side} graph has" in str(e.value)
    with pytest.raises(ConfigError, match="the user graph has .* the item graph has"):
        build_distiller("freqd-exact", teacher, student, ds, {"max_nodes": small - 1})
    with pytest.raises(ConfigError, match="the bipartite graph has"):
        build_distiller("freqd-exact", teacher, student, ds,
                        {"max_nodes": ds.n_users + ds.n_items - 1, "graph": "bipartite"})


def test_custom_polynomial_and_knn_and_bipartite_run(tiny_dir):
    ds = read_tiny(tiny_dir)
    batch = make_batch(ds, 64)
    for over in ({"filter": "custom", "coeffs": [0.4, 0.3, 0.2, 0.1]},
                 {"graph": "knn", "k": 4}, {"graph": "bipartite"}):
        s, d = _build(ds, "freqd", experts=2, **over)
        loss = d.loss(batch, s.propagate())["loss"]
        assert torch.isfinite(loss) and loss.item() > 0


def test_rayleigh_quotient_diagnostics(tiny_dir):
    ds = read_tiny(tiny_dir)
    s, d = _build(ds, "freqd", experts=2, log_rayleigh=True)
    diag = d.diagnostics()
    assert set(diag) == {"rayleigh_user", "rayleigh_item"}
    assert all(0.0 <= v <= 2.0 for v in diag.values())


def test_items_without_training_interactions_have_no_edges(tiny_dir):
    ds = read_tiny(tiny_dir)
    _, d = _build(ds, "freqd")
    A = d.laplacians["item"]
    deg_train = np.asarray(ds.train.sum(0)).ravel()
    isolated = np.where(deg_train == 0)[0]
    assert (np.diff(A.indptr)[isolated] == 0).all()


@pytest.mark.parametrize("filt", ["linear", "quadratic"])
def test_filtered_projection_with_dropout_masks_equals_filtering_the_projection(tiny_dir, filt):
    """The commuted computation (filter the experts' hidden layers, then the last layer)
    equals projecting the neighbourhood with the same dropout masks and filtering that."""
    from freqd.spectral.filters import sample_hops
    from freqd.spectral.local import local_filter_plan

    ds = read_tiny(tiny_dir)
    student, d = _build(ds, "freqd", filter=filt, keep_prob=0.5, dropout=0.3, experts=3)
    d.train()
    g = torch.Generator().manual_seed(5)
    rows = torch.unique(torch.randint(0, ds.n_items, (40,), generator=g))
    hops = sample_hops(d._op("item"), d.filt, 0.5, g)
    plan = local_filter_plan(hops, d.filt, rows)
    xs, _ = d._node_features("item", plan.cols, None, project=False)
    masks = d.proj_item.sample_masks(plan.cols.numel(), generator=g)
    xs = xs.detach().requires_grad_(True)
    w = torch.randn(rows.numel(), d.d_t, generator=g)
    got = d._filtered_projection("item", plan, xs, masks=masks)
    (got * w).sum().backward()
    params = [xs] + list(d.proj_item.parameters())
    g_got = [p.grad.clone() for p in params]
    for p in params:
        p.grad = None
    # the obvious path: every expert's MLP on every neighbourhood row, then the filter
    bank = d.proj_item.bank
    hid = bank.hidden_layer(xs, masks[0]) * masks[1]  # [E, n, h]
    full = (torch.bmm(hid, bank.w2) + bank.b2.unsqueeze(1)).mean(0)
    want = plan.apply(full)
    (want * w).sum().backward()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    for a, b in zip(g_got, [p.grad for p in params]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    want = want.detach()
    # and the masks matter (the comparison is not vacuous)
    other = d.proj_item.sample_masks(plan.cols.numel(), generator=g)
    assert not torch.allclose(d._filtered_projection("item", plan, xs, masks=other), want)


def test_keep_mask_rate_and_reproducibility():
    from freqd.distill.projectors import keep_mask

    torch.manual_seed(0)
    a = keep_mask((4, 1000, 50), 0.8, "cpu")
    torch.manual_seed(0)
    b = keep_mask((4, 1000, 50), 0.8, "cpu")
    assert a.dtype == torch.bool and a.shape == (4, 1000, 50)
    assert torch.equal(a, b)
    assert abs(a.float().mean().item() - 0.8) < 0.005
    assert not torch.equal(a, keep_mask((4, 1000, 50), 0.8, "cpu"))  # the generator advanced
    torch.manual_seed(0)
    f = keep_mask((4, 1000, 50), 0.8, "cpu", torch.float32)  # same draw as 0/1 floats
    assert f.dtype == torch.float32 and torch.equal(f, a.float())
