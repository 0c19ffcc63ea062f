"""`freqd demo`, the README's main job, on tiny with small budgets: it trains the teacher and
the three students (side by side in processes, its default on the CPU), prints the table
and what it shortened, writes the report, and a second call reuses every finished run."""
import csv
import os
import subprocess
import sys

import pytest


def _demo(out, env, *extra):
    cmd = [sys.executable, "-m", "freqd", "demo", "--dataset", "tiny", "--out", str(out),
           "--teacher-time", "60", "--student-time", "60", "--epochs", "2", *extra]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_demo_runs_reports_and_reuses_its_runs(tmp_path, shared_data):
    env = dict(os.environ, FREQD_DATA_DIR=str(shared_data), FREQD_CACHE_DIR=str(tmp_path / "cache"),
               FREQD_NO_PROGRESS="1")
    env.pop("OMP_NUM_THREADS", None)
    out = tmp_path / "demo"
    r = _demo(out, env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "shortened to fit about 15 minutes" in r.stderr
    assert "teacher training stops after 60 s, each student after 60 s, at most 2 epochs" in r.stderr
    # the students ran side by side: the progress line lists more than one run at a time
    assert any(line.count("/s0") >= 2 for line in r.stderr.splitlines() if line.startswith("[bench]")), r.stderr
    table = r.stdout
    for row in ("| teacher |", "| scratch |", "| fd |", "| freqd |", "improvement of freqd over the best baseline"):
        assert row in table, table
    assert "Shortened:" in table and "Report:" in table
    # one seed: the per-user paired tests of freqd against fd and the student from scratch
    for head in ("### freqd vs scratch (seeds 0)", "### freqd vs fd (seeds 0)", "| recall@20 |", "p (Wilcoxon)"):
        assert head in table, table
    assert "### freqd vs fd (seeds 0)" in (out / "user_tests.md").read_text()
    for f in ("table.md", "efficiency.md", "results.csv", "bars.png", "curves.png"):
        assert (out / f).stat().st_size > 0, f
    with open(out / "results.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert sorted(r["label"] for r in rows) == ["fd", "freqd", "scratch", "teacher"]
    assert all(int(r["epochs_run"]) == 2 for r in rows), rows
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("runs/*/metrics.json")}
    assert len(stamps) == 4
    r2 = _demo(out, env)  # everything finished: nothing is trained again
    assert r2.returncode == 0, r2.stdout + r2.stderr
    assert {p: p.stat().st_mtime_ns for p in out.glob("runs/*/metrics.json")} == stamps
    assert "| freqd |" in r2.stdout


def test_demo_offline_without_data_says_where_to_put_it(tmp_path):
    env = dict(os.environ, FREQD_DATA_DIR=str(tmp_path / "empty"), FREQD_CACHE_DIR=str(tmp_path / "cache"),
               FREQD_OFFLINE="1", HOME=str(tmp_path))
    (tmp_path / "empty").mkdir()
    r = subprocess.run([sys.executable, "-m", "freqd", "demo", "--out", str(tmp_path / "d")], env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "citeulike" in r.stderr.lower() and "users.dat" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "d").exists() or not any((tmp_path / "d").rglob("metrics.json"))
