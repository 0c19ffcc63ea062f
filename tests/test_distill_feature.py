"""FitNet, DE, PHR, VkD: hand-computed losses, options, config validation, the contract.

Hand example (2 users, 2 items, d_s = 2, d_t = 3)::

    student users [1, 2], [0, -1]      teacher users [1, 1, 1], [0, 0, 2]
    student items [2, 0], [1, 1]       teacher items [1, 0, 0], [1, 1, 1]
    batch: users [0, 1], pos [0], neg [[1]]

With the projector ``P s = [s0, s1, 0]``: user errors 2 and 5, item errors 1 and 1, so
``L = 7 + 0.5 (1 + 1) = 8`` (random mode, which then draws every entity: ``7 + 2 = 9``).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import torch
from distill_mixin import DistillerContract, TinyMF

from freqd.data.dataset import Dataset
from freqd.distill.registry import build_distiller, method_config
from freqd.errors import ConfigError

S_U = [[1.0, 2.0], [0.0, -1.0]]
S_I = [[2.0, 0.0], [1.0, 1.0]]
T_U = [[1.0, 1.0, 1.0], [0.0, 0.0, 2.0]]
T_I = [[1.0, 0.0, 0.0], [1.0, 1.0, 1.0]]
P = [[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]]  # Linear weight [d_t, d_s]: P s = [s0, s1, 0]


def hand_setup():
    e = np.array([0, 1])
    none = (np.array([], dtype=np.int64), np.array([], dtype=np.int64))
    ds = Dataset.from_pairs("hand", (e, e), none, none, n_users=2, n_items=2)
    teacher = TinyMF(2, 2, 3, seed=0)
    student = TinyMF(2, 2, 2, seed=1)
    with torch.no_grad():
        teacher.user_emb.weight.copy_(torch.tensor(T_U))
        teacher.item_emb.weight.copy_(torch.tensor(T_I))
        student.user_emb.weight.copy_(torch.tensor(S_U))
        student.item_emb.weight.copy_(torch.tensor(S_I))
    batch = {"users": torch.tensor([0, 1]), "pos": torch.tensor([0]), "neg": torch.tensor([[1]])}
    return ds, teacher, student, batch


def kd(dist, student, batch):
    return dist.loss(batch, student.propagate())


# -- FitNet -------------------------------------------------------------------------------
def test_fitnet_hand_linear():
    ds, t, s, batch = hand_setup()
    d = build_distiller("fitnet", t, s, ds, {"projector": "linear"})
    for p in (d.projector_u, d.projector_i):
        with torch.no_grad():
            p.linear.weight.copy_(torch.tensor(P))
    out = kd(d, s, batch)
    assert out["loss"].item() == pytest.approx(8.0)
    assert out["kd_user"].item() == pytest.approx(7.0)
    assert out["kd_item"].item() == pytest.approx(1.0)


def test_fitnet_hand_random_entities_draws_distinct_ids():
    ds, t, s, batch = hand_setup()
    d = build_distiller("fitnet", t, s, ds, {"projector": "linear", "entities": "random"})
    for p in (d.projector_u, d.projector_i):
        with torch.no_grad():
            p.linear.weight.copy_(torch.tensor(P))
    # |B| = 2 distinct draws out of 2 -> every entity, weight 1 per side
    assert kd(d, s, batch)["loss"].item() == pytest.approx(9.0)
    segs = d.segments({"users": torch.zeros(500, dtype=torch.long)})
    assert len(segs[0][1]) == 2 and len(segs[1][1]) == 2  # capped at the table size


def test_fitnet_random_draw_is_uniform_without_replacement(tmp_path):
    from freqd.distill.feature import random_segments

    torch.manual_seed(0)
    counts = torch.zeros(50)
    for _ in range(400):
        (_, u, _), (_, i, _) = random_segments({"users": torch.zeros(10, dtype=torch.long)}, 50, 30)
        assert len(u.unique()) == 10 and len(i.unique()) == 10 and i.max() < 30
        counts += torch.bincount(u, minlength=50)
    assert counts.min() > 40 and counts.max() < 125  # expectation 80 per user


def test_fitnet_hand_norm():
    ds, t, s, batch = hand_setup()
    d = build_distiller("fitnet", t, s, ds, {"projector": "linear", "norm": True})
    for p in (d.projector_u, d.projector_i):
        with torch.no_grad():
            p.linear.weight.copy_(torch.tensor(P))
    # ||a - b||^2 = 2 - 2 cos for unit rows
    cos = [3 / math.sqrt(15), 0.0, 1.0, 2 / math.sqrt(6)]  # u0, u1, i0, i1
    want = (2 - 2 * cos[0]) + (2 - 2 * cos[1]) + 0.5 * ((2 - 2 * cos[2]) + (2 - 2 * cos[3]))
    assert kd(d, s, batch)["loss"].item() == pytest.approx(want, rel=1e-6)


def test_fitnet_expert_projector_default():
    ds, t, s, batch = hand_setup()
    d = build_distiller("fitnet", t, s, ds, {})
    assert d.projector_u.n_experts == 1 and d.projector_u.hidden == 15  # 5 x d_t
    d.eval()
    su, si = s.user_emb.weight, s.item_emb.weight
    want = ((d.projector_u(su) - torch.tensor(T_U)) ** 2).sum() + 0.5 * (
        ((d.projector_i(si) - torch.tensor(T_I)) ** 2).sum())
    torch.testing.assert_close(kd(d, s, batch)["loss"], want)


# -- DE -----------------------------------------------------------------------------------
def set_expert(bank, k):
    """Expert k: f(s) = [relu(s0), relu(s1), 0] (d_s 2, hidden 2, d_t 3)."""
    with torch.no_grad():
        bank.w1[k].copy_(torch.eye(2)), bank.b1[k].zero_()
        bank.w2[k].copy_(torch.tensor(P).T), bank.b2[k].zero_()


def test_de_hand_single_expert():
    """f: users [1,2,0] vs [1,1,1] -> 2, [0,0,0] vs [0,0,2] -> 4; items 1 and 1: 6 + 1."""
    ds, t, s, batch = hand_setup()
    d = build_distiller("de", t, s, ds, {"n_experts": 1})
    for g in (d.experts_u, d.experts_i):
        set_expert(g.bank, 0)
    out = kd(d, s, batch)
    assert out["loss"].item() == pytest.approx(7.0)
    assert out["kd_user"].item() == pytest.approx(6.0)


def test_de_low_temperature_selects_teacher_gated_expert():
    ds, t, s, batch = hand_setup()
    d = build_distiller("de", t, s, ds, {"n_experts": 3, "T": 1e-10})
    for g in (d.experts_u, d.experts_i):
        set_expert(g.bank, 2)
        with torch.no_grad():
            g.selection_net.weight.zero_()
            g.selection_net.bias.copy_(torch.tensor([0.0, 0.0, 80.0]))
    torch.manual_seed(0)
    assert kd(d, s, batch)["loss"].item() == pytest.approx(7.0)


def test_de_temperature_schedule_and_state():
    ds, t, s, _ = hand_setup()
    d = build_distiller("de", t, s, ds, {"n_experts": 2})
    d.on_epoch_start(500)
    assert d.temperature == pytest.approx(1e-5)  # 1 -> 1e-10 over 1000 epochs
    d2 = build_distiller("de", t, s, ds, {"n_experts": 2, "anneal_epochs": 100})
    d2.load_extra_state(d.extra_state())
    assert d2.epoch == 500 and d2.temperature == 1e-10
    d3 = build_distiller("de", t, s, ds, {"n_experts": 2, "T": 0.3, "anneal": False})
    d3.on_epoch_start(700)
    assert d3.temperature == 0.3


# -- PHR ----------------------------------------------------------------------------------
def test_phr_hand_rank_one_bridge():
    """W_e = [[1,0],[1,0],[0,0]]: users 1 + 4, items 0.5 (5 + 1): total 8."""
    ds, t, s, batch = hand_setup()
    d = build_distiller("phr", t, s, ds, {"rank": 1, "hidden": 1, "base": False})
    for b in (d.bridge_u, d.bridge_i):
        with torch.no_grad():
            b.meta.weight.zero_(), b.meta.bias.fill_(1.0)
            b.Uw.copy_(torch.tensor([[[1.0, 1.0, 0.0]]])), b.Ub.zero_()
            b.Vw.copy_(torch.tensor([[[1.0], [0.0]]])), b.Vb.zero_()
    out = kd(d, s, batch)
    assert out["kd_user"].item() == pytest.approx(5.0)
    assert out["loss"].item() == pytest.approx(8.0)


def test_phr_rank_above_student_dim_is_refused():
    ds, t, s, _ = hand_setup()
    with pytest.raises(ConfigError, match="method.rank"):
        build_distiller("phr", t, s, ds, {"rank": 3})


# -- VkD ----------------------------------------------------------------------------------
def set_orthogonal(d):
    for p in (d.projector_u, d.projector_i):
        with torch.no_grad():
            p.linear.weight = torch.tensor(P)  # right_inverse of the parametrization
        torch.testing.assert_close(p.weight, torch.tensor(P), atol=1e-6, rtol=0)


def test_vkd_hand_centred():
    """Centred teacher users [.5,.5,-.5], [-.5,-.5,.5]: 2.75 + 0.75; pos/neg segments hold
    one item each, so their centred teacher is 0: 0.5 (4 + 2). Total 6.5."""
    ds, t, s, batch = hand_setup()
    before = t.user_emb.weight.clone()
    d = build_distiller("vkd", t, s, ds, {})
    set_orthogonal(d)
    out = kd(d, s, batch)
    assert out["kd_user"].item() == pytest.approx(3.5, rel=1e-5)
    assert out["loss"].item() == pytest.approx(6.5, rel=1e-5)
    assert torch.equal(t.user_emb.weight, before), "teacher modified in place"


def test_vkd_hand_uncentred_equals_fitnet_linear():
    ds, t, s, batch = hand_setup()
    d = build_distiller("vkd", t, s, ds, {"center": False})
    set_orthogonal(d)
    assert kd(d, s, batch)["loss"].item() == pytest.approx(8.0, rel=1e-5)


# -- configs ------------------------------------------------------------------------------
@pytest.mark.parametrize("method,over,option", [
    ("fitnet", {"dropout": 1.0}, "method.dropout"),
    ("fitnet", {"entities": "all"}, "method.entities"),
    ("fitnet", {"projector": "mlp"}, "method.projector"),
    ("fitnet", {"n_experts": 0}, "method.n_experts"),
    ("fitnet", {"hidden_ratio": 0}, "method.hidden_ratio"),
    ("fitnet", {"weight": -1}, "method.weight"),
    ("fitnet", {"student_layer": "tower"}, "method.student_layer"),
    ("de", {"n_experts": 0}, "method.n_experts"),
    ("de", {"end_T": 2.0}, "method.end_T"),
    ("de", {"T": 0}, "method.T"),
    ("de", {"anneal_epochs": 0}, "method.anneal_epochs"),
    ("phr", {"rank": 0}, "method.rank"),
    ("phr", {"hidden": 0}, "method.hidden"),
    ("vkd", {"entities": "x"}, "method.entities"),
    ("vkd", {"centre": True}, "method.centre"),
])
def test_bad_config_names_the_option(method, over, option):
    with pytest.raises(ConfigError, match=option.replace(".", r"\.")):
        method_config(method, over)


def test_config_direct_construction_validates():
    from freqd.distill.feature import FitNetConfig

    with pytest.raises(ConfigError, match="method.teacher_layer"):
        FitNetConfig(teacher_layer="ego")


def test_defaults_are_the_authors():
    f = method_config("fitnet")
    assert (f.weight, f.n_experts, f.hidden_ratio, f.dropout, f.norm, f.bias) == (
        0.05, 1, 5.0, 0.2, False, False)
    de = method_config("de")
    assert (de.weight, de.n_experts, de.T, de.end_T, de.anneal_epochs) == (0.05, 30, 1.0, 1e-10, 1000)
    v = method_config("vkd")
    assert (v.weight, v.center, v.norm) == (5e-4, True, False)
    assert method_config("phr").weight == 0.01


def test_construction_does_not_propagate_the_teacher():
    """The teacher's final reps are cached on first use, not at construction, so a trainer
    may move the teacher to its device after building the distiller."""
    ds, t, s, batch = hand_setup()
    d = build_distiller("de", t, s, ds, {"n_experts": 2})
    assert d._teacher_reps is None
    kd(d, s, batch)
    assert d._teacher_reps is not None


def test_teacher_from_another_dataset_is_refused():
    ds, _, s, _ = hand_setup()
    small = TinyMF(1, 2, 3, seed=0)
    with pytest.raises(ConfigError, match="another dataset"):
        build_distiller("fitnet", small, s, ds, {})


# -- the shared contract ------------------------------------------------------------------
class TestFitNetContract(DistillerContract):
    method = "fitnet"
    overrides: ClassVar[dict] = {"hidden_ratio": 1.0, "n_experts": 2}


class TestFitNetRandomContract(DistillerContract):
    method = "fitnet"
    overrides: ClassVar[dict] = {"entities": "random", "projector": "linear", "norm": True}


class TestDEContract(DistillerContract):
    method = "de"
    overrides: ClassVar[dict] = {"n_experts": 4}


class TestPHRContract(DistillerContract):
    method = "phr"
    overrides: ClassVar[dict] = {"rank": 4, "hidden": 16}


class TestVkDContract(DistillerContract):
    method = "vkd"
    overrides: ClassVar[dict] = {}


# -- presets ------------------------------------------------------------------------------
PRESETS = Path(__file__).resolve().parents[1] / "src" / "freqd" / "configs" / "methods"
MINE = ("fitnet", "de", "phr", "vkd", "htd")


def test_presets_cover_the_authors_cells():
    cells = {(p.parts[-3], p.parts[-2], p.stem) for p in PRESETS.glob("*/*/*.yaml")}
    for ds in ("citeulike-t", "gowalla", "yelp2018"):
        for bb in ("mf", "lightgcn", "simplex"):
            assert {(ds, bb, "de"), (ds, bb, "htd")} <= cells
    assert {("citeulike-t", "mf", "fitnet"), ("citeulike-t", "mf", "vkd")} <= cells


@pytest.mark.parametrize(
    "path", sorted(p for m in MINE for p in PRESETS.glob(f"*/*/{m}.yaml")),
    ids=lambda p: "/".join(p.parts[-3:]))
def test_preset_is_valid(path):
    from freqd.config import from_dict, load_yaml
    from freqd.train.config import TrainConfig

    data = load_yaml(path)
    assert set(data) <= {"method", "train"}
    assert path.read_text().startswith("# Source:")
    method_config(path.stem, data["method"])
    from_dict(TrainConfig, data.get("train", {}), prefix="train.")
