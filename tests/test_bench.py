"""`freqd bench` on tiny: 2 methods x 2 seeds, interrupted once (kill -9) and resumed."""
import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest


def _bench(out: Path, env: dict) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "freqd", "bench", "tiny", "--methods", "fd,freqd", "--seeds", "2",
           "--epochs", "2", "--out", str(out)]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)


@pytest.mark.slow
def test_bench_interrupted_then_resumed(tmp_path, shared_data):
    env = dict(os.environ, FREQD_DATA_DIR=str(shared_data), FREQD_CACHE_DIR=str(tmp_path / "cache"),
               FREQD_NO_PROGRESS="1", OMP_NUM_THREADS="1")
    out = tmp_path / "bench"
    p = _bench(out, env)
    deadline = time.time() + 300
    first = None
    while time.time() < deadline and p.poll() is None:  # wait until a student has finished
        done = sorted((out / "runs").glob("*-s0-*/metrics.json")) if (out / "runs").exists() else []
        done = [d for d in done if "teacher" not in d.parent.name]
        if done:
            first = done[0]
            break
        time.sleep(0.2)
    assert first is not None, "no run finished before the deadline"
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    assert not (out / "table.md").exists(), "the bench should have been interrupted before its report"
    stamp = first.stat().st_mtime_ns
    p = _bench(out, env)
    log = p.communicate(timeout=600)[0].decode()
    assert p.returncode == 0, log
    assert first.stat().st_mtime_ns == stamp, "a finished run was redone"
    rows = list(csv.DictReader((out / "results.csv").open()))
    labels = sorted((r["label"], r["seed"]) for r in rows)
    assert labels == sorted([("teacher", "0"), ("scratch", "0"), ("scratch", "1"), ("fd", "0"), ("fd", "1"),
                             ("freqd", "0"), ("freqd", "1")])
    table = (out / "table.md").read_text().splitlines()
    header = next(ln for ln in table if ln.startswith("| group"))
    assert header.split("|")[1:-1] == [" group ", " method ", " n ", " recall@10 ", " ndcg@10 ", " recall@20 ", " ndcg@20 "]
    body = {ln.split("|")[2].strip(): ln.split("|")[3].strip() for ln in table if ln.startswith("| ") and "---" not in ln and "group" not in ln}
    assert body["teacher"] == "1" and body["scratch"] == "2" and body["fd"] == "2" and body["freqd"] == "2"
    assert any("improvement of freqd over the best baseline" in ln for ln in table)
    budget = next(ln for ln in table if ln.startswith("Epochs run (best epoch)"))
    assert "; fd 2 (" in budget and "; freqd 2 (" in budget and budget.startswith("Epochs run (best epoch), over seeds: teacher ")
    for f in ("efficiency.md", "bars.png", "curves.png"):
        assert (out / f).is_file()


def test_bench_reports_what_finished_when_a_run_fails(tmp_path, shared_data, monkeypatch):
    """One failing run neither stops the other runs nor the report; the bench then exits
    with an error that names the failed run."""
    from freqd import api  # noqa: F401  (package import before patching the module)
    from freqd.errors import FreqdError
    import importlib

    bench_mod = importlib.import_module("freqd.experiments.bench")
    monkeypatch.setenv("FREQD_DATA_DIR", str(shared_data))
    monkeypatch.setenv("FREQD_CACHE_DIR", str(tmp_path / "cache"))
    real = bench_mod._run_inprocess

    def flaky(spec):
        if spec.label == "fd":
            raise FreqdError("simulated failure")
        return real(spec)

    monkeypatch.setattr(bench_mod, "_run_inprocess", flaky)
    out = tmp_path / "bench"
    with pytest.raises(FreqdError, match=r"fd/s0 \(simulated failure\)"):
        bench_mod.bench("tiny", methods=["fd", "freqd"], seeds=1, out=out, jobs=1,
                        overrides={"train": {"epochs": 1, "progress": False}})
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert sorted(r["label"] for r in rows) == ["freqd", "scratch", "teacher"]
    assert (out / "table.md").is_file()


def test_two_benches_share_a_grid(tmp_path, shared_data, monkeypatch, capsys):
    """A run that another process is training (its lock is held) is left to that process:
    not run twice, not reported as failed; the bench says so and reports what finished.
    Once the other process is done, the next call has nothing left to run."""
    import fcntl
    import logging

    from freqd.experiments import bench as bench_mod
    from freqd.runs import held_elsewhere

    monkeypatch.setenv("FREQD_DATA_DIR", str(shared_data))
    monkeypatch.setenv("FREQD_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "bench"
    over = {"train": {"epochs": 1, "progress": False}}
    specs = bench_mod.plan_grid("tiny", "mf", ["fd", "freqd"], 1, out, overrides=over)
    fd = next(s for s in specs if s.label == "fd")
    fd.out.mkdir(parents=True)
    other = open(fd.out / ".lock", "a+")  # another process's lock (flock is per open file)
    fcntl.flock(other.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    try:
        assert held_elsewhere(fd.out)
        logging.getLogger("freqd").setLevel(logging.INFO)
        bench_mod.bench("tiny", methods=["fd", "freqd"], seeds=1, out=out, jobs=1, overrides=over)
        err = capsys.readouterr().err
        assert "still running in another process: fd/s0" in err, err
        assert not (fd.out / "metrics.json").exists()
        rows = list(csv.DictReader((out / "results.csv").open()))
        assert sorted(r["label"] for r in rows) == ["freqd", "scratch", "teacher"]
    finally:
        fcntl.flock(other.fileno(), fcntl.LOCK_UN)
        other.close()
    assert not held_elsewhere(fd.out)
    bench_mod.bench("tiny", methods=["fd", "freqd"], seeds=1, out=out, jobs=1, overrides=over)
    assert (fd.out / "metrics.json").is_file()
    assert "(grid complete)" in capsys.readouterr().err


def test_bench_waits_for_a_teacher_trained_elsewhere(tmp_path, shared_data, monkeypatch, caplog):
    import fcntl
    import logging
    import threading

    from freqd.experiments import bench as bench_mod

    monkeypatch.setenv("FREQD_DATA_DIR", str(shared_data))
    monkeypatch.setenv("FREQD_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "bench"
    over = {"train": {"epochs": 1, "progress": False}}
    specs = bench_mod.plan_grid("tiny", "mf", ["fd"], 1, out, overrides=over)
    teacher = next(s for s in specs if s.label == "teacher")
    teacher.out.mkdir(parents=True)
    other = open(teacher.out / ".lock", "a+")
    fcntl.flock(other.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    t = threading.Timer(1.0, other.close)  # the other process goes away (its lock with it)
    t.start()
    monkeypatch.setattr(bench_mod, "_wait_for_teacher",
                        lambda ts, poll=5.0, real=bench_mod._wait_for_teacher: real(ts, poll=0.1))
    with caplog.at_level(logging.INFO, logger="freqd"):
        bench_mod.run_grid(specs, jobs=1)
    t.join()
    assert any("waiting for the teacher" in r.getMessage() for r in caplog.records)
    assert all(s.done for s in specs)


def test_paper_table_rebuilds_from_the_small_files(tmp_path, shared_data, monkeypatch):
    """--report-only --eval-protocol keeps each run's re-evaluation as metrics_<protocol>.json,
    equal to a direct evaluation, reused once the checkpoints are gone (the committed
    evidence), refused with a clear error once it no longer matches the run."""
    import json

    from freqd.api import Run
    from freqd.errors import FreqdError
    from freqd.experiments import bench as bench_mod
    from freqd.experiments.report import write_report
    from freqd.train.trainer import BEST

    monkeypatch.setenv("FREQD_DATA_DIR", str(shared_data))
    monkeypatch.setenv("FREQD_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "bench"
    over = {"train": {"epochs": 2, "progress": False}}
    bench_mod.bench("tiny", methods=["fd"], seeds=1, out=out, jobs=1, overrides=over)
    specs = bench_mod.plan_grid("tiny", "mf", ["fd"], 1, out, overrides=over)
    first = write_report(out, specs, eval_protocol="paper")
    fd = next(s for s in specs if s.label == "fd")
    cached = json.loads((fd.out / "metrics_paper.json").read_text())
    direct = Run(fd.out).evaluate("test", protocol="paper")
    assert cached["protocol"] == "paper" and cached["selected_under"] == "standard"
    assert cached["test"]["ndcg@20"] == pytest.approx(direct["ndcg@20"], abs=0)
    assert first["rows"][2]["test_recall@10"] == pytest.approx(direct["recall@10"], abs=0)
    for s in specs:
        (s.out / BEST).unlink()
    again = write_report(out, specs, eval_protocol="paper")
    assert again["table"] == first["table"]
    m = json.loads((fd.out / "metrics.json").read_text())
    m["epochs_run"] += 1  # the run was extended: its cached paper metrics are stale
    (fd.out / "metrics.json").write_text(json.dumps(m))
    with pytest.raises(FreqdError, match=r"cannot re-evaluate .*fd-mf-s0.* protocol 'paper'.*checkpoint not found"):
        write_report(out, specs, eval_protocol="paper")
    # --skip-missing: the stale run is left out and named under the table; the others stay
    part = write_report(out, specs, eval_protocol="paper", skip_missing=True)
    assert [r["label"] for r in part["rows"]] == [r["label"] for r in first["rows"] if r["label"] != "fd"]
    assert "| fd |" not in part["table"]
    assert f"Left out (neither a checkpoint nor an up-to-date metrics_paper.json): fd/s0 ({fd.out.name})" in part["table"]
    assert "Left out" in (out / "table_paper.md").read_text()
    for s in specs:
        (s.out / "metrics_paper.json").unlink()
    with pytest.raises(FreqdError, match=r"no run can be re-evaluated under protocol 'paper'.*left out 3 runs"):
        write_report(out, specs, eval_protocol="paper", skip_missing=True)


def test_seed_lists_and_runs_that_cannot_be_continued(tmp_path, shared_data, monkeypatch, caplog):
    """--seeds takes N, a list or a range; a larger --epochs continues the runs that have a
    checkpoint and keeps (with a warning, not from epoch 1) those whose checkpoint is gone."""
    import json
    import logging

    from freqd.errors import ConfigError
    from freqd.experiments import bench as bench_mod
    from freqd.train.trainer import CKPT

    assert bench_mod.seed_range(3) == [0, 1, 2] and bench_mod.seed_range("3") == [0, 1, 2]
    assert bench_mod.seed_range("3,4") == [3, 4] and bench_mod.seed_range("1-3,7") == [1, 2, 3, 7]
    for bad in ("0", "a", "3,3", "-1", "2-x", []):
        with pytest.raises(ConfigError, match="--seeds"):
            bench_mod.seed_range(bad)
    monkeypatch.setenv("FREQD_DATA_DIR", str(shared_data))
    monkeypatch.setenv("FREQD_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "bench"
    two = {"train": {"epochs": 2, "progress": False}}
    bench_mod.bench("tiny", methods=["fd"], seeds="1-2", out=out, jobs=1, overrides=two, report=False)
    specs = bench_mod.plan_grid("tiny", "mf", ["fd"], "1-2", out, overrides=two)
    assert [(s.label, s.seed) for s in specs] == [("teacher", 0), ("scratch", 1), ("fd", 1), ("scratch", 2), ("fd", 2)]
    assert all(s.done for s in specs)
    fd1, fd2 = (s for s in specs if s.label == "fd")
    (fd1.out / CKPT).unlink()
    kept = (fd1.out / "metrics.json").read_bytes()
    three = {"train": {"epochs": 3, "progress": False}}
    with caplog.at_level(logging.WARNING, logger="freqd"):
        bench_mod.bench("tiny", methods=["fd"], seeds=[1, 2], out=out, jobs=1, overrides=three)
    assert (fd1.out / "metrics.json").read_bytes() == kept
    assert json.loads((fd2.out / "metrics.json").read_text())["epochs_run"] == 3
    assert any("fd/s1 finished under a smaller budget and has no checkpoint" in r.getMessage() for r in caplog.records)
    assert "fd 2–3 (" in (out / "table.md").read_text()  # the report shows the mixed budgets


def test_mean_curves_average_seeds_over_their_shared_epochs(tmp_path):
    """curves.png plots, per method, the mean over seeds at the epochs every seed evaluated."""
    from freqd.experiments.bench import RunSpec
    from freqd.experiments.report import mean_curves

    def run(name, label, seed, rows):
        d = tmp_path / name
        d.mkdir()
        lines = ["epoch,train_seconds,valid_ndcg@10"] + [f"{e},1.0,{v}" for e, v in rows]
        (d / "history.csv").write_text("\n".join(lines) + "\n")
        return RunSpec(label, "distill", seed, {}, d)

    specs = [run("a0", "a", 0, [(1, 0.1), (2, 0.2), (3, 0.3)]),
             run("a1", "a", 1, [(1, 0.3), (2, 0.4)]),          # stopped after epoch 2
             run("b0", "b", 0, [(1, ""), (2, 0.5)]),           # epoch 1 not evaluated
             RunSpec("c", "distill", 0, {}, tmp_path / "none")]  # no history yet
    c = mean_curves(specs)
    assert set(c) == {"a", "b"}
    xs, ys, n = c["a"]
    assert xs == [1, 2] and ys == pytest.approx([0.2, 0.3]) and n == 2
    assert c["b"][:2] == ([2], [0.5]) and c["b"][2] == 1


def test_user_tests_of_a_bench_match_freqd_compare(tmp_path, shared_data, monkeypatch, capsys):
    """--report-only --user-tests METHOD: per-user tests of METHOD against every student of
    the grid over their shared seeds, the same table `freqd compare` prints for those runs;
    refused without --report-only and for a label the grid lacks."""
    from freqd.cli import main
    from freqd.experiments import bench as bench_mod

    monkeypatch.setenv("FREQD_DATA_DIR", str(shared_data))
    monkeypatch.setenv("FREQD_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("FREQD_NO_PROGRESS", "1")
    out = tmp_path / "bench"
    over = {"train": {"epochs": 1, "progress": False}}
    bench_mod.bench("tiny", methods=["fd", "kd"], seeds=2, out=out, jobs=1, overrides=over)
    args = ["bench", "tiny", "--methods", "fd,kd", "--seeds", "2", "--epochs", "1", "--out", str(out)]
    assert main(args + ["--report-only", "--user-tests", "fd"]) == 0
    text = (out / "user_tests.md").read_text()
    assert "### fd vs scratch (seeds 0, 1)" in text and "### fd vs kd (seeds 0, 1)" in text
    assert "fd vs teacher" not in text
    capsys.readouterr()
    specs = {(s.label, s.seed): s.out for s in bench_mod.plan_grid("tiny", "mf", ["fd", "kd"], 2, out, overrides=over)}
    assert main(["compare", "--a", str(specs[("fd", 0)]), str(specs[("fd", 1)]), "--b", str(specs[("kd", 0)]),
                 str(specs[("kd", 1)]), "--labels", "fd,kd"]) == 0
    table = capsys.readouterr().out.split("\n\n", 1)[1]
    assert table.strip() in text  # the same numbers either way
    assert main(args + ["--user-tests", "fd"]) != 0
    assert "only with --report-only" in capsys.readouterr().err
    assert main(args + ["--report-only", "--user-tests", "rrd"]) != 0
    assert "no finished runs labelled 'rrd'" in capsys.readouterr().err
