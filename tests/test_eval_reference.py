"""Chunked evaluator == an obvious per-user numpy reference (fast path vs slow path)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from freqd.data.dataset import Dataset
from freqd.eval import evaluate, recommend, topk_ranked
from freqd.eval.metrics import METRICS, metric_keys, metric_matrix

KS = (1, 5, 10)


def reference(scores: np.ndarray, ds: Dataset, split: str, protocol: str, ks=KS, per_user=None) -> dict:
    """Per-user loop, straight from the definitions in PROTOCOL.md. With a dict as
    ``per_user``, each user with ground truth's own values are stored in it too."""
    masked = ["train"] + (["valid"] if (protocol == "standard" and split == "test") else [])
    gt_m = ds.split(split).tolil().rows
    mask_rows = [ds.split(s).tolil().rows for s in masked]
    sums = {f"{m}@{k}": 0.0 for m in ("recall", "ndcg", "precision", "hitrate", "mrr") for k in ks}
    n_users = 0
    for u in range(ds.n_users):
        gt = set(gt_m[u])
        if protocol == "standard" and not gt:
            continue
        n_users += 1
        if not gt:
            continue
        before = dict(sums)
        s = scores[u].astype(np.float64).copy()
        for rows in mask_rows:
            s[rows[u]] = -np.inf
        order = np.lexsort((np.arange(len(s)), -s))  # score desc, then item id asc
        for k in ks:
            top = [i for i in order[:k] if np.isfinite(s[i])]
            hits = [1.0 if i in gt else 0.0 for i in top]
            n_hit = sum(hits)
            sums[f"recall@{k}"] += n_hit / len(gt)
            sums[f"precision@{k}"] += n_hit / k
            sums[f"hitrate@{k}"] += float(n_hit > 0)
            dcg = sum(h / np.log2(r + 2) for r, h in enumerate(hits))
            idcg = sum(1 / np.log2(r + 2) for r in range(min(len(gt), k)))
            sums[f"ndcg@{k}"] += dcg / idcg
            first = next((r for r, h in enumerate(hits) if h), None)
            sums[f"mrr@{k}"] += 0.0 if first is None else 1.0 / (first + 1)
        if per_user is not None:
            per_user[u] = {key: sums[key] - before[key] for key in sums}
    out = {key: v / n_users if n_users else 0.0 for key, v in sums.items()}
    out["n_users"] = n_users
    return out


def random_dataset(seed: int, n_users: int = 60, n_items: int = 40) -> Dataset:
    rng = np.random.default_rng(seed)
    dense = rng.random((n_users, n_items))
    which = rng.integers(0, 3, size=(n_users, n_items))  # split of each interaction
    inter = dense < rng.uniform(0.02, 0.4, size=(n_users, 1))  # per-user density
    inter[: n_users // 10] = False  # some users with nothing at all
    splits = []
    for s in range(3):
        u, i = np.nonzero(inter & (which == s))
        splits.append((u, i))
    return Dataset.from_pairs("random", *splits, n_users=n_users, n_items=n_items)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("tied", [False, True])
def test_chunked_evaluator_matches_reference(seed, tied):
    ds = random_dataset(seed)
    rng = np.random.default_rng(100 + seed)
    # tied=True: integer scores in 0..4, so ties everywhere (exercises the stable re-rank)
    scores = (
        rng.integers(0, 5, size=(ds.n_users, ds.n_items))
        if tied
        else rng.normal(size=(ds.n_users, ds.n_items))
    )
    S = torch.tensor(scores, dtype=torch.float32)

    def score_fn(users):
        return S[users]

    for split in ("valid", "test"):
        for protocol in ("standard", "paper"):
            ref = reference(scores, ds, split, protocol)
            for chunk_size in (1, 7, 33, None):
                got = evaluate(score_fn, ds, split, protocol, ks=KS, chunk_size=chunk_size)
                assert got["n_users"] == ref["n_users"]
                assert got["protocol"] == protocol
                for key, value in ref.items():
                    assert got[key] == pytest.approx(value, abs=1e-6), (
                        split,
                        protocol,
                        chunk_size,
                        key,
                    )


def test_tiny_real_data_matches_reference(tiny_dir):
    def read(name):
        a = np.loadtxt(tiny_dir / name, dtype=np.int64, skiprows=1, ndmin=2)
        return a[:, 0], a[:, 1]

    ds = Dataset.from_pairs("tiny", read("train.txt"), read("valid.txt"), read("test.txt"))
    g = torch.Generator().manual_seed(0)
    U, V = torch.randn(ds.n_users, 8, generator=g), torch.randn(ds.n_items, 8, generator=g)
    scores = (U @ V.T).numpy()
    for split in ("valid", "test"):
        for protocol in ("standard", "paper"):
            ref = reference(scores, ds, split, protocol, ks=(10, 20))
            got = evaluate(lambda u: U[u] @ V.T, ds, split, protocol, ks=(10, 20), chunk_size=50)
            for key, value in ref.items():
                assert got[key] == pytest.approx(value, abs=1e-6), (split, protocol, key)
    info = ds.info()
    assert (
        evaluate(lambda u: U[u] @ V.T, ds, "valid")["n_users"]
        == ds.n_users - info["users_without_valid"]
    )


def test_topk_ranked_breaks_ties_by_item_id_and_matches_stable_sort():
    rng = np.random.default_rng(3)
    x = torch.tensor(rng.integers(0, 6, size=(50, 30)), dtype=torch.float32)
    x[::7] = torch.randn(8, 30)  # some rows without ties: the topk fast path
    for k in (1, 5, 29, 30, 40):
        vals, idx = topk_ranked(x.clone(), k)
        ref_v, ref_i = torch.sort(x, dim=1, descending=True, stable=True)
        assert torch.equal(idx, ref_i[:, :k]) and torch.equal(vals, ref_v[:, :k])


def test_recommend_matches_reference():
    ds = random_dataset(5)
    rng = np.random.default_rng(9)
    scores = rng.integers(0, 4, size=(ds.n_users, ds.n_items)).astype(np.float32)
    S = torch.tensor(scores)
    users = np.array([3, 0, 59, 17, 17])
    items, vals = recommend(lambda u: S[u], ds, users=users, k=8, chunk_size=2)
    seen = (ds.train + ds.valid + ds.test).tolil().rows
    for row, u in enumerate(users):
        s = scores[u].astype(np.float64)
        s[seen[u]] = -np.inf
        order = [i for i in np.lexsort((np.arange(len(s)), -s)) if np.isfinite(s[i])][:8]
        expect = order + [-1] * (8 - len(order))
        assert items[row].tolist() == expect
        assert vals[row, : len(order)].tolist() == pytest.approx(s[order].tolist())


def test_metric_matrix_matches_the_per_metric_functions():
    g = torch.Generator().manual_seed(0)
    hits = torch.rand(200, 12, generator=g) < 0.15
    n_gt = torch.randint(0, 15, (200,), generator=g)
    ks = (1, 3, 12)
    mat = metric_matrix(hits, n_gt, ks)
    for j, key in enumerate(metric_keys(ks)):
        name, k = key.split("@")
        assert torch.allclose(mat[:, j], METRICS[name](hits, n_gt, int(k)), atol=1e-6), key
    assert torch.equal(
        metric_matrix(hits, n_gt, (3,), ("mrr",))[:, 0], METRICS["mrr"](hits, n_gt, 3)
    )
