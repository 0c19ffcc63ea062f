"""Response-based distillers (freqd.distill.response): the shared contract on the tiny
CiteULike-t cut, exact resume of the per-epoch sampling, and every loss on a hand-made
example with a hand-computed value."""
from __future__ import annotations

import io
import math
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import torch
from distill_mixin import DistillerContract, TinyMF, make_batch

from freqd.data.dataset import Dataset
from freqd.distill.registry import build_distiller, method_config
from freqd.distill.response import (
    DCD,
    HetComp,
    cd_rank_weights,
    dkc_ndcg,
    popularity_groups,
    unkd_pairs_per_group,
)
from freqd.errors import CheckpointError, ConfigError


def sig(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def roundtrip(obj):
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def write_trajectory(folder, ds, epochs=(2, 4, 6, 8), best_epoch=None, dim=32):
    """Fake teacher trajectory of TinyMF state dicts, as ``freqd train`` writes it."""
    folder.mkdir(parents=True, exist_ok=True)
    for e in epochs:
        m = TinyMF(ds.n_users, ds.n_items, dim, seed=1000 + e)
        torch.save({"model": m.state_dict(), "epoch": e}, folder / f"epoch_{e:04d}.pt")
    if best_epoch is not None:
        m = TinyMF(ds.n_users, ds.n_items, dim, seed=100)
        torch.save({"model": m.state_dict(), "epoch": best_epoch}, folder / "best.pt")
    return folder


# ======================================================================================
# the shared contract + exact resume, on tiny data
# ======================================================================================
class ResponseContract(DistillerContract):
    """DistillerContract plus: restoring extra_state reproduces the epoch's samples and the
    following epochs' draws exactly, whatever the new distiller's own seed was."""

    sampled = True  # draws from its generator (its seed changes the samples)
    epochs = (1, 2)

    def build_with(self, ds, tmp_path, **extra):
        saved = self.overrides
        self.overrides = {**saved, **extra}
        try:
            return self.build(ds, tmp_path=tmp_path)
        finally:
            self.overrides = saved

    def test_resume_is_exact(self, ds, tmp_path):
        seeded = "seed" in method_config(self.method).__dataclass_fields__
        _, s1, d1 = self.build_with(ds, tmp_path)
        other = {"seed": 99} if seeded else {}
        _, s2, d2 = self.build_with(ds, tmp_path, **other)
        e1, e2 = self.epochs
        d1.on_epoch_start(e1)
        d2.on_epoch_start(e1)
        batch = make_batch(ds, size=128, seed=4)
        if self.sampled and seeded:  # the test below would be vacuous otherwise
            assert self.step_loss(s1, d1, batch).item() != pytest.approx(
                self.step_loss(s2, d2, batch).item(), rel=1e-9)
        d2.load_extra_state(roundtrip(d1.extra_state()))
        assert self.step_loss(s1, d1, batch).item() == pytest.approx(
            self.step_loss(s2, d2, batch).item(), rel=1e-6)
        d1.on_epoch_start(e2)
        d2.on_epoch_start(e2)
        assert self.step_loss(s1, d1, batch).item() == pytest.approx(
            self.step_loss(s2, d2, batch).item(), rel=1e-6)

    def test_few_steps_reduce_the_kd_loss(self, ds, tmp_path):
        _, student, dist = self.build(ds, tmp_path=tmp_path)
        opt = torch.optim.Adam(list(student.parameters()) + list(dist.parameters()), lr=0.05)
        batch = make_batch(ds, size=128, seed=1)
        first = None
        for _ in range(8):
            loss = self.step_loss(student, dist, batch)
            first = loss.item() if first is None else first
            opt.zero_grad()
            loss.backward()
            opt.step()
        assert self.step_loss(student, dist, batch).item() < first


class TestKD(ResponseContract):
    method = "kd"
    overrides: ClassVar[dict] = {"top_k": 10}
    sampled = False


class TestKDTeacherGuide(ResponseContract):
    method = "kd"
    overrides: ClassVar[dict] = {"top_k": 10, "guide": "teacher"}
    sampled = False


class TestRD(ResponseContract):
    method = "rd"
    overrides: ClassVar[dict] = {"top_k": 10, "n_dynamic": 20, "start_epoch": 0}


class TestCD(ResponseContract):
    method = "cd"
    overrides: ClassVar[dict] = {"sample_num": 100, "n_distill": 5}


class TestRRD(ResponseContract):
    method = "rrd"
    overrides: ClassVar[dict] = {"n_interesting": 10, "n_uninteresting": 20, "top_k": 50}


class TestRRDNoSampling(ResponseContract):
    method = "rrd"
    overrides: ClassVar[dict] = {"n_interesting": 10, "n_uninteresting": 20, "top_k": 50, "sampling": False}


class TestDCD(ResponseContract):
    method = "dcd"
    overrides: ClassVar[dict] = {"n_samples": 10, "top_k": 50}


class TestDCDCrossEntropy(ResponseContract):
    method = "dcd"
    overrides: ClassVar[dict] = {"n_samples": 10, "top_k": 50, "objective": "ce"}


class TestUnKD(ResponseContract):
    method = "unkd"
    overrides: ClassVar[dict] = {"n_groups": 4, "n_distill": 6, "list_size": 50}


class TestHetComp(ResponseContract):
    method = "hetcomp"
    overrides: ClassVar[dict] = {"top_k": 20, "period": 1}
    sampled = False

    def build(self, ds, seed=0, tmp_path=None):
        # the hook: a fake trajectory of TinyMF checkpoints in tmp_path
        traj = write_trajectory(tmp_path / "trajectory", ds)
        saved = self.overrides
        self.overrides = {**saved, "trajectory_dir": str(traj)}
        try:
            return super().build(ds, seed=seed, tmp_path=tmp_path)
        finally:
            self.overrides = saved


# ======================================================================================
# properties on tiny data
# ======================================================================================
def train_mask(ds) -> torch.Tensor:
    return torch.as_tensor(ds.train.toarray() > 0)


def tiny_models(ds):
    return TinyMF(ds.n_users, ds.n_items, 32, seed=100), TinyMF(ds.n_users, ds.n_items, 8, seed=200)


def test_kd_lists_are_train_masked_and_follow_the_student(ds_tiny):
    t, s = tiny_models(ds_tiny)
    d = build_distiller("kd", t, s, ds_tiny, {"top_k": 10})
    d.prepare(None)
    d.on_epoch_start(1)
    assert not train_mask(ds_tiny).gather(1, d.lists).any()
    with torch.no_grad():
        dense = s.score(torch.arange(ds_tiny.n_users), s.propagate())
        dense[train_mask(ds_tiny)] = float("-inf")
    assert torch.equal(d.lists, torch.topk(dense, 10).indices)
    raw = build_distiller("kd", t, s, ds_tiny, {"top_k": 10, "mask_train": False})
    raw.prepare(None)
    raw.on_epoch_start(1)
    assert train_mask(ds_tiny).gather(1, raw.lists).any()  # the authors' unmasked lists


def test_rrd_samples(ds_tiny):
    t, s = tiny_models(ds_tiny)
    d = build_distiller("rrd", t, s, ds_tiny, {"n_interesting": 10, "n_uninteresting": 30, "top_k": 50})
    d.prepare(None)
    d.on_epoch_start(1)
    # interesting: items of the user's top list, in teacher order (sorted ranks)
    pos = (d.interesting[:, :, None] == d.lists[:, None, :]).float().argmax(-1)
    assert (d.interesting[:, :, None] == d.lists[:, None, :]).any(-1).all()
    assert (pos.diff(1) > 0).all()
    # uninteresting: neither training items nor in the top list, distinct
    excluded = train_mask(ds_tiny)
    excluded[torch.arange(ds_tiny.n_users)[:, None], d.lists] = True
    assert not excluded.gather(1, d.uninteresting).any()
    assert (d.uninteresting.sort(1).values.diff(1) > 0).all()
    nos = build_distiller("rrd", t, s, ds_tiny, {"n_interesting": 10, "n_uninteresting": 30,
                                                 "top_k": 50, "sampling": False})
    nos.prepare(None)
    nos.on_epoch_start(1)
    assert torch.equal(nos.interesting, nos.lists[:, :10])


def test_cd_samples_are_distinct_non_training_items_of_the_top_list(ds_tiny):
    t, s = tiny_models(ds_tiny)
    d = build_distiller("cd", t, s, ds_tiny, {"sample_num": 40, "n_distill": 6})
    d.prepare(None)
    d.on_epoch_start(1)
    assert not train_mask(ds_tiny).gather(1, d.samples).any()
    assert (d.samples.sort(1).values.diff(1) > 0).all()
    with torch.no_grad():
        dense = s.score(torch.arange(ds_tiny.n_users), s.propagate())
        dense[train_mask(ds_tiny)] = float("-inf")
    top = torch.topk(dense, 40).indices
    assert (d.samples[:, :, None] == top[:, None, :]).any(-1).all()


def test_dcd_samples_come_from_the_teacher_list(ds_tiny):
    t, s = tiny_models(ds_tiny)
    d = build_distiller("dcd", t, s, ds_tiny, {"n_samples": 10, "top_k": 40})
    d.prepare(None)
    d.on_epoch_start(1)
    for got in (d.under, d.over):
        assert (got[:, :, None] == d.lists[:, None, :]).any(-1).all()
        assert (got.sort(1).values.diff(1) > 0).all()


def test_unkd_pairs(ds_tiny):
    t, s = tiny_models(ds_tiny)
    d = build_distiller("unkd", t, s, ds_tiny, {"n_groups": 3, "n_distill": 9, "list_size": 40})
    d.prepare(None)
    d.on_epoch_start(1)
    assert d.pos.shape[1] == sum(d.pairs_per_group) == d.neg.shape[1]
    mask = train_mask(ds_tiny)
    v = d.valid
    assert not (mask.gather(1, d.pos) & v).any() and not (mask.gather(1, d.neg) & v).any()
    gid = torch.full((ds_tiny.n_items,), -1)
    for g, items in enumerate(d.groups):
        gid[torch.as_tensor(items)] = g
    assert torch.equal(gid[d.pos][v], gid[d.neg][v])          # a pair lies in one group
    with torch.no_grad():
        sc = t.score(torch.arange(ds_tiny.n_users), t.propagate())
    assert (sc.gather(1, d.pos) > sc.gather(1, d.neg))[v].all()  # i ranked above j
    for g, lst in enumerate(d._lists):  # per-group lists: sorted by teacher score, no train
        ok = torch.arange(lst.shape[1])[None, :] < d._lengths[g][:, None]
        vals = sc.gather(1, lst.long())
        assert (vals.diff(1)[ok[:, 1:]] <= 0).all()
        assert not (mask.gather(1, lst.long()) & ok).any()


@pytest.fixture
def ds_tiny(tiny_dir):
    from distill_mixin import read_tiny

    return read_tiny(tiny_dir)


# ======================================================================================
# hand-made examples
# ======================================================================================
def hand(train_items=(0,), t_items=(3.0, 2.0, 1.0, 0.0), s_items=(0.0, 0.5, -0.5, 2.0),
         method="kd", **cfg):
    """One user, scores = item values (1-d embeddings, user embedding 1)."""
    n_items = len(t_items)
    z = np.zeros(0, dtype=np.int64)
    tr = np.array(train_items, dtype=np.int64)
    ds = Dataset.from_pairs("hand", (np.zeros(len(tr), dtype=np.int64), tr), (z, z), (z, z),
                            n_users=1, n_items=n_items)
    teacher, student = TinyMF(1, n_items, 1, seed=0), TinyMF(1, n_items, 1, seed=0)
    with torch.no_grad():
        for m, v in ((teacher, t_items), (student, s_items)):
            m.user_emb.weight.fill_(1.0)
            m.item_emb.weight.copy_(torch.tensor(v)[:, None])
    d = build_distiller(method, teacher, student, ds, cfg)
    return ds, teacher, student, d


def loss_of(d, student, users=(0,)):
    batch = {"users": torch.tensor(users), "pos": torch.zeros(len(users), dtype=torch.long),
             "neg": torch.zeros(len(users), 1, dtype=torch.long)}
    return d.loss(batch, student.propagate())["loss"].item()


def test_kd_hand_value():
    _, _, s, d = hand(method="kd", top_k=2, guide="teacher")
    d.prepare(None)
    d.on_epoch_start(1)
    assert d.lists.tolist() == [[1, 2]]  # teacher's top-2 without training item 0
    # teacher scores [2, 1], student [0.5, -0.5]
    pt = [math.exp(2) / (math.exp(2) + math.exp(1)), math.exp(1) / (math.exp(2) + math.exp(1))]
    lz = math.log(math.exp(0.5) + math.exp(-0.5))
    expect = -(pt[0] * (0.5 - lz) + pt[1] * (-0.5 - lz))
    assert loss_of(d, s) == pytest.approx(expect, rel=1e-5)
    assert loss_of(d, s, users=(0, 0, 0)) == pytest.approx(3 * expect, rel=1e-5)  # authors
    _, _, s, d = hand(method="kd", top_k=2, guide="teacher", dedup_users=True)
    d.prepare(None)
    assert loss_of(d, s, users=(0, 0, 0)) == pytest.approx(expect, rel=1e-5)
    # student guide: the student's top-2 without item 0 is [3, 1]
    _, _, s, d = hand(method="kd", top_k=2, guide="student", tau=2.0)
    d.prepare(None)
    d.on_epoch_start(1)
    assert d.lists.tolist() == [[3, 1]]
    t, sv = [0.0 / 2, 2.0 / 2], [2.0 / 2, 0.5 / 2]
    pt = [math.exp(x) / sum(math.exp(y) for y in t) for x in t]
    lz = math.log(sum(math.exp(y) for y in sv))
    assert loss_of(d, s) == pytest.approx(-sum(p * (x - lz) for p, x in zip(pt, sv)), rel=1e-5)


def test_rd_hand_values():
    _, _, s, d = hand(method="rd", top_k=2, temperature=1.0, start_epoch=5, n_dynamic=3)
    d.prepare(None)
    d.on_epoch_start(1)  # before start_epoch: static weights only
    w = [math.exp(-1) / (math.exp(-1) + math.exp(-2)), math.exp(-2) / (math.exp(-1) + math.exp(-2))]
    expect = w[0] * softplus(-0.5) + w[1] * softplus(0.5)  # student scores [0.5, -0.5]
    assert loss_of(d, s) == pytest.approx(expect, rel=1e-5)
    assert loss_of(d, s, users=(0, 0)) == pytest.approx(2 * expect, rel=1e-5)
    # dynamic weights: 4 items, dynamic scores [1, 0, -1, 0.2]
    sc = torch.tensor([[0.5, -0.5]])
    dyn = torch.tensor([[1.0, 0.0, -1.0, 0.2]])
    # item at 0.5: 1 dynamic score above -> r = floor(3 * 1/4) + 1 = 1, tanh(0.1 * (1-1)) = 0
    # item at -0.5: 3 above -> r = floor(3 * 3/4) + 1 = 3, tanh(0.1 * (3-2)) > 0
    assert d.weights(sc, dyn).tolist() == [[0.0, pytest.approx(1.0)]]
    d.cfg.renormalize = False
    assert d.weights(sc, dyn)[0].tolist() == pytest.approx([0.0, w[1] * math.tanh(0.1)], rel=1e-5)


def test_cd_hand_values():
    q = cd_rank_weights(2, 3.0)
    p1, p2 = math.exp(-1 / 6), math.exp(-2 / 6)
    p2 = p2 / (p1 + p2)
    assert q.tolist() == pytest.approx([1 - p2 ** 2, p2 ** 2], rel=1e-5)  # better of two draws
    q = cd_rank_weights(50, 20.0)
    assert q.sum().item() == pytest.approx(1.0, rel=1e-5) and (q.diff() < 0).all()
    _, _, s, d = hand(method="cd", sample_num=2, n_distill=2, t1=2.0, t2=0.5, guide="teacher")
    d.prepare(None)
    d.samples = torch.tensor([[1, 3]])  # teacher scores [2, 0], student [0.5, 2]
    d.samples_t = d._teacher_scores(d.samples)
    assert d.samples_t.tolist() == [[2.0, 0.0]]
    expect = 0.0
    for t, x in ((2.0, 0.5), (0.0, 2.0)):
        w = sig((t + 0.5) / 2.0)
        expect -= w * math.log(sig(x)) + (1 - w) * math.log(1 - sig(x))
    assert loss_of(d, s) == pytest.approx(expect, rel=1e-5)
    assert loss_of(d, s, users=(0, 0)) == pytest.approx(2 * expect, rel=1e-5)


def rrd_hand(s1, s2):
    out = 0.0
    for k in range(len(s1)):
        out += math.log(sum(math.exp(x) for x in s1[k:]) + sum(math.exp(x) for x in s2)) - s1[k]
    return out


def test_rrd_hand_value():
    _, _, s, d = hand(method="rrd", n_interesting=2, n_uninteresting=1, top_k=2)
    d.prepare(None)
    d.on_epoch_start(1)
    assert d.interesting.tolist() == [[1, 2]]      # the whole top list, sorted
    assert d.uninteresting.tolist() == [[3]]       # the only item left
    expect = rrd_hand([0.5, -0.5], [2.0])
    assert loss_of(d, s) == pytest.approx(expect, rel=1e-5)
    assert loss_of(d, s, users=(0, 0)) == pytest.approx(expect, rel=1e-5)  # unique users


def test_dcd_hand_values():
    under, over = DCD.correction_weights(torch.tensor([[3, 0]]), torch.tensor([[0, 1]]), 1.0)
    assert under[0].tolist() == pytest.approx([math.tanh(3), 1e-5])
    assert over[0].tolist() == pytest.approx([1e-5, math.tanh(1)])
    _, _, s, d = hand(method="dcd", n_samples=1, top_k=2)
    d.prepare(None)
    d.under, d.over = torch.tensor([[2]]), torch.tensor([[1]])  # student -0.5 and 0.5
    assert loss_of(d, s) == pytest.approx(rrd_hand([-0.5], [0.5]), rel=1e-5)
    d.cfg.objective = "ce"
    d.teacher_t = d._teacher_scores(torch.cat([d.under, d.over], 1))
    # teacher [1, 2] vs student [-0.5, 0.5] over (under + over)
    pt = [math.exp(1) / (math.exp(1) + math.exp(2)), math.exp(2) / (math.exp(1) + math.exp(2))]
    lz = math.log(math.exp(-0.5) + math.exp(0.5))
    assert loss_of(d, s) == pytest.approx(-(pt[0] * (-0.5 - lz) + pt[1] * (0.5 - lz)), rel=1e-5)


def test_dcd_capped_ranks_give_the_exact_weights(ds_tiny):
    from freqd.distill.ranking import count_higher

    t, s = tiny_models(ds_tiny)
    for temp in (1.0, 0.3):
        d = build_distiller("dcd", t, s, ds_tiny, {"n_samples": 5, "top_k": 30, "temperature": temp})
        d.prepare(None)
        fn = d._model_fn(s)
        exact = count_higher(fn, ds_tiny.train, d.lists)
        cap = DCD.rank_cap(30, temp)
        capped = count_higher(fn, ds_tiny.train, d.lists, cap=cap)
        assert (exact > cap).any()  # the cap is hit, so the check is not vacuous
        r_t = torch.arange(30)[None, :]
        for a, b in zip(DCD.correction_weights(exact, r_t, temp),
                        DCD.correction_weights(capped, r_t, temp)):
            assert torch.equal(a, b)


def test_dcd_student_ranks_are_counted_among_non_training_items():
    # student scores [0, 0.5, -0.5, 2.0], item 0 trained; teacher list [1, 2]
    _, _, s, d = hand(method="dcd", n_samples=1, top_k=2, temperature=1.0)
    d.prepare(None)
    from freqd.distill.ranking import count_higher

    r = count_higher(d._model_fn(s), d.dataset.train, d.lists)
    assert r.tolist() == [[1, 2]]  # item 1 is below item 3; item 2 below 3 and 1


def test_unkd_groups_and_pair_counts_by_hand():
    counts = np.array([5, 3, 2, 1, 1, 0])
    groups = popularity_groups(counts, 2)
    # mass 12, target 6: [0] (5; adding 3 exceeds), [1, 2, 3] (6), [4] (1 <= 3) merged
    assert [g.tolist() for g in groups] == [[0], [1, 2, 3, 4]]
    assert unkd_pairs_per_group(counts, groups, 2, 0.0) == [1, 1]
    # mean popularity 5 and 1.75 -> inverted 1.75, 5 -> ratios .26, .74
    assert unkd_pairs_per_group(counts, groups, 10, 1.0) == [3, 7]
    # a light last group (mass <= half the target) is merged into the previous one
    assert [g.tolist() for g in popularity_groups(np.array([9, 1, 1, 1]), 2)] == [[0, 1, 2, 3]]
    assert [g.tolist() for g in popularity_groups(np.array([9, 2, 1, 1]), 2)] == [[0], [1, 2, 3]]


def test_unkd_hand_value():
    _, _, s, d = hand(method="unkd", n_groups=1, n_distill=2, list_size=2)
    d.prepare(None)
    d.on_epoch_start(1)
    d.pos = torch.tensor([[3, 1, 2]])
    d.neg = torch.tensor([[1, 2, 3]])
    d.valid = torch.tensor([[True, True, False]])
    # student [0, .5, -.5, 2]: pairs (3,1): 2 - .5 ; (1,2): .5 + .5 ; the third is invalid
    expect = (softplus(-1.5) + softplus(-1.0)) / 2
    assert loss_of(d, s) == pytest.approx(expect, rel=1e-5)
    assert loss_of(d, s, users=(0, 0)) == pytest.approx(2 * expect, rel=1e-5)


def test_dkc_ndcg_hand_value():
    g1 = 2 ** math.exp(-0.1) - 1
    idcg = 1.0 + g1 / math.log2(3)
    got = dkc_ndcg(torch.tensor([[5, 7]]), torch.tensor([[7, 9]]))
    assert got.tolist() == [round(g1 / math.log2(3) / idcg, 4)]
    assert dkc_ndcg(torch.tensor([[5, 7]]), torch.tensor([[7, 5]])).tolist() == [1.0]


def hetcomp_hand(tmp_path, **cfg):
    t_items = (3.0, 2.0, 1.0, 0.0, -1.0)
    s_items = (1.0, 0.5, -0.5, 2.0, 0.3)
    z = np.zeros(0, dtype=np.int64)
    ds = Dataset.from_pairs("hand", (np.array([0]), np.array([0])), (z, z), (z, z),
                            n_users=1, n_items=5)
    traj = tmp_path / "traj"
    traj.mkdir()
    teacher, student = TinyMF(1, 5, 1, seed=0), TinyMF(1, 5, 1, seed=0)
    with torch.no_grad():
        for m, v in ((teacher, t_items), (student, s_items)):
            m.user_emb.weight.fill_(1.0)
            m.item_emb.weight.copy_(torch.tensor(v)[:, None])
        early = TinyMF(1, 5, 1, seed=0)
        early.user_emb.weight.fill_(1.0)
        early.item_emb.weight.copy_(torch.tensor([0.0, 0.0, 1.0, 3.0, 2.0])[:, None])
    torch.save({"model": early.state_dict(), "epoch": 1}, traj / "epoch_0001.pt")
    d = build_distiller("hetcomp", teacher, student, ds,
                        {"trajectory_dir": str(traj), "num_ckpt": 2, "top_k": 2, **cfg})
    d.prepare(None)
    return d, student


def test_hetcomp_hand_values(tmp_path):
    d, s = hetcomp_hand(tmp_path)
    # trajectory: the early checkpoint's top-2 [3, 4], then the teacher's [1, 2]
    assert d.perms[:, 0].tolist() == [[3, 4], [1, 2]]
    assert d.positives.tolist() == [[0]]
    e = math.exp
    sv = [1.0, 0.5, -0.5, 2.0, 0.3]
    # overall (before the last checkpoint), list [3, 4]: pos + top = items 0, 3, 4 against
    # the non-training, non-top items 1 and 2
    els = e(sv[1]) + e(sv[2])
    expect = 2 * sum(math.log(e(sv[i]) + els) - sv[i] for i in (0, 3, 4))
    assert loss_of(d, s) == pytest.approx(expect, rel=1e-5)
    assert loss_of(d, s, users=(0, 0)) == pytest.approx(2 * expect, rel=1e-5)
    # rank loss (all users at the last checkpoint), list [1, 2]: K/2 = 1 -> top [1],
    # K/10 = 0 -> no sub-list; below2 = non-training items except item 1: 2, 3, 4
    d.level = torch.tensor([1])
    d.progress = 1.0
    below2 = e(sv[2]) + e(sv[3]) + e(sv[4])
    pos_l = math.log(e(sv[0]) + below2) - sv[0]
    top_l = math.log(e(sv[1]) + below2) - sv[1]
    assert loss_of(d, s) == pytest.approx(pos_l + top_l / 2, rel=1e-5)


def test_hetcomp_scores_are_clamped(tmp_path):
    d, s = hetcomp_hand(tmp_path, clip=0.4)
    sv = [0.4, 0.4, -0.4, 0.4, 0.3]
    e = math.exp
    els = e(sv[1]) + e(sv[2])
    expect = 2 * sum(math.log(e(sv[i]) + els) - sv[i] for i in (0, 3, 4))
    assert loss_of(d, s) == pytest.approx(expect, rel=1e-5)


def test_hetcomp_dkc_moves_users_along_the_trajectory(tmp_path, monkeypatch):
    d, _ = hetcomp_hand(tmp_path, period=2, alpha=1.05)
    lists = iter([torch.tensor([[1, 2]])] * 3)
    monkeypatch.setattr(d, "_topk", lambda *a, **k: next(lists))
    d.on_epoch_start(1)                       # not a DKC epoch
    assert d.level.tolist() == [0] and not d.dkc_started
    d.on_epoch_start(2)                       # first DKC: distance to the next list only
    assert d.level.tolist() == [0] and d.last_dist.tolist() == [0.0]
    # student == next list: 0/0 is nan -> stays (as the authors' numpy division)
    d.on_epoch_start(4)
    assert d.level.tolist() == [0]
    d.last_dist = torch.tensor([0.5], dtype=torch.float64)
    d.on_epoch_start(6)                       # 0.5 / 0 = inf > threshold -> next checkpoint
    # (the monkeypatched iterator is exhausted: a further DKC would fail, and none runs)
    assert d.level.tolist() == [1] and d.progress == 1.0
    d.on_epoch_start(8)                       # everyone at the last checkpoint: no DKC


def test_hetcomp_trajectory_selection_and_errors(tmp_path, ds_tiny):
    t, s = tiny_models(ds_tiny)
    traj = write_trajectory(tmp_path / "t", ds_tiny, epochs=(5, 10, 15, 20, 25), best_epoch=15)
    d = build_distiller("hetcomp", t, s, ds_tiny, {"trajectory_dir": str(traj), "num_ckpt": 3})
    names = [f.name for f in d.trajectory_files()]
    assert names == ["epoch_0005.pt", "epoch_0010.pt", "best.pt"]  # only epochs before best
    d = build_distiller("hetcomp", t, s, ds_tiny, {"trajectory_dir": str(traj),
                                                   "checkpoints": ["epoch_0020.pt", "best.pt"]})
    assert [f.name for f in d.trajectory_files()] == ["epoch_0020.pt", "best.pt"]
    with pytest.raises(ConfigError, match="trajectory_dir"):
        build_distiller("hetcomp", t, s, ds_tiny, {}).prepare(None)
    with pytest.raises(CheckpointError, match="not found"):
        build_distiller("hetcomp", t, s, ds_tiny, {"trajectory_dir": str(tmp_path / "nope")}).prepare(None)
    with pytest.raises(CheckpointError, match="needs 4"):
        build_distiller("hetcomp", t, s, ds_tiny, {"trajectory_dir": str(traj), "num_ckpt": 5}).prepare(None)
    bad = write_trajectory(tmp_path / "bad", ds_tiny, epochs=(1, 2), dim=7)
    with pytest.raises(CheckpointError, match="does not fit"):
        build_distiller("hetcomp", t, s, ds_tiny, {"trajectory_dir": str(bad)}).prepare(None)


def test_config_validation_names_the_option(ds_tiny):
    with pytest.raises(ConfigError, match="n_interesting"):
        method_config("rrd", {"n_interesting": 600, "top_k": 500})
    with pytest.raises(ConfigError, match="guide"):
        method_config("kd", {"guide": "both"})
    t, s = tiny_models(ds_tiny)
    with pytest.raises(ConfigError, match="top_k"):
        build_distiller("rrd", t, s, ds_tiny, {"top_k": 900, "n_interesting": 10}).prepare(None)
    with pytest.raises(ConfigError, match="n_uninteresting"):
        build_distiller("rrd", t, s, ds_tiny, {"top_k": 600, "n_interesting": 10,
                                               "n_uninteresting": 200}).prepare(None)


def test_prepare_cache_is_reused(tmp_path, ds_tiny):
    t, s = tiny_models(ds_tiny)
    d = build_distiller("rrd", t, s, ds_tiny, {"top_k": 30, "n_interesting": 5, "n_uninteresting": 5})
    d.prepare(tmp_path)
    files = list(tmp_path.glob("rrd-topk-*.pt"))
    assert len(files) == 1
    d2 = build_distiller("rrd", t, s, ds_tiny, {"top_k": 30, "n_interesting": 5, "n_uninteresting": 5})
    d2._topk = None  # would fail if called: the cached lists must be used
    d2.prepare(tmp_path)
    assert torch.equal(d.lists, d2.lists)
    t2 = TinyMF(ds_tiny.n_users, ds_tiny.n_items, 32, seed=101)  # another teacher: new entry
    build_distiller("rrd", t2, s, ds_tiny, {"top_k": 30, "n_interesting": 5,
                                            "n_uninteresting": 5}).prepare(tmp_path)
    assert len(list(tmp_path.glob("rrd-topk-*.pt"))) == 2


def test_hetcomp_class_contract():
    assert HetComp.name == "hetcomp" and HetComp.config_class.__name__ == "HetCompConfig"


# ======================================================================================
# presets
# ======================================================================================
PRESETS = Path(__file__).resolve().parents[1] / "src" / "freqd" / "configs" / "methods"
RESPONSE = ("kd", "rd", "cd", "rrd", "dcd", "unkd", "hetcomp")


def test_presets_cover_the_cells_baselines_md_gives():
    cells = {(p.parts[-3], p.parts[-2], p.stem) for p in PRESETS.glob("*/*/*.yaml")}
    for ds in ("citeulike-t", "gowalla", "yelp2018"):
        for bb in ("mf", "lightgcn", "simplex"):
            assert {(ds, bb, "cd"), (ds, bb, "rrd")} <= cells
    assert {("citeulike-t", "mf", m) for m in ("kd", "dcd", "unkd", "hetcomp")} <= cells
    assert ("gowalla", "mf", "rd") in cells


@pytest.mark.parametrize(
    "path", sorted(p for m in RESPONSE for p in PRESETS.glob(f"*/*/{m}.yaml")),
    ids=lambda p: "/".join(p.parts[-3:]))
def test_preset_is_valid(path):
    from freqd.config import from_dict, load_yaml
    from freqd.train.config import TrainConfig

    data = load_yaml(path)
    assert set(data) <= {"method", "train"}
    assert path.read_text().startswith("# Source:")
    method_config(path.stem, data["method"])
    from_dict(TrainConfig, data.get("train", {}), prefix="train.")


def hetcomp_reference(d, student, users: torch.Tensor) -> float:
    """The authors' HetComp losses, written densely in float64 (slow path)."""
    with torch.no_grad():
        full = student.score(users, student.propagate()).double().clamp(-40, 40)
    mask = torch.as_tensor(d.dataset.train[users.numpy()].toarray() > 0).double()
    top, pos = d.top_items(users), d.positives[users]
    tot = (full.exp() * (1 - mask)).sum(1, keepdim=True)
    if d.progress < d.n_ckpt - 1:
        tops = full.gather(1, torch.cat([pos, top], 1))
        els = tot - full.gather(1, top).exp().sum(1, keepdim=True)
        below = (els + tops.exp()).clamp(min=1e-5).log()
        return float(-(tops - below).sum() * 2)

    def rank_part(s, others):
        below = (s.flip(-1).exp().cumsum(1) + others).clamp(min=1e-5).log().sum(1)
        return -(s.sum(1) - below).sum()

    k = top.shape[1]
    s_pos = full.gather(1, pos)
    s_half, s_tenth = full.gather(1, top[:, :k // 2]), full.gather(1, top[:, :k // 10])
    b2_half = tot - s_half.exp().sum(1, keepdim=True)
    b2_tenth = tot - s_tenth.exp().sum(1, keepdim=True)
    return float(rank_part(s_pos, b2_half)
                 + (rank_part(s_half, b2_half) + rank_part(s_tenth, b2_tenth)) / 2)


@pytest.mark.parametrize("phase", ["overall", "rank"])
def test_hetcomp_loss_equals_dense_reference(tmp_path, ds_tiny, phase):
    t, s = tiny_models(ds_tiny)
    with torch.no_grad():  # a student with a wide score range
        s.user_emb.weight.mul_(20)
        s.item_emb.weight.mul_(20)
    traj = write_trajectory(tmp_path / "t", ds_tiny)
    d = build_distiller("hetcomp", t, s, ds_tiny, {"trajectory_dir": str(traj), "top_k": 30})
    d.prepare(None)
    d.level = torch.randint(0, d.n_ckpt, (ds_tiny.n_users,), generator=torch.Generator().manual_seed(0))
    if phase == "rank":
        d.progress = float(d.n_ckpt - 1)
    users = torch.arange(0, ds_tiny.n_users, 3)
    got = loss_of(d, s, users=tuple(users.tolist()))
    assert got == pytest.approx(hetcomp_reference(d, s, users), rel=2e-5)


# ======================================================================================
# smoke: every method with the real backbones on tiny data
# ======================================================================================
SMOKE = {
    "kd": {"top_k": 10}, "rd": {"top_k": 10, "n_dynamic": 10, "start_epoch": 1},
    "cd": {"sample_num": 50, "n_distill": 3}, "rrd": {"n_interesting": 8, "n_uninteresting": 8, "top_k": 40},
    "dcd": {"n_samples": 8, "top_k": 40}, "unkd": {"n_groups": 3, "n_distill": 6, "list_size": 40},
    "hetcomp": {"top_k": 10, "period": 1},
}


@pytest.mark.parametrize("backbone", ["mf", "lightgcn", "simplex"])
@pytest.mark.parametrize("method", sorted(SMOKE))
def test_smoke_real_backbones(method, backbone, ds_tiny, tmp_path):
    from freqd.models.registry import build_backbone

    mcfg = {"simplex": {"n_neg": 8}, "lightgcn": {"n_layers": 2}}.get(backbone, {})
    torch.manual_seed(0)
    teacher = build_backbone(backbone, ds_tiny.n_users, ds_tiny.n_items, {**mcfg, "dim": 16}, ds_tiny.train)
    student = build_backbone(backbone, ds_tiny.n_users, ds_tiny.n_items, {**mcfg, "dim": 4}, ds_tiny.train)
    cfg = dict(SMOKE[method])
    if method == "hetcomp":
        traj = tmp_path / "trajectory"
        traj.mkdir()
        for e in (1, 2):
            m = build_backbone(backbone, ds_tiny.n_users, ds_tiny.n_items, {**mcfg, "dim": 16}, ds_tiny.train)
            torch.save({"model": m.state_dict(), "epoch": e}, traj / f"epoch_{e:04d}.pt")
        cfg["trajectory_dir"] = str(traj)
    d = build_distiller(method, teacher, student, ds_tiny, cfg)
    d.prepare(tmp_path)
    opt = torch.optim.Adam(student.parameters(), lr=1e-2)
    for epoch in (1, 2):
        d.on_epoch_start(epoch)
        for seed in (0, 1):
            batch = make_batch(ds_tiny, size=64, seed=seed)
            batch["neg"] = torch.randint(0, ds_tiny.n_items, (64, student.n_neg))
            reps = student.propagate()
            kd = d.loss(batch, reps)["loss"]
            assert torch.isfinite(kd) and kd.item() >= 0
            opt.zero_grad()
            (student.loss(batch, reps)["loss"] + cfg.get("weight", 0.5) * kd).backward()
            opt.step()
    assert all(p.grad is None for p in teacher.parameters())
