"""Property tests (hypothesis) of the readers and the whole preprocessing pipeline, adding to
test_data_readers / test_data_preprocess (which cover the parsers and each preprocessing
step alone):

* any bytes, in any supported format, either load or raise :class:`DataError` (never
  another exception, never a hang);
* round trips: a dataset exported and loaded back is the same dataset; users.dat and
  CSV/TSV/.inter files written with random ids, separators, BOM, CRLF and gzip read back to
  the same interactions and raw ids;
* ``build_dataset`` end to end (threshold, dedup, k-core, re-index, split): the splits
  partition exactly the k-core of the de-duplicated pairs, no pair is in two splits, and
  every kept user and item is a real, contiguous internal id.
"""
from __future__ import annotations

import gzip
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from freqd.data.dataset import Dataset
from freqd.data.load import DataConfig, build_dataset, export_split, load_dataset
from freqd.data.readers import (
    RawInteractions,
    read_lightgcn,
    read_split_folder,
    read_table,
    read_users_dat,
)
from freqd.errors import DataError, FreqdError

FAST = settings(max_examples=60, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FREQD_CACHE_DIR", str(tmp_path / "cache"))


def _encode(text: bytes, bom: bool, crlf: bool, gz: bool) -> bytes:
    if crlf:
        text = text.replace(b"\n", b"\r\n")
    if bom:
        text = b"\xef\xbb\xbf" + text
    return gzip.compress(text, mtime=0) if gz else text


def _fresh(tmp_path: Path, name: str) -> Path:
    """A new empty folder per hypothesis example (tmp_path is shared by all examples)."""
    d = Path(os.path.join(tmp_path, f"ex{len(os.listdir(tmp_path))}"))
    d.mkdir()
    return d / name


# -- fuzz: DataError or success, nothing else -------------------------------------------------

# bytes that look like interaction files: digits, separators, signs, quotes, line ends
texty = st.text(alphabet="0123456789 \t\n\r-+,.;|\"'eE_xUSERITM:#", max_size=160).map(str.encode)
junk = st.one_of(texty, st.binary(max_size=160),
                 texty.map(lambda b: gzip.compress(b, mtime=0)),
                 st.binary(max_size=60).map(lambda b: b"\x1f\x8b" + b))


@given(data=junk, reader=st.sampled_from(["lightgcn", "users.dat", "csv", "tsv", "inter"]))
@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_readers_raise_only_data_errors(tmp_path, data, reader):
    f = _fresh(tmp_path, "f.txt")
    f.write_bytes(data)
    try:
        if reader == "lightgcn":
            r = read_lightgcn(f)
        elif reader == "users.dat":
            r = read_users_dat(f)
        else:
            r = read_table(f, inter=reader == "inter", sep="\t" if reader == "tsv" else None)
    except DataError as e:
        assert str(f) in str(e)
        return
    assert len(r.users) == len(r.items) > 0
    assert (r.users >= 0).all() and (r.items >= 0).all()


@given(data=junk, fmt=st.sampled_from(["auto", "lightgcn", "csv"]),
       kcore=st.integers(0, 3))
@FAST
def test_load_dataset_raises_only_freqd_errors(tmp_path, data, fmt, kcore):
    f = _fresh(tmp_path, "d.txt")
    f.write_bytes(data)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = load_dataset(f, format=fmt, kcore_user=kcore, cache=False)
    except FreqdError:
        return
    assert ds.train.nnz + ds.valid.nnz + ds.test.nnz > 0


@given(train=junk, valid=texty)
@FAST
def test_split_folder_raises_only_data_errors(tmp_path, train, valid):
    d = _fresh(tmp_path, "sp")
    d.mkdir()
    (d / "train.txt").write_bytes(train)
    (d / "valid.txt").write_bytes(b"USER\tITEM\n" + valid)
    (d / "test.txt").write_bytes(b"USER\tITEM\n0\t0\n")
    try:
        sf = read_split_folder(d)
    except DataError:
        return
    for u, i in sf.pairs.values():
        assert (u >= 0).all() and (u < sf.n_users).all() and (i < sf.n_items).all()


# -- round trips ------------------------------------------------------------------------------


@st.composite
def datasets(draw):
    """A random Dataset: disjoint train/valid/test, train non-empty, some empty users/items."""
    n_users = draw(st.integers(1, 12))
    n_items = draw(st.integers(1, 15))
    cells = draw(st.lists(st.tuples(st.integers(0, n_users - 1), st.integers(0, n_items - 1)),
                          min_size=1, max_size=60, unique=True))
    which = draw(st.lists(st.sampled_from([0, 0, 0, 1, 2]), min_size=len(cells), max_size=len(cells)))
    which[0] = 0
    parts = []
    for s in range(3):
        sel = [c for c, w in zip(cells, which) if w == s]
        parts.append((np.array([c[0] for c in sel], np.int64), np.array([c[1] for c in sel], np.int64)))
    return Dataset.from_pairs("rand", *parts, n_users=n_users, n_items=n_items)


@given(ds=datasets(), gz=st.booleans())
@FAST
def test_export_then_load_is_the_same_dataset(tmp_path, ds, gz):
    out = _fresh(tmp_path, "exp")
    export_split(ds, out)
    if gz:  # the reader takes .gz copies of any split file
        for s in ("train", "test"):
            p = out / f"{s}.txt"
            p.with_name(p.name + ".gz").write_bytes(gzip.compress(p.read_bytes(), mtime=0))
            p.unlink()
    back = load_dataset(out, cache=False)
    assert (back.n_users, back.n_items) == (ds.n_users, ds.n_items)
    assert back.fingerprint() == ds.fingerprint()
    for s in ("train", "valid", "test"):
        assert (back.split(s) != ds.split(s)).nnz == 0


@given(rows=st.lists(st.lists(st.integers(0, 10**12), max_size=6), min_size=1, max_size=15),
       bom=st.booleans(), crlf=st.booleans(), gz=st.booleans(), final_nl=st.booleans())
@FAST
def test_users_dat_round_trip(tmp_path, rows, bom, crlf, gz, final_nl):
    assume(rows[-1])  # trailing users without items are indistinguishable from blank lines
    text = "\n".join(" ".join(map(str, [len(r), *r])) for r in rows) + ("\n" if final_nl else "")
    f = _fresh(tmp_path, "users.dat" + (".gz" if gz else ""))
    f.write_bytes(_encode(text.encode(), bom, crlf, gz))
    r = read_users_dat(f)
    assert r.users.tolist() == [u for u, row in enumerate(rows) for _ in row]
    assert r.items.tolist() == [i for row in rows for i in row]


token = st.text(alphabet="abcXYZ019_-.@é", min_size=1, max_size=6).filter(lambda s: s.strip() == s)


@given(pairs=st.lists(st.tuples(token, token), min_size=1, max_size=30),
       fmt=st.sampled_from(["csv", "tsv", "semicolon", "inter"]),
       bom=st.booleans(), crlf=st.booleans(), gz=st.booleans())
@FAST
def test_token_files_round_trip(tmp_path, pairs, fmt, bom, crlf, gz):
    sep = {"csv": ",", "tsv": "\t", "semicolon": ";", "inter": "\t"}[fmt]
    header = "user_id:token\titem_id:token" if fmt == "inter" else f"user{sep}item"
    text = header + "\n" + "".join(f"{u}{sep}{i}\n" for u, i in pairs)
    f = _fresh(tmp_path, "d." + ("inter" if fmt == "inter" else "csv") + (".gz" if gz else ""))
    f.write_bytes(_encode(text.encode(), bom, crlf, gz))
    r = read_table(f, inter=fmt == "inter")
    assert [str(x) for x in r.user_ids[r.users]] == [u for u, _ in pairs]
    assert [str(x) for x in r.item_ids[r.items]] == [i for _, i in pairs]
    # codes follow ascending raw-id order (numeric when every id is a plain integer)
    for ids in (r.user_ids, r.item_ids):
        assert all(a < b for a, b in zip(ids[:-1], ids[1:]))


# -- build_dataset end to end -----------------------------------------------------------------


def _kcore_reference(pairs: set, ku: int, ki: int) -> set:
    """Iterative k-core by brute force."""
    pairs = set(pairs)
    while True:
        du, di = {}, {}
        for u, i in pairs:
            du[u] = du.get(u, 0) + 1
            di[i] = di.get(i, 0) + 1
        keep = {(u, i) for u, i in pairs if du[u] >= ku and di[i] >= ki}
        if keep == pairs:
            return pairs
        pairs = keep


@given(raw=st.lists(st.tuples(st.integers(0, 9), st.sampled_from([3, 11, 40, 41, 99, 1000]),
                              st.integers(1, 5)), min_size=1, max_size=80),
       ku=st.integers(0, 3), ki=st.integers(0, 3), threshold=st.sampled_from([None, 2, 4]),
       ratios=st.sampled_from([(0.8, 0.1, 0.1), (0.6, 0.2, 0.2), (1.0, 0.0, 0.0), (0.5, 0.0, 0.5)]),
       order=st.sampled_from(["file", "random", "timestamp"]), rule=st.sampled_from(["paper", "paper-clamped"]),
       seed=st.integers(0, 3))
@settings(max_examples=150, deadline=None)
def test_build_dataset_partitions_the_kcore(raw, ku, ki, threshold, ratios, order, rule, seed):
    users = np.array([r[0] for r in raw], np.int64)
    items = np.array([r[1] for r in raw], np.int64)
    ratings = np.array([r[2] for r in raw], np.float64)
    ts = np.arange(len(raw), dtype=np.float64)[::-1].copy()
    ri = RawInteractions(users, items, "mem", ratings=ratings, timestamps=ts)
    cfg = DataConfig(kcore_user=ku, kcore_item=ki, rating_threshold=threshold,
                     split_ratios=ratios, split_order=order, split_rule=rule, seed=seed)
    kept = {(u, i) for u, i, r in raw if threshold is None or r >= threshold}
    expect = _kcore_reference(kept, ku, ki) if kept else set()
    try:
        ds = build_dataset(ri, cfg, "prop")
    except DataError:
        assert not expect
        return
    assert expect
    uid = ds.user_ids if ds.user_ids is not None else np.arange(ds.n_users)
    iid = ds.item_ids if ds.item_ids is not None else np.arange(ds.n_items)
    seen: set = set()
    for s in ("train", "valid", "test"):
        m = ds.split(s).tocoo()
        got = {(int(uid[u]), int(iid[i])) for u, i in zip(m.row, m.col)}
        assert len(got) == m.nnz
        assert not (got & seen), f"a pair in two splits ({s})"
        seen |= got
    assert seen == expect  # the splits partition exactly the k-core of the kept pairs
    # contiguous internal ids: every user and item has an interaction somewhere
    union = (ds.train + ds.valid + ds.test).tocsr()
    assert (np.diff(union.indptr) > 0).all()
    assert (np.bincount(union.indices, minlength=ds.n_items) > 0).all()
    # every user keeps at least one training interaction
    assert (np.diff(ds.train.indptr) > 0).all()
