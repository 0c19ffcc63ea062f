"""``freqd spectrum`` end to end on tiny data: FreqD-family and FitNet students, the
Parseval check it prints, the files it writes, equal weights for FitNet and fd, and a clear
refusal for a method without a projector into the teacher's space."""
from __future__ import annotations

import csv

import pytest

from freqd import api
from freqd.cli import main
from freqd.errors import ConfigError

COMMON = {"train": {"threads": 1, "progress": False}}


@pytest.fixture(scope="module")
def runs(shared_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("spectrum")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FREQD_DATA_DIR", str(shared_data))
        mp.setenv("FREQD_CACHE_DIR", str(root / "cache"))
        mp.setenv("FREQD_NO_PROGRESS", "1")
        api.train("tiny", backbone="mf", dim=16, out=root / "teacher", epochs=1, overrides=COMMON)
        for m in ("fd", "freqd", "fitnet", "kd"):
            api.distill("tiny", teacher=root / "teacher", method=m, dim=4, out=root / m, epochs=1,
                        overrides=COMMON)
        yield root, mp


def test_spectrum_of_freqd_fd_and_fitnet_students(runs, capsys):
    root, _ = runs
    out = root / "spec"
    rc = main(["spectrum", "--teacher", str(root / "teacher"), "--student", str(root / "fd"),
               "--student", str(root / "freqd"), "--student", str(root / "fitnet"), "--side", "user",
               "--bands", "5", "--out", str(out)])
    assert rc == 0
    text = capsys.readouterr()
    said = text.out + text.err
    for name in ("fd", "freqd", "fitnet"):  # Parseval: the per-frequency losses add up to ||P(S) - T||^2
        line = next(ln for ln in said.splitlines() if ln.startswith(f"{name} ({name}): sum of per-frequency"))
        rel = float(line.split("relative difference ")[1].split(")")[0])
        assert rel < 1e-9, line
    assert (out / "spectrum_user.png").stat().st_size > 0
    rows = list(csv.DictReader((out / "spectrum_user.csv").open()))
    assert len(rows) == 5
    for r in rows:  # equal weights for fd (alpha 0) and FitNet; FreqD's low-pass h² <= 1
        assert float(r["h2_mean_fd"]) == pytest.approx(1.0) and float(r["h2_mean_fitnet"]) == pytest.approx(1.0)
        assert float(r["h2_mean_freqd"]) <= 1.0 + 1e-9
    assert float(rows[0]["h2_mean_freqd"]) > float(rows[-1]["h2_mean_freqd"])  # low-pass
    summary = list(csv.DictReader((out / "summary_user.csv").open()))
    assert [s["method"] for s in summary] == ["fd", "freqd", "fitnet"]


def test_spectrum_refuses_a_method_without_a_projector(runs):
    root, _ = runs
    with pytest.raises(ConfigError, match="kd.*projector"):
        from freqd.experiments.spectrum import load_distiller

        load_distiller(root / "kd", api.Run(root / "teacher"), api.Run(root / "teacher").dataset)
    assert main(["spectrum", "--teacher", str(root / "teacher"), "--student", str(root / "kd"),
                 "--out", str(root / "nope")]) == 2
    assert not (root / "nope").exists()
