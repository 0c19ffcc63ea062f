"""Shared checks every distiller's tests inherit.

Usage::

    class TestRRD(DistillerContract):
        method = "rrd"                       # name in freqd.distill.registry
        overrides = {"n_interesting": 5}     # small settings for tiny data

The fixture builds the real tiny CiteULike-t cut, a random MF-like teacher (d=32) and
student (d=8), with the teacher frozen.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from freqd.data.dataset import Dataset
from freqd.models.base import Recommender


def read_tiny(tiny_dir: Path) -> Dataset:
    def pairs(name):
        a = np.loadtxt(tiny_dir / name, dtype=np.int64, skiprows=1, delimiter="\t")
        return a[:, 0], a[:, 1]

    return Dataset.from_pairs("tiny", pairs("train.txt"), pairs("valid.txt"), pairs("test.txt"),
                              n_users=241, n_items=979)


class TinyMF(Recommender):
    """Self-contained dot-product backbone so the mixin does not depend on models/."""

    name = "tinymf"

    def __init__(self, n_users, n_items, dim, seed):
        super().__init__(n_users, n_items, dim)
        g = torch.Generator().manual_seed(seed)
        self.user_emb = nn.Embedding(n_users, dim)
        self.item_emb = nn.Embedding(n_items, dim)
        with torch.no_grad():
            self.user_emb.weight.copy_(torch.randn(n_users, dim, generator=g) * 0.1)
            self.item_emb.weight.copy_(torch.randn(n_items, dim, generator=g) * 0.1)

    def loss(self, batch, reps):
        pos = self.pair_scores(batch["users"], batch["pos"], reps)
        neg = self.pair_scores(batch["users"], batch["neg"], reps)
        bpr = -torch.nn.functional.logsigmoid(pos[:, None] - neg).mean(1).sum()
        return {"loss": bpr, "bpr": bpr}


def make_batch(ds: Dataset, size: int = 64, seed: int = 0) -> dict:
    g = np.random.default_rng(seed)
    u, i = ds.train_pairs()
    idx = g.choice(len(u), size=size, replace=False)
    neg = g.integers(0, ds.n_items, size=(size, 1))
    return {
        "users": torch.as_tensor(u[idx]),
        "pos": torch.as_tensor(i[idx]),
        "neg": torch.as_tensor(neg),
    }


class DistillerContract:
    method: str = ""
    overrides: dict = {}
    teacher_dim: int = 32
    student_dim: int = 8

    # -- builders ---------------------------------------------------------------------
    @pytest.fixture
    def ds(self, tiny_dir):
        return read_tiny(tiny_dir)

    def build(self, ds, seed=0, tmp_path=None):
        from freqd.distill.registry import build_distiller

        torch.manual_seed(seed)
        teacher = TinyMF(ds.n_users, ds.n_items, self.teacher_dim, seed=100)
        student = TinyMF(ds.n_users, ds.n_items, self.student_dim, seed=200)
        dist = build_distiller(self.method, teacher, student, ds, dict(self.overrides))
        dist.prepare(tmp_path)
        dist.on_epoch_start(0)
        return teacher, student, dist

    def step_loss(self, student, dist, batch):
        reps = student.propagate()
        return dist.loss(batch, reps)["loss"]

    # -- the contract -------------------------------------------------------------------
    def test_loss_finite_nonnegative(self, ds, tmp_path):
        _, student, dist = self.build(ds, tmp_path=tmp_path)
        loss = self.step_loss(student, dist, make_batch(ds))
        assert loss.dim() == 0
        assert torch.isfinite(loss)
        assert loss.item() >= 0

    def test_gradients_reach_only_student_and_own_params(self, ds, tmp_path):
        teacher, student, dist = self.build(ds, tmp_path=tmp_path)
        dist.train()
        loss = self.step_loss(student, dist, make_batch(ds))
        loss.backward()
        assert all(p.grad is None for p in teacher.parameters()), "teacher got gradients"
        assert not any(p.requires_grad for p in teacher.parameters())
        got = [p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters()]
        assert any(got), "no gradient reached the student"
        own = {id(p) for p in dist.parameters()}
        assert not own & {id(p) for p in teacher.parameters()}, "teacher params registered"
        assert not own & {id(p) for p in student.parameters()}, "student params registered"

    def test_same_seed_same_loss(self, ds, tmp_path):
        losses = []
        for _ in range(2):
            _, student, dist = self.build(ds, seed=3, tmp_path=tmp_path)
            torch.manual_seed(7)
            losses.append(self.step_loss(student, dist, make_batch(ds)).item())
        assert losses[0] == pytest.approx(losses[1], rel=1e-6, abs=1e-8)

    def test_state_round_trip(self, ds, tmp_path):
        _, student, dist = self.build(ds, seed=1, tmp_path=tmp_path)
        state = {"params": dist.state_dict(), "extra": dist.extra_state()}
        torch.save(state, tmp_path / "d.pt")
        loaded = torch.load(tmp_path / "d.pt", weights_only=True)
        _, student2, dist2 = self.build(ds, seed=2, tmp_path=tmp_path)
        dist2.load_state_dict(loaded["params"])
        dist2.load_extra_state(loaded["extra"])
        student2.load_state_dict(student.state_dict())
        dist.eval(), dist2.eval()
        batch = make_batch(ds)
        torch.manual_seed(11)
        a = self.step_loss(student, dist, batch).item()
        torch.manual_seed(11)
        b = self.step_loss(student2, dist2, batch).item()
        assert a == pytest.approx(b, rel=1e-5, abs=1e-7)
