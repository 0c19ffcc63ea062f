"""Determinism (issue 7): on CPU, the same configuration and seed give an identical
metrics.json (every field except the timings) and identical best models, for each backbone
and for a distilled student; another seed gives another run (so the checks are not vacuous).
What is and is not deterministic on GPU: docs/DETERMINISM.md.
"""
from __future__ import annotations

import json

import pytest
import torch

from freqd import api
from freqd.train.trainer import BEST, load_checkpoint_file

TIMING = ("seconds_per_epoch", "eval_seconds", "prepare_seconds", "checkpoint_seconds")


@pytest.fixture(autouse=True)
def env(shared_data, tmp_path, monkeypatch):
    monkeypatch.setenv("FREQD_DATA_DIR", str(shared_data))
    monkeypatch.setenv("FREQD_CACHE_DIR", str(tmp_path / "cache"))
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def metrics_file(run) -> dict:
    m = json.loads((run.dir / "metrics.json").read_text())
    for k in TIMING:
        m.pop(k, None)
    m.pop("teacher", None)  # the teacher's path
    return m


def best_model(run) -> dict:
    return load_checkpoint_file(run.dir / BEST)["model"]


def assert_identical(a, b) -> None:
    assert metrics_file(a) == metrics_file(b)
    ma, mb = best_model(a), best_model(b)
    assert ma.keys() == mb.keys()
    for k in ma:
        assert torch.equal(ma[k], mb[k]), k
    ha = (a.dir / "history.csv").read_text().splitlines()
    hb = (b.dir / "history.csv").read_text().splitlines()
    assert len(ha) == len(hb)


BACKBONES = {
    "mf": {"train": {"batch_size": 512}},
    "lightgcn": {"model": {"n_layers": 2}, "train": {"batch_size": 1024}},
    "simplex": {"model": {"n_neg": 50, "dropout": 0.1}, "train": {"batch_size": 1024}},
}


@pytest.mark.parametrize("backbone", sorted(BACKBONES))
def test_same_seed_same_run(backbone, tmp_path):
    over = {**BACKBONES[backbone]}
    over["train"] = {**over["train"], "progress": False}
    runs = [api.train("tiny", backbone=backbone, dim=8, out=tmp_path / f"r{i}", epochs=3,
                      seed=seed, overrides=over, role="teacher") for i, seed in enumerate((7, 7, 8))]
    assert_identical(runs[0], runs[1])
    assert metrics_file(runs[0]) != metrics_file(runs[2]), "the seed changes nothing?"


def test_same_seed_same_run_with_two_threads(tmp_path):
    """Two intra-op threads: runs with the same seed still agree bit for bit (only the same
    thread count is promised; 1 and 2 threads may legitimately differ)."""
    over = {"train": {"progress": False, "threads": 2, "batch_size": 512}}
    a = api.train("tiny", backbone="mf", dim=8, out=tmp_path / "a", epochs=2, overrides=over)
    b = api.train("tiny", backbone="mf", dim=8, out=tmp_path / "b", epochs=2, overrides=over)
    assert_identical(a, b)


@pytest.mark.parametrize("method", ["freqd", "kd"])
def test_same_seed_same_distilled_student(method, tmp_path):
    over = {"train": {"progress": False, "batch_size": 1024}}
    teacher = api.train("tiny", backbone="mf", dim=16, out=tmp_path / "t", epochs=2, overrides=over)
    runs = [api.distill("tiny", teacher=teacher.dir, method=method, dim=8, out=tmp_path / f"s{i}",
                        epochs=3, seed=seed, overrides=over) for i, seed in enumerate((1, 1, 2))]
    assert_identical(runs[0], runs[1])
    assert metrics_file(runs[0]) != metrics_file(runs[2])


def test_save_every_keeps_the_run_identical_and_saves_each_epochs_state(tmp_path):
    """``train.save_every`` (HetComp's teacher trajectory) only adds files: the run equals
    one without it, bit for bit, and trajectory/epoch_N.pt holds the model after epoch N
    (the last one equals the final model; best.pt the best one)."""
    over = {"train": {"progress": False, "batch_size": 512}}
    plain = api.train("tiny", backbone="mf", dim=8, out=tmp_path / "plain", epochs=4, overrides=over)
    with_traj = api.train("tiny", backbone="mf", dim=8, out=tmp_path / "traj", epochs=4,
                          overrides={"train": {**over["train"], "save_every": 2}})
    assert_identical(plain, with_traj)
    traj = with_traj.dir / "trajectory"
    assert sorted(p.name for p in traj.iterdir()) == ["best.pt", "epoch_0002.pt", "epoch_0004.pt"]
    e2, e4 = (load_checkpoint_file(traj / f"epoch_000{n}.pt") for n in (2, 4))
    assert (e2["epoch"], e4["epoch"]) == (2, 4)
    assert any(not torch.equal(e2["model"][k], e4["model"][k]) for k in e2["model"])
    last = load_checkpoint_file(with_traj.dir / "checkpoint.pt")["model"]
    for k in e4["model"]:
        assert torch.equal(e4["model"][k], last[k]), k
    best = load_checkpoint_file(traj / "best.pt")["model"]
    for k, v in best_model(with_traj).items():
        assert torch.equal(best[k], v), k
    assert not (plain.dir / "trajectory").exists()
