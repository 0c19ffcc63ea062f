"""Interruption (issue 7): ``kill -9`` a training run at a random point after its first
checkpoint, resume it with ``--resume``, and get exactly the metrics (and best model) of an
uninterrupted run with the same seed (CPU). Also: the checkpoint on disk is always a
complete one, and a running job holds the run directory's lock.

The uninterrupted reference runs in-process through the Python API; the interrupted and the
resumed runs are real ``python -m freqd`` processes, so this also checks that two processes
with the same seed agree.
"""
from __future__ import annotations

import importlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from corpus import cli_env, run_cli

from freqd import api
from freqd.errors import FreqdError
from freqd.runs import run_lock
from freqd.train.trainer import BEST, CKPT, load_checkpoint_file

TIMING = ("seconds_per_epoch", "eval_seconds", "prepare_seconds", "checkpoint_seconds")
COMMON = {"train": {"threads": 1, "progress": False}}


def without_timing(m: dict) -> dict:
    return {k: v for k, v in m.items() if k not in TIMING}


def same_state(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def env(shared_data, tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    threads = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FREQD_DATA_DIR", str(shared_data))
        mp.setenv("FREQD_CACHE_DIR", str(cache))
        mp.setenv("FREQD_NO_PROGRESS", "1")
        yield cli_env(shared_data, cache)
    torch.set_num_threads(threads)  # the in-process runs use train.threads=1


def interrupt_and_resume(argv: list, out: Path, env: dict, seed: int) -> subprocess.CompletedProcess:
    """Start ``freqd ARGV --out OUT``, kill -9 it at a random time after its first
    checkpoint, check what it left, then run it again with ``--resume``."""
    rng = random.Random(seed)
    log = open(out.parent / f"{out.name}.stderr", "w")  # noqa: SIM115 - closed below
    cmd = [sys.executable, "-m", "freqd", *map(str, argv), "--out", str(out)]
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=log)
    try:
        t_end = time.monotonic() + 300
        while not (out / CKPT).exists():
            assert p.poll() is None, f"run ended before its first checkpoint: {p.returncode}"
            assert time.monotonic() < t_end, "no checkpoint after 300 s"
            time.sleep(0.01)
        # the running job holds the run directory: a second run is refused
        with pytest.raises(FreqdError, match="another freqd process"), run_lock(out):
            pass
        time.sleep(rng.uniform(0.0, 0.3))
        assert p.poll() is None, f"(seed {seed}) the run finished before it could be killed"
        os.kill(p.pid, signal.SIGKILL)
        assert p.wait(timeout=60) == -signal.SIGKILL
    finally:
        if p.poll() is None:
            p.kill()
        log.close()
    assert not (out / "metrics.json").exists()
    st = load_checkpoint_file(out / CKPT)  # never half-written, whenever the kill came
    # (a kill after the last checkpoint but before metrics.json is an interruption too)
    assert 1 <= st["epoch"] <= int(argv[argv.index("--epochs") + 1])
    # what a kill during an atomic write leaves: a stray temp file, which must not matter
    (out / f".{CKPT}.interrupted.tmp").write_bytes(b"\x80\x02partial")
    return run_cli([*argv, "--out", out, "--resume"], out.parent, env)


def check_same_run(resumed: Path, ref: Path, seed: int) -> None:
    a = json.loads((resumed / "metrics.json").read_text())
    b = json.loads((ref / "metrics.json").read_text())
    assert without_timing(a) == without_timing(b), f"kill seed {seed}"
    ma = load_checkpoint_file(resumed / BEST)["model"]
    mb = load_checkpoint_file(ref / BEST)["model"]
    assert same_state(ma, mb), f"kill seed {seed}: best models differ"


def test_kill9_then_resume_equals_uninterrupted_train(env, tmp_path):
    epochs = 150  # long enough (seconds) that the kill always lands mid-run on a fast machine
    ref = tmp_path / "ref"
    api.train("tiny", backbone="mf", dim=16, out=ref, epochs=epochs, seed=3, overrides=COMMON)
    seed = int.from_bytes(os.urandom(4), "little")
    argv = ["train", "tiny", "--backbone", "mf", "--dim", "16", "--epochs", str(epochs),
            "--seed", "3", "--no-progress", "train.threads=1"]
    r = interrupt_and_resume(argv, tmp_path / "run", env, seed)
    assert r.returncode == 0, r.stderr
    assert "resumed from" in r.stderr
    check_same_run(tmp_path / "run", ref, seed)


def test_kill9_then_resume_equals_uninterrupted_freqd_distill(env, tmp_path):
    """FreqD draws edge and projector dropout from torch's global RNG every step; the
    checkpoint carries that RNG state, so the resumed run replays the same masks."""
    teacher = tmp_path / "teacher"
    api.train("tiny", backbone="mf", dim=16, out=teacher, epochs=2, overrides=COMMON)
    epochs = 10
    opts = {"train": {**COMMON["train"], "batch_size": 1024}}
    ref = tmp_path / "ref"
    api.distill("tiny", teacher=str(teacher), method="freqd", dim=8, out=ref, epochs=epochs,
                overrides=opts)
    seed = int.from_bytes(os.urandom(4), "little")
    argv = ["distill", "tiny", "--teacher", teacher, "--method", "freqd", "--dim", "8",
            "--epochs", str(epochs), "--no-progress", "train.threads=1", "train.batch_size=1024"]
    r = interrupt_and_resume(argv, tmp_path / "run", env, seed)
    assert r.returncode == 0, r.stderr
    check_same_run(tmp_path / "run", ref, seed)
    # the distiller's own state (projectors) resumed too
    da = load_checkpoint_file(tmp_path / "run" / CKPT)["distiller"]
    db = load_checkpoint_file(ref / CKPT)["distiller"]
    assert same_state(da, db)


def test_resume_of_a_finished_run_changes_nothing(env, tmp_path, capsys):
    out = tmp_path / "run"
    run = api.train("tiny", backbone="mf", dim=8, out=out, epochs=2, overrides=COMMON)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file() and p.name != "train.log"}
    again = api.train("tiny", backbone="mf", dim=8, out=out, epochs=2, overrides=COMMON, resume=True)
    after = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file() and p.name != "train.log"}
    assert after == before and again.metrics == run.metrics


def test_killed_before_first_checkpoint_restarts_cleanly(env, tmp_path):
    """A run dir holding only config.yaml (killed during the first epoch) resumes from
    scratch and matches an uninterrupted run."""
    ref = api.train("tiny", backbone="mf", dim=8, out=tmp_path / "ref", epochs=2, overrides=COMMON)
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.yaml").write_bytes((tmp_path / "ref" / "config.yaml").read_bytes())
    run = api.train("tiny", backbone="mf", dim=8, out=out, epochs=2, overrides=COMMON, resume=True)
    assert without_timing(run.metrics) == without_timing(ref.metrics)


def test_killed_while_writing_its_config_restarts_cleanly(env, tmp_path):
    """Killed before config.yaml landed (found by the bench test under load): the folder
    holds the lock and the atomic write's temporary file; the same command (with or
    without --resume) starts the run afresh and matches an uninterrupted one. A folder
    with anything else in it is still refused."""
    ref = api.train("tiny", backbone="mf", dim=8, out=tmp_path / "ref", epochs=2, overrides=COMMON)
    for resume in (False, True):
        out = tmp_path / f"run{int(resume)}"
        out.mkdir()
        (out / ".lock").touch()
        (out / ".config.yaml.k3j4x_.tmp").write_text("kind: tra")  # half-written, never renamed
        run = api.train("tiny", backbone="mf", dim=8, out=out, epochs=2, overrides=COMMON, resume=resume)
        assert without_timing(run.metrics) == without_timing(ref.metrics)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(FreqdError, match="not a freqd run directory"):
        api.train("tiny", backbone="mf", dim=8, out=foreign, epochs=1, overrides=COMMON)
    assert (foreign / "notes.txt").read_text() == "mine"


def test_resume_with_a_truncated_checkpoint_is_refused(env, tmp_path):
    out = tmp_path / "run"
    api.train("tiny", backbone="mf", dim=8, out=out, epochs=2, overrides=COMMON)
    (out / "metrics.json").unlink()
    ck = out / CKPT
    os.truncate(ck, ck.stat().st_size - 100)
    damaged = ck.read_bytes()
    with pytest.raises(FreqdError, match="not a valid checkpoint"):
        api.train("tiny", backbone="mf", dim=8, out=out, epochs=2, overrides=COMMON, resume=True)
    assert ck.read_bytes() == damaged  # neither used nor silently replaced
    assert not (out / "metrics.json").exists()


def test_throttled_checkpoints_write_at_stop_and_resume_the_same(env, tmp_path, monkeypatch):
    """train.checkpoint_interval: writes are skipped between evaluations, the state at the
    stop is always written, and a run resumed from a sparse checkpoint ends the same."""
    tr = importlib.import_module("freqd.train.trainer")

    writes = []
    real = tr.torch_save

    def counting(obj, path, *a, **k):
        writes.append(Path(path).name)
        return real(obj, path, *a, **k)

    monkeypatch.setattr(tr, "torch_save", counting)
    ref = tmp_path / "ref"
    api.train("tiny", backbone="mf", dim=8, out=ref, epochs=6, seed=1, overrides=COMMON)
    assert writes.count(CKPT) == 6  # default (auto) on a small model: after every evaluation
    writes.clear()
    lazy = {"train": {**COMMON["train"], "checkpoint_interval": 1e9}}
    run = tmp_path / "run"
    api.train("tiny", backbone="mf", dim=8, out=run, epochs=3, seed=1, overrides=lazy)
    assert writes.count(CKPT) == 1 and writes.count(BEST) == 1  # only at the stop
    st = load_checkpoint_file(run / CKPT)
    assert st["epoch"] == 3 and st["io_seconds"] > 0
    best = load_checkpoint_file(run / BEST)
    assert best["epoch"] == json.loads((run / "metrics.json").read_text())["best_epoch"]
    # extend the same run to 6 epochs: identical to the uninterrupted reference
    api.train("tiny", backbone="mf", dim=8, out=run, epochs=6, seed=1, overrides=lazy, resume=True)
    check_same_run(run, ref, 0)
    assert json.loads((run / "metrics.json").read_text())["checkpoint_seconds"] > 0


def test_time_limit_counts_checkpoint_writes(env, tmp_path, monkeypatch):
    """A run whose checkpoint writes are slow stops on train.time_limit even when training
    and evaluation alone are far below it."""
    tr = importlib.import_module("freqd.train.trainer")

    real = tr.torch_save

    def slow(obj, path, *a, **k):
        time.sleep(0.3)
        return real(obj, path, *a, **k)

    monkeypatch.setattr(tr, "torch_save", slow)
    opts = {"train": {**COMMON["train"], "time_limit": 1.0, "checkpoint_interval": 0}}
    run = api.train("tiny", backbone="mf", dim=8, out=tmp_path / "r", epochs=200, seed=1, overrides=opts)
    m = run.metrics
    assert m["stopped_by_time_limit"] and m["epochs_run"] < 10
    assert m["checkpoint_seconds"] >= 0.6


def test_auto_checkpoint_interval_throttles_only_slow_writes(env, tmp_path, monkeypatch):
    """Default (auto): a write slower than 0.5 s makes the next ones wait 10 write-durations;
    the state at the stop is still written."""
    tr = importlib.import_module("freqd.train.trainer")
    real = tr.torch_save
    writes = []

    def slow(obj, path, *a, **k):
        writes.append(Path(path).name)
        time.sleep(0.6)
        return real(obj, path, *a, **k)

    monkeypatch.setattr(tr, "torch_save", slow)
    run = tmp_path / "r"
    api.train("tiny", backbone="mf", dim=8, out=run, epochs=4, seed=1, overrides=COMMON)
    # epoch 1 writes (nothing measured yet), epochs 2-3 fall inside 10 x 0.6 s, the stop writes
    assert writes.count(CKPT) == 2, writes
    assert load_checkpoint_file(run / CKPT)["epoch"] == 4
