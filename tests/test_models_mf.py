"""BPR-MF: hand-computed loss, gradients, sparse-gradient option."""
from __future__ import annotations

import math

import scipy.sparse as sp
import torch

from freqd.models.mf import MF, MFConfig, bpr_loss


def tiny_mf(**kw) -> MF:
    m = MF(2, 3, MFConfig(dim=2, **kw), sp.csr_matrix((2, 3)))
    with torch.no_grad():
        m.user_emb.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
        m.item_emb.weight.copy_(torch.tensor([[1.0, 1.0], [0.0, 1.0], [2.0, 0.0]]))
    return m


BATCH = {"users": torch.tensor([0, 1]), "pos": torch.tensor([0, 1]),
         "neg": torch.tensor([[1, 2], [2, 0]])}


def logsig(x: float) -> float:
    return -math.log1p(math.exp(-x))


def test_loss_equals_hand_computed_value():
    m = tiny_mf()
    out = m.loss(BATCH, m.propagate())
    # user 0: s(0,0)=1, s(0,1)=0, s(0,2)=2 ; user 1: s(1,1)=1, s(1,2)=0, s(1,0)=1
    want = -(logsig(1) + logsig(-1)) / 2 - (logsig(1) + logsig(0)) / 2
    assert math.isclose(out["loss"].item(), want, rel_tol=1e-6)
    assert math.isclose(out["bpr"].item(), want, rel_tol=1e-6)


def test_bpr_loss_is_stable_for_large_margins():
    v = bpr_loss(torch.tensor([-1000.0]), torch.tensor([1000.0]))
    assert torch.isfinite(v) and math.isclose(v.item(), 2000.0, rel_tol=1e-6)
    assert bpr_loss(torch.tensor([1000.0]), torch.tensor([[-1000.0]])).item() == 0.0


def test_gradients_flow_and_scores():
    m = tiny_mf()
    m.loss(BATCH, m.propagate())["loss"].backward()
    assert m.user_emb.weight.grad.abs().sum() > 0 and m.item_emb.weight.grad.abs().sum() > 0
    s = m.score(torch.tensor([1, 0]), m.propagate())
    assert torch.allclose(s, torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 2.0]]))
    assert m.features("embedding")[0] is m.user_emb.weight
    assert m.features("final")[1] is m.item_emb.weight


def test_init_std():
    m = MF(500, 400, MFConfig(dim=50), None)
    assert abs(m.item_emb.weight.std().item() - 0.01) < 5e-4


def test_sparse_grad_matches_dense_and_works_with_sparse_adam():
    dense, sparse = tiny_mf(), tiny_mf(sparse_grad=True)
    dense.loss(BATCH, dense.propagate())["loss"].backward()
    sparse.loss(BATCH, sparse.propagate())["loss"].backward()
    g = sparse.item_emb.weight.grad
    assert g.is_sparse
    assert torch.allclose(g.to_dense(), dense.item_emb.weight.grad)
    assert torch.allclose(sparse.user_emb.weight.grad.to_dense(), dense.user_emb.weight.grad)
    opt = torch.optim.SparseAdam(list(sparse.parameters()), lr=0.1)
    before = sparse.item_emb.weight.detach().clone()
    opt.step()
    assert not torch.equal(before, sparse.item_emb.weight)
