"""HTD: hand-computed topology terms, fast masked sum == per-group loop, the full loss,
temperature handling, config validation and the shared contract."""
from __future__ import annotations

import math
from typing import ClassVar

import pytest
import torch
import torch.nn.functional as F
from distill_mixin import DistillerContract
from test_distill_feature import hand_setup, set_expert

from freqd.distill.registry import build_distiller, method_config
from freqd.distill.relation import group_prototypes, topology_loss
from freqd.errors import ConfigError

R2 = math.sqrt(2.0)

# s0 = [1,0], s1 = [0,1], s2 = [1,1]; t0 = [1,0,0], t1 = [1,1,0], t2 = [0,0,1]; groups 0,0,1
S = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
T = torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
G = torch.tensor([0, 0, 1])


def test_entity_level_hand():
    """Only the (0, 1) pair counts (twice): C_S = 0, C_T = 1/sqrt2 -> 2 * 1/2 = 1."""
    ent, _ = topology_loss(S, T, G)
    assert ent.item() == pytest.approx(1.0, abs=1e-6)
    # a negative teacher similarity: dropped by the authors' filter, kept by "all"
    t_neg = T.clone()
    t_neg[1] = torch.tensor([-1.0, 1.0, 0.0])
    assert topology_loss(S, t_neg, G, pair_filter="positive")[0].item() == pytest.approx(0, abs=1e-6)
    assert topology_loss(S, t_neg, G, pair_filter="all")[0].item() == pytest.approx(1.0, abs=1e-6)


def test_group_level_second_hand():
    """P^S_0 = [.5,.5], P^S_1 = [1,1] (both along [1,1]): C = 1/sqrt2, 1/sqrt2, 1 per group.
    P^T_0 = [1,.5,0]: C = 1/sqrt1.25, 1.5/(sqrt1.25 sqrt2), 0; P^T_1 = t2: C = 0, 0, 1."""
    _, grp = topology_loss(S, T, G, choice="second")
    a = 1 / math.sqrt(1.25)
    b = 1.5 / (math.sqrt(1.25) * R2)
    want = ((1 / R2 - a) ** 2 + (1 / R2 - b) ** 2 + (1 - 0) ** 2
            + (1 / R2) ** 2 + (1 / R2) ** 2 + (1 - 1) ** 2)
    assert grp.item() == pytest.approx(want, rel=1e-6)


def test_group_level_first_hand():
    """C(P^S_0, P^S_1) = 1, C(P^T_0, P^T_1) = 0: two off-diagonal entries of 1."""
    _, grp = topology_loss(S, T, G, choice="first")
    assert grp.item() == pytest.approx(2.0, abs=1e-6)


def test_prototypes_are_detached_group_means():
    s = S.clone().requires_grad_(True)
    P, ids = group_prototypes(s, torch.tensor([4, 1, 4]))
    assert not P.requires_grad
    assert ids.tolist() == [1, 4]
    torch.testing.assert_close(P, torch.tensor([[0.0, 1.0], [1.0, 0.5]]))


def naive_topology(s, t, groups, pair_filter):
    """Reference: a Python loop over groups (the obvious slow path)."""
    ent = s.new_zeros(())
    grp = s.new_zeros(())

    def cos(a, b):
        return F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T

    for g in groups.unique():
        m = groups == g
        cs, ct = cos(s[m], s[m]), cos(t[m], t[m])
        keep = ct > 0 if pair_filter == "positive" else torch.ones_like(ct, dtype=torch.bool)
        ent = ent + ((cs - ct)[keep] ** 2).sum()
        ps, pt = s[m].detach().mean(0, keepdim=True), t[m].mean(0, keepdim=True)
        grp = grp + ((cos(ps, s) - cos(pt, t)) ** 2).sum()
    return ent, grp


@pytest.mark.parametrize("pair_filter", ["positive", "all"])
def test_masked_sum_equals_per_group_loop(pair_filter):
    torch.manual_seed(0)
    s = torch.randn(40, 4, requires_grad=True)
    t = torch.randn(40, 9)
    groups = torch.randint(0, 6, (40,))
    ent, grp = topology_loss(s, t, groups, pair_filter=pair_filter)
    (ent + grp).backward()
    g_fast = s.grad.clone()
    s.grad = None
    ent2, grp2 = naive_topology(s, t, groups, pair_filter)
    (ent2 + grp2).backward()
    torch.testing.assert_close(ent, ent2, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grp, grp2, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(g_fast, s.grad, rtol=1e-4, atol=1e-5)


def test_htd_full_loss_hand():
    """One group per side (no Gumbel noise): GA = users 2 + 4, items (pos and neg
    together, no 0.5) 1 + 1 = 8; TD = topology_loss with groups [0, 0, 1, 1]."""
    ds, t, s, batch = hand_setup()
    d = build_distiller("htd", t, s, ds, {"n_groups": 1, "alpha": 0.25})
    for g in (d.experts_u, d.experts_i):
        set_expert(g.bank, 0)
    out = d.loss(batch, s.propagate())
    assert out["ga"].item() == pytest.approx(8.0)
    sc = torch.cat([s.user_emb.weight, s.item_emb.weight]).detach()
    tc = torch.cat([t.user_emb.weight, t.item_emb.weight])
    ent, grp = topology_loss(sc, tc, torch.tensor([0, 0, 1, 1]))
    assert out["td"].item() == pytest.approx((ent + grp).item(), rel=1e-6)
    assert out["loss"].item() == pytest.approx(0.25 * (ent + grp).item() + 0.75 * 8.0, rel=1e-6)


def test_htd_groups_come_from_teacher_selection():
    ds, t, s, _ = hand_setup()
    d = build_distiller("htd", t, s, ds, {"n_groups": 3})
    with torch.no_grad():
        d.experts_u.selection_net.weight.zero_()
        d.experts_u.selection_net.bias.copy_(torch.tensor([0.0, 5.0, 0.0]))
        d.experts_i.selection_net.weight.zero_()
        d.experts_i.selection_net.bias.copy_(torch.tensor([5.0, 0.0, 0.0]))
    tu = t.user_emb.weight
    ti = t.item_emb.weight
    assert d.experts_u.groups(tu).tolist() == [1, 1]
    assert (d.experts_i.groups(ti) + 3).tolist() == [3, 3]


def test_htd_honours_configured_temperature():
    ds, t, s, _ = hand_setup()
    d = build_distiller("htd", t, s, ds, {"T": 0.1, "anneal": False})
    d.on_epoch_start(400)
    assert d.temperature == 0.1  # KDs ignored htd_T and annealed from 1
    d = build_distiller("htd", t, s, ds, {"T": 0.1, "end_T": 1e-6, "anneal_epochs": 10})
    assert d.temperature == pytest.approx(0.1)
    d.on_epoch_start(5)
    assert d.temperature == pytest.approx(0.1 * (1e-5) ** 0.5)
    d.on_epoch_start(50)
    assert d.temperature == 1e-6
    d2 = build_distiller("htd", t, s, ds, {"T": 0.1, "end_T": 1e-6, "anneal_epochs": 10})
    d2.load_extra_state(d.extra_state())
    assert d2.temperature == 1e-6


def test_htd_defaults_are_the_authors():
    c = method_config("htd")
    assert (c.weight, c.alpha, c.n_groups, c.choice, c.T, c.end_T, c.anneal) == (
        0.5, 0.9, 30, "second", 1.0, 1e-10, True)


@pytest.mark.parametrize("over,option", [
    ({"alpha": 1.5}, "method.alpha"),
    ({"n_groups": 0}, "method.n_groups"),
    ({"choice": "third"}, "method.choice"),
    ({"pair_filter": "neg"}, "method.pair_filter"),
    ({"end_T": 5.0}, "method.end_T"),
    ({"T": -1.0}, "method.T"),
    ({"teacher_layer": "x"}, "method.teacher_layer"),
])
def test_htd_bad_config_names_the_option(over, option):
    with pytest.raises(ConfigError, match=option.replace(".", r"\.")):
        method_config("htd", over)


class TestHTDContract(DistillerContract):
    method = "htd"
    overrides: ClassVar[dict] = {"n_groups": 4}


class TestHTDAllPairsFirstContract(DistillerContract):
    method = "htd"
    overrides: ClassVar[dict] = {"n_groups": 3, "pair_filter": "all", "choice": "first", "anneal": False}
