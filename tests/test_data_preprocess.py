"""Preprocessing: hand-computed cases and hypothesis properties against slow references."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from freqd.data.preprocess import (
    dedup_mask,
    kcore_mask,
    rating_mask,
    reindex,
    split_bounds,
    split_per_user,
)

pairs_st = st.lists(st.tuples(st.integers(0, 12), st.integers(0, 15)), min_size=0, max_size=120)
ratios_st = st.sampled_from([(0.8, 0.1, 0.1), (0.7, 0.2, 0.1), (0.6, 0.2, 0.2), (0.5, 0.0, 0.5),
                             (1.0, 0.0, 0.0), (0.9, 0.1, 0.0), (0.34, 0.33, 0.33)])


def _arrays(pairs):
    if not pairs:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    u, i = zip(*pairs)
    return np.array(u, np.int64), np.array(i, np.int64)


# -- rating / dedup --------------------------------------------------------------------------
def test_rating_mask_keeps_at_or_above_threshold():
    assert rating_mask(np.array([1.0, 3.5, 4.0, 5.0]), 4.0).tolist() == [False, False, True, True]


def test_dedup_keeps_first_occurrence():
    u = np.array([0, 1, 0, 0, 1, 2])
    i = np.array([5, 5, 5, 3, 5, 5])
    assert dedup_mask(u, i).tolist() == [True, True, False, True, False, True]


@given(pairs_st)
def test_dedup_matches_reference(pairs):
    u, i = _arrays(pairs)
    seen, ref = set(), []
    for p in pairs:
        ref.append(p not in seen)
        seen.add(p)
    assert dedup_mask(u, i).tolist() == ref


# -- k-core ----------------------------------------------------------------------------------
def _kcore_reference(pairs, ku, ki):
    """Remove one offending interaction group at a time until none is left (order-free)."""
    alive = list(range(len(pairs)))
    while True:
        du, di = {}, {}
        for k in alive:
            du[pairs[k][0]] = du.get(pairs[k][0], 0) + 1
            di[pairs[k][1]] = di.get(pairs[k][1], 0) + 1
        bad = next((k for k in alive if du[pairs[k][0]] < ku or di[pairs[k][1]] < ki), None)
        if bad is None:
            return alive
        victim_u = pairs[bad][0] if du[pairs[bad][0]] < ku else None
        victim_i = pairs[bad][1] if victim_u is None else None
        alive = [k for k in alive
                 if not (victim_u is not None and pairs[k][0] == victim_u)
                 and not (victim_i is not None and pairs[k][1] == victim_i)]


@given(pairs_st, st.integers(0, 4), st.integers(0, 4))
@settings(max_examples=150, deadline=None)
def test_kcore_is_the_maximal_core(pairs, ku, ki):
    u, i = _arrays(pairs)
    m = kcore_mask(u, i, ku, ki)
    if len(u) and m.any():
        assert np.bincount(u[m])[np.unique(u[m])].min() >= ku
        assert np.bincount(i[m])[np.unique(i[m])].min() >= ki
    assert np.flatnonzero(m).tolist() == _kcore_reference(pairs, ku, ki)


def test_kcore_hand_case_needs_iteration():
    # already a 2-core: nothing goes
    u = np.array([0, 0, 1, 1, 2, 2])
    i = np.array([8, 9, 8, 7, 7, 9])
    assert kcore_mask(u, i, 2, 2).tolist() == [True, True, True, True, True, True]
    u = np.array([0, 0, 1, 1, 2])
    i = np.array([8, 9, 8, 7, 7])
    # item 9 has 1 user -> user 0 left with 1 -> drop -> item 8 has 1 -> ... all go
    assert not kcore_mask(u, i, 2, 2).any()
    assert kcore_mask(u, i, 2, 0).tolist() == [True, True, True, True, False]


# -- reindex ---------------------------------------------------------------------------------
@given(st.lists(st.integers(0, 2**40), max_size=60) | st.lists(st.integers(0, 30), max_size=60))
def test_reindex_roundtrip_and_order(ids):
    ids = np.array(ids, dtype=np.int64)
    new, uniq = reindex(ids)
    assert np.array_equal(uniq[new], ids)
    assert np.all(np.diff(uniq) > 0)
    ref_u, ref_inv = np.unique(ids, return_inverse=True)
    assert np.array_equal(uniq, ref_u) and np.array_equal(new, ref_inv.reshape(-1))


def test_reindex_strings():
    new, uniq = reindex(np.array(["b", "a", "c", "a"]))
    assert uniq.tolist() == ["a", "b", "c"] and new.tolist() == [1, 0, 2, 0]


# -- split -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "n, l, r, r_clamped",
    [(1, 1, 0, 1), (2, 1, 1, 1), (5, 4, 4, 4), (7, 5, 6, 6), (10, 8, 9, 9), (11, 8, 9, 9),
     (20, 16, 18, 18)],
)
def test_split_bounds_paper_rule(n, l, r, r_clamped):
    bl, br = split_bounds(np.array([n]), (0.8, 0.1, 0.1), "paper")
    assert (bl[0], br[0]) == (l, r)
    assert split_bounds(np.array([n]), (0.8, 0.1, 0.1), "paper-clamped")[1][0] == r_clamped


def test_split_bounds_exact_rationals():
    # 0.7 + 0.2 in floats is 0.8999999999999999; the rule must use 9/10 exactly
    l, r = split_bounds(np.array([10, 30]), (0.7, 0.2, 0.1))
    assert l.tolist() == [7, 21] and r.tolist() == [9, 27]


def test_split_file_order_hand_case():
    users = np.array([1, 0, 1, 1, 0, 1, 0, 0, 0, 1, 1, 1, 1, 1, 1])
    tr, va, te = split_per_user(users, (0.8, 0.1, 0.1), "file", "paper")
    # user 0: rows 1,4,6,7,8 (n=5: l=4, r=4); user 1: 10 rows (l=8, r=9)
    assert tr.tolist() == [1, 4, 6, 7, 0, 2, 3, 5, 9, 10, 11, 12]
    assert va.tolist() == [13]
    assert te.tolist() == [8, 14]


def test_split_single_interaction_user_not_duplicated():
    for rule in ("paper", "paper-clamped"):
        tr, va, te = split_per_user(np.array([0, 1, 1, 1, 1, 1]), rule=rule)
        assert tr.tolist() == [0, 1, 2, 3, 4] and va.tolist() == [] and te.tolist() == [5]


@given(
    st.lists(st.integers(0, 6), min_size=0, max_size=80),
    ratios_st,
    st.sampled_from(["file", "timestamp", "random"]),
    st.sampled_from(["paper", "paper-clamped"]),
    st.integers(0, 5),
)
@settings(max_examples=200, deadline=None)
def test_split_properties(users, ratios, order, rule, seed):
    users = np.array(users, dtype=np.int64)
    ts = np.random.default_rng(seed).integers(0, 5, len(users)).astype(float)
    tr, va, te = split_per_user(users, ratios, order, rule, ts, seed)
    allidx = np.concatenate([tr, va, te])
    assert sorted(allidx.tolist()) == list(range(len(users)))  # partition
    counts = np.bincount(users, minlength=7) if len(users) else np.zeros(7, int)
    l, r = split_bounds(counts, ratios, rule)
    for u in range(7):
        n = counts[u]
        if n == 0:
            continue
        assert np.sum(users[tr] == u) == l[u]
        assert np.sum(users[va] == u) == max(0, r[u] - l[u])
        rows = [k for k in range(len(users)) if users[k] == u]
        got = [k for k in allidx.tolist() if users[k] == u]
        if order == "file":
            assert got == rows
        elif order == "timestamp":
            assert got == sorted(rows, key=lambda k: (ts[k], k))
    # grouped by user, ascending
    for part in (tr, va, te):
        assert np.all(np.diff(users[part]) >= 0)


def test_random_split_is_seeded():
    users = np.repeat(np.arange(20), 10)
    a = split_per_user(users, order="random", seed=1)
    b = split_per_user(users, order="random", seed=1)
    c = split_per_user(users, order="random", seed=2)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(a[0], c[0])
