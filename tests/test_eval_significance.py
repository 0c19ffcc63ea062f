"""Per-user evaluation and the per-user paired tests behind ``freqd compare``: the per-user
rows against the per-user reference loop, their means against ``evaluate``, the tests
against hand-computed values, and the command end to end on tiny data."""
from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch
from test_eval_reference import KS, random_dataset, reference

from freqd import api
from freqd.cli import main
from freqd.eval import Evaluator, evaluate
from freqd.eval.significance import holm, paired_user_tests


@pytest.mark.parametrize("protocol", ["standard", "paper"])
@pytest.mark.parametrize("chunk_size", [1, 7, None])
def test_per_user_rows_match_the_reference_loop_and_average_to_evaluate(protocol, chunk_size):
    ds = random_dataset(2)
    rng = np.random.default_rng(7)
    scores = rng.normal(size=(ds.n_users, ds.n_items))
    S = torch.tensor(scores, dtype=torch.float32)
    ev = Evaluator(ds, protocol=protocol, ks=KS, chunk_size=chunk_size)
    for split in ("valid", "test"):
        ref_rows: dict = {}
        ref = reference(scores, ds, split, protocol, per_user=ref_rows)
        users, vals, keys = ev.per_user(lambda u: S[u], split)
        assert vals.dtype == torch.float64 and vals.shape == (len(users), len(keys))
        assert users.tolist() == sorted(ref_rows)  # the users with ground truth, ascending
        for row, u in zip(vals.tolist(), users.tolist()):
            for key, v in zip(keys, row):
                assert v == pytest.approx(ref_rows[u][key], abs=1e-6), (split, u, key)
        agg = evaluate(lambda u: S[u], ds, split, protocol, ks=KS, chunk_size=chunk_size)
        for j, key in enumerate(keys):  # standard: mean over them; paper: sum over all users
            assert float(vals[:, j].sum()) / agg["n_users"] == pytest.approx(agg[key], abs=1e-9)
            assert agg[key] == pytest.approx(ref[key], abs=1e-6)


def test_holm_by_hand():
    # sorted 0.01, 0.03, 0.04 -> 3 * 0.01, max(0.03, 2 * 0.03), max(0.06, 1 * 0.04)
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    got = holm([float("nan"), 0.02, 0.9])
    assert math.isnan(got[0]) and got[1:] == pytest.approx([0.04, 0.9])
    assert holm([0.6, 0.7]) == pytest.approx([1.0, 1.0])  # capped at 1


def test_paired_user_tests_by_hand():
    b = np.array([[1.0], [1.0], [1.0]])
    a = b + np.array([[1.0], [2.0], [3.0]])  # differences 1, 2, 3: mean 2, sd 1
    (r,) = paired_user_tests(a, b, ["recall@10"])
    assert (r["users"], r["a_better"], r["b_better"], r["ties"]) == (3, 3, 0, 0)
    assert r["mean_a"] == pytest.approx(3.0) and r["mean_b"] == pytest.approx(1.0)
    assert r["diff"] == pytest.approx(2.0) and r["rel"] == pytest.approx(2.0)
    # t = 2 / (1 / sqrt 3) = sqrt 12 with 2 degrees of freedom, where the t CDF is
    # 1/2 + t / (2 sqrt(2 + t^2)): p = 1 - sqrt(12) / sqrt(14)
    assert r["p_t"] == pytest.approx(1 - math.sqrt(12 / 14), rel=1e-9)
    assert r["p_t_holm"] == pytest.approx(r["p_t"])  # one metric: nothing to adjust
    # 95% interval: t_{0.975, 2} = 4.302653 times sd / sqrt(3)
    assert r["ci_low"] == pytest.approx(2 - 4.302653 / math.sqrt(3), abs=1e-6)
    assert r["ci_high"] == pytest.approx(2 + 4.302653 / math.sqrt(3), abs=1e-6)
    # Wilcoxon, exact: all 3 differences positive, W+ = 6 has probability 1/8 -> 2/8
    assert r["p_wilcoxon"] == pytest.approx(0.25)


def test_paired_user_tests_ties_signs_and_shapes():
    rng = np.random.default_rng(0)
    b = rng.random((40, 2))
    a = b.copy()
    a[:5, 0] += 0.5
    a[5:8, 0] -= 0.1
    r0, r1 = paired_user_tests(a, b, ["ndcg@10", "ndcg@20"])
    assert (r0["a_better"], r0["b_better"], r0["ties"]) == (5, 3, 32)
    assert r0["diff"] == pytest.approx((5 * 0.5 - 3 * 0.1) / 40)
    assert r0["ci_low"] < r0["diff"] < r0["ci_high"]
    from scipy import stats

    assert r0["p_t"] == pytest.approx(stats.ttest_rel(a[:, 0], b[:, 0]).pvalue)
    assert r0["p_t_holm"] == pytest.approx(r0["p_t"])  # the other metric's p is NaN
    assert r1["ties"] == 40 and math.isnan(r1["p_t"]) and math.isnan(r1["p_wilcoxon"])
    with pytest.raises(ValueError, match="n_users"):
        paired_user_tests(a, b[:10], ["ndcg@10", "ndcg@20"])


COMMON = {"train": {"threads": 1, "progress": False}}


@pytest.fixture(scope="module")
def runs(tiny_env):
    root = tiny_env
    for seed in (0, 1):
        api.train("tiny", backbone="mf", dim=8, out=root / f"mf8-s{seed}", epochs=2, seed=seed, overrides=COMMON)
    api.train("tiny", backbone="mf", dim=4, out=root / "mf4", epochs=1, overrides=COMMON)
    return root


def test_compare_command_averages_seeds_per_user(runs, capsys, tmp_path):
    root = runs
    a_runs = [str(root / "mf8-s0"), str(root / "mf8-s1")]
    out = tmp_path / "users.csv"
    rc = main(["compare", "--a", *a_runs, "--b", str(root / "mf4"), "--labels", "big,small",
               "--metrics", "recall@5,ndcg@5", "--json", "--out", str(out)])
    assert rc == 0
    res = json.loads(capsys.readouterr().out)
    assert res["a"] == {"label": "big", "runs": a_runs} and res["protocol"] == "standard"
    rows = {r["metric"]: r for r in res["tests"]}
    assert list(rows) == ["recall@5", "ndcg@5"]
    # the slow path: each run's own per-user values, averaged by hand
    per = []
    for d in a_runs + [str(root / "mf4")]:
        users, vals, keys = api.Run(d).evaluate_per_user(split="test", ks=(5,))
        per.append(vals[:, keys.index("recall@5")].numpy())
    a_mean, b_vals = (per[0] + per[1]) / 2, per[2]
    r = rows["recall@5"]
    assert r["users"] == len(users)
    assert r["mean_a"] == pytest.approx(a_mean.mean()) and r["mean_b"] == pytest.approx(b_vals.mean())
    assert r["mean_b"] == pytest.approx(api.Run(root / "mf4").evaluate(split="test", ks=(5,))["recall@5"])
    d = a_mean - b_vals
    assert (r["a_better"], r["b_better"]) == (int((d > 0).sum()), int((d < 0).sum()))
    with open(out, newline="") as f:
        table = list(csv.DictReader(f))
    assert len(table) == len(users) and list(table[0]) == ["user", "big_recall@5", "big_ndcg@5",
                                                          "small_recall@5", "small_ndcg@5"]
    assert sum(float(t["small_recall@5"]) for t in table) / len(table) == pytest.approx(b_vals.mean(), rel=1e-5)
    # the markdown form says what was averaged and names the groups
    assert main(["compare", "--a", *a_runs, "--b", str(root / "mf4"), "--labels", "big,small"]) == 0
    text = capsys.readouterr().out
    assert "big: 2 run(s), small: 1 run(s)" in text and "| recall@20 |" in text and "p (Wilcoxon)" in text


@pytest.mark.parametrize("args, message", [
    (["--metrics", "recall@0"], "--metrics"),
    (["--metrics", "auc@10"], "--metrics"),
    (["--labels", "onlyone"], "--labels"),
    (["--split", "train"], "--split"),
    (["--protocol", "loose"], "--protocol"),
])
def test_compare_refuses_bad_options(runs, capsys, args, message):
    root = runs
    rc = main(["compare", "--a", str(root / "mf8-s0"), "--b", str(root / "mf4"), *args])
    assert rc != 0
    assert message in capsys.readouterr().err


def test_compare_refuses_missing_runs_and_a_run_in_both_groups(runs, capsys, tmp_path):
    root = runs
    assert main(["compare", "--a", str(tmp_path / "nope"), "--b", str(root / "mf4")]) != 0
    assert "nope is not a run directory" in capsys.readouterr().err
    assert main(["compare", "--a", str(root / "mf4"), "--b", str(root / "mf8-s0"), str(root / "mf4")]) != 0
    assert "in both groups" in capsys.readouterr().err
    import shutil

    no_model = tmp_path / "restored"
    shutil.copytree(root / "mf4", no_model)
    (no_model / "best.pt").unlink()  # result files only, as restored from docs/results
    (no_model / "users_test_standard.npz").unlink()
    assert main(["compare", "--a", str(root / "mf8-s0"), "--b", str(no_model)]) != 0
    err = capsys.readouterr().err
    assert "option '--b'" in err and "best.pt" in err and "need each run's best model" in err


def test_finished_runs_keep_per_user_values_and_compare_needs_no_checkpoint(runs, capsys, tmp_path):
    """A finished run writes users_test_<protocol>.npz (recall and ndcg at its ks, per user)
    whose means are metrics.json's test numbers; compare reads it where the checkpoint is
    gone (a run restored from docs/results) and gives the same table; it is not used once
    the run has changed (other best epoch) or when it lacks a metric asked for."""
    import shutil

    from freqd.eval.user_values import load_user_values, run_tag, save_user_values, user_values_path

    root = runs
    run = api.Run(root / "mf4")
    path = user_values_path(run.dir, "test", "standard")
    assert path.is_file()
    ks = run.config["train"]["ks"]
    keys = [f"{m}@{k}" for m in ("recall", "ndcg") for k in ks]
    tag = run_tag(run.metrics, run.dataset.fingerprint())
    users, vals = load_user_values(run.dir, "test", "standard", keys, tag)
    # the slow path: the checkpoint's per-user values
    u_ref, v_ref, k_ref = run.evaluate_per_user(split="test")
    assert users.tolist() == u_ref.tolist()
    np.testing.assert_allclose(vals, v_ref[:, [k_ref.index(k) for k in keys]].numpy(), atol=1e-12)
    for j, k in enumerate(keys):
        assert vals[:, j].mean() == pytest.approx(run.metrics["test"][k], abs=1e-6)
    assert load_user_values(run.dir, "test", "standard", ["precision@5"], tag) is None  # not kept
    assert load_user_values(run.dir, "test", "standard", keys, dict(tag, best_epoch=tag["best_epoch"] + 1)) is None
    assert load_user_values(run.dir, "test", "paper", keys, tag) is None

    args = ["compare", "--a", str(root / "mf8-s0"), "--b"]
    assert main(args + [str(root / "mf4")]) == 0
    with_model = capsys.readouterr().out
    restored = tmp_path / "restored"
    shutil.copytree(root / "mf4", restored)
    (restored / "best.pt").unlink()
    (restored / "checkpoint.pt").unlink(missing_ok=True)
    assert main(args + [str(restored)]) == 0
    assert capsys.readouterr().out.replace(str(restored), str(root / "mf4")) == with_model
    # a metric the file lacks needs the model
    assert main(args + [str(restored), "--metrics", "precision@5"]) != 0
    assert "users_<split>_<protocol>.npz" in capsys.readouterr().err
    # an extended run (other best epoch in metrics.json) does not reuse the stale values
    m = json.loads((restored / "metrics.json").read_text())
    m["epochs_run"] += 1
    (restored / "metrics.json").write_text(json.dumps(m))
    assert main(args + [str(restored)]) != 0
    capsys.readouterr()
    # a truncated file counts as absent
    path2 = restored / "users_test_standard.npz"
    path2.write_bytes(path2.read_bytes()[:50])
    assert load_user_values(restored, "test", "standard", keys, run_tag(m, run.dataset.fingerprint())) is None

    # computed values are written back, merged with the kept metrics of the same state
    other = tmp_path / "other"
    shutil.copytree(root / "mf4", other)
    assert main(["compare", "--a", str(root / "mf8-s0"), "--b", str(other), "--metrics", "precision@5"]) == 0
    capsys.readouterr()
    both = load_user_values(other, "test", "standard", ["precision@5"] + keys, tag)
    assert both is not None and both[1].shape == (len(users), 1 + len(keys))
    np.testing.assert_allclose(both[1][:, 1:], vals)
    with pytest.raises(ValueError, match="do not match"):
        save_user_values(other, "test", "standard", users, vals[:, :1], keys, tag)


def test_compare_refuses_runs_on_other_data(runs, capsys, tmp_path):
    import shutil

    import yaml

    root = runs
    other = tmp_path / "other"
    shutil.copytree(root / "mf4", other)
    cfg = yaml.safe_load((other / "config.yaml").read_text())
    cfg["dataset"] = "citeulike-t"
    (other / "config.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["compare", "--a", str(root / "mf8-s0"), "--b", str(other)]) != 0
    err = capsys.readouterr().err
    assert "option '--b'" in err and "citeulike-t" in err and "same users and splits" in err


def test_compare_under_the_paper_protocol_says_how_its_means_relate_to_eval(runs, capsys):
    root = runs
    assert main(["compare", "--a", str(root / "mf8-s0"), "--b", str(root / "mf4"), "--protocol", "paper",
                 "--metrics", "recall@5"]) == 0
    text = capsys.readouterr().out
    assert "protocol paper" in text and "counting those without ground truth as 0" in text
