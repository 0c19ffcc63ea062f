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
def runs(tiny_env):
    root = tiny_env
    api.train("tiny", backbone="mf", dim=16, out=root / "teacher", epochs=1, overrides=COMMON)
    for m in ("fd", "freqd", "fitnet", "kd"):
        api.distill("tiny", teacher=root / "teacher", method=m, dim=4, out=root / m, epochs=1,
                    overrides=COMMON)
    return root


def test_spectrum_of_freqd_fd_and_fitnet_students(runs, capsys):
    root = runs
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
    # the student's own smoothness, against the slow path: tr(SᵀLS)/tr(SᵀS) with a dense L
    import numpy as np

    from freqd.spectral.graphs import build_graph, laplacian, normalize_adjacency

    teacher = api.Run(root / "teacher")
    L = laplacian(normalize_adjacency(build_graph("cooccurrence", teacher.dataset.train, side="user", k=5))).toarray()
    for s in summary:
        S = api.Run(root / s["method"]).model.propagate()[0].detach().double().numpy()
        assert float(s["student_rayleigh"]) == pytest.approx(np.trace(S.T @ L @ S) / np.trace(S.T @ S), rel=1e-5)
    Tt = teacher.model.propagate()[0].detach().double().numpy()
    assert float(summary[0]["teacher_rayleigh"]) == pytest.approx(np.trace(Tt.T @ L @ Tt) / np.trace(Tt.T @ Tt), rel=1e-5)


def test_spectrum_refuses_a_method_without_a_projector(runs):
    root = runs
    with pytest.raises(ConfigError, match="kd.*projector"):
        from freqd.experiments.spectrum import load_distiller

        load_distiller(root / "kd", api.Run(root / "teacher"), api.Run(root / "teacher").dataset)
    assert main(["spectrum", "--teacher", str(root / "teacher"), "--student", str(root / "kd"),
                 "--out", str(root / "nope")]) == 2
    assert not (root / "nope").exists()


def test_normalized_residual_is_the_cosine_gap_and_ignores_the_projector_scale(runs):
    """--residual normalized: rows of X (differences of unit vectors) have norm <= 2, X does not change
    when the projector's output is scaled (the raw residual does), and Parseval still holds."""
    import torch

    from freqd.experiments.spectrum import load_distiller

    root = runs
    teacher = api.Run(root / "teacher")
    for m in ("freqd", "fitnet"):
        _, dist = load_distiller(root / m, teacher, teacher.dataset)
        with torch.no_grad():
            raw = dist.residuals()["user"]
            nrm = dist.residuals(normalize=True)["user"]
            last = [p for n, p in dist.named_parameters() if n.endswith(("w2", "b2"))]  # P -> 3 P
            assert last
            for p in last:
                p.mul_(3.0)
            raw3 = dist.residuals()["user"]
            nrm3 = dist.residuals(normalize=True)["user"]
        assert not torch.allclose(raw, raw3)
        torch.testing.assert_close(nrm, nrm3, rtol=1e-5, atol=1e-6)
        assert float(nrm.norm(dim=1).max()) <= 2.0 + 1e-6
    out = root / "spec_norm"
    assert main(["spectrum", "--teacher", str(root / "teacher"), "--student", str(root / "fd"),
                 "--student", str(root / "freqd"), "--residual", "normalized", "--bands", "4",
                 "--out", str(out)]) == 0
    summary = list(csv.DictReader((out / "summary_user.csv").open()))
    assert [s["residual"] for s in summary] == ["normalized", "normalized"]
    for s in summary:
        assert float(s["sum_per_frequency"]) == pytest.approx(float(s["total_mse"]), rel=1e-6)
        assert 0.0 < float(s["lowest_band_share"]) <= 1.0


def test_rayleigh_quotients_script_matches_the_dense_formula(runs, capsys, monkeypatch):
    """scripts/rayleigh_quotients.py on any runs (here a teacher and a kd student, which
    `freqd spectrum` refuses): tr(XᵀLX)/tr(XᵀX) per side, as the dense computation gives."""
    import importlib.util
    import sys
    from pathlib import Path

    import numpy as np

    from freqd.spectral.graphs import build_graph, laplacian, normalize_adjacency

    root = runs
    path = Path(__file__).resolve().parents[1] / "scripts" / "rayleigh_quotients.py"
    spec = importlib.util.spec_from_file_location("rayleigh_quotients", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    monkeypatch.setattr(sys, "argv", ["rq", str(root / "teacher"), str(root / "kd")])
    mod.main()
    rows = [ln.split("\t") for ln in capsys.readouterr().out.strip().splitlines()[1:]]
    assert [(r[0], r[1]) for r in rows] == [("user", "teacher"), ("user", "kd"), ("item", "teacher"), ("item", "kd")]
    ds = api.Run(root / "teacher").dataset
    for side, name, value, norm in rows:
        L = laplacian(normalize_adjacency(build_graph("cooccurrence", ds.train, side=side, k=5))).toarray()
        X = api.Run(root / name).model.propagate()[0 if side == "user" else 1].detach().double().numpy()
        assert float(value) == pytest.approx(np.trace(X.T @ L @ X) / np.trace(X.T @ X), abs=6e-5)
        assert float(norm) == pytest.approx(np.mean([np.sqrt(r @ r) for r in X]), abs=6e-5)


def test_both_residuals_from_one_decomposition_equal_the_separate_runs(runs):
    """--residual raw,normalized writes _raw / _normalized files whose numbers are those of
    two separate single-residual runs, and one summary with both."""
    root = runs
    args = ["spectrum", "--teacher", str(root / "teacher"), "--student", str(root / "fd"),
            "--student", str(root / "freqd"), "--bands", "4"]
    assert main(args + ["--out", str(root / "sep_raw")]) == 0
    assert main(args + ["--residual", "normalized", "--out", str(root / "sep_norm")]) == 0
    assert main(args + ["--residual", "raw,normalized", "--out", str(root / "both")]) == 0
    both = root / "both"
    for kind, sep in (("raw", root / "sep_raw"), ("normalized", root / "sep_norm")):
        assert (both / f"spectrum_user_{kind}.png").stat().st_size > 0
        assert (both / f"spectrum_user_{kind}.csv").read_text() == (sep / "spectrum_user.csv").read_text()
    summary = list(csv.DictReader((both / "summary_user.csv").open()))
    assert [(s["method"], s["residual"]) for s in summary] == [
        ("fd", "raw"), ("freqd", "raw"), ("fd", "normalized"), ("freqd", "normalized")]
    sep = list(csv.DictReader((root / "sep_raw" / "summary_user.csv").open())) + \
        list(csv.DictReader((root / "sep_norm" / "summary_user.csv").open()))
    assert summary == sep
    assert not (both / "spectrum_user.csv").exists()


@pytest.mark.parametrize("option,value", [("--residual", "cosine"), ("--residual", "raw,raw"), ("--residual", ","),
                                          ("--residual", "raw,normalised"), ("--device", "tpu"), ("--device", "cuda:0")])
def test_bad_residual_or_device_is_refused_before_any_work(runs, option, value, capsys):
    import torch

    if value.startswith("cuda") and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    out = runs / f"bad_{option[2:]}_{abs(hash(value))}"
    rc = main(["spectrum", "--teacher", str(runs / "teacher"), "--student", str(runs / "fd"),
               option, value, "--out", str(out)])
    assert rc != 0
    assert option in capsys.readouterr().err
    assert not out.exists()
