"""Parquet interaction tables (format=parquet, through pandas + pyarrow) load exactly like
the same table written as CSV; bad files and options are refused with the file and row."""
from __future__ import annotations

import sys

import numpy as np
import pytest

from freqd.cli import main
from freqd.data import load_dataset
from freqd.errors import ConfigError, DataError

pd = pytest.importorskip("pandas")
pytest.importorskip("pyarrow")


@pytest.fixture(autouse=True)
def isolated_env(tmp_path, monkeypatch):
    monkeypatch.setenv("FREQD_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("FREQD_DATA_DIR", raising=False)


def _frame(seed=0, n=600):
    rng = np.random.default_rng(seed)
    users = rng.integers(0, 40, n)
    items = rng.integers(0, 60, n)
    return pd.DataFrame({
        "user_id": [f"u{u}" for u in users],
        "item": items.astype(np.int64),  # integer ids: re-indexed in numeric order, as in CSV
        "rating": rng.integers(1, 6, n).astype(np.float64),
        "ts": rng.permutation(n).astype(np.int64) * 60 + 1_600_000_000,
    })


def _same(a, b):
    assert (a.n_users, a.n_items) == (b.n_users, b.n_items)
    assert list(a.user_ids) == list(b.user_ids) and list(a.item_ids) == list(b.item_ids)
    for s in ("train", "valid", "test"):
        x, y = getattr(a, s), getattr(b, s)
        assert (x != y).nnz == 0, s


def test_parquet_equals_csv_through_the_whole_pipeline(tmp_path):
    df = _frame()
    df.to_parquet(tmp_path / "d.parquet", index=False)
    df.to_csv(tmp_path / "d.csv", index=False)
    kw = dict(rating_col="rating", rating_threshold=3, kcore_user=3, timestamp_col="ts", split_order="timestamp")
    a = load_dataset(tmp_path / "d.parquet", **kw)
    b = load_dataset(tmp_path / "d.csv", **kw)
    _same(a, b)
    assert a.meta["format"] == "parquet" and a.n_users > 5
    # plain file order too, and the integer item ids sort numerically (10 after 9)
    _same(load_dataset(tmp_path / "d.parquet"), load_dataset(tmp_path / "d.csv"))
    assert [int(x) for x in a.item_ids] == sorted(int(x) for x in a.item_ids)
    # no extension: recognised by its magic bytes
    (tmp_path / "blob").write_bytes((tmp_path / "d.parquet").read_bytes())
    _same(load_dataset(tmp_path / "blob"), load_dataset(tmp_path / "d.csv"))


def test_datetime_timestamps_order_like_epoch_seconds(tmp_path):
    df = _frame(1)
    dt = df.assign(ts=pd.to_datetime(df["ts"], unit="s"))
    dt.to_parquet(tmp_path / "dt.parquet", index=False)
    df.to_parquet(tmp_path / "s.parquet", index=False)
    kw = dict(timestamp_col="ts", split_order="timestamp")
    _same(load_dataset(tmp_path / "dt.parquet", **kw), load_dataset(tmp_path / "s.parquet", **kw))


def test_bad_parquet_input(tmp_path, capsys):
    df = _frame(2, n=50)
    f = tmp_path / "d.parquet"
    df.to_parquet(f, index=False)
    with pytest.raises(DataError, match=r"d\.parquet: no column 'stars' \(option rating_col\)"):
        load_dataset(f, rating_col="stars")
    bad = df.copy()
    bad.loc[7, "user_id"] = None
    bad.to_parquet(tmp_path / "nullid.parquet", index=False)
    with pytest.raises(DataError, match=r"nullid\.parquet: row 8: missing id in column 'user_id'"):
        load_dataset(tmp_path / "nullid.parquet")
    bad = df.copy()
    bad.loc[3, "rating"] = np.nan
    bad.to_parquet(tmp_path / "nan.parquet", index=False)
    with pytest.raises(DataError, match=r"nan\.parquet: row 4: column 'rating'.*not a finite number"):
        load_dataset(tmp_path / "nan.parquet", rating_threshold=3)
    df.iloc[:0].to_parquet(tmp_path / "empty.parquet", index=False)
    with pytest.raises(DataError, match="no interactions"):
        load_dataset(tmp_path / "empty.parquet")
    (tmp_path / "junk.parquet").write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(DataError, match=r"junk\.parquet: not a readable Parquet file"):
        load_dataset(tmp_path / "junk.parquet")
    with pytest.raises(ConfigError, match="sep"):
        load_dataset(f, format="parquet", sep=",")
    # through the CLI: one line, exit status 2
    assert main(["data", "info", str(tmp_path / "nullid.parquet")]) == 2
    err = capsys.readouterr().err
    assert "row 8" in err and "Traceback" not in err


def test_pandas_missing_names_the_extra(tmp_path, monkeypatch):
    _frame(3, n=30).to_parquet(tmp_path / "d.parquet", index=False)
    monkeypatch.setitem(sys.modules, "pandas", None)
    with pytest.raises(ConfigError, match=r"pip install 'freqd\[parquet\]'"):
        load_dataset(tmp_path / "d.parquet", cache=False)
