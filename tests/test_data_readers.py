"""Readers: every format, transparent gzip/BOM/CRLF, and bad input naming file + line."""
from __future__ import annotations

import gzip
import re
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from freqd.data.readers import (
    _factorize_sorted,
    read_lightgcn,
    read_split_folder,
    read_table,
    read_users_dat,
)
from freqd.errors import DataError


def write(path, content: str | bytes, gz: bool = False):
    data = content.encode() if isinstance(content, str) else content
    if gz:
        data = gzip.compress(data)
    path.write_bytes(data)
    return path


def raises_at(fn, line: int | None, *words):
    with pytest.raises(DataError) as ei:
        fn()
    msg = str(ei.value)
    if line is not None:
        assert ei.value.line == line, msg
        assert f"line {line}" in msg
    for w in words:
        assert w.lower() in msg.lower(), msg
    return ei.value


# -- users.dat -------------------------------------------------------------------------------
def test_users_dat_basic(tmp_path):
    f = write(tmp_path / "users.dat", "3 1 2 5\n2 0 7\n1 4")
    r = read_users_dat(f)
    assert r.users.tolist() == [0, 0, 0, 1, 1, 2]
    assert r.items.tolist() == [1, 2, 5, 0, 7, 4]
    assert r.user_ids is None


@pytest.mark.parametrize("gz", [False, True])
def test_users_dat_gzip_bom_crlf(tmp_path, gz):
    f = write(tmp_path / "users.dat.gz", b"\xef\xbb\xbf2 10 11\r\n1 12\r\n", gz=gz)
    r = read_users_dat(f)
    assert r.users.tolist() == [0, 0, 1] and r.items.tolist() == [10, 11, 12]


def test_users_dat_count_mismatch(tmp_path):
    f = write(tmp_path / "users.dat", "2 1 2\n3 4 5\n")
    e = raises_at(lambda: read_users_dat(f), 2, "count says 3", "lists 2")
    assert e.path == str(f)


def test_users_dat_blank_line_in_middle(tmp_path):
    f = write(tmp_path / "users.dat", "1 1\n\n1 2\n\n")
    raises_at(lambda: read_users_dat(f), 2, "blank line")


# -- LightGCN --------------------------------------------------------------------------------
def test_lightgcn_basic_gz_crlf(tmp_path):
    f = write(tmp_path / "train.txt.gz", "0 5 6 7\r\n\r\n3 1\r\n2\r\n", gz=True)
    r = read_lightgcn(f)
    assert r.users.tolist() == [0, 0, 0, 3] and r.items.tolist() == [5, 6, 7, 1]


@pytest.mark.parametrize(
    "content, line, words",
    [
        ("0 1 2\n1 2 1.5\n", 2, ["'1.5'", "not an integer"]),
        ("0 1 2\n1 -3 4\n", 2, ["negative", "'-3'"]),
        ("0 1\n1 2\nuser item\n", 3, ["unexpected 'user'"]),
        ("0 1\n1 2,3\n", 2, ["'2,3'"]),
        ("0 1\n1 99999999999999999999\n", 2, ["too large"]),
        ("0 1\n1 2\x01\x02\x03\n", 2, ["binary"]),
    ],
)
def test_lightgcn_bad_ids(tmp_path, content, line, words):
    f = write(tmp_path / "train.txt", content)
    raises_at(lambda: read_lightgcn(f), line, str(f), *words)


def test_binary_garbage(tmp_path):
    rng = np.random.default_rng(0)
    junk = b"0 1 2\n" + rng.integers(0, 256, 500, dtype=np.uint8).tobytes() + b"\x00"
    f = write(tmp_path / "train.txt", junk)
    raises_at(lambda: read_lightgcn(f), None, "binary")
    f2 = write(tmp_path / "x.csv", b"user,item\n1,\xff\xfe\x80\n")
    raises_at(lambda: read_table(f2), 2, "not utf-8")


@pytest.mark.parametrize("content", ["", "   \n\n", b"\x1f\x8b" + b"garbage"])
def test_empty_or_corrupt(tmp_path, content):
    f = write(tmp_path / "train.txt", content)
    with pytest.raises(DataError, match="empty|gzip"):
        read_lightgcn(f)


@given(st.lists(st.lists(st.integers(0, 10**12), min_size=1, max_size=6), min_size=1, max_size=20),
       st.sampled_from([" ", "\t", "  ", " \t "]), st.sampled_from(["\n", "\r\n"]))
@settings(max_examples=60, deadline=None)
def test_int_parser_matches_python(tmp_path_factory, lines, ws, eol):
    text = eol.join(ws.join(str(v) for v in line) for line in lines) + eol
    f = tmp_path_factory.mktemp("p") / "t.txt"
    f.write_text(text, newline="")
    r = read_lightgcn(f) if any(len(x) > 1 for x in lines) else None
    if r is None:
        return
    ref_u = [line[0] for line in lines for _ in line[1:]]
    ref_i = [v for line in lines for v in line[1:]]
    assert r.users.tolist() == ref_u and r.items.tolist() == ref_i


# -- CSV / TSV / .inter ----------------------------------------------------------------------
def test_csv_string_ids_reindexed_ascending(tmp_path):
    f = write(tmp_path / "d.csv", "user,item,rating\nbob,x9,5\nalice,x1,3\nbob,x1,4\n")
    r = read_table(f, rating_col="rating")
    assert r.user_ids.tolist() == ["alice", "bob"]
    assert r.item_ids.tolist() == ["x1", "x9"]
    assert r.users.tolist() == [1, 0, 1] and r.items.tolist() == [1, 0, 0]
    assert r.ratings.tolist() == [5.0, 3.0, 4.0]


def test_numeric_token_ids_sort_numerically(tmp_path):
    f = write(tmp_path / "d.tsv", "user\titem\n10\t2\n9\t2\n100\t007\n")
    r = read_table(f)
    assert r.user_ids.tolist() == [9, 10, 100]  # numeric order, not string order
    assert r.users.tolist() == [1, 0, 2]
    assert r.item_ids.tolist() == ["007", "2"]  # a leading zero keeps ids as strings


def test_factorize_without_pandas(monkeypatch):
    vals = ["b", "a", "10", "a", "b"]
    with_pd = _factorize_sorted(vals)
    monkeypatch.setitem(sys.modules, "pandas", None)
    without = _factorize_sorted(vals)
    assert np.array_equal(with_pd[0], without[0]) and with_pd[1].tolist() == without[1].tolist()


def test_inter_file(tmp_path):
    f = write(
        tmp_path / "ml.inter",
        "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
        "196\t242\t3\t881250949\n186\t302\t3\t891717742\n196\t377\t1\t878887116\n",
    )
    r = read_table(f, inter=True, rating_col="rating", timestamp_col="timestamp")
    assert r.user_ids.tolist() == [186, 196] and r.users.tolist() == [1, 0, 1]
    assert r.timestamps.tolist() == [881250949.0, 891717742.0, 878887116.0]


def test_quoted_csv_and_blank_lines(tmp_path):
    f = write(tmp_path / "d.csv", 'user,item\n"a,1",x\n\n"b",y\n')
    r = read_table(f)
    assert r.user_ids.tolist() == ["a,1", "b"] and r.items.tolist() == [0, 1]


def test_header_false(tmp_path):
    f = write(tmp_path / "d.csv", "u1,i1,5\nu2,i1,2\n")
    r = read_table(f, header=False, rating_col="2")
    assert r.user_ids.tolist() == ["u1", "u2"] and r.ratings.tolist() == [5.0, 2.0]


def test_missing_column_lists_columns(tmp_path):
    f = write(tmp_path / "d.csv", "uid_x,item\n1,2\n")
    e = raises_at(lambda: read_table(f), 1, "no column 'user'", "user_col", "'uid_x'", "'item'")
    assert e.path == str(f)
    f2 = write(tmp_path / "e.csv", "user,item\n1,2\n")
    raises_at(lambda: read_table(f2, rating_col="stars"), 1, "no column 'stars'", "columns found")


def test_nan_rating_names_line(tmp_path):
    f = write(tmp_path / "d.csv", "user,item,rating\n1,2,4\n1,3,nan\n")
    raises_at(lambda: read_table(f, rating_col="rating"), 3, "rating", "finite")
    g = write(tmp_path / "e.csv", "user,item,rating\n1,2,4\n\n1,3,\n")
    raises_at(lambda: read_table(g, rating_col="rating"), 4, "not a number")


def test_malformed_row_names_line(tmp_path):
    f = write(tmp_path / "d.csv", "user,item\n1,2\n\n3,4,5\n")
    raises_at(lambda: read_table(f), 4, "expected 2 fields", "found 3")


def test_duplicate_header(tmp_path):
    f = write(tmp_path / "d.csv", "user,item\n1,2\nuser,item\n3,4\n")
    raises_at(lambda: read_table(f), 3, "header appears again")
    g = write(tmp_path / "e.csv", "user,item,user\n1,2,3\n")
    raises_at(lambda: read_table(g), 1, "duplicate column")


def test_timestamps_iso_dates(tmp_path):
    f = write(tmp_path / "d.csv", "user,item,timestamp\n1,2,2020-01-02\n1,3,2019-05-01T10:00:00\n")
    r = read_table(f, timestamp_col="timestamp")
    assert r.timestamps[0] > r.timestamps[1]
    g = write(tmp_path / "e.csv", "user,item,timestamp\n1,2,5\n1,3,yesterday\n")
    raises_at(lambda: read_table(g, timestamp_col="timestamp"), 3, "'yesterday'")


# -- pre-split folders -------------------------------------------------------------------------
def test_tiny_split_folder(tiny_dir):
    sf = read_split_folder(tiny_dir)
    assert (sf.n_users, sf.n_items) == (241, 979)
    assert [len(sf.pairs[s][0]) for s in ("train", "valid", "test")] == [3450, 446, 545]


def _split_folder(tmp_path, train, valid="USER\tITEM\n", test="USER\tITEM\n0\t1\n",
                  cfg="num_users: 2\nnum_items: 3\n"):
    d = tmp_path / "sp"
    d.mkdir(parents=True)
    write(d / "train.txt", train)
    if valid is not None:
        write(d / "valid.txt", valid)
    write(d / "test.txt", test)
    if cfg is not None:
        write(d / "config.yaml", cfg)
    return d


def test_split_folder_out_of_range(tmp_path):
    d = _split_folder(tmp_path, "USER\tITEM\n0\t0\n1\t2\n1\t3\n")
    raises_at(lambda: read_split_folder(d), 4, "train.txt", "item id 3", "num_items: 3")


def test_split_folder_bad_rows(tmp_path):
    d = _split_folder(tmp_path, "USER\tITEM\n0\t0\n1\t2\t2\n")
    raises_at(lambda: read_split_folder(d), 3, "expected 2 ids")
    d2 = _split_folder(tmp_path / "b", "0\t0\n1\t2\n")
    raises_at(lambda: read_split_folder(d2), 1, "header")
    d3 = _split_folder(tmp_path / "c", "USER\tITEM\n0\t0\nUSER\tITEM\n1\t1\n")
    raises_at(lambda: read_split_folder(d3), 3, "header appears again")


def test_split_folder_missing_file_and_inters(tmp_path):
    d = _split_folder(tmp_path, "USER\tITEM\n0\t0\n", valid=None)
    raises_at(lambda: read_split_folder(d), None, "valid.txt")
    d2 = _split_folder(tmp_path / "b", "USER\tITEM\n0\t0\n",
                       cfg="num_users: 2\nnum_items: 3\nnum_inters: 5\n")
    raises_at(lambda: read_split_folder(d2), None, "num_inters: 5", "2 rows")


def test_split_folder_without_config_infers_shape(tmp_path):
    d = _split_folder(tmp_path, "USER\tITEM\n0\t0\n4\t2\n", cfg=None)
    sf = read_split_folder(d)
    assert (sf.n_users, sf.n_items) == (5, 3)


def test_messages_name_the_file(tmp_path):
    f = write(tmp_path / "odd name.txt", "0 x\n")
    with pytest.raises(DataError) as ei:
        read_lightgcn(f)
    assert re.search(r"odd name\.txt, line 1: ", str(ei.value))


def test_quoted_and_plain_paths_agree(tmp_path):
    rows = [(f"u{k % 7}", f"i{k % 5}", str(k % 5 + 1)) for k in range(40)]
    plain = write(tmp_path / "p.csv", "user,item,rating\n" + "".join(",".join(r) + "\n" for r in rows))
    quoted = write(tmp_path / "q.csv", '"user","item","rating"\n'
                   + "".join(",".join(f'"{v}"' for v in r) + "\n" for r in rows))
    a, b = read_table(plain, rating_col="rating"), read_table(quoted, rating_col="rating")
    assert a.users.tolist() == b.users.tolist() and a.items.tolist() == b.items.tolist()
    assert a.user_ids.tolist() == b.user_ids.tolist() and a.ratings.tolist() == b.ratings.tolist()
