"""Resource faults (issue 7): an unwritable output folder and a full disk give one clear
error (exit status 2 through the CLI), leave no temp files, keep the previous checkpoint
intact and loadable, and a later ``--resume`` finishes with the metrics of an uninterrupted
run.

Tests may run as root, for whom ``chmod 0o500`` blocks nothing: then the folder is made
immutable with ``chattr +i`` where the file system allows it, and otherwise (and in any
case, for the disk-full cases) the failing system call is simulated in-process.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
import torch
from corpus import error_lines

from freqd import api
from freqd.cli import main
from freqd.errors import FreqdError
from freqd.train.trainer import CKPT, load_checkpoint_file
from freqd.utils.atomic import atomic_path, torch_save, write_json, write_text

TIMING = ("seconds_per_epoch", "eval_seconds", "prepare_seconds", "checkpoint_seconds")
TRAIN = ["train", "tiny", "--dim", "8", "--epochs", "3", "--no-progress", "train.threads=1"]


@pytest.fixture(autouse=True)
def env(shared_data, tmp_path, monkeypatch):
    monkeypatch.setenv("FREQD_DATA_DIR", str(shared_data))
    monkeypatch.setenv("FREQD_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("FREQD_NO_PROGRESS", "1")
    monkeypatch.delenv("FREQD_DEBUG", raising=False)
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def cli(argv, capsys) -> tuple:
    capsys.readouterr()
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return rc, out, err


def one_error(err: str, *expect: str) -> str:
    errs = error_lines(err)
    assert len(errs) == 1, err
    for s in expect:
        assert s in errs[0], f"{s!r} not in {errs[0]!r}"
    return errs[0]


def temp_files(folder: Path) -> list:
    return [p.name for p in folder.rglob("*") if ".tmp" in p.name]


def metrics(run_dir: Path) -> dict:
    m = json.loads((run_dir / "metrics.json").read_text())
    return {k: v for k, v in m.items() if k not in TIMING}


@pytest.fixture(scope="module")
def reference(shared_data, tmp_path_factory):
    """An uninterrupted run of TRAIN, for comparing resumed runs with."""
    out = tmp_path_factory.mktemp("ref") / "run"
    threads = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FREQD_DATA_DIR", str(shared_data))
        mp.setenv("FREQD_CACHE_DIR", str(out.parent / "cache"))
        assert main([*TRAIN, "--out", str(out)]) == 0
    torch.set_num_threads(threads)
    return metrics(out)


# -- unwritable folders -------------------------------------------------------------------------


def _make_unwritable(d: Path) -> str:
    """Make ``d`` unwritable for this process for real; returns how, or "" if impossible."""
    if os.geteuid() != 0:
        d.chmod(0o500)
        return "chmod"
    if shutil.which("chattr") and subprocess.run(["chattr", "+i", str(d)], capture_output=True,
                                                  check=False).returncode == 0:
        try:
            (d / "probe").touch()
        except OSError:
            return "chattr"
        (d / "probe").unlink()
        subprocess.run(["chattr", "-i", str(d)], check=False)
    return ""


def _restore(d: Path, how: str) -> None:
    if how == "chmod":
        d.chmod(0o700)
    elif how == "chattr":
        subprocess.run(["chattr", "-i", str(d)], check=False)


@pytest.fixture
def unwritable(tmp_path):
    d = tmp_path / "readonly"
    d.mkdir()
    how = _make_unwritable(d)
    if not how:
        pytest.skip("cannot make a folder unwritable here (root without chattr); "
                    "the simulated tests cover this")
    yield d
    _restore(d, how)


@pytest.fixture(scope="module")
def finished_run(shared_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("fin") / "run"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FREQD_DATA_DIR", str(shared_data))
        mp.setenv("FREQD_CACHE_DIR", str(out.parent / "cache"))
        api.train("tiny", backbone="mf", dim=8, out=out, epochs=1,
                  overrides={"train": {"progress": False, "threads": 1}})
    return out


@pytest.mark.parametrize("command", ["train", "data-export", "recommend", "export"])
def test_unwritable_output_folder(command, unwritable, finished_run, capsys):
    target = unwritable / "out"
    argv = {"train": [*TRAIN, "--out", target],
            "data-export": ["data", "export", "tiny", "--out", target],
            "recommend": ["recommend", finished_run, "--all", "--out", target],
            "export": ["export", finished_run, "--out", target]}[command]
    rc, _out, err = cli(argv, capsys)
    assert rc == 2
    one_error(err, str(target))
    assert list(unwritable.iterdir()) == []


def test_run_folder_turned_unwritable_keeps_its_checkpoint(tmp_path, capsys):
    out = tmp_path / "run"
    assert cli([*TRAIN, "--out", out], capsys)[0] == 0
    (out / "metrics.json").unlink()
    before = (out / CKPT).read_bytes()
    how = _make_unwritable(out)
    if not how:
        pytest.skip("cannot make a folder unwritable here")
    try:
        rc, _, err = cli([*TRAIN, "--out", out, "--resume"], capsys)
    finally:
        _restore(out, how)
    assert rc == 2
    one_error(err, str(out), "cannot write")
    assert (out / CKPT).read_bytes() == before
    assert load_checkpoint_file(out / CKPT)["epoch"] == 3


# -- simulated faults -----------------------------------------------------------------------------


def _fail_under(monkeypatch, folder: Path, err: int) -> None:
    """Creating files or folders under ``folder`` fails with ``err`` (as chmod would)."""
    real_mkstemp, real_mkdir, real_open = tempfile.mkstemp, os.mkdir, open
    folder = folder.resolve()

    def under(p) -> bool:
        try:
            Path(p).resolve().relative_to(folder)
            return True
        except ValueError:
            return False

    def mkstemp(*a, dir=None, **kw):
        if dir is not None and under(dir):
            raise OSError(err, os.strerror(err), str(dir))
        return real_mkstemp(*a, dir=dir, **kw)

    def mkdir(path, *a, **kw):
        if under(path):
            raise OSError(err, os.strerror(err), str(path))
        return real_mkdir(path, *a, **kw)

    def fake_open(file, mode="r", *a, **kw):
        if isinstance(file, (str, os.PathLike)) and any(c in mode for c in "wax+") and under(file):
            raise OSError(err, os.strerror(err), str(file))
        return real_open(file, mode, *a, **kw)

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    monkeypatch.setattr(os, "mkdir", mkdir)
    monkeypatch.setattr("builtins.open", fake_open)


@pytest.mark.parametrize("err", [errno.EACCES, errno.EROFS, errno.ENOSPC])
def test_simulated_unwritable_output_folder(err, tmp_path, monkeypatch, capsys):
    _fail_under(monkeypatch, tmp_path / "ro", err)
    rc, _, msg = cli([*TRAIN, "--out", tmp_path / "ro" / "run"], capsys)
    assert rc == 2
    one_error(msg, str(tmp_path / "ro" / "run"), os.strerror(err))
    assert not (tmp_path / "ro").exists()
    rc, _, msg = cli(["data", "export", "tiny", "--out", tmp_path / "ro" / "exp"], capsys)
    assert rc == 2
    one_error(msg, str(tmp_path / "ro" / "exp"))
    assert not (tmp_path / "ro").exists()


def test_simulated_unwritable_run_folder_on_resume(tmp_path, monkeypatch, capsys, reference):
    out = tmp_path / "run"
    assert cli([*TRAIN, "--out", out], capsys)[0] == 0
    (out / "metrics.json").unlink()
    before = (out / CKPT).read_bytes()
    with monkeypatch.context() as mp:
        _fail_under(mp, out, errno.EACCES)
        rc, _, err = cli([*TRAIN, "--out", out, "--resume"], capsys)
    assert rc == 2
    one_error(err, str(out), "Permission denied")
    assert (out / CKPT).read_bytes() == before
    assert cli([*TRAIN, "--out", out, "--resume"], capsys)[0] == 0
    assert metrics(out) == reference


def _enospc_torch_save(monkeypatch, name: str, nth: int) -> None:
    """The ``nth`` torch.save to a temp file of ``name`` writes half, then the disk is full."""
    real = torch.save
    calls = {"n": 0}

    def fake(obj, f, *a, **kw):
        if isinstance(f, (str, os.PathLike)) and Path(f).name.startswith(f".{name}."):
            calls["n"] += 1
            if calls["n"] == nth:
                real(obj, f, *a, **kw)
                os.truncate(f, os.path.getsize(f) // 2)
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(f))
        return real(obj, f, *a, **kw)

    monkeypatch.setattr(torch, "save", fake)


def _enospc_text(monkeypatch, name: str, nth: int) -> None:
    """The ``nth`` text write to a temp file of ``name`` writes a bit, then the disk is full."""
    real = Path.write_text
    calls = {"n": 0}

    def fake(self, data, *a, **kw):
        if self.name.startswith(f".{name}."):
            calls["n"] += 1
            if calls["n"] == nth:
                real(self, data[: len(data) // 2], *a, **kw)
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))
        return real(self, data, *a, **kw)

    monkeypatch.setattr(Path, "write_text", fake)


@pytest.mark.parametrize("target,nth", [("checkpoint.pt", 2), ("best.pt", 2), ("history.csv", 2),
                                        ("metrics.json", 1)])
def test_disk_full_keeps_the_previous_checkpoint(target, nth, tmp_path, monkeypatch, capsys,
                                                 reference):
    out = tmp_path / "run"
    with monkeypatch.context() as mp:
        if target.endswith(".pt"):
            _enospc_torch_save(mp, target, nth)
        else:
            _enospc_text(mp, target, nth)
        rc, _, err = cli([*TRAIN, "--out", out], capsys)
    assert rc == 2
    one_error(err, str(out / target), "No space left on device")
    assert temp_files(out) == []
    assert not (out / "metrics.json").exists()
    st = load_checkpoint_file(out / CKPT)  # the previous checkpoint, intact
    # saves per evaluation: best.pt (if improved), checkpoint.pt, history.csv; metrics.json at the end
    expected = {"checkpoint.pt": 1, "history.csv": 2, "metrics.json": 3}.get(target)
    if expected is not None:
        assert st["epoch"] == expected
    else:  # the second improvement's best.pt failed; the first one is still there
        assert load_checkpoint_file(out / "best.pt")["epoch"] <= st["epoch"] < 3
    # room again: resuming finishes the run as if nothing had happened
    rc, _, err = cli([*TRAIN, "--out", out, "--resume"], capsys)
    assert rc == 0, err
    assert metrics(out) == reference


def test_disk_full_during_the_first_checkpoint_leaves_nothing(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    with monkeypatch.context() as mp:
        _enospc_torch_save(mp, "checkpoint.pt", 1)
        rc, _, err = cli([*TRAIN, "--out", out], capsys)
    assert rc == 2
    one_error(err, "No space left on device")
    assert not out.exists()


# -- the atomic writers themselves -------------------------------------------------------------


@pytest.mark.parametrize("exc", [OSError(errno.ENOSPC, "No space left on device"),
                                 KeyboardInterrupt(), ValueError("bug")])
def test_atomic_path_keeps_the_old_file(exc, tmp_path):
    p = tmp_path / "f.json"
    write_json(p, {"v": 1})
    with pytest.raises((FreqdError, type(exc))) as info, atomic_path(p) as tmp:
        tmp.write_text('{"v": 2, "trunc')
        raise exc
    if isinstance(exc, OSError):
        assert info.type is FreqdError and "No space left" in str(info.value)
    assert json.loads(p.read_text()) == {"v": 1}
    assert os.listdir(tmp_path) == ["f.json"]


def test_atomic_writes_replace_whole_files(tmp_path):
    write_text(tmp_path / "a.txt", "x" * 10_000)
    write_text(tmp_path / "a.txt", "y")
    assert (tmp_path / "a.txt").read_text() == "y"
    torch_save({"model": {"w": torch.ones(3)}}, tmp_path / "c.pt")
    assert torch.equal(load_checkpoint_file(tmp_path / "c.pt")["model"]["w"], torch.ones(3))
    assert sorted(os.listdir(tmp_path)) == ["a.txt", "c.pt"]


def test_data_cache_write_failure_is_not_fatal(tmp_path, monkeypatch, shared_data):
    import numpy as np

    from freqd.data.load import load_dataset

    def full(*a, **kw):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(np, "savez", full)
    ds = load_dataset(shared_data / "tiny")  # the cache could not be written: still loads
    assert ds.train.nnz > 0
    cache = tmp_path / "cache"
    assert not cache.exists() or temp_files(cache) == []
