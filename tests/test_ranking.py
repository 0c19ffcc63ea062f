"""Shared ranking pieces (freqd.distill.ranking): each against a dense or hand-computed
reference."""
from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from freqd.distill.ranking import (
    ItemExclusion,
    count_higher,
    csr_entries,
    rank_sampling_probs,
    relaxed_ranking_loss,
    sample_with_replacement_cdf,
    sample_without_replacement,
    teacher_topk,
)


def random_train(n_users=37, n_items=90, density=0.12, seed=0) -> sp.csr_matrix:
    m = sp.random(n_users, n_items, density=density, format="csr", random_state=seed)
    m.data[:] = 1.0
    m.sort_indices()
    return m


def dense_masked(scores: torch.Tensor, train: sp.csr_matrix) -> torch.Tensor:
    d = scores.clone()
    d[torch.as_tensor(train.toarray() > 0)] = float("-inf")
    return d


# -- CSR --------------------------------------------------------------------------------
def test_csr_entries_matches_dense():
    train = random_train()
    users = np.array([5, 0, 5, 36, 12])
    rows, cols = csr_entries(train.indptr, train.indices, users)
    got = np.zeros((len(users), train.shape[1]), dtype=bool)
    got[rows, cols] = True
    assert (got == (train.toarray()[users] > 0)).all()
    assert len(rows) == int(train[users].nnz)


# -- teacher_topk -----------------------------------------------------------------------
@pytest.mark.parametrize("chunk", [1, 7, 1000])
def test_teacher_topk_equals_dense_reference_and_never_returns_train(chunk):
    train = random_train()
    g = torch.Generator().manual_seed(1)
    scores = torch.randn(train.shape, generator=g)
    calls = []

    def fn(users):
        calls.append(len(users))
        return scores[users]

    top, val = teacher_topk(fn, train, 15, chunk_size=chunk, return_scores=True)
    ref = torch.topk(dense_masked(scores, train), 15)
    assert torch.equal(top, ref.indices)
    assert torch.allclose(val, ref.values)
    assert not (torch.as_tensor(train.toarray() > 0).gather(1, top)).any()
    assert max(calls) <= chunk  # never more than one chunk of rows at a time


def test_teacher_topk_unmasked_and_subset_of_users():
    train = random_train()
    scores = torch.randn(train.shape, generator=torch.Generator().manual_seed(2))
    top = teacher_topk(lambda u: scores[u], train, 5, mask_train=False, users=[3, 1])
    assert torch.equal(top, torch.topk(scores[[3, 1]], 5).indices)


def test_teacher_topk_rejects_k_beyond_rankable_items():
    train = random_train()
    most = int(np.diff(train.indptr).max())
    with pytest.raises(ValueError, match="non-training items"):
        teacher_topk(lambda u: torch.zeros(len(u), train.shape[1]), train, train.shape[1] - most + 1)


# -- count_higher -----------------------------------------------------------------------
@pytest.mark.parametrize("mask", [True, False])
def test_count_higher_equals_argsort_rank(mask):
    train = random_train()
    scores = torch.randn(train.shape, generator=torch.Generator().manual_seed(3))
    d = dense_masked(scores, train) if mask else scores
    items = torch.topk(d, 20).indices[:, torch.randperm(20)]   # any order
    got = count_higher(lambda u: scores[u], train, items, chunk_size=8, mask_train=mask)
    rank = torch.argsort(torch.argsort(d, 1, descending=True), 1)  # dense reference
    assert torch.equal(got, rank.gather(1, items))


@pytest.mark.parametrize("mask", [True, False])
def test_count_higher_with_cap_is_the_capped_exact_rank(mask):
    train = random_train()
    scores = torch.randn(train.shape, generator=torch.Generator().manual_seed(6))
    d = dense_masked(scores, train) if mask else scores
    items = torch.topk(d, 40).indices[:, torch.randperm(40)]
    exact = count_higher(lambda u: scores[u], train, items, mask_train=mask)
    for cap in (1, 25, 60):
        got = count_higher(lambda u: scores[u], train, items, chunk_size=5, mask_train=mask, cap=cap)
        assert torch.equal(got, exact.clamp(max=cap))


def test_count_higher_hand_example_with_ties_and_masking():
    # one user, items 0..4 with scores [3, 5, 5, 1, 4]; item 1 is a training item
    train = sp.csr_matrix((np.ones(1, dtype=np.float32), ([0], [1])), shape=(1, 5))
    scores = torch.tensor([[3.0, 5.0, 5.0, 1.0, 4.0]])
    items = torch.tensor([[2, 0, 3, 4]])
    got = count_higher(lambda u: scores[u], train, items)
    # masked: item 1 never counts -> higher than 5: 0; than 3: {2, 4}; than 1: 3; than 4: {2}
    assert got.tolist() == [[0, 2, 3, 1]]
    got = count_higher(lambda u: scores[u], train, items, mask_train=False)
    # unmasked, the tie (items 1 and 2 at 5) is not "higher": item 2 has rank 0
    assert got.tolist() == [[0, 3, 4, 2]]


# -- rank-based sampling ----------------------------------------------------------------
def test_rank_sampling_probs_hand_values():
    p = rank_sampling_probs(3, 1.0)
    e = [math.exp(-1), math.exp(-2), math.exp(-3)]
    assert p.tolist() == pytest.approx([x / sum(e) for x in e], rel=1e-6)
    p = rank_sampling_probs(4, 1e9)  # huge T: uniform
    assert p.tolist() == pytest.approx([0.25] * 4)


def test_sample_without_replacement_distinct_and_zero_weights_never_drawn():
    g = torch.Generator().manual_seed(0)
    w = torch.rand(500, 30, generator=g)
    w[:, ::3] = 0.0
    idx = sample_without_replacement(w, 12, g)
    assert idx.shape == (500, 12)
    assert (idx.sort(1).values.diff(1) > 0).all()
    assert (w.gather(1, idx) > 0).all()
    with pytest.raises(ValueError):
        sample_without_replacement(w, 21, g)  # only 20 positive weights per row


def test_sample_without_replacement_follows_successive_sampling_law():
    # P(first = a, second = b) = w_a / W * w_b / (W - w_a)
    g = torch.Generator().manual_seed(5)
    w = torch.tensor([1.0, 2.0, 3.0, 4.0])
    n = 40000
    idx = sample_without_replacement(w.expand(n, -1), 2, g)
    first = torch.bincount(idx[:, 0], minlength=4).float() / n
    assert first.tolist() == pytest.approx((w / 10).tolist(), abs=0.01)
    p01 = ((idx[:, 0] == 3) & (idx[:, 1] == 2)).float().mean().item()
    assert p01 == pytest.approx(4 / 10 * 3 / 6, abs=0.01)
    # a single row gives a single draw
    assert sample_without_replacement(w, 4, g).sort().values.tolist() == [0, 1, 2, 3]


def test_sample_with_replacement_cdf_truncates_per_row():
    g = torch.Generator().manual_seed(1)
    p = rank_sampling_probs(10, 3.0)
    lengths = torch.tensor([1, 4, 10]).repeat_interleave(4000)
    idx = sample_with_replacement_cdf(p, lengths, 5, g)
    assert (idx < lengths[:, None]).all() and (idx >= 0).all()
    rows = idx[4000:8000].reshape(-1)
    freq = torch.bincount(rows, minlength=4).float() / len(rows)
    expect = p[:4] / p[:4].sum()
    assert freq.tolist() == pytest.approx(expect.tolist(), abs=0.015)


# -- relaxed ranking loss -----------------------------------------------------------------
def naive_relaxed(s1, s2):
    out = 0.0
    for r in range(s1.shape[0]):
        for k in range(s1.shape[1]):
            below = sum(math.exp(x) for x in s1[r, k:].tolist()) + sum(math.exp(x) for x in s2[r].tolist())
            out += math.log(below) - s1[r, k].item()
    return out


def test_relaxed_ranking_loss_hand_value():
    s1 = torch.tensor([[1.0, 0.0]])
    s2 = torch.tensor([[0.0]])
    # k=1: log(e^1 + e^0 + e^0) - 1 ; k=2: log(e^0 + e^0) - 0
    expect = math.log(math.e + 2) - 1 + math.log(2)
    assert relaxed_ranking_loss(s1, s2).item() == pytest.approx(expect, rel=1e-6)


def test_relaxed_ranking_loss_matches_naive_and_is_stable():
    g = torch.Generator().manual_seed(0)
    s1, s2 = torch.randn(4, 6, generator=g) * 3, torch.randn(4, 5, generator=g) * 3
    assert relaxed_ranking_loss(s1, s2).item() == pytest.approx(naive_relaxed(s1, s2), rel=1e-5)
    per = relaxed_ranking_loss(s1, s2, reduction="none")
    assert per.shape == (4,) and per.sum().item() == pytest.approx(naive_relaxed(s1, s2), rel=1e-5)
    # log_mass variant == s2 variant
    lm = torch.logsumexp(s2, 1)
    assert relaxed_ranking_loss(s1, log_mass=lm).item() == pytest.approx(
        relaxed_ranking_loss(s1, s2).item(), rel=1e-6)
    # huge scores: finite (naive exp overflows); the clip caps them at 80
    big = torch.tensor([[500.0, 300.0]], requires_grad=True)
    out = relaxed_ranking_loss(big, torch.tensor([[0.0]]))
    assert torch.isfinite(out)
    out.backward()
    assert big.grad.abs().sum() == 0  # both clipped to 80: no gradient, as the authors'
    x = torch.tensor([[500.0, 300.0]], requires_grad=True)
    y = relaxed_ranking_loss(x, torch.tensor([[0.0]]), clip=None)
    y.backward()
    assert torch.isfinite(y) and torch.isfinite(x.grad).all()


def test_relaxed_ranking_loss_floor():
    s1 = torch.tensor([[-30.0]])
    lm = torch.tensor([-30.0])
    # below = log(2 e^-30) < log(1e-5): floored
    got = relaxed_ranking_loss(s1, log_mass=lm, clip=None, floor=1e-5).item()
    assert got == pytest.approx(math.log(1e-5) + 30.0, rel=1e-6)


# -- exclusion sets -----------------------------------------------------------------------
def test_item_exclusion_contains_and_sample_exclude_train_and_top():
    train = random_train(n_users=40, n_items=120)
    scores = torch.randn(train.shape, generator=torch.Generator().manual_seed(4))
    top = teacher_topk(lambda u: scores[u], train, 25)
    ex = ItemExclusion.from_csr(train, top)
    dense = torch.as_tensor(train.toarray() > 0)
    dense[torch.arange(40)[:, None], top] = True
    users = torch.arange(40)
    probe = torch.randint(0, 120, (40, 50), generator=torch.Generator().manual_seed(0))
    assert torch.equal(ex.contains(users, probe), dense.gather(1, probe))
    assert torch.equal(ex.n_free(users), 120 - dense.sum(1))
    g = torch.Generator().manual_seed(2)
    for n in (1, 10, 40):  # 40 is beyond half of some users' free items: dense fallback
        smp = ex.sample(users, n, g)
        assert smp.shape == (40, n)
        assert not dense.gather(1, smp).any()
        assert (smp.sort(1).values.diff(1) > 0).all()  # distinct
    smp = ex.sample(users, 300, g, replacement=True)
    assert not dense.gather(1, smp).any()
    with pytest.raises(ValueError):
        ex.sample(users, int(ex.n_free(users).min()) + 1, g)


def test_item_exclusion_sample_is_uniform_over_the_complement():
    # one user, items 0..9, items {0, 3, 4, 9} excluded -> 6 free items, each with p 1/6
    ex = ItemExclusion(1, 10, torch.zeros(4, dtype=torch.long), torch.tensor([9, 3, 0, 4]))
    g = torch.Generator().manual_seed(0)
    users = torch.zeros(30000, dtype=torch.long)
    smp = ex.sample(users, 2, g)
    freq = torch.bincount(smp.reshape(-1), minlength=10).float() / smp.numel()
    expect = torch.tensor([0, 1, 1, 0, 0, 1, 1, 1, 1, 0]) / 6
    assert freq.tolist() == pytest.approx(expect.tolist(), abs=0.01)
    smp = ex.sample(users[:5000], 1, g)
    assert set(smp.reshape(-1).tolist()) == {1, 2, 5, 6, 7, 8}
