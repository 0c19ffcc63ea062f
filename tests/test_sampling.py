"""Negative sampler and epoch batching: exclusion, uniformity, reproducibility."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from freqd.data.sampling import TrainSampler, UniformNegativeSampler, epoch_batches
from freqd.errors import DataError


def random_csr(n_users: int, n_items: int, density: float, seed: int) -> sp.csr_matrix:
    rng = np.random.default_rng(seed)
    m = (rng.random((n_users, n_items)) < density).astype(np.float32)
    # keep at least one non-positive per user
    m[np.arange(n_users), rng.integers(0, n_items, n_users)] = 0.0
    return sp.csr_matrix(m)


@settings(max_examples=60, deadline=None)
@given(
    n_users=st.integers(1, 12),
    n_items=st.integers(1, 30),
    density=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**16),
    n_neg=st.integers(1, 7),
    bitset=st.booleans(),
)
def test_never_returns_a_training_positive(n_users, n_items, density, seed, n_neg, bitset):
    m = random_csr(n_users, n_items, density, seed)
    dense = m.toarray() > 0
    s = UniformNegativeSampler(m, n_neg, seed=seed, bitset=bitset)
    assert (s._bits is not None) == bitset
    users = torch.arange(n_users).repeat(5)
    neg = s.sample(users).numpy()
    assert neg.shape == (len(users), n_neg)
    assert neg.min() >= 0 and neg.max() < n_items
    assert not dense[users.numpy()[:, None], neg].any()


@pytest.mark.parametrize("bitset", [False, True])
def test_nearly_full_user_gets_its_only_negative(bitset):
    m = np.ones((3, 50), dtype=np.float32)
    m[0, 17] = 0
    m[1, [0, 49]] = 0
    m[2, :] = 0
    s = UniformNegativeSampler(sp.csr_matrix(m), 200, seed=1, bitset=bitset)
    neg = s.sample(torch.tensor([0, 1, 2])).numpy()
    assert (neg[0] == 17).all()
    assert set(neg[1]) == {0, 49}
    assert len(set(neg[2])) > 40  # empty user: any item


def test_user_with_no_negative_is_a_clear_error():
    m = sp.csr_matrix(np.array([[1, 1, 1], [1, 0, 0]], dtype=np.float32))
    with pytest.raises(DataError, match="user 0 interacted with all 3 items"):
        UniformNegativeSampler(m, 1)


@pytest.mark.parametrize("bitset", [False, True])
def test_roughly_uniform_over_non_positives(bitset):
    m = random_csr(4, 40, 0.5, seed=3)
    dense = m.toarray() > 0
    s = UniformNegativeSampler(m, 20000, seed=7, bitset=bitset)
    neg = s.sample(torch.arange(4)).numpy()
    for u in range(4):
        free = np.flatnonzero(~dense[u])
        counts = np.bincount(neg[u], minlength=40)
        assert counts[dense[u]].sum() == 0
        expected = neg.shape[1] / len(free)
        chi2 = ((counts[free] - expected) ** 2 / expected).sum()
        # df = len(free) - 1 <= 39; chi2 of 100 has p < 1e-6 at that df
        assert chi2 < 100, (u, chi2)


def test_same_seed_same_batches_and_state_resume():
    m = random_csr(20, 30, 0.2, seed=0)
    a = list(epoch_batches(m, 16, torch.Generator().manual_seed(5), n_neg=3))
    b = list(epoch_batches(m, 16, torch.Generator().manual_seed(5), n_neg=3))
    assert len(a) == len(b) == -(-m.nnz // 16)
    for x, y in zip(a, b):
        for k in ("users", "pos", "neg"):
            assert torch.equal(x[k], y[k])
    c = list(epoch_batches(m, 16, torch.Generator().manual_seed(6), n_neg=3))
    assert not all(torch.equal(x["neg"], y["neg"]) for x, y in zip(a, c))

    ts = TrainSampler(m, 16, n_neg=3, seed=5)
    list(ts.epoch())
    state = ts.get_state().clone()
    second = list(ts.epoch())
    ts2 = TrainSampler(m, 16, n_neg=3, seed=123)
    ts2.set_state(state)
    again = list(ts2.epoch())
    for x, y in zip(second, again):
        for k in ("users", "pos", "neg"):
            assert torch.equal(x[k], y[k])


def test_epoch_covers_every_training_pair_once():
    m = random_csr(15, 25, 0.3, seed=2)
    ts = TrainSampler(m, 7, n_neg=2, seed=0)
    batches = list(ts.epoch())
    assert len(batches) == ts.n_batches
    users = torch.cat([b["users"] for b in batches]).numpy()
    pos = torch.cat([b["pos"] for b in batches]).numpy()
    got = sorted(zip(users.tolist(), pos.tolist()))
    coo = m.tocoo()
    assert got == sorted(zip(coo.row.tolist(), coo.col.tolist()))
    assert all(b["neg"].shape == (len(b["users"]), 2) for b in batches)
    assert (m.toarray()[users, pos] == 1).all()
    assert len(list(TrainSampler(m, 7, seed=0, drop_last=True).epoch())) == m.nnz // 7


def test_tiny_real_data(tiny_dir):
    a = np.loadtxt(tiny_dir / "train.txt", dtype=np.int64, skiprows=1, delimiter="\t")
    m = sp.csr_matrix((np.ones(len(a), np.float32), (a[:, 0], a[:, 1])), shape=(241, 979))
    s = UniformNegativeSampler(m, 50, seed=0)
    users = torch.from_numpy(a[:, 0])
    neg = s.sample(users).numpy()
    assert not (m.toarray()[a[:, 0][:, None], neg] > 0).any()


def test_bitset_default_and_determinism_given_uniforms():
    m = random_csr(10, 20, 0.3, seed=4)
    assert UniformNegativeSampler(m, 1)._bits is None
    s = UniformNegativeSampler(m, 32)
    assert s._bits is not None
    u = torch.rand((10, 32), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    users = torch.arange(10)
    assert torch.equal(s.from_uniform(users, u), s.from_uniform(users, u))
    # a draw that lands on a non-positive is kept as it is
    j = s.from_uniform(users, u)
    cand = (u * 20).long()
    ok = m.toarray()[users[:, None].numpy(), cand.numpy()] == 0
    assert torch.equal(j[torch.from_numpy(ok)], cand[torch.from_numpy(ok)])
