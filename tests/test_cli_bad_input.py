"""Bad input through the command line (issue 7): every malformed data file, option, config
file or checkpoint gets one ``freqd: error:`` line naming the file and line or the option,
exit status 2, no traceback, and leaves no partial output behind.

Every case calls :func:`freqd.cli.main` in-process (the same code path as the command);
a representative subset of the data corpus and the checkpoint cases also run as real
``python -m freqd`` subprocesses (a few at a time), for the exit status and stderr as a
user sees them.
"""
from __future__ import annotations

import json
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from corpus import (
    CASES,
    HDR,
    OK_VARIANTS,
    SPLIT_VARIANTS,
    cli_env,
    error_lines,
    run_cli,
    write_files,
)

from freqd import api
from freqd.cli import main
from freqd.data.load import export_split, load_dataset
from freqd.runs import run_lock

# -- helpers ------------------------------------------------------------------------------------


@pytest.fixture(autouse=True, scope="module")
def _keep_thread_count():
    """In-process runs here use train.threads=1; give the other test modules their threads back."""
    import torch

    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def assert_refused(rc: int, stdout: str, stderr: str, expect: list) -> str:
    """Exit status 2, no traceback, exactly one error line holding every ``expect``."""
    assert "Traceback" not in stderr, stderr
    errs = error_lines(stderr)
    assert rc == 2, f"exit status {rc}; stderr:\n{stderr}"
    assert len(errs) == 1, stderr
    for s in expect:
        assert s in errs[0], f"{s!r} not in {errs[0]!r}"
    assert stdout == "", stdout
    return errs[0]


def cli_inproc(argv: list, capsys) -> tuple:
    """(status, stdout, stderr) of ``freqd ARGV`` run in this process."""
    capsys.readouterr()
    try:
        rc = main([str(a) for a in argv])
    except SystemExit as e:  # argparse usage errors
        rc = e.code
    out, err = capsys.readouterr()
    return rc, out, err


def snapshot(folder: Path) -> dict:
    """Every file's bytes, except train.log (a refused attempt may log itself)."""
    return {p.relative_to(folder).as_posix(): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != "train.log"}


# -- the data corpus -------------------------------------------------------------------------------

#: corpus cases also run as real subprocesses (one or two per format family)
SUBPROCESS_CASES = ["lgn-text", "lgn-binary", "gz-truncated", "usersdat-count", "csv-nan-rating",
                    "split-huge-id", "kcore-empties", "export-binary", "train-bad-data"]


def _check_corpus_case(case, d: Path, rc: int, out: str, err: str) -> None:
    assert_refused(rc, out, err, case.expect)
    for rel in case.absent:
        assert not (d / rel).exists(), f"partial output {rel} left behind"
    leftovers = [p.name for p in d.rglob("*") if ".tmp" in p.name]
    assert not leftovers, leftovers


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_corpus_case_is_refused(case, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FREQD_CACHE_DIR", str(tmp_path / ".cache"))
    monkeypatch.delenv("FREQD_DEBUG", raising=False)
    d = tmp_path / "case"
    d.mkdir()
    write_files(d, case.files)
    monkeypatch.chdir(d)
    rc, out, err = cli_inproc(case.argv, capsys)
    _check_corpus_case(case, d, rc, out, err)


@pytest.fixture(scope="module")
def corpus_results(tmp_path_factory, shared_data):
    root = tmp_path_factory.mktemp("corpus")
    env = cli_env(shared_data, root / "cache")

    def one(case):
        d = root / case.id
        d.mkdir()
        write_files(d, case.files)
        return case.id, (d, run_cli(case.argv, d, env))

    with ThreadPoolExecutor(3) as ex:
        return dict(ex.map(one, [c for c in CASES if c.id in SUBPROCESS_CASES]))


@pytest.mark.parametrize("case", [c for c in CASES if c.id in SUBPROCESS_CASES], ids=lambda c: c.id)
def test_corpus_case_is_refused_by_the_command(case, corpus_results):
    d, r = corpus_results[case.id]
    _check_corpus_case(case, d, r.returncode, r.stdout, r.stderr)


def test_bom_crlf_loads_through_the_cli(tmp_path, shared_data):
    env = cli_env(shared_data, tmp_path / "cache")
    out = {}
    for name in ("plain", "bom-crlf"):
        d = tmp_path / name
        d.mkdir()
        write_files(d, OK_VARIANTS[name])
        r = run_cli(["data", "info", "d.txt", "--json"], d, env)
        assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
        out[name] = json.loads(r.stdout)
    assert out["plain"] == out["bom-crlf"]
    assert out["plain"]["interactions"] == 8


@pytest.mark.parametrize("name", sorted(OK_VARIANTS))
def test_encodings_load_identically(name, tmp_path, monkeypatch):
    monkeypatch.setenv("FREQD_CACHE_DIR", str(tmp_path / "cache"))
    ref_dir, var_dir = tmp_path / "ref", tmp_path / "var"
    write_files(ref_dir, OK_VARIANTS["plain"])
    write_files(var_dir, OK_VARIANTS[name])
    ref = load_dataset(ref_dir / "d.txt", cache=False)
    (f,) = list(var_dir.iterdir())
    got = load_dataset(f, cache=False)
    assert got.fingerprint() == ref.fingerprint()


@pytest.mark.parametrize("name", sorted(SPLIT_VARIANTS))
def test_split_folder_encodings_load_identically(name, tmp_path):
    write_files(tmp_path / "ref", SPLIT_VARIANTS["plain"])
    write_files(tmp_path / "var", SPLIT_VARIANTS[name])
    ref = load_dataset(tmp_path / "ref" / "sp", cache=False)
    got = load_dataset(tmp_path / "var" / "sp", cache=False)
    assert (got.n_users, got.n_items) == (3, 4)
    assert got.fingerprint() == ref.fingerprint()


# -- runs to break: a tiny run, and a run on other data of the same shape ----------------------


@pytest.fixture(scope="module")
def runs(tmp_path_factory, shared_data):
    """{"tiny": run dir, "other": run dir on tiny with one training pair moved to test
    (same users and items, other data), "other_data": that data folder}."""
    root = tmp_path_factory.mktemp("runs")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FREQD_DATA_DIR", str(shared_data))
        mp.setenv("FREQD_CACHE_DIR", str(root / "cache"))
        ds = load_dataset("tiny")
        other = root / "other_data"
        export_split(ds, other)
        lines = (other / "train.txt").read_text().splitlines(keepends=True)
        (other / "train.txt").write_text("".join(lines[:1] + lines[2:]))
        with open(other / "test.txt", "a") as fh:
            fh.write(lines[1])
        opts = {"train": {"progress": False, "threads": 1}}
        api.train("tiny", backbone="mf", dim=8, out=root / "tiny", epochs=1, overrides=opts)
        api.train(str(other), backbone="mf", dim=8, out=root / "other", epochs=1, overrides=opts)
    return {"tiny": root / "tiny", "other": root / "other", "other_data": other}


@pytest.fixture
def env(shared_data, tmp_path, monkeypatch):
    monkeypatch.setenv("FREQD_DATA_DIR", str(shared_data))
    monkeypatch.setenv("FREQD_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("FREQD_NO_PROGRESS", "1")
    monkeypatch.delenv("FREQD_DEBUG", raising=False)
    return cli_env(shared_data, tmp_path / "cache")


def copy_run(runs, name: str, dest: Path, finished: bool = True) -> Path:
    d = dest / f"{name}_copy"
    shutil.copytree(runs[name], d)
    if not finished:
        (d / "metrics.json").unlink()
    return d


def truncate(path: Path) -> None:
    os.truncate(path, path.stat().st_size // 2)


@pytest.fixture(scope="module")
def checkpoint_results(runs, tmp_path_factory, shared_data):
    """The checkpoint/config cases that go through a real subprocess (they import torch)."""
    root = tmp_path_factory.mktemp("ckpt")
    env = cli_env(shared_data, root / "cache")
    cases = {}

    d = root / "eval_truncated"
    d.mkdir()
    run = copy_run(runs, "tiny", d)
    truncate(run / "best.pt")
    cases["eval-truncated-best"] = (d, ["eval", run], [f"{run / 'best.pt'}", "not a valid checkpoint"])

    d = root / "resume_truncated"
    d.mkdir()
    run = copy_run(runs, "tiny", d, finished=False)
    truncate(run / "checkpoint.pt")
    argv = ["train", "tiny", "--dim", "8", "--epochs", "1", "--out", run, "--resume", "--no-progress",
            "train.threads=1"]
    cases["resume-truncated-checkpoint"] = (d, argv, [f"{run / 'checkpoint.pt'}", "not a valid checkpoint"])

    d = root / "teacher_other"
    d.mkdir()
    argv = ["distill", "tiny", "--teacher", runs["other"], "--method", "kd", "--dim", "4",
            "--epochs", "1", "--out", "student"]
    cases["distill-teacher-other-data"] = (d, argv, ["--teacher", "other data"])

    d = root / "locked"
    (d / "run").mkdir(parents=True)
    argv = ["train", "tiny", "--dim", "4", "--epochs", "1", "--out", "run"]
    cases["run-dir-locked"] = (d, argv, ["run", "another freqd process"])

    before = {k: snapshot(v[0]) for k, v in cases.items()}
    with run_lock(root / "locked" / "run"), ThreadPoolExecutor(3) as ex:
        futs = {k: ex.submit(run_cli, argv, d, env) for k, (d, argv, _) in cases.items()}
        results = {k: f.result() for k, f in futs.items()}
    return {k: (cases[k][0], cases[k][2], results[k], before[k]) for k in cases}


@pytest.mark.parametrize("case", ["eval-truncated-best", "resume-truncated-checkpoint",
                                  "distill-teacher-other-data", "run-dir-locked"])
def test_checkpoint_case_is_refused_cleanly(case, checkpoint_results):
    d, expect, r, before = checkpoint_results[case]
    assert_refused(r.returncode, r.stdout, r.stderr, expect)
    after = snapshot(d)
    if case == "run-dir-locked":  # the refused run wrote nothing; .lock is the holder's
        after.pop("run/.lock", None)
        before = {k: v for k, v in before.items() if k != "run/.lock"}
    assert after == before, "the refused command changed files"


# -- options and config files, in-process ------------------------------------------------------

TRAIN = ["train", "tiny", "--epochs", "1", "--out", "run"]

OPTION_CASES = {
    "unknown-top-level": (TRAIN + ["--dim", "4", "foo=1"], ["'foo'"]),
    "unknown-train-key": (TRAIN + ["--dim", "4", "train.lrr=0.1"], ["'train.lrr'", "train.lr"]),
    "text-for-number": (TRAIN + ["--dim", "4", "train.lr=abc"], ["'train.lr'", "'abc'"]),
    "negative-lr": (TRAIN + ["--dim", "4", "train.lr=-1"], ["'train.lr'"]),
    "nan-lr": (TRAIN + ["--dim", "4", "train.lr=nan"], ["'train.lr'", "NaN"]),
    "zero-epochs": (["train", "tiny", "--dim", "4", "--out", "run", "train.epochs=0"], ["'train.epochs'"]),
    "float-batch": (TRAIN + ["--dim", "4", "train.batch_size=1.5"], ["'train.batch_size'"]),
    "monitor-not-in-ks": (TRAIN + ["--dim", "4", "train.monitor=ndcg@7"], ["'train.monitor'"]),
    "bad-ks": (TRAIN + ["--dim", "4", "train.ks=a,b"], ["'train.ks'"]),
    "bad-optimizer": (TRAIN + ["--dim", "4", "train.optimizer=sgd"], ["'train.optimizer'", "sgd"]),
    "zero-patience": (TRAIN + ["--dim", "4", "--patience", "0"], ["'train.patience'"]),
    "negative-dim": (TRAIN + ["--dim", "-3"], ["dim"]),
    "zero-dim-override": (TRAIN + ["model.dim=0"], ["dim"]),
    "unknown-model-key": (TRAIN + ["--dim", "4", "model.layers=2"], ["layers"]),
    "bad-data-option": (TRAIN + ["--dim", "4", "data.split_ratios=0.5,0.6,0.1"], ["split_ratios"]),
    "method-on-train": (TRAIN + ["--dim", "4", "method.alpha=0.3"], ["method"]),
    "bad-device": (TRAIN + ["--dim", "4", "--device", "tpu"], ["'train.device'", "tpu"]),
    "unknown-method": (["distill", "tiny", "--teacher", "{tiny}", "--method", "nope", "--dim", "4",
                        "--out", "run"], ["nope"]),
    "distill-bad-method-option": (["distill", "tiny", "--teacher", "{tiny}", "--method", "freqd",
                                   "--dim", "4", "--out", "run", "method.alpha=2"], ["'method.alpha'"]),
    "distill-unknown-method-key": (["distill", "tiny", "--teacher", "{tiny}", "--method", "kd",
                                    "--dim", "4", "--out", "run", "method.alpah=2"], ["method.alpah"]),
    "unknown-dataset": (["train", "no-such-data", "--dim", "4", "--out", "run"], ["no-such-data"]),
    "bench-bad-seeds": (["bench", "tiny", "--methods", "fd", "--out", "run", "--seeds", "3,x"],
                        ["'--seeds'", "3-4"]),
    "skip-missing-while-training": (["bench", "tiny", "--methods", "fd", "--out", "run", "--skip-missing"],
                                    ["'--skip-missing'", "--report-only --eval-protocol"]),
}

CONFIG_FILES = {
    "yaml-malformed": ("train:\n  lr: [0.1, 0.2\n", ["c.yaml", "line 3", "YAML"]),
    "yaml-unknown-key": ("train:\n  lrr: 0.1\n", ["'train.lrr'"]),
    "yaml-unknown-section": ("trian:\n  lr: 0.1\n", ["'trian'", "c.yaml"]),
    "yaml-not-a-mapping": ("- a\n- b\n", ["c.yaml", "mapping"]),
    "yaml-bad-value": ("train:\n  weight_decay: lots\n", ["'train.weight_decay'", "'lots'"]),
    "yaml-section-not-mapping": ("train: 5\n", ["train"]),
    "yaml-binary": ("\x00\x01\x02", ["c.yaml"]),
}


@pytest.mark.parametrize("case", sorted(OPTION_CASES))
def test_bad_option_is_refused(case, runs, env, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv, expect = OPTION_CASES[case]
    argv = [str(runs["tiny"]) if a == "{tiny}" else a for a in argv]
    rc, out, err = cli_inproc(argv, capsys)
    assert_refused(rc, out, err, expect)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("case", sorted(CONFIG_FILES))
def test_bad_config_file_is_refused(case, env, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    text, expect = CONFIG_FILES[case]
    (tmp_path / "c.yaml").write_text(text)
    rc, out, err = cli_inproc(TRAIN + ["--dim", "4", "--config", "c.yaml"], capsys)
    assert_refused(rc, out, err, expect)
    assert not (tmp_path / "run").exists()


def test_missing_config_file(env, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rc, out, err = cli_inproc(TRAIN + ["--dim", "4", "--config", "nope.yaml"], capsys)
    assert_refused(rc, out, err, ["nope.yaml"])
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("argv", [["train", "tiny", "--out", "run", "--protocol", "bogus"],
                                  ["train", "tiny", "--out", "run", "--epochs", "x"],
                                  ["train", "tiny", "--out", "run", "--bogus-flag"],
                                  ["eval"], ["recommend", "r", "--users", "1", "--all"]])
def test_usage_errors_exit_2(argv, env, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rc, _out, err = cli_inproc(argv, capsys)
    assert rc == 2 and "Traceback" not in err and "error:" in err
    assert not (tmp_path / "run").exists()


def test_cuda_requested_without_cuda(env, tmp_path, capsys, monkeypatch):
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    monkeypatch.chdir(tmp_path)
    rc, out, err = cli_inproc(TRAIN + ["--dim", "4", "--device", "cuda"], capsys)
    assert_refused(rc, out, err, ["train.device", "CUDA"])
    assert not (tmp_path / "run").exists()


# -- checkpoints, in-process -------------------------------------------------------------------


def _garbage(p: Path) -> None:
    p.write_bytes(bytes(range(256)) * 8)


def _empty(p: Path) -> None:
    p.write_bytes(b"")


def _json_instead(p: Path) -> None:
    p.write_text('{"model": 1}')


def _tensor_instead(p: Path) -> None:
    import torch

    torch.save(torch.zeros(3), p)


@pytest.mark.parametrize("damage", [truncate, _garbage, _empty, _json_instead, _tensor_instead,
                                    Path.unlink],
                         ids=["truncated", "garbage", "empty", "json", "tensor", "missing"])
@pytest.mark.parametrize("command", ["eval", "recommend", "export"])
def test_damaged_best_checkpoint(command, damage, runs, env, tmp_path, capsys):
    run = copy_run(runs, "tiny", tmp_path)
    damage(run / "best.pt")
    argv = {"eval": ["eval", run],
            "recommend": ["recommend", run, "--users", "0,1", "--out", tmp_path / "recs.tsv"],
            "export": ["export", run, "--out", tmp_path / "emb"]}[command]
    rc, out, err = cli_inproc(argv, capsys)
    assert_refused(rc, out, err, [str(run / "best.pt")])
    assert not (tmp_path / "recs.tsv").exists() and not (tmp_path / "emb").exists()


def test_eval_checkpoint_of_other_data(runs, env, tmp_path, capsys):
    run = copy_run(runs, "tiny", tmp_path)
    shutil.copy(runs["other"] / "best.pt", run / "best.pt")
    rc, out, err = cli_inproc(["eval", run], capsys)
    assert_refused(rc, out, err, [str(run / "best.pt"), "does not match"])


def test_resume_with_checkpoint_of_other_data(runs, env, tmp_path, capsys):
    run = copy_run(runs, "tiny", tmp_path, finished=False)
    shutil.copy(runs["other"] / "checkpoint.pt", run / "checkpoint.pt")
    before = snapshot(run)
    rc, out, err = cli_inproc(["train", "tiny", "--dim", "8", "--epochs", "1", "--out", run,
                               "--resume", "--no-progress", "train.threads=1"], capsys)
    assert_refused(rc, out, err, [str(run / "checkpoint.pt"), "different data"])
    assert snapshot(run) == before


def test_run_config_damaged(runs, env, tmp_path, capsys):
    run = copy_run(runs, "tiny", tmp_path)
    with open(run / "config.yaml", "a") as fh:
        fh.write("model: [\n")
    rc, out, err = cli_inproc(["eval", run], capsys)
    assert_refused(rc, out, err, [str(run / "config.yaml")])


@pytest.mark.parametrize("teacher", ["garbage", "not-a-run", "missing"])
def test_distill_with_bad_teacher_creates_nothing(teacher, runs, env, tmp_path, capsys):
    t = tmp_path / "teacher"
    if teacher == "garbage":
        t = copy_run(runs, "tiny", tmp_path)
        _garbage(t / "best.pt")
        expect = [str(t / "best.pt")]
    elif teacher == "not-a-run":
        t.mkdir()
        expect = [str(t), "config.yaml"]
    else:
        expect = [str(t)]
    rc, out, err = cli_inproc(["distill", "tiny", "--teacher", t, "--method", "kd", "--dim", "4",
                               "--epochs", "1", "--out", tmp_path / "student"], capsys)
    assert_refused(rc, out, err, expect)
    assert not (tmp_path / "student").exists()


@pytest.mark.parametrize("argv,expect", [
    (["--users", "0,99999"], ["--users", "99999"]),
    (["--users", "0,x"], ["--users"]),
    (["--users", "-1"], ["--users"]),
    (["--all", "-k", "0"], ["-k"]),
    (["--users", "0", "--raw-ids"], ["--raw-ids"]),
])
def test_recommend_bad_options(argv, expect, runs, env, tmp_path, capsys):
    out_file = tmp_path / "recs.tsv"
    rc, out, err = cli_inproc(["recommend", runs["tiny"], *argv, "--out", out_file], capsys)
    assert_refused(rc, out, err, expect)
    assert not out_file.exists()


def test_train_on_a_folder_with_other_files(env, tmp_path, capsys):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "notes.txt").write_text("mine")
    rc, out, err = cli_inproc(["train", "tiny", "--dim", "4", "--epochs", "1",
                               "--out", tmp_path / "run"], capsys)
    assert_refused(rc, out, err, [str(tmp_path / "run")])
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["notes.txt"]


def test_split_header_only_train_refused_for_training(env, tmp_path, capsys):
    write_files(tmp_path, {"sp/train.txt": HDR, "sp/valid.txt": HDR + b"0\t1\n",
                           "sp/test.txt": HDR + b"0\t2\n"})
    rc, out, err = cli_inproc(["train", tmp_path / "sp", "--dim", "4", "--epochs", "1",
                               "--out", tmp_path / "run"], capsys)
    assert_refused(rc, out, err, ["train.txt"])
    assert not (tmp_path / "run").exists()
