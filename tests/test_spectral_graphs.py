"""Graph builders vs dense brute-force references (tiny data and hand-made cases)."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from freqd.errors import ConfigError
from freqd.spectral.graphs import (
    bipartite_graph,
    build_graph,
    cooccurrence_topk,
    knn_graph,
    laplacian,
    normalize_adjacency,
)


def _tiny_train(tiny_dir) -> sp.csr_matrix:
    pairs = np.loadtxt(tiny_dir / "train.txt", dtype=np.int64, skiprows=1, ndmin=2)
    n_users = int(pairs[:, 0].max()) + 1
    n_items = int(pairs[:, 1].max()) + 1 + 3  # three items without any interaction
    m = sp.csr_matrix(
        (np.ones(len(pairs), np.float32), (pairs[:, 0], pairs[:, 1])), shape=(n_users, n_items)
    )
    m.sum_duplicates()
    m.data[:] = 1
    return m


def _brute_choices(scores: np.ndarray, k: int) -> np.ndarray:
    """Dense reference: per row the k highest positive off-diagonal scores, ties -> low id."""
    s = scores.astype(np.float64).copy()
    np.fill_diagonal(s, 0)
    n = s.shape[0]
    choice = np.zeros((n, n))
    for i in range(n):  # reference only: loops are fine here
        cand = [(-s[i, j], j) for j in range(n) if s[i, j] > 0]
        for _, j in sorted(cand)[:k]:
            choice[i, j] = 1
    return choice


def _brute_cooc(R: sp.csr_matrix, side: str, k: int):
    d = R.toarray().astype(np.float64)
    scores = d @ d.T if side == "user" else d.T @ d
    c = _brute_choices(scores, k)
    return (c + c.T) / 2, c, scores


@pytest.mark.parametrize("side", ["user", "item"])
@pytest.mark.parametrize("k", [1, 5])
def test_cooccurrence_matches_dense_reference(tiny_dir, side, k):
    R = _tiny_train(tiny_dir)
    ref, _, _ = _brute_cooc(R, side, k)
    got = cooccurrence_topk(R, side=side, k=k)
    assert got.dtype == np.float32 and sp.isspmatrix_csr(got)
    np.testing.assert_array_equal(got.toarray(), ref)
    # tiny chunks (many chunks, rows split across budgets) give the same graph
    small = cooccurrence_topk(R, side=side, k=k, max_chunk_nnz=50)
    assert (small != got).nnz == 0


@pytest.mark.parametrize("side", ["user", "item"])
def test_cooccurrence_properties(tiny_dir, side):
    k = 5
    R = _tiny_train(tiny_dir)
    A = cooccurrence_topk(R, side=side, k=k)
    d = R.toarray().astype(np.float64)
    scores = d @ d.T if side == "user" else d.T @ d
    np.fill_diagonal(scores, 0)
    n_cooc = (scores > 0).sum(1)
    assert A.diagonal().sum() == 0  # no self loops
    assert abs(A - A.T).max() == 0  # symmetric
    assert set(np.unique(A.data).tolist()) <= {0.5, 1.0}
    isolated = n_cooc == 0
    if side == "item":
        assert isolated[-3:].all()  # the appended items never co-occur
    deg = np.diff(A.indptr)
    assert (deg[isolated] == 0).all()  # nodes with no co-occurrence get no edges
    assert (deg >= np.minimum(k, n_cooc)).all()
    # every stored edge joins two nodes that co-occur
    coo = A.tocoo()
    assert (scores[coo.row, coo.col] > 0).all()


def test_cooccurrence_ties_and_counts_by_hand():
    # users x items; user 0 shares 1 item with each of users 1, 2, 3 and 2 items with 4
    R = sp.csr_matrix(
        np.array(
            [
                [1, 1, 1, 1, 0],
                [1, 0, 0, 0, 0],
                [0, 1, 0, 0, 0],
                [0, 0, 1, 0, 0],
                [0, 0, 1, 1, 0],
                [0, 0, 0, 0, 1],  # co-occurs with nobody
            ],
            dtype=np.float32,
        )
    )
    A = cooccurrence_topk(R, side="user", k=2).toarray()
    # user 0 picks 4 (score 2) then 1 (tie among 1, 2, 3 -> lowest id)
    # users 1, 2 pick 0 only; user 3 picks 0 and 4 (tie at 1 -> 0 first, then 4);
    # user 4 picks 0 (score 2) then 3
    expected = np.zeros((6, 6))
    for i, js in {0: [4, 1], 1: [0], 2: [0], 3: [0, 4], 4: [0, 3]}.items():
        for j in js:
            expected[i, j] += 0.5
            expected[j, i] += 0.5
    np.testing.assert_array_equal(A, expected)
    assert A[5].sum() == 0 and A[:, 5].sum() == 0
    assert A[0, 4] == 1.0 and A[0, 1] == 1.0 and A[0, 2] == 0.5 and A[3, 4] == 1.0


def test_cooccurrence_rejects_bad_options():
    R = sp.csr_matrix(np.eye(3, dtype=np.float32))
    with pytest.raises(ConfigError, match="side"):
        cooccurrence_topk(R, side="both")
    with pytest.raises(ConfigError, match="'k'"):
        cooccurrence_topk(R, k=0)


def _brute_knn(X: np.ndarray, k: int, metric: str) -> np.ndarray:
    x = X.astype(np.float64)
    if metric == "cosine":
        nrm = np.linalg.norm(x, axis=1, keepdims=True)
        x = np.where(nrm > 0, x / np.where(nrm > 0, nrm, 1), 0)
        s = x @ x.T
    elif metric == "dot":
        s = x @ x.T
    else:
        sq = (x * x).sum(1)
        s = -(sq[:, None] - 2 * x @ x.T + sq[None, :])
    n = len(x)
    c = np.zeros((n, n))
    for i in range(n):
        cand = sorted((-s[i, j], j) for j in range(n) if j != i)
        for _, j in cand[:k]:
            c[i, j] = 1
    return (c + c.T) / 2


@pytest.mark.parametrize("metric", ["cosine", "dot", "l2"])
def test_knn_matches_brute_force(metric):
    rng = np.random.default_rng(3)
    # small integer features: exact float32 scores and many ties
    X = rng.integers(-2, 3, size=(40, 4)).astype(np.float32)
    if metric == "cosine":  # equal norms (2): normalisation is exact in float32
        X = np.where(X >= 0, 1.0, -1.0).astype(np.float32)
    X[5] = X[7]  # duplicate rows
    got = knn_graph(X, k=3, metric=metric, max_block=200)  # several blocks
    ref = _brute_knn(X, 3, metric)
    np.testing.assert_array_equal(got.toarray(), ref)
    assert got.diagonal().sum() == 0


def test_knn_torch_input_and_min_score():
    import torch

    X = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [-1.0, 0.0]])
    A = knn_graph(X, k=1, metric="cosine").toarray()
    assert A[0, 1] == 1.0 and A[2, 1] == 0.5 and A[3, 2] == 0.5
    B = knn_graph(X, k=3, metric="cosine", min_score=0.5).toarray()
    assert B[0, 3] == 0 and B[0, 2] == 0 and B[0, 1] == 1.0


def test_bipartite_graph_blocks():
    R = sp.csr_matrix(np.array([[1, 0, 1], [0, 1, 0]], dtype=np.float32))
    A = bipartite_graph(R)
    assert A.shape == (5, 5) and A.dtype == np.float32
    d = A.toarray()
    np.testing.assert_array_equal(d[:2, 2:], R.toarray())
    np.testing.assert_array_equal(d[2:, :2], R.toarray().T)
    assert d[:2, :2].sum() == 0 and d[2:, 2:].sum() == 0


def test_normalize_and_laplacian_by_hand():
    A = sp.csr_matrix(
        np.array(
            [[0, 1, 0.5, 0], [1, 0, 0, 0], [0.5, 0, 2, 0], [0, 0, 0, 0]], dtype=np.float32
        )
    )  # node 2 has a self loop (dropped), node 3 is isolated
    Ah = normalize_adjacency(A).toarray()
    deg = np.array([1.5, 1.0, 0.5, 1.0])  # degree 0 -> 1
    ref = np.array([[0, 1, 0.5, 0], [1, 0, 0, 0], [0.5, 0, 0, 0], [0, 0, 0, 0]])
    ref = ref / np.sqrt(deg)[:, None] / np.sqrt(deg)[None, :]
    np.testing.assert_allclose(Ah, ref, rtol=1e-6)
    assert Ah[3].sum() == 0 and np.diag(Ah).sum() == 0
    L = laplacian(normalize_adjacency(A))
    np.testing.assert_allclose(L.toarray(), np.eye(4) - ref, rtol=1e-6, atol=1e-7)
    ev = np.linalg.eigvalsh(L.toarray().astype(np.float64))
    assert ev.min() > -1e-6 and ev.max() < 2 + 1e-6


def test_build_graph_dispatch(tiny_dir):
    R = _tiny_train(tiny_dir)
    a = build_graph("cooccurrence", R, side="item", k=5)
    assert (a != cooccurrence_topk(R, "item", 5)).nnz == 0
    assert build_graph("bipartite", R).shape == (sum(R.shape),) * 2
    with pytest.raises(ConfigError, match="graph"):
        build_graph("complete", R)


def test_package_exports_and_light_import():
    import subprocess
    import sys

    from freqd import spectral

    for name in spectral.__all__:
        assert getattr(spectral, name) is not None
    code = "import sys, freqd.spectral.graphs; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"  # building graphs does not load torch


@pytest.mark.parametrize("integral", [True, False])
def test_topk_helpers_match_sorting_reference(integral):
    from freqd.spectral.graphs import _topk_candidates, _topk_per_row

    rng = np.random.default_rng(9)
    rows = np.sort(rng.integers(0, 40, 600))
    cols = rng.permutation(600) % 97  # some rows repeat a column id: still a valid key
    scores = rng.integers(1, 5, 600).astype(np.float32)  # many ties
    if not integral:
        scores = scores * np.float32(0.37)
    k = 3
    cand = _topk_candidates(rows, scores, k)
    got_r, got_c = _topk_per_row(rows[cand], cols[cand], scores[cand], k)
    order = sorted(range(600), key=lambda i: (rows[i], -float(scores[i]), cols[i]))
    ref, seen = [], {}
    for i in order:
        if seen.get(rows[i], 0) < k:
            ref.append((rows[i], cols[i]))
            seen[rows[i]] = seen.get(rows[i], 0) + 1
    assert list(zip(got_r.tolist(), got_c.tolist())) == [(int(r), int(c)) for r, c in ref]
