"""Smoke runs of benchmark scripts on tiny data: they run and print what the docs quote."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bench_freqd_prints_ratios_and_neighbourhood_sizes(shared_data, tmp_path):
    env = dict(os.environ, FREQD_DATA_DIR=str(shared_data), FREQD_CACHE_DIR=str(tmp_path / "cache"))
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_freqd.py"), "--dataset", "tiny", "--teacher-dim", "16",
         "--steps", "1", "--threads", "1", "--filters", "linear", "--precision", "fp32,bf16"],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert out.returncode == 0, out.stderr
    assert re.search(r"speed-up x[\d.]+; freqd/fd step ratio [\d.]+", out.stdout)
    m = re.search(r"users (\d+) -> (\d+) \(\d+% of 241\); pos (\d+) -> (\d+) \(\d+% of 979\)", out.stdout)
    assert m, out.stdout
    users, users_nbr, pos, pos_nbr = map(int, m.groups())
    assert users <= users_nbr <= 241 and pos <= pos_nbr <= 979  # a neighbourhood holds its rows
    assert "| freqd linear, full-table reference |" in out.stdout
    m = re.search(r"freqd linear, batch-local: fp32 [\d.]+ s/step, bf16 [\d.]+ s/step: x[\d.]+; first-step loss "
                  r"([\d.e+-]+) vs ([\d.e+-]+) \(relative difference", out.stdout)
    assert m, out.stdout
    l32, l16 = map(float, m.groups())
    assert l32 > 0 and abs(l16 - l32) <= 2e-2 * l32  # same batch and masks: bf16 rounding only


def test_bench_freqd_breakdown_parts_checks_its_decomposition(shared_data, tmp_path):
    """``--parts`` re-runs FreqD's KD forward step by step; it first checks that this gives
    FreqD.loss's number under the same random state, then prints every part."""
    env = dict(os.environ, FREQD_DATA_DIR=str(shared_data), FREQD_CACHE_DIR=str(tmp_path / "cache"))
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_freqd_breakdown.py"), "--dataset", "tiny",
         "--teacher-dim", "16", "--steps", "1", "--parts"],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert out.returncode == 0, out.stderr
    m = re.search(r"check: decomposed KD loss ([\d.]+) = FreqD.loss ([\d.]+)", out.stdout)
    assert m and float(m.group(1)) > 0 and abs(float(m.group(1)) - float(m.group(2))) < 1e-3, out.stdout
    for part in ("edge dropout", "local plan", "hidden layer + masks", "filter hidden",
                 "output layer (batch rows)", "filter teacher", "KD forward", "backward (KD loss only)"):
        assert re.search(rf"\| {re.escape(part)} \| [\d.]+ \|", out.stdout), part
    m = re.search(r"user batch (\d+), user neighbourhood (\d+), item batch (\d+), item neighbourhood (\d+)", out.stdout)
    assert m, out.stdout
    ub, un, ib, inb = map(int, m.groups())
    assert 0 < ub <= un <= 241 and 0 < ib <= inb <= 979
    assert re.search(r"freqd / fd: forward [\d.]+x, backward [\d.]+x, both [\d.]+x", out.stdout)
