"""SimpleX: tower and CCL loss against a slow loop reference, fast paths, features."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from freqd.models.simplex import SimpleX, SimpleXConfig, truncated_history


def train_matrix() -> sp.csr_matrix:
    rng = np.random.default_rng(0)
    m = (rng.random((6, 12)) < 0.4).astype(np.float32)
    m[5] = 0  # a user without history
    m[0, :10] = 1  # longer than history_len below
    return sp.csr_matrix(m)


def make(**kw) -> SimpleX:
    torch.manual_seed(0)
    cfg = SimpleXConfig(**{"dim": 4, "history_len": 3, "n_neg": 5, "margin": 0.2,
                           "neg_weight": 7.0, "gamma": 0.3, **kw})
    m = SimpleX(6, 12, cfg, train_matrix()).double()
    with torch.no_grad():  # init std 1e-4 gives tiny numbers; any values test the algebra
        m.user_emb.weight.normal_()
        m.item_emb.weight.normal_()
    return m


def slow_tower(m: SimpleX, u: int) -> np.ndarray:
    r = train_matrix()
    items = r.indices[r.indptr[u]:r.indptr[u + 1]][: m.cfg.history_len]
    e_i = m.item_emb.weight.detach().numpy()
    h = e_i[items].mean(0) if len(items) else np.zeros(m.dim)
    v = m.history_proj.weight.detach().numpy()
    return m.gamma * m.user_emb.weight.detach().numpy()[u] + (1 - m.gamma) * (v @ h)


def cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


BATCH = {"users": torch.tensor([0, 1, 5, 2]), "pos": torch.tensor([3, 4, 0, 7]),
         "neg": torch.tensor([[1, 2, 5, 6, 11], [0, 0, 9, 10, 3], [1, 2, 3, 4, 5],
                              [11, 10, 9, 8, 0]])}


def slow_loss(m: SimpleX, batch) -> float:
    total = 0.0
    e_i = m.item_emb.weight.detach().numpy()
    for b in range(len(batch["users"])):
        u = int(batch["users"][b])
        p = slow_tower(m, u)
        term = 1.0 - cos(p, e_i[int(batch["pos"][b])])
        negs = [max(0.0, cos(p, e_i[int(j)]) - m.cfg.margin) for j in batch["neg"][b]]
        term += m.cfg.neg_weight / len(negs) * sum(negs)
        total += term
    return total


def test_truncated_history():
    h = truncated_history(train_matrix(), 3).toarray()
    assert (h[0] > 0).sum() == 3 and np.allclose(h[0, :3], 1 / 3)
    assert h[5].sum() == 0
    r = train_matrix().toarray()
    for u in range(1, 5):
        k = min(3, int(r[u].sum()))
        assert np.isclose(h[u].sum(), 1.0) and (h[u] > 0).sum() == k


def test_tower_equals_slow_reference_and_batch_path():
    m = make().eval()
    u, _ = m.propagate()
    for user in range(6):
        np.testing.assert_allclose(u[user].detach().numpy(), slow_tower(m, user), rtol=1e-6)
    users = torch.tensor([5, 0, 3, 0])
    assert torch.allclose(m.user_tower(users), u[users])


@pytest.mark.parametrize("mode", ["gather", "full", "auto"])
def test_ccl_loss_equals_slow_reference(mode):
    m = make(neg_scoring=mode)
    out = m.loss(BATCH, m.propagate())
    want = slow_loss(m, BATCH)
    assert np.isclose(out["loss"].item(), want, rtol=1e-6)
    assert np.isclose((out["ccl_pos"] + out["ccl_neg"]).item(), want, rtol=1e-6)
    assert m.n_neg == 5 and SimpleX.n_neg == 1  # per instance


def test_gather_and_full_paths_have_equal_gradients():
    grads = []
    for mode in ("gather", "full"):
        m = make(neg_scoring=mode)
        m.loss(BATCH, m.propagate())["loss"].backward()
        grads.append([p.grad.clone() for p in m.parameters()])
    for a, b in zip(*grads):
        assert torch.allclose(a, b)
    assert all(g.abs().sum() > 0 for g in grads[0])  # user, item tables and V all learn


def test_scores_are_cosines_and_features():
    m = make()
    reps = m.propagate()
    s = m.score(torch.tensor([1, 2]), reps)
    assert s.shape == (2, 12)
    assert s.abs().max() <= 1 + 1e-9
    ps = m.pair_scores(torch.tensor([1, 2]), torch.tensor([[0, 5], [3, 3]]), reps)
    assert torch.allclose(ps, torch.stack([s[0, [0, 5]], s[1, [3, 3]]]))
    ue, ie = m.features("embedding")
    assert ue is m.user_emb.weight and ie is m.item_emb.weight
    uf, itf = m.features("final", reps)
    assert uf is reps[0] and itf is m.item_emb.weight
    assert not torch.allclose(uf, ue)


def test_dropout_only_in_training_and_deepcopy():
    m = make(dropout=0.5)
    m.eval()
    a = m.propagate()[0]
    assert torch.equal(a, m.propagate()[0])
    m.train()
    assert not torch.equal(a, m.propagate()[0])
    m2 = copy.deepcopy(m).eval()
    assert torch.allclose(m2.propagate()[0], a)
    assert not any(k.startswith("history_") and k != "history_proj.weight" for k in m.state_dict())


def test_defaults_follow_protocol():
    c = SimpleXConfig()
    assert (c.init_std, c.history_len, c.n_neg, c.neg_weight) == (1e-4, 500, 2000, 100.0)
    m = SimpleX(6, 12, SimpleXConfig(dim=50), train_matrix())
    assert abs(m.item_emb.weight.std().item() - 1e-4) < 3e-5
