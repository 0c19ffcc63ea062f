"""Projectors: the batched expert implementations equal the obvious loop over experts."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from freqd.distill.projectors import (
    ExpertProjector,
    GumbelExperts,
    LinearProjector,
    LowRankBridge,
    OrthogonalProjector,
    annealed_temperature,
    gumbel_softmax_weights,
)


def naive_experts(bank, dropout: float = 0.0) -> list[nn.Sequential]:
    """One nn.Sequential per expert holding the bank's weights (the slow reference)."""
    out = []
    for e in range(bank.n_experts):
        l1, l2 = nn.Linear(bank.d_in, bank.hidden), nn.Linear(bank.hidden, bank.d_out)
        with torch.no_grad():
            l1.weight.copy_(bank.w1[e].T)
            l1.bias.copy_(bank.b1[e])
            l2.weight.copy_(bank.w2[e].T)
            l2.bias.copy_(bank.b2[e])
        out.append(nn.Sequential(nn.Dropout(dropout), l1, nn.ReLU(), nn.Dropout(dropout), l2))
    return out


@pytest.fixture
def proj():
    torch.manual_seed(0)
    return ExpertProjector(6, 11, n_experts=4, hidden=9, dropout=0.2)


def test_expert_projector_eval_equals_loop_of_experts(proj):
    x = torch.randn(13, 6)
    proj.eval()
    ref = torch.stack([m.eval()(x) for m in naive_experts(proj.bank, 0.2)]).mean(0)
    torch.testing.assert_close(proj(x), ref, rtol=1e-5, atol=1e-6)


def test_expert_projector_gradients_equal_loop(proj):
    proj.eval()
    x = torch.randn(7, 6, requires_grad=True)
    (proj(x) ** 2).sum().backward()
    g_fast, gw_fast = x.grad.clone(), proj.bank.w1.grad.clone()
    x.grad = None
    experts = naive_experts(proj.bank)
    (torch.stack([m(x) for m in experts]).mean(0) ** 2).sum().backward()
    torch.testing.assert_close(g_fast, x.grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(gw_fast[2], experts[2][1].weight.grad.T, rtol=1e-5, atol=1e-6)


def test_expert_projector_explicit_masks_equal_masked_loop(proj):
    """Same masks -> same number; masks are row-indexable for batch-local use."""
    x = torch.randn(10, 6)
    m_in, m_hid = proj.sample_masks(10, generator=torch.Generator().manual_seed(3))
    fast = proj(x, masks=(m_in, m_hid))
    ref = []
    for e, m in enumerate(naive_experts(proj.bank)):
        h = torch.relu(m[1](x * m_in[e])) * m_hid[e]
        ref.append(m[4](h))
    torch.testing.assert_close(fast, torch.stack(ref).mean(0), rtol=1e-5, atol=1e-6)
    rows = torch.tensor([7, 2, 2])
    sub = proj(x[rows], masks=(m_in[:, rows], m_hid[:, rows]))
    torch.testing.assert_close(sub, fast[rows])


def test_training_path_with_masks_equals_masked_loop_in_gradients(proj):
    """The fused hidden layer (one GEMM into the [N, E*h] layout, ReLU and mask in place,
    hand-written backward) against nn.Linear experts under the same masks: values and the
    gradients of the input and of every weight."""
    x = torch.randn(12, 6, requires_grad=True)
    m_in, m_hid = proj.sample_masks(12, generator=torch.Generator().manual_seed(4))
    w = torch.randn(12, 11)
    (proj(x, masks=(m_in, m_hid)) * w).sum().backward()
    bank = proj.bank
    got = [x.grad.clone(), bank.w1.grad.clone(), bank.b1.grad.clone(), bank.w2.grad.clone(), bank.b2.grad.clone()]
    x.grad = None
    experts = naive_experts(bank)
    out = torch.stack([m[4](torch.relu(m[1](x * m_in[e])) * m_hid[e]) for e, m in enumerate(experts)]).mean(0)
    (out * w).sum().backward()
    torch.testing.assert_close(got[0], x.grad, rtol=1e-5, atol=1e-6)
    for e, m in enumerate(experts):
        torch.testing.assert_close(got[1][e], m[1].weight.grad.T, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(got[2][e], m[1].bias.grad, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(got[3][e], m[4].weight.grad.T, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(got[4][e], m[4].bias.grad, rtol=1e-5, atol=1e-6)


def test_fused_hidden_layer_gradcheck():
    from freqd.distill.projectors import _MaskedHidden

    g = torch.Generator().manual_seed(0)
    E, N, d, h = 3, 5, 4, 6
    x = torch.randn(N, d, dtype=torch.float64, generator=g, requires_grad=True)
    w1 = torch.randn(E, d, h, dtype=torch.float64, generator=g, requires_grad=True)
    b1 = torch.randn(E, h, dtype=torch.float64, generator=g, requires_grad=True)
    m_in = (torch.rand(E, N, d, generator=g) < 0.7).double() / 0.7
    keep = (torch.rand(N, E * h, generator=g) < 0.7).double()
    assert torch.autograd.gradcheck(lambda *a: _MaskedHidden.apply(*a, m_in, keep), (x, w1, b1))
    assert torch.autograd.gradcheck(lambda *a: _MaskedHidden.apply(*a, None, keep), (x, w1, b1))


def test_sample_masks_values_and_independence(proj):
    m_in, m_hid = proj.sample_masks(4000)
    assert m_in.shape == (4, 4000, 6) and m_hid.shape == (4, 4000, 9)
    vals = torch.unique(m_hid)
    torch.testing.assert_close(vals, torch.tensor([0.0, 1 / 0.8]))
    assert abs((m_hid > 0).float().mean().item() - 0.8) < 0.01
    assert not torch.equal(m_in[0], m_in[1]), "experts share an input mask"


def test_training_dropout_is_independent_per_expert():
    """2 identical experts, 1 unit: shared masks give {0, 4}; independent ones also 2."""
    p = ExpertProjector(1, 1, n_experts=2, hidden=1, dropout=0.5)
    with torch.no_grad():
        p.bank.w1.fill_(1.0), p.bank.b1.zero_(), p.bank.w2.fill_(1.0), p.bank.b2.zero_()
    p.train()
    torch.manual_seed(0)
    out = p(torch.ones(2000, 1)).squeeze(1)
    assert set(torch.unique(out).tolist()) <= {0.0, 2.0, 4.0}
    frac_two = (out == 2.0).float().mean().item()
    assert 0.3 < frac_two < 0.45  # 2 * (1/4) * (3/4) = 0.375 when independent
    p.eval()
    assert torch.equal(p(torch.ones(3, 1)).squeeze(1), torch.ones(3))


def test_expert_projector_zero_dropout_training_equals_eval():
    torch.manual_seed(1)
    p = ExpertProjector(5, 8, n_experts=3, dropout=0.0)
    x = torch.randn(4, 5)
    assert p.hidden == 8
    torch.testing.assert_close(p.train()(x), p.eval()(x))


def test_expert_projector_rejects_bad_dropout():
    with pytest.raises(ValueError, match="dropout"):
        ExpertProjector(2, 3, dropout=1.0)


def test_gumbel_experts_combine_equals_weighted_loop():
    torch.manual_seed(2)
    g = GumbelExperts(4, 10, n_experts=5)
    assert g.hidden == 7
    s, t = torch.randn(6, 4), torch.randn(6, 10)
    torch.manual_seed(5)
    out = g(s, t, temperature=0.7)
    torch.manual_seed(5)
    z = g.weights(t, 0.7)
    torch.testing.assert_close(z.sum(1), torch.ones(6))
    ref = sum(z[:, k : k + 1] * m(s) for k, m in enumerate(naive_experts(g.bank)))
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(g.bank.expert_outputs(s)[:, 3], naive_experts(g.bank)[3](s))


def test_gumbel_experts_low_temperature_picks_the_selected_expert():
    torch.manual_seed(3)
    g = GumbelExperts(3, 5, n_experts=4)
    with torch.no_grad():
        g.selection_net.weight.zero_()
        g.selection_net.bias.copy_(torch.tensor([0.0, 60.0, 0.0, 0.0]))  # expert 1 ~ prob 1
    s, t = torch.randn(8, 3), torch.randn(8, 5)
    torch.testing.assert_close(g(s, t, 1e-10), naive_experts(g.bank)[1](s))
    assert torch.equal(g.groups(t), torch.ones(8, dtype=torch.long))


def test_single_gumbel_expert_uses_no_noise():
    g = GumbelExperts(3, 5, n_experts=1)
    s, t = torch.randn(4, 3), torch.randn(4, 5)
    torch.testing.assert_close(g(s, t, 1e-10), naive_experts(g.bank)[0](s))


def test_gumbel_softmax_argmax_follows_probabilities():
    torch.manual_seed(4)
    probs = torch.tensor([0.7, 0.2, 0.1]).expand(20000, 3)
    pick = gumbel_softmax_weights(probs, 1.0).argmax(1)
    freq = torch.bincount(pick, minlength=3).float() / 20000
    torch.testing.assert_close(freq, torch.tensor([0.7, 0.2, 0.1]), atol=0.015, rtol=0)


def test_annealed_temperature_schedule():
    assert annealed_temperature(0, 1.0, 1e-10, 1000) == 1.0
    assert annealed_temperature(500, 1.0, 1e-10, 1000) == pytest.approx(1e-5)
    assert annealed_temperature(1000, 1.0, 1e-10, 1000) == pytest.approx(1e-10)
    assert annealed_temperature(5000, 1.0, 1e-10, 1000) == 1e-10
    assert annealed_temperature(300, 0.5, 1e-10, 1000, anneal=False) == 0.5


def test_orthogonal_projector_has_orthonormal_columns():
    torch.manual_seed(5)
    p = OrthogonalProjector(4, 9)
    W = p.weight  # [d_out, d_in]
    torch.testing.assert_close(W.T @ W, torch.eye(4), atol=1e-5, rtol=0)
    x = torch.randn(3, 4)
    torch.testing.assert_close(p(x), x @ W.T)
    torch.testing.assert_close(p(x).norm(dim=1), x.norm(dim=1), rtol=1e-5, atol=1e-6)
    q = OrthogonalProjector(4, 9)
    q.load_state_dict(p.state_dict())
    torch.testing.assert_close(q(x), p(x))


def test_linear_projector():
    p = LinearProjector(2, 3, bias=False)
    with torch.no_grad():
        p.linear.weight.copy_(torch.tensor([[1.0, 0], [0, 1], [1, 1]]))
    torch.testing.assert_close(p(torch.tensor([[2.0, 3.0]])), torch.tensor([[2.0, 3.0, 5.0]]))
    assert p.linear.bias is None


def test_low_rank_bridge_equals_explicit_bridges():
    torch.manual_seed(6)
    b = LowRankBridge(5, 12, rank=3, hidden=7)
    with torch.no_grad():  # non-zero biases so every term is exercised
        b.Ub.normal_(), b.Vb.normal_()
    s, t = torch.randn(9, 5), torch.randn(9, 12)
    W = b.bridges(t)
    assert W.shape == (9, 12, 5)
    torch.testing.assert_close(b(s, t), torch.einsum("nts,ns->nt", W, s), rtol=1e-4, atol=1e-5)
    # personalised: different teacher rows give different bridges
    assert not torch.allclose(W[0], W[1])
    # the personalised part has rank <= 3
    b0 = LowRankBridge(5, 12, rank=3, hidden=7, base=False)
    assert torch.linalg.matrix_rank(b0.bridges(t)[0]).item() <= 3


def test_low_rank_bridge_hand_example():
    """h = 1, U = [1, 1, 0]^T, V = [1, 0]^T: W = [[1, 0], [1, 0], [0, 0]], W s = [s0, s0, 0]."""
    b = LowRankBridge(2, 3, rank=1, hidden=1, base=False)
    with torch.no_grad():
        b.meta.weight.zero_(), b.meta.bias.fill_(1.0)
        b.Uw.copy_(torch.tensor([[[1.0, 1.0, 0.0]]])), b.Ub.zero_()
        b.Vw.copy_(torch.tensor([[[1.0], [0.0]]])), b.Vb.zero_()
    out = b(torch.tensor([[3.0, -2.0]]), torch.randn(1, 3))
    torch.testing.assert_close(out, torch.tensor([[3.0, 3.0, 0.0]]))
    assert math.isclose(b.bridges(torch.zeros(1, 3))[0, 1, 0].item(), 1.0)
