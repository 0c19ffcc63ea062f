"""Hand-computed metrics for both masking protocols (PROTOCOL.md, "Evaluation").

Dataset: 4 users x 6 items, fixed scores, ks = (1, 3).

    train   u0 {0}    u1 {1, 2}   u2 {3}   u3 {0, 5}
    valid   u0 {1}    u1 {}       u2 {4}   u3 {2, 3}
    test    u0 {2, 5} u1 {3}      u2 {1}   u3 {4}

            item:  0     1     2     3     4     5
    u0          [0.9,  0.8,  0.1,  0.5,  0.3,  0.5 ]   tie 3 = 5
    u1          [0.2,  0.9,  0.9,  0.4,  0.6,  0.1 ]
    u2          [0.3,  0.8,  0.2,  0.95, 0.7,  0.0 ]
    u3          [1.0,  0.4,  0.7,  0.4,  0.4,  2.0 ]   tie 1 = 3 = 4

Ties rank the lower item id first. Discounts: D0 = 1, D1 = 1/log2(3) = 0.6309297535714575,
D2 = 1/log2(4) = 0.5.

Top-3 lists and hits (ground truth in brackets):
  valid, both protocols (train masked):
    u0 mask {0}:       [1, 3, 5]  gt {1}     hits 1 0 0
    u1 no valid item (standard: skipped; paper: counts 0)
    u2 mask {3}:       [1, 4, 0]  gt {4}     hits 0 1 0
    u3 mask {0, 5}:    [2, 1, 3]  gt {2, 3}  hits 1 0 1
  test, standard (train + valid masked):
    u0 mask {0, 1}:    [3, 5, 4]  gt {2, 5}  hits 0 1 0   (the 3/5 tie decides this)
    u1 mask {1, 2}:    [4, 3, 0]  gt {3}     hits 0 1 0
    u2 mask {3, 4}:    [1, 0, 2]  gt {1}     hits 1 0 0
    u3 mask {0,2,3,5}: [1, 4, -]  gt {4}     hits 0 1 0   (only 2 items left; slot 3 masked)
  test, paper (train masked only):
    u0 mask {0}:       [1, 3, 5]  gt {2, 5}  hits 0 0 1
    u1 mask {1, 2}:    [4, 3, 0]  gt {3}     hits 0 1 0
    u2 mask {3}:       [1, 4, 0]  gt {1}     hits 1 0 0
    u3 mask {0, 5}:    [2, 1, 3]  gt {4}     hits 0 0 0
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from freqd.data.dataset import Dataset
from freqd.errors import ConfigError, FreqdError
from freqd.eval import Evaluator, evaluate, recommend, write_recommendations
from freqd.eval.metrics import compute_metrics, metric_keys

SCORES = torch.tensor(
    [
        [0.9, 0.8, 0.1, 0.5, 0.3, 0.5],
        [0.2, 0.9, 0.9, 0.4, 0.6, 0.1],
        [0.3, 0.8, 0.2, 0.95, 0.7, 0.0],
        [1.0, 0.4, 0.7, 0.4, 0.4, 2.0],
    ]
)


def _pairs(rows):
    u = [r for r, items in enumerate(rows) for _ in items]
    i = [x for items in rows for x in items]
    return np.array(u, dtype=np.int64), np.array(i, dtype=np.int64)


@pytest.fixture()
def ds() -> Dataset:
    return Dataset.from_pairs(
        "hand",
        _pairs([[0], [1, 2], [3], [0, 5]]),
        _pairs([[1], [], [4], [2, 3]]),
        _pairs([[2, 5], [3], [1], [4]]),
        n_users=4,
        n_items=6,
    )


def score_fn(users: torch.Tensor) -> torch.Tensor:
    return SCORES[users].clone()


def check(got: dict, expected: dict) -> None:
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, abs=1e-6), key  # float32 per-user values


# -- valid ---------------------------------------------------------------------------------
VALID_SUMS = {  # per-user sums over u0, u2, u3 (u1 has no valid item)
    "recall@1": 1 + 0 + 1 / 2,
    "recall@3": 1 + 1 + 2 / 2,
    "precision@1": 1 + 0 + 1,
    "precision@3": 1 / 3 + 1 / 3 + 2 / 3,
    "hitrate@1": 1 + 0 + 1,
    "hitrate@3": 1 + 1 + 1,
    # u3: IDCG@1 = D0 (min(|gt|=2, 1) = 1)
    "ndcg@1": 1 + 0 + 1,
    # u0: D0/D0 = 1; u2: D1/D0 = 0.6309297535714575; u3: (D0+D2)/(D0+D1) = 1.5/1.6309... =
    # 0.9197207891481876  -> sum 2.5506505427196453
    "ndcg@3": 2.5506505427196453,
    "mrr@1": 1 + 0 + 1,
    "mrr@3": 1 + 1 / 2 + 1,
}


def test_valid_standard_averages_over_users_with_ground_truth(ds):
    got = evaluate(score_fn, ds, split="valid", protocol="standard", ks=(1, 3))
    assert got["n_users"] == 3 and got["protocol"] == "standard"
    check(got, {k: v / 3 for k, v in VALID_SUMS.items()})
    assert got["recall@3"] == pytest.approx(1.0)  # 3 / 3
    assert got["ndcg@3"] == pytest.approx(0.8502168475732151)  # 2.5506505427196453 / 3


def test_valid_paper_counts_users_without_ground_truth_as_zero(ds):
    got = evaluate(score_fn, ds, split="valid", protocol="paper", ks=(1, 3))
    assert got["n_users"] == 4 and got["protocol"] == "paper"
    check(got, {k: v / 4 for k, v in VALID_SUMS.items()})
    assert got["recall@3"] == pytest.approx(0.75)  # 3 / 4
    assert got["precision@3"] == pytest.approx(1 / 3)  # (1/3 + 1/3 + 2/3 + 0) / 4


# -- test ----------------------------------------------------------------------------------
def test_test_standard_masks_train_and_valid(ds):
    got = evaluate(score_fn, ds, split="test", protocol="standard", ks=(1, 3))
    assert got["n_users"] == 4
    check(
        got,
        {
            "recall@1": 0.25,  # (0 + 0 + 1 + 0) / 4
            "recall@3": 0.875,  # (1/2 + 1 + 1 + 1) / 4
            "precision@1": 0.25,  # (0 + 0 + 1 + 0) / 4
            "precision@3": 1 / 3,  # (1/3 * 4) / 4
            "hitrate@1": 0.25,
            "hitrate@3": 1.0,  # every user has a hit in its top 3
            "ndcg@1": 0.25,
            # u0 D1/(D0+D1) = 0.38685280723454163, u1 D1, u2 1, u3 D1 -> 2.648712314377457 / 4
            "ndcg@3": 0.6621780785943643,
            "mrr@1": 0.25,
            "mrr@3": 0.625,  # (1/2 + 1/2 + 1 + 1/2) / 4
        },
    )


def test_test_paper_keeps_valid_items_rankable(ds):
    got = evaluate(score_fn, ds, split="test", protocol="paper", ks=(1, 3))
    assert got["n_users"] == 4
    check(
        got,
        {
            "recall@1": 0.25,  # (0 + 0 + 1 + 0) / 4
            "recall@3": 0.625,  # (1/2 + 1 + 1 + 0) / 4
            "precision@1": 0.25,
            "precision@3": 0.25,  # (1/3 + 1/3 + 1/3 + 0) / 4
            "hitrate@1": 0.25,
            "hitrate@3": 0.75,  # u3 has no hit
            "ndcg@1": 0.25,
            # u0 D2/(D0+D1) = 0.3065735963827292, u1 D1, u2 1, u3 0 -> 1.9375033499541867 / 4
            "ndcg@3": 0.4843758374885467,
            "mrr@1": 0.25,
            "mrr@3": 0.4583333333333333,  # (1/3 + 1/2 + 1 + 0) / 4
        },
    )


def test_key_names_and_default_ks(ds):
    got = evaluate(score_fn, ds, split="test")
    assert list(got)[:-2] == metric_keys((10, 20, 50))
    assert {"recall@10", "ndcg@20", "precision@50", "hitrate@10", "mrr@20"} <= set(got)
    # K larger than the catalogue: every scorable item is ranked; recall is then 1 for all
    assert got["recall@10"] == pytest.approx(1.0)
    assert got["precision@10"] == pytest.approx((2 + 1 + 1 + 1) / 10 / 4)


@pytest.mark.parametrize("chunk_size", [1, 2, 3, 100])
def test_chunk_size_does_not_change_results(ds, chunk_size):
    for protocol in ("standard", "paper"):
        ref = evaluate(score_fn, ds, "test", protocol, ks=(1, 3))
        got = evaluate(score_fn, ds, "test", protocol, ks=(1, 3), chunk_size=chunk_size)
        assert got == pytest.approx(ref)


def test_users_without_ground_truth_are_not_scored(ds):
    seen = []

    def fn(users):
        seen.extend(users.tolist())
        return score_fn(users)

    evaluate(fn, ds, "valid", "paper", ks=(1,))
    assert sorted(seen) == [0, 2, 3]


def test_mask_does_not_write_into_a_view_of_the_callers_scores(ds):
    cache = SCORES.clone()
    evaluate(lambda u: cache[int(u[0]) : int(u[-1]) + 1], ds, "test", chunk_size=2)
    assert torch.equal(cache, SCORES)


def test_evaluator_reuse_and_bad_options(ds):
    ev = Evaluator(ds, protocol="paper", ks=[3, 1, 3])
    assert ev.ks == (1, 3)
    a = ev.evaluate(score_fn, "test")
    b = ev.evaluate(score_fn, "test")
    assert a == b
    assert ev.masked_splits("test") == ("train",)
    assert Evaluator(ds).masked_splits("test") == ("train", "valid")
    with pytest.raises(ConfigError, match="protocol"):
        Evaluator(ds, protocol="recbole")
    with pytest.raises(ConfigError, match="ks"):
        Evaluator(ds, ks=(0, 10))
    with pytest.raises(ConfigError, match="split"):
        ev.evaluate(score_fn, "train")
    with pytest.raises(FreqdError, match="NaN"):
        evaluate(lambda u: torch.full((len(u), 6), float("nan")), ds)
    with pytest.raises(ValueError, match="shape"):
        evaluate(lambda u: torch.zeros(len(u), 5), ds)


# -- metric functions on a hit matrix --------------------------------------------------------
def test_metric_functions_on_hit_matrix():
    hits = torch.tensor([[0, 1, 1, 0], [0, 0, 0, 0], [1, 0, 0, 1]], dtype=torch.bool)
    n_gt = torch.tensor([3, 0, 2])
    m = compute_metrics(hits, n_gt, (2, 4))
    d1, d2, d3 = 1 / np.log2(3), 0.5, 1 / np.log2(5)
    expected = {
        "recall@2": [1 / 3, 0, 1 / 2],
        "recall@4": [2 / 3, 0, 1],
        "precision@4": [2 / 4, 0, 2 / 4],
        "hitrate@2": [1, 0, 1],
        # row 0: DCG@4 = D1 + D2, IDCG over min(3, 4) = 3 ideal hits: 1 + D1 + D2
        "ndcg@4": [(d1 + d2) / (1 + d1 + d2), 0, (1 + d3) / (1 + d1)],
        "ndcg@2": [d1 / (1 + d1), 0, 1 / (1 + d1)],
        "mrr@2": [1 / 2, 0, 1],
        "mrr@4": [1 / 2, 0, 1],
    }
    for key, values in expected.items():
        assert m[key].tolist() == pytest.approx(values), key


# -- serving -------------------------------------------------------------------------------
def test_recommend_excludes_every_known_item_by_default(ds):
    items, scores = recommend(score_fn, ds, users=[0, 3], k=3)
    # u0 known {0, 1, 2, 5}: left 3 (.5), 4 (.3); u3 known {0, 2, 3, 4, 5}: left 1
    assert items.tolist() == [[3, 4, -1], [1, -1, -1]]
    assert scores[0, :2].tolist() == pytest.approx([0.5, 0.3])
    assert torch.isneginf(scores[0, 2]) and torch.isneginf(scores[1, 1:]).all()


def test_recommend_exclude_train_only_and_all_users(ds):
    items, _ = recommend(score_fn, ds, k=2, exclude=("train",), chunk_size=3)
    assert items.tolist() == [[1, 3], [4, 3], [1, 4], [2, 1]]
    with pytest.raises(FreqdError, match="users"):
        recommend(score_fn, ds, users=[4])
    with pytest.raises(FreqdError, match="exclude"):
        recommend(score_fn, ds, exclude=("seen",))


def test_write_recommendations(tmp_path, capsys):
    users = torch.tensor([0, 3])
    items = torch.tensor([[3, 4, -1], [1, -1, -1]])
    path = tmp_path / "out" / "recs.tsv"
    write_recommendations(path, users, items)
    assert path.read_text() == "0\t3,4\n3\t1\n"
    assert [p.name for p in path.parent.iterdir()] == ["recs.tsv"]  # no temp file left
    buf = io.StringIO()
    write_recommendations(
        buf, users, items, user_ids=["a", "b", "c", "d"], item_ids=np.arange(6) * 10
    )
    assert buf.getvalue() == "a\t30,40\nd\t10\n"
    write_recommendations("-", users[:1], items[:1])
    assert capsys.readouterr().out == "0\t3,4\n"


def test_masked_items_never_count_as_hits():
    # overlapping splits (user data can have them): item 0 is both a train and a test item.
    # 3 items, K = 3: ranking [2 (.1), 0 (-inf, masked), 1 (-inf, masked)], gt {0, 2}
    ds = Dataset.from_pairs(
        "overlap", _pairs([[0, 1]]), _pairs([[]]), _pairs([[0, 2]]), n_users=1, n_items=3
    )
    got = evaluate(lambda u: torch.tensor([[0.9, 0.5, 0.1]]), ds, "test", ks=(3,))
    assert got["recall@3"] == pytest.approx(0.5)  # 1 hit (item 2) / |gt| = 2
    assert got["mrr@3"] == pytest.approx(1.0)
