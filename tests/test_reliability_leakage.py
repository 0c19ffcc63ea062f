"""No leakage (issue 7): no validation or test pair ever reaches training.

* the splits are disjoint and the training matrix holds train pairs only;
* the training batches' positives are exactly the training pairs;
* the negative sampler excludes exactly the training positives: validation and test items
  can be drawn as negatives (the standard protocol) but are never treated as positives;
* the graphs built for FreqD (and LightGCN's propagation graph) come from ``dataset.train``
  alone: the co-occurrence graph equals the one built from train, and differs from one
  built from train + valid + test;
* black box: every distillation method computes the same KD loss when the validation and
  test splits are replaced by other ones (train unchanged).
"""
from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from freqd.data.dataset import Dataset
from freqd.data.load import load_dataset
from freqd.data.sampling import TrainSampler, UniformNegativeSampler
from freqd.distill.registry import METHODS, build_distiller
from freqd.models.registry import backbone_config, build_backbone
from freqd.spectral.graphs import build_graph, normalize_adjacency
from freqd.train.config import TrainConfig
from freqd.train.trainer import Trainer


@pytest.fixture(scope="module")
def tiny(shared_data, tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FREQD_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
        return load_dataset(shared_data / "tiny", cache=False)


def dense(m) -> np.ndarray:
    return np.asarray(sp.csr_matrix(m).todense()) != 0


def held_out(ds: Dataset) -> np.ndarray:
    return dense(ds.valid) | dense(ds.test)


def test_splits_are_disjoint_and_train_matrix_is_train_only(tiny):
    tr, va, te = dense(tiny.train), dense(tiny.valid), dense(tiny.test)
    assert not (tr & va).any() and not (tr & te).any() and not (va & te).any()
    assert va.any() and te.any()
    users, items = tiny.train_pairs()
    assert len(users) == tiny.train.nnz == tr.sum()
    assert not held_out(tiny)[users, items].any()


def test_trainer_batches_hold_only_training_positives(tiny):
    model = build_backbone("mf", tiny.n_users, tiny.n_items, backbone_config("mf", {"dim": 4}))
    trainer = Trainer(model, tiny, TrainConfig(epochs=1, batch_size=500, progress=False))
    batches = list(trainer.sampler.epoch())
    users = torch.cat([b["users"] for b in batches]).numpy()
    pos = torch.cat([b["pos"] for b in batches]).numpy()
    neg = torch.cat([b["neg"] for b in batches]).numpy()
    # one epoch = every training pair exactly once
    got = np.sort(users * tiny.n_items + pos)
    tu, ti = tiny.train_pairs()
    assert np.array_equal(got, np.sort(tu * tiny.n_items + ti))
    # negatives avoid training positives
    assert not dense(tiny.train)[users[:, None], neg].any()
    # the trainer's sampler was built from the training matrix only
    free = trainer.sampler.negatives._n_free.numpy()
    assert np.array_equal(free, tiny.n_items - np.diff(tiny.train.indptr))


def test_negative_sampler_excludes_exactly_the_training_positives(tiny):
    """Many draws for every user: the set of items drawn is exactly the complement of the
    user's training items; so validation/test items are drawn (they are not excluded)."""
    s = UniformNegativeSampler(tiny.train, seed=0)
    n_draws = 12_000
    users = torch.arange(tiny.n_users)
    seen = np.zeros((tiny.n_users, tiny.n_items), dtype=bool)
    for _ in range(2):
        neg = s.sample(users, n_neg=n_draws // 2).numpy()
        seen[np.repeat(np.arange(tiny.n_users), neg.shape[1]), neg.ravel()] = True
    train = dense(tiny.train)
    assert not (seen & train).any(), "a training positive was drawn as a negative"
    # P(a given free item is never drawn) <= (1 - 1/979)^12000 ~ 5e-6 per (user, item)
    assert (seen | train).all(), "some non-training item is never drawn"
    ho = held_out(tiny)
    assert (seen & ho).sum() == ho.sum()


def test_sampler_does_not_depend_on_heldout_pairs(tiny):
    """Same seed, same training matrix, different valid/test: identical batches."""
    other = Dataset("other", tiny.train, tiny.test, tiny.valid)
    a = TrainSampler(tiny.train, batch_size=700, n_neg=3, seed=5)
    b = TrainSampler(other.train, batch_size=700, n_neg=3, seed=5)
    for x, y in zip(a.epoch(), b.epoch()):
        for k in x:
            assert torch.equal(x[k], y[k])


def _teacher_student(ds: Dataset, backbone: str = "mf"):
    torch.manual_seed(0)
    t = build_backbone(backbone, ds.n_users, ds.n_items, backbone_config(backbone, {"dim": 16}), ds.train)
    s = build_backbone(backbone, ds.n_users, ds.n_items, backbone_config(backbone, {"dim": 8}), ds.train)
    return t.eval(), s


@pytest.mark.parametrize("side", ["user", "item"])
def test_freqd_graph_is_built_from_train_only(tiny, side, tmp_path):
    teacher, student = _teacher_student(tiny)
    dist = build_distiller("freqd", teacher, student, tiny, {"graph": "cooccurrence", "k": 5})
    dist.prepare(tmp_path / "graphs")
    got = sp.csr_matrix(dist.laplacians[side])
    from_train = normalize_adjacency(build_graph("cooccurrence", tiny.train, side=side, k=5))
    everything = (tiny.train + tiny.valid + tiny.test).tocsr()
    from_all = normalize_adjacency(build_graph("cooccurrence", everything, side=side, k=5))
    assert got.shape == from_train.shape
    assert abs(got - from_train).max() == 0
    assert (got != from_all).nnz > 0, "train and all-splits graphs coincide: test is vacuous"
    # the cached copy (same dataset fingerprint) is the same graph
    again = build_distiller("freqd", teacher, student, tiny, {"graph": "cooccurrence", "k": 5})
    again.prepare(tmp_path / "graphs")
    assert abs(sp.csr_matrix(again.laplacians[side]) - from_train).max() == 0


def test_freqd_bipartite_graph_is_train_only(tiny, tmp_path):
    teacher, student = _teacher_student(tiny)
    dist = build_distiller("freqd", teacher, student, tiny, {"graph": "bipartite"})
    dist.prepare(tmp_path / "graphs")
    a = sp.csr_matrix(dist.laplacians["bipartite"])
    block = a[: tiny.n_users, tiny.n_users:] != 0
    assert (block != (tiny.train != 0)).nnz == 0


def test_lightgcn_propagation_graph_is_train_only(tiny):
    model = build_backbone("lightgcn", tiny.n_users, tiny.n_items,
                           backbone_config("lightgcn", {"dim": 4}), tiny.train)
    g = model.graph.to_dense().numpy()
    block = g[: tiny.n_users, tiny.n_users:] != 0
    assert np.array_equal(block, dense(tiny.train))
    assert (g != 0).sum() == 2 * tiny.train.nnz


def _shuffled_heldout(ds: Dataset, seed: int) -> Dataset:
    """Same train; valid and test replaced by random pairs outside train."""
    rng = np.random.default_rng(seed)
    free = np.argwhere(~dense(ds.train))
    pick = rng.choice(len(free), size=ds.valid.nnz + ds.test.nnz, replace=False)
    va, te = free[pick[: ds.valid.nnz]], free[pick[ds.valid.nnz:]]
    return Dataset.from_pairs("swapped", ds.train_pairs(), (va[:, 0], va[:, 1]), (te[:, 0], te[:, 1]),
                              n_users=ds.n_users, n_items=ds.n_items)


#: options that let a method run on tiny with an untrained teacher
METHOD_OPTIONS = {"cd": {"sample_num": 100}}


@pytest.fixture(scope="module")
def trajectory_teacher(tiny, tmp_path_factory):
    """A trained tiny teacher with its saved trajectory (HetComp reads it)."""
    from freqd import api

    out = tmp_path_factory.mktemp("teacher") / "run"
    threads = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FREQD_CACHE_DIR", str(out.parent / "cache"))
        run = api.train(tiny, backbone="mf", dim=16, out=out, epochs=3,
                        overrides={"train": {"save_every": 1, "progress": False}})
    torch.set_num_threads(threads)
    return run


@pytest.mark.parametrize("method", sorted(METHODS))
def test_distiller_loss_does_not_depend_on_heldout_pairs(method, tiny, tmp_path, request):
    other = _shuffled_heldout(tiny, 1)
    assert other.fingerprint() != tiny.fingerprint()
    opts = dict(METHOD_OPTIONS.get(method, {}))
    if method == "hetcomp":
        run = request.getfixturevalue("trajectory_teacher")
        opts.update(trajectory_dir=str(run.dir / "trajectory"), num_ckpt=2)
    losses = []
    for ds in (tiny, other):
        teacher, student = _teacher_student(ds)
        if method == "hetcomp":
            teacher = run.model
        torch.manual_seed(0)
        dist = build_distiller(method, teacher, student, ds, opts)
        dist.prepare(tmp_path / "graphs")
        dist.on_epoch_start(1)
        batch = next(TrainSampler(ds.train, batch_size=64, n_neg=student.n_neg, seed=3).epoch())
        torch.manual_seed(1)
        out = dist.loss(batch, student.propagate())
        losses.append(float(out["loss"].detach()))
    assert losses[0] == losses[1], f"{method}: the KD loss changed with the held-out pairs"
