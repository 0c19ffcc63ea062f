"""load_dataset: config, resolution order, download, cache, export, and the paper's data."""
from __future__ import annotations

import dataclasses
import gzip
import hashlib
import os
import shutil
import urllib.error
from pathlib import Path

import numpy as np
import pytest

from freqd.data import DataConfig, export_split, load_dataset
from freqd.data import registry as reg
from freqd.errors import ConfigError, DataError, FreqdError

CITEULIKE_SHA = {  # processed/ files, sha256 of the uncompressed text (citeulike/SOURCE.md)
    "train.txt": "86b2fa2b9d30a9ea02f2f3af7e9844589a9014c742a36a709192ec98f1e874b8",
    "valid.txt": "bfc460885926f806410709598219463f4ec44eb86f11770ca331c11169c40ef5",
    "test.txt": "0c760cc46c1e6653e384949a02d81ff099a26e14a59925456299ece4c39eb78d",
}


@pytest.fixture(autouse=True)
def isolated_env(tmp_path, monkeypatch):
    """Own cache, no ambient data dir, never the network."""
    monkeypatch.setenv("FREQD_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("FREQD_DATA_DIR", raising=False)
    monkeypatch.setenv("FREQD_OFFLINE", "1")


def pairs(m):
    m = m.tocoo()
    return set(zip(m.row.tolist(), m.col.tolist()))


def same_data(a, b):
    return (a.n_users, a.n_items) == (b.n_users, b.n_items) and all(
        pairs(a.split(s)) == pairs(b.split(s)) for s in ("train", "valid", "test"))


def raw_root(tmp_path, shared_data, name, files):
    """A data root holding only the raw files of one dataset (symlinks)."""
    d = tmp_path / "raw" / name
    d.mkdir(parents=True)
    for f in files:
        (d / f).symlink_to(shared_data / name / f)
    return tmp_path / "raw"


# -- DataConfig --------------------------------------------------------------------------------
def test_config_defaults_and_normalisation():
    c = DataConfig(sep="tab", split_ratios=[0.6, 0.2, 0.2])
    assert c.sep == "\t" and c.split_ratios == (0.6, 0.2, 0.2)
    assert DataConfig().split_ratios == (0.8, 0.1, 0.1)


@pytest.mark.parametrize(
    "kw, option",
    [
        ({"split_ratios": (0.8, 0.1, 0.2)}, "split_ratios"),
        ({"split_ratios": (0.0, 0.5, 0.5)}, "split_ratios"),
        ({"split_ratios": (0.5, 0.5)}, "split_ratios"),
        ({"kcore_user": -1}, "kcore_user"),
        ({"kcore_item": 2.5}, "kcore_item"),
        ({"sep": "ab"}, "sep"),
        ({"format": "feather"}, "format"),
        ({"split_order": "time"}, "split_order"),
        ({"user_col": "x", "item_col": "x"}, "item_col"),
        ({"format": "split", "kcore_user": 5}, "kcore_user"),
        ({"format": "users.dat", "rating_threshold": 4}, "rating_threshold"),
        ({"format": "lightgcn", "split_order": "timestamp"}, "split_order"),
        ({"rating_threshold": float("nan")}, "rating_threshold"),
    ],
)
def test_config_rejects(kw, option):
    with pytest.raises(ConfigError, match=option):
        DataConfig(**kw)


def test_unknown_override_is_an_error(tiny_dir):
    with pytest.raises(ConfigError, match="kcore_user"):
        load_dataset(tiny_dir, kcor_user=5)


def test_string_overrides_are_coerced(tmp_path):
    f = tmp_path / "d.csv"
    f.write_text("user,item\n" + "".join(f"u{u},i{i}\n" for u in range(4) for i in range(5)))
    ds = load_dataset(f, kcore_user="5", split_ratios="0.6,0.2,0.2", dedup="true")
    assert ds.info()["train"] == 12 and ds.info()["valid"] == 4


# -- resolution ---------------------------------------------------------------------------------
def test_tiny_by_name_and_by_path(shared_data, tiny_dir):
    a = load_dataset("tiny", data_dir=shared_data)
    b = load_dataset(tiny_dir)
    assert a.info()["train"] == 3450 and a.n_users == 241 and a.n_items == 979
    assert a.fingerprint() == b.fingerprint()
    assert a.meta["format"] == "split" and b.meta["format"] == "split"


def _tiny_copy(root: Path, tiny_dir: Path, drop_last: int = 0) -> Path:
    d = root / "tiny"
    d.mkdir(parents=True)
    for f in ("train.txt", "valid.txt", "test.txt"):
        shutil.copy(tiny_dir / f, d / f)
    lines = (tiny_dir / "train.txt").read_text().splitlines(keepends=True)
    (d / "train.txt").write_text("".join(lines[: len(lines) - drop_last]))
    return root


def test_resolution_order(tmp_path, tiny_dir, monkeypatch):
    a = _tiny_copy(tmp_path / "a", tiny_dir, drop_last=1)
    b = _tiny_copy(tmp_path / "b", tiny_dir, drop_last=2)
    c = _tiny_copy(tmp_path / "cache", tiny_dir, drop_last=3)  # the user cache
    monkeypatch.setenv("FREQD_DATA_DIR", str(b))
    assert load_dataset("tiny", data_dir=a).train.nnz == 3449  # data_dir beats env
    assert load_dataset("tiny").train.nnz == 3448  # env beats cache
    monkeypatch.delenv("FREQD_DATA_DIR")
    assert load_dataset("tiny").train.nnz == 3447  # cache
    shutil.rmtree(c / "tiny")
    monkeypatch.setattr(reg, "_shared_data", lambda: None)
    with pytest.raises(DataError, match="FREQD_DATA_DIR"):
        load_dataset("tiny")


def test_unknown_name_or_missing_path(tmp_path):
    with pytest.raises(DataError, match="citeulike-t"):
        load_dataset("movielens")
    with pytest.raises(DataError, match="no such file"):
        load_dataset(tmp_path / "nope.csv")


def test_offline_error_says_where_to_put_the_file(tmp_path):
    with pytest.raises(DataError) as ei:
        load_dataset("citeulike-t", data_dir=tmp_path / "empty")
    msg = str(ei.value)
    assert "users.dat" in msg and str(tmp_path / "cache" / "citeulike") in msg
    assert "FREQD_DATA_DIR" in msg and "citeulike/" in msg


def test_network_failure_error(tmp_path, monkeypatch):
    monkeypatch.delenv("FREQD_OFFLINE")

    def fail(*a, **k):
        raise urllib.error.URLError("no route to host")

    monkeypatch.setattr(reg.urllib.request, "urlopen", fail)
    with pytest.raises(DataError) as ei:
        load_dataset("gowalla")
    msg = str(ei.value)
    assert "no route to host" in msg and "train.txt and test.txt" in msg
    assert "raw.githubusercontent.com" in msg and "FREQD_DATA_DIR" in msg


def _serve_users_dat(tmp_path, shared_data, monkeypatch, sha=None):
    plain = tmp_path / "srv" / "users.dat"
    plain.parent.mkdir()
    plain.write_bytes(gzip.decompress((shared_data / "citeulike" / "users.dat.gz").read_bytes()))
    spec = reg.REGISTRY["citeulike-t"]
    good = spec.raw[0].sha256
    raw = (reg.RawFile("users.dat", plain.as_uri(), sha or good),)
    monkeypatch.setitem(reg.REGISTRY, "citeulike-t", dataclasses.replace(spec, raw=raw))
    monkeypatch.delenv("FREQD_OFFLINE")


def test_download_verified_into_cache(tmp_path, shared_data, monkeypatch):
    _serve_users_dat(tmp_path, shared_data, monkeypatch)
    ds = load_dataset("citeulike-t")
    assert ds.info()["train"] == 98405 and ds.meta["from"] == "raw"
    assert (tmp_path / "cache" / "citeulike" / "users.dat").is_file()


def test_download_checksum_mismatch_keeps_nothing(tmp_path, shared_data, monkeypatch):
    _serve_users_dat(tmp_path, shared_data, monkeypatch, sha="0" * 64)
    with pytest.raises(DataError, match="checksum mismatch"):
        load_dataset("citeulike-t")
    folder = tmp_path / "cache" / "citeulike"
    assert not folder.exists() or not any(folder.iterdir())


# -- the paper's data -----------------------------------------------------------------------------
def test_citeulike_processed_and_raw_agree(tmp_path, shared_data):
    proc = load_dataset("citeulike-t", data_dir=shared_data, cache=False)
    raw = load_dataset("citeulike", data_dir=raw_root(tmp_path, shared_data, "citeulike",
                                                      ["users.dat.gz"]), cache=False)
    assert proc.meta["from"] == "processed" and raw.meta["from"] == "raw"
    for ds in (proc, raw):
        i = ds.info()
        assert (i["users"], i["items"], i["train"], i["valid"], i["test"]) == (
            5219, 25181, 98405, 12451, 14724)
        assert i["users_without_valid"] == 701
    assert same_data(proc, raw)
    # the raw ids are kept for the build from users.dat: user = 0-based line of users.dat
    # (line 0 lists 4 items and line 3 fewer than 5, so the 5-core drops them)
    assert raw.user_ids[:3].tolist() == [1, 2, 4] and len(raw.user_ids) == 5219
    assert proc.user_ids is None


def test_citeulike_raw_export_is_byte_identical(tmp_path, shared_data):
    raw = load_dataset("citeulike-t", data_dir=raw_root(tmp_path, shared_data, "citeulike",
                                                        ["users.dat.gz"]), cache=False)
    out = export_split(raw, tmp_path / "out")
    for f, sha in CITEULIKE_SHA.items():
        assert hashlib.sha256((out / f).read_bytes()).hexdigest() == sha, f
    assert (out / "config.yaml").read_text() == (
        shared_data / "citeulike" / "processed" / "config.yaml").read_text()


def test_citeulike_from_explicit_path(shared_data):
    ds = load_dataset(shared_data / "citeulike" / "users.dat.gz", kcore_user=5, cache=False)
    assert ds.meta["format"] == "users.dat"
    assert same_data(ds, load_dataset("citeulike-t", data_dir=shared_data, cache=False))


@pytest.mark.slow
def test_gowalla_raw_reproduces_processed(tmp_path, shared_data):
    proc = load_dataset("gowalla", data_dir=shared_data, cache=False)
    raw = load_dataset("gowalla", data_dir=raw_root(tmp_path, shared_data, "gowalla",
                                                    ["train.txt.gz", "test.txt.gz"]), cache=False)
    for ds in (proc, raw):
        i = ds.info()
        assert (i["users"], i["items"], i["train"], i["valid"], i["test"]) == (
            29858, 40981, 810054, 100499, 116817)
    assert proc.fingerprint() == raw.fingerprint()
    assert np.array_equal(proc.test.indices, raw.test.indices)


def test_named_overrides_rebuild_from_raw(tmp_path, shared_data):
    ds = load_dataset("citeulike-t", data_dir=shared_data, kcore_item=5, cache=False)
    assert ds.meta["from"] == "raw"
    assert (ds.n_users, ds.n_items, ds.info()["interactions"]) == (3527, 6339, 77546)
    with pytest.raises(ConfigError, match="format"):
        load_dataset("citeulike-t", data_dir=shared_data, format="csv")


# -- cache ----------------------------------------------------------------------------------------
def test_npz_cache_roundtrip(tmp_path, tiny_dir):
    f = tmp_path / "d.csv"
    f.write_text("user,item\n" + "".join(f"u{u},i{(u * 7 + k) % 13}\n"
                                         for u in range(30) for k in range(6)))
    a = load_dataset(f)
    cached = list((tmp_path / "cache" / "parsed").glob("*.npz"))
    assert len(cached) == 1 and "cache" not in a.meta
    b = load_dataset(f)
    assert b.meta["cache"] == str(cached[0])
    assert a.fingerprint() == b.fingerprint() and a.user_ids.tolist() == b.user_ids.tolist()
    # another option, another key; a corrupt entry is rebuilt
    load_dataset(f, split_order="random", seed=3)
    assert len(list((tmp_path / "cache" / "parsed").glob("*.npz"))) == 2
    cached[0].write_bytes(b"not an npz")
    c = load_dataset(f)
    assert c.fingerprint() == a.fingerprint() and "cache" not in c.meta
    load_dataset(tiny_dir, cache=False)
    assert len(list((tmp_path / "cache" / "parsed").glob("tiny*"))) == 0


# -- user files end to end -----------------------------------------------------------------------
def test_csv_pipeline_threshold_kcore_timestamp(tmp_path):
    rows = ["user,item,rating,timestamp"]
    # u1: 5 positives at times 5..1 (reverse file order); u2: 2 positives (dropped by k-core)
    rows += [f"u1,i{k},5,{5 - k}" for k in range(5)]
    rows += ["u1,i9,1,0", "u2,i0,5,1", "u2,i1,5,2", "u1,i0,5,9"]  # low rating, u2, duplicate
    f = tmp_path / "d.csv"
    f.write_text("\n".join(rows) + "\n")
    ds = load_dataset(f, rating_threshold=4, kcore_user=3, split_order="timestamp")
    assert ds.user_ids.tolist() == ["u1"] and ds.item_ids.tolist() == [f"i{k}" for k in range(5)]
    # time order i4, i3, i2, i1, i0 -> train 4 (i4..i1), test i0
    assert pairs(ds.train) == {(0, 1), (0, 2), (0, 3), (0, 4)} and pairs(ds.test) == {(0, 0)}
    with pytest.raises(DataError, match="kcore_user=9"):
        load_dataset(f, kcore_user=9)
    g = tmp_path / "n.csv"
    g.write_text("user,item\na,b\n")
    with pytest.raises(DataError, match="no column 'rating'.*rating_threshold"):
        load_dataset(g, rating_threshold=4)


def test_inter_and_lightgcn_and_auto_detect(tmp_path):
    inter = tmp_path / "x.inter"
    inter.write_text("user_id:token\titem_id:token\trating:float\n"
                     + "".join(f"{u}\t{i}\t{(u + i) % 5 + 1}\n" for u in range(6) for i in range(6)))
    ds = load_dataset(inter, rating_threshold=3)
    assert ds.meta["format"] == "inter" and ds.user_ids is not None
    assert ds.info()["interactions"] == sum((u + i) % 5 + 1 >= 3 for u in range(6) for i in range(6))

    lg = tmp_path / "lg"
    lg.mkdir()
    (lg / "train.txt").write_text("0 1 2 3 4\n1 0 2 4 5\n")
    (lg / "test.txt").write_text("0 5\n1 3\n")
    ds = load_dataset(lg)  # pooled per user: train items then test items
    assert ds.meta["format"] == "lightgcn"
    assert pairs(ds.train) == {(0, 1), (0, 2), (0, 3), (0, 4), (1, 0), (1, 2), (1, 4), (1, 5)}
    assert pairs(ds.test) == {(0, 5), (1, 3)} and ds.user_ids is None

    ud = tmp_path / "u.txt"
    ud.write_text("3 1 2 3\n2 0 1\n")
    assert load_dataset(ud).meta["format"] == "users.dat"
    lgf = tmp_path / "l.txt"
    lgf.write_text("0 1 2\n1 0 1\n")
    assert load_dataset(lgf).meta["format"] == "lightgcn"
    tsv = tmp_path / "t.txt"
    tsv.write_text("user\titem\nA\tB\n")
    assert load_dataset(tsv).meta["format"] == "csv"


def test_split_folder_rejects_resplitting(tiny_dir):
    with pytest.raises(ConfigError, match="split_ratios"):
        load_dataset(tiny_dir, split_ratios=(0.5, 0.25, 0.25))


# -- export ----------------------------------------------------------------------------------------
def test_export_roundtrip(tmp_path, tiny_dir):
    ds = load_dataset(tiny_dir)
    out = export_split(ds, tmp_path / "exp")
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml", "test.txt", "train.txt",
                                                   "valid.txt"]
    assert (out / "train.txt").read_text().startswith("USER\tITEM\n0\t")
    assert load_dataset(out).fingerprint() == ds.fingerprint()
    # re-export over an existing folder keeps other files
    (out / "notes.md").write_text("mine")
    export_split(ds, out)
    assert (out / "notes.md").read_text() == "mine"


def test_export_is_all_or_nothing(tmp_path, tiny_dir, monkeypatch):
    ds = load_dataset(tiny_dir)
    calls = {"n": 0}
    real = os.fsync

    def flaky(fd):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError(28, "No space left on device")
        return real(fd)

    monkeypatch.setattr(os, "fsync", flaky)
    with pytest.raises(FreqdError, match="No space left"):
        export_split(ds, tmp_path / "exp")
    assert list(tmp_path.glob("*exp*")) == []
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(FreqdError, match="not a folder"):
        export_split(ds, f)


def test_local_copy_with_other_checksum_warns(tmp_path):
    d = tmp_path / "root" / "citeulike"
    d.mkdir(parents=True)
    (d / "users.dat").write_text("".join(f"6 {' '.join(str(u + k) for k in range(6))}\n"
                                         for u in range(4)))
    with pytest.warns(UserWarning, match="differs from the published users.dat"):
        ds = load_dataset("citeulike-t", data_dir=tmp_path / "root", cache=False)
    assert ds.n_users == 4 and ds.info()["train"] == 4 * 4


def test_default_filled_config_keeps_the_dataset_preset(shared_data):
    # the CLI / API build a full DataConfig from a (possibly empty) data: section
    ds = load_dataset("citeulike-t", data_dir=shared_data, config=DataConfig(), cache=False)
    assert ds.meta["from"] == "processed" and ds.n_users == 5219
    ds = load_dataset("citeulike-t", data_dir=shared_data, config=DataConfig(kcore_item=5),
                      cache=False)
    assert ds.meta["from"] == "raw" and ds.meta["config"]["kcore_user"] == 5
    assert (ds.n_users, ds.n_items) == (3527, 6339)
