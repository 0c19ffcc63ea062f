"""LightGCN: propagation against a dense numpy reference, gradients, device/dtype moves."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from freqd.models.lightgcn import LightGCN, LightGCNConfig, normalized_adjacency


def small_graph() -> sp.csr_matrix:
    r = np.array([
        [1, 1, 0, 0, 0],
        [0, 1, 1, 0, 0],
        [1, 0, 1, 1, 0],
        [0, 0, 0, 0, 0],  # isolated user
    ], dtype=np.float32)  # item 4 isolated
    return sp.csr_matrix(r)


def dense_norm_adj(r: np.ndarray) -> np.ndarray:
    nu, ni = r.shape
    a = np.zeros((nu + ni, nu + ni))
    a[:nu, nu:] = r
    a[nu:, :nu] = r.T
    d = a.sum(1)
    inv = np.zeros_like(d)
    inv[d > 0] = d[d > 0] ** -0.5
    return inv[:, None] * a * inv[None, :]


def test_normalized_adjacency_matches_dense():
    r = small_graph()
    a = normalized_adjacency(r)
    assert a.shape == (9, 9) and a.dtype == np.float32
    np.testing.assert_allclose(a.toarray(), dense_norm_adj(r.toarray()), rtol=1e-6)


@pytest.mark.parametrize("n_layers", [0, 1, 2, 3])
def test_propagation_equals_dense_reference(n_layers):
    r = small_graph()
    torch.manual_seed(n_layers)
    m = LightGCN(4, 5, LightGCNConfig(dim=3, n_layers=n_layers), r).double()
    e = torch.cat([m.user_emb.weight, m.item_emb.weight]).detach().numpy()
    a = dense_norm_adj(r.toarray())
    layers = [e]
    for _ in range(n_layers):
        layers.append(a @ layers[-1])
    want = np.mean(layers, axis=0)
    u, i = m.propagate()
    np.testing.assert_allclose(u.detach().numpy(), want[:4], rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(i.detach().numpy(), want[4:], rtol=1e-5, atol=1e-8)


def test_gradients_match_dense_autograd():
    r = small_graph()
    torch.manual_seed(0)
    m = LightGCN(4, 5, LightGCNConfig(dim=3, n_layers=3), r).double()
    batch = {"users": torch.tensor([0, 1, 2]), "pos": torch.tensor([1, 2, 3]),
             "neg": torch.tensor([[4], [0], [1]])}
    m.loss(batch, m.propagate())["loss"].backward()

    a = torch.tensor(dense_norm_adj(r.toarray()))
    u0 = m.user_emb.weight.detach().clone().requires_grad_(True)
    i0 = m.item_emb.weight.detach().clone().requires_grad_(True)
    e = torch.cat([u0, i0])
    acc, cur = e, e
    for _ in range(3):
        cur = a @ cur
        acc = acc + cur
    acc = acc / 4
    uf, itf = acc[:4], acc[4:]
    pos = (uf[batch["users"]] * itf[batch["pos"]]).sum(-1)
    neg = (uf[batch["users"]][:, None] * itf[batch["neg"]]).sum(-1)
    ref = -torch.nn.functional.logsigmoid(pos[:, None] - neg).mean(1).sum()
    ref.backward()
    assert torch.allclose(m.user_emb.weight.grad, u0.grad)
    assert torch.allclose(m.item_emb.weight.grad, i0.grad)
    assert m.user_emb.weight.grad[3].abs().sum() == 0  # isolated user, not in batch


def test_graph_moves_with_the_model_and_is_not_saved():
    m = LightGCN(4, 5, LightGCNConfig(dim=3, n_layers=2), small_graph())
    assert m.graph.layout == torch.sparse_csr
    assert "graph" not in m.state_dict()
    m.double()
    assert m.graph.dtype == torch.float64 and m.graph.layout == torch.sparse_csr
    m2 = copy.deepcopy(m)
    assert torch.allclose(m2.propagate()[0], m.propagate()[0])
    if torch.cuda.is_available():  # pragma: no cover - exercised on GPU machines
        m.cuda()
        assert m.graph.device.type == "cuda"
        assert m.propagate()[0].device.type == "cuda"


def test_features_and_scores(tiny_dir):
    a = np.loadtxt(tiny_dir / "train.txt", dtype=np.int64, skiprows=1, delimiter="\t")
    r = sp.csr_matrix((np.ones(len(a), np.float32), (a[:, 0], a[:, 1])), shape=(241, 979))
    m = LightGCN(241, 979, LightGCNConfig(dim=8, n_layers=3), r)
    assert abs(m.user_emb.weight.std().item() - 0.1) < 0.01
    reps = m.propagate()
    assert reps[0].shape == (241, 8) and reps[1].shape == (979, 8)
    assert m.features("embedding")[0] is m.user_emb.weight
    assert m.features("final", reps)[0] is reps[0]
    s = m.score(torch.tensor([0, 5, 7]), reps)
    assert s.shape == (3, 979)
    assert torch.allclose(s[1], reps[0][5] @ reps[1].T)
    with pytest.raises(ValueError):
        m.features("middle")


def test_gradient_when_only_user_side_is_used_and_gradcheck():
    r = small_graph()
    torch.manual_seed(1)
    m = LightGCN(4, 5, LightGCNConfig(dim=2, n_layers=2), r).double()
    u, _ = m.propagate()
    (u ** 2).sum().backward()
    a = torch.tensor(dense_norm_adj(r.toarray()))
    p = (torch.eye(9, dtype=torch.float64) + a + a @ a) / 3
    e = torch.cat([m.user_emb.weight, m.item_emb.weight]).detach()
    want = 2 * p.T[:, :4] @ (p[:4] @ e)
    assert torch.allclose(m.user_emb.weight.grad, want[:4])
    assert torch.allclose(m.item_emb.weight.grad, want[4:])

    from freqd.models.lightgcn import Workspace, _LayerMean

    uw = torch.randn(4, 2, dtype=torch.float64, requires_grad=True)
    iw = torch.randn(5, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda x, y: _LayerMean.apply(m.graph, torch.arange(9), 3, Workspace(), x, y), (uw, iw))
    # and through the model's own (reordered) graph
    from freqd.models.lightgcn import csr_buffer

    assert torch.autograd.gradcheck(
        lambda x, y: _LayerMean.apply(csr_buffer(m, "graph_local"), m.node_pos, 3, Workspace(), x, y), (uw, iw))


def test_locality_order_is_a_permutation_that_narrows_the_band(tiny_dir):
    """The propagation graph is Â with its nodes reordered (reverse Cuthill-McKee): a
    permutation of Â, with a narrower band, and propagating over it gives the same
    representations as the plain product over Â in id order (values and gradients)."""
    from freqd.models.lightgcn import csr_buffer, locality_order, sym_spmm

    t = np.loadtxt(tiny_dir / "train.txt", dtype=np.int64, skiprows=1, delimiter="\t")
    train = sp.csr_matrix((np.ones(len(t), np.float32), (t[:, 0], t[:, 1])), shape=(241, 979))
    nu, ni = train.shape
    a = normalized_adjacency(train)
    order = locality_order(a)
    assert sorted(order.tolist()) == list(range(a.shape[0])) and not np.array_equal(order, np.arange(a.shape[0]))

    def bandwidth(m):
        m = m.tocoo()
        return np.abs(m.row.astype(np.int64) - m.col).mean()  # mean distance of an entry from the diagonal

    assert bandwidth(a[order][:, order]) < 0.7 * bandwidth(a)  # tiny: 309 against 626
    torch.manual_seed(0)
    m = LightGCN(nu, ni, LightGCNConfig(dim=6, n_layers=3), train).double()
    g_local = csr_buffer(m, "graph_local")
    assert torch.equal(m.node_pos[torch.from_numpy(order)], torch.arange(a.shape[0]))
    u, i = m.propagate()
    ((u ** 2).sum() + (i ** 3).sum()).backward()
    got = (u.detach(), i.detach(), m.user_emb.weight.grad.clone(), m.item_emb.weight.grad.clone())
    m.zero_grad()
    e = torch.cat([m.user_emb.weight, m.item_emb.weight])
    layers = [e]
    for _ in range(3):
        layers.append(sym_spmm(m.graph, layers[-1]))
    ref = torch.stack(layers).mean(0)
    ((ref[:nu] ** 2).sum() + (ref[nu:] ** 3).sum()).backward()
    want = (ref[:nu].detach(), ref[nu:].detach(), m.user_emb.weight.grad, m.item_emb.weight.grad)
    for x, y in zip(got, want):
        torch.testing.assert_close(x, y, rtol=1e-10, atol=1e-12)
    assert g_local.shape == m.graph.shape
