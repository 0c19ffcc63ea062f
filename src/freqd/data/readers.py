"""Readers for interaction files.

Two families:

* **integer formats** -- CiteULike ``users.dat`` (``<count> <item> <item> ...``, line k =
  user k), LightGCN lines (``<user> <item> <item> ...``) and folders of pre-split
  ``train.txt`` / ``valid.txt`` / ``test.txt`` (TSV, header ``USER\\tITEM``). Ids must be
  non-negative integers; anything else is a :class:`~freqd.errors.DataError` naming the file
  and line. Parsing is a vectorised scan of the bytes (no per-line Python loop).
* **token formats** -- CSV / TSV with a header and RecBole atomic ``.inter`` files
  (``user_id:token item_id:token rating:float timestamp:float``). Ids are arbitrary strings;
  they are re-indexed in ascending raw-id order (numeric order when every id is a plain
  non-negative integer, else string order) and the raw ids are kept.

Every reader accepts gzip files transparently (detected by their magic bytes), strips a
UTF-8 byte-order mark and accepts CRLF line ends.
"""
from __future__ import annotations

import gzip
import os
import re
import sys
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ConfigError, DataError

__all__ = [
    "RawInteractions",
    "SplitFiles",
    "find_file",
    "read_bytes",
    "read_lightgcn",
    "read_split_folder",
    "read_parquet",
    "read_table",
    "read_users_dat",
    "split_files",
]

_UTF8_BOM = b"\xef\xbb\xbf"
_WS = np.zeros(256, dtype=bool)
_WS[[9, 10, 13, 32]] = True  # tab, LF, CR, space
_DIGIT = np.zeros(256, dtype=bool)
_DIGIT[48:58] = True
_MAX_DIGITS = 18  # fits int64 with room to spare


@dataclass
class RawInteractions:
    """Interactions as read from a file, before any preprocessing.

    ``users`` / ``items`` are int64 arrays, one entry per row in file order. For integer
    formats they hold the raw ids themselves and ``user_ids`` / ``item_ids`` are ``None``;
    for token formats they are codes into ``user_ids`` / ``item_ids`` (raw ids, sorted
    ascending), so code order is raw-id order in both cases.
    """

    users: np.ndarray
    items: np.ndarray
    path: str  # the file(s) the rows came from, for messages
    ratings: np.ndarray | None = None  # float64 per row, if a rating column was read
    timestamps: np.ndarray | None = None  # float64 per row, if a timestamp column was read
    user_ids: np.ndarray | None = None  # raw id of code c (token formats)
    item_ids: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.users)


# -- bytes ----------------------------------------------------------------------------
def read_bytes(path: str | os.PathLike) -> bytes:
    """Whole file as bytes: gunzipped if gzip, UTF-8 BOM removed, binary data refused."""
    p = Path(path)
    try:
        with open(p, "rb") as fh:
            data = fh.read()
    except IsADirectoryError:
        raise DataError("is a folder, expected a file", str(p)) from None
    except OSError as e:
        raise DataError(f"cannot read file: {e.strerror or e}", str(p)) from None
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as e:
            raise DataError(f"corrupt or truncated gzip file ({e})", str(p)) from None
    if data.startswith(_UTF8_BOM):
        data = data[len(_UTF8_BOM):]
    elif data[:2] in (b"\xff\xfe", b"\xfe\xff"):
        raise DataError("UTF-16 text; convert the file to UTF-8", str(p))
    if not data.strip():
        raise DataError("file is empty", str(p))
    nul = data.find(b"\x00")
    if nul >= 0:
        raise DataError(
            "binary data (NUL byte), not a text file of interactions",
            str(p),
            data.count(b"\n", 0, nul) + 1,
        )
    return data


def read_head(path: str | os.PathLike, n: int = 1 << 16) -> bytes:
    """The first ``n`` bytes of a file (decompressed if gzip), for format sniffing."""
    p = Path(path)
    is_gz = False
    try:
        with open(p, "rb") as fh:
            magic = fh.read(2)
        is_gz = magic == b"\x1f\x8b"
        with (gzip.open if is_gz else open)(p, "rb") as fh:
            data = fh.read(n)
    except (OSError, EOFError, zlib.error) as e:
        if is_gz and not isinstance(e, (FileNotFoundError, PermissionError)):
            raise DataError(f"corrupt or truncated gzip file ({e})", str(p)) from None
        raise DataError(f"cannot read file: {getattr(e, 'strerror', None) or e}", str(p)) from None
    return data.removeprefix(_UTF8_BOM)


def _decode(data: bytes, path: str) -> str:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        bad = data[e.start:e.start + 1].hex()
        raise DataError(
            f"not UTF-8 text (byte 0x{bad}); binary data or another encoding? "
            "Convert the file to UTF-8",
            path,
            line,
        ) from None
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    return text


def _line_at(data: bytes, pos: int, line_offset: int = 0) -> int:
    return data.count(b"\n", 0, pos) + 1 + line_offset


# -- integer tokens -----------------------------------------------------------------------
def _bad_token(data: bytes, pos: int, path: str, line_offset: int, what: str) -> DataError:
    buf = np.frombuffer(data, dtype=np.uint8)
    left = pos
    while left > 0 and not _WS[buf[left - 1]] and pos - left < 40:
        left -= 1
    right = pos
    while right < len(data) and not _WS[buf[right]] and right - pos < 40:
        right += 1
    raw = data[left:right]
    line = _line_at(data, pos, line_offset)
    tok = raw.decode("utf-8", errors="replace")
    if any(b < 32 or b == 127 for b in raw) or "\ufffd" in tok:
        return DataError(f"binary data ({raw[:16]!r}), not a text file of {what}", path, line)
    if re.fullmatch(r"-\d+", tok):
        return DataError(f"negative id {tok!r}; ids must be integers >= 0", path, line)
    try:
        float(tok)
        return DataError(f"{tok!r} is not an integer id", path, line)
    except ValueError:
        pass
    return DataError(
        f"unexpected {tok!r}: expected {what} (whitespace-separated integer ids; "
        "use format=csv/tsv/inter for files with a header or string ids)",
        path,
        line,
    )


@dataclass
class _IntTokens:
    values: np.ndarray  # int64 value of each token, in file order
    line: np.ndarray  # 0-based line index of each token (relative to the parsed block)
    n_lines: int  # number of lines in the block (a final line without LF counts)


def _int_tokens(data: bytes, path: str, what: str, line_offset: int = 0) -> _IntTokens:
    """Vectorised scan of whitespace-separated non-negative integers."""
    buf = np.frombuffer(data, dtype=np.uint8)
    digit = _DIGIT[buf]
    ok = digit | _WS[buf]
    if not ok.all():
        raise _bad_token(data, int(np.argmin(ok)), path, line_offset, what)
    edges = np.diff(digit.view(np.int8), prepend=np.int8(0), append=np.int8(0))
    starts = np.flatnonzero(edges == 1)
    lengths = np.flatnonzero(edges == -1) - starts
    if len(starts) and lengths.max() > _MAX_DIGITS:
        k = int(np.argmax(lengths > _MAX_DIGITS))
        tok = data[starts[k]:starts[k] + lengths[k]].decode()
        raise DataError(f"id {tok} is too large", path, _line_at(data, int(starts[k]), line_offset))
    values = np.zeros(len(starts), dtype=np.int64)
    if len(starts):
        # Horner over digit positions; tokens shorter than k digits are done already
        for k in range(int(lengths.max())):
            sel = np.flatnonzero(lengths > k)
            values[sel] = values[sel] * 10 + (buf[starts[sel] + k].astype(np.int64) - 48)
    newlines = np.flatnonzero(buf == 10)
    line = np.searchsorted(newlines, starts)
    n_lines = len(newlines) + (0 if data.endswith(b"\n") else 1)
    return _IntTokens(values, line, n_lines)


def _first_of_line(tok: _IntTokens) -> tuple[np.ndarray, np.ndarray]:
    """(per-line token counts, index of each line's first token or -1)."""
    counts = np.bincount(tok.line, minlength=tok.n_lines)
    first = np.full(tok.n_lines, -1, dtype=np.int64)
    if len(tok.line):
        is_first = np.ones(len(tok.line), dtype=bool)
        is_first[1:] = tok.line[1:] != tok.line[:-1]
        idx = np.flatnonzero(is_first)
        first[tok.line[idx]] = idx
    return counts, first


# -- users.dat ---------------------------------------------------------------------------
def read_users_dat(path: str | os.PathLike, data: bytes | None = None) -> RawInteractions:
    """CiteULike ``users.dat``: line k (0-based) = user k, ``<count> <item> <item> ...``.

    The count must equal the number of items on the line. Blank lines are errors except at
    the end of the file (user ids are line numbers, so a blank line would shift them).
    """
    p = str(path)
    data = read_bytes(path) if data is None else data
    tok = _int_tokens(data, p, "'<count> <item> <item> ...'")
    counts, first = _first_of_line(tok)
    nonblank = np.flatnonzero(counts > 0)
    n_users = int(nonblank[-1]) + 1 if len(nonblank) else 0
    if n_users == 0:
        raise DataError("no interactions in file", p)
    counts, first = counts[:n_users], first[:n_users]
    blank = np.flatnonzero(counts == 0)
    if len(blank):
        raise DataError(
            "blank line; users.dat needs '<count> <item> ...' on every line (line k = user k)",
            p,
            int(blank[0]) + 1,
        )
    declared = tok.values[first]
    bad = np.flatnonzero(declared != counts - 1)
    if len(bad):
        k = int(bad[0])
        raise DataError(
            f"count says {int(declared[k])} items but the line lists {int(counts[k] - 1)}",
            p,
            k + 1,
        )
    is_item = np.ones(len(tok.values), dtype=bool)
    is_item[first] = False
    if not is_item.any():
        raise DataError("no interactions in file (every line has count 0)", p)
    return RawInteractions(tok.line[is_item].astype(np.int64), tok.values[is_item], p)


# -- LightGCN lines ------------------------------------------------------------------------
def read_lightgcn(path: str | os.PathLike, data: bytes | None = None) -> RawInteractions:
    """LightGCN ``train.txt`` lines: ``<user> <item> <item> ...``; blank lines are skipped."""
    p = str(path)
    data = read_bytes(path) if data is None else data
    tok = _int_tokens(data, p, "'<user> <item> <item> ...'")
    counts, first = _first_of_line(tok)
    lines = np.flatnonzero(counts > 0)
    if not len(lines):
        raise DataError("no interactions in file", p)
    is_item = np.ones(len(tok.values), dtype=bool)
    is_item[first[lines]] = False
    user_of_line = np.zeros(tok.n_lines, dtype=np.int64)
    user_of_line[lines] = tok.values[first[lines]]
    users = user_of_line[tok.line[is_item]]
    items = tok.values[is_item]
    if not len(items):
        raise DataError("no interactions in file (lines hold user ids only)", p)
    return RawInteractions(users, items, p)


# -- CSV / TSV / RecBole .inter ------------------------------------------------------------
def _factorize_sorted(values: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Codes into sorted unique raw ids (numeric order if all ids are plain integers).

    Raw ids that are all plain non-negative integers (no sign, no leading zero) come back
    as an int64 array, others as a string array. pandas (optional) speeds up large inputs.
    """
    pd = None
    if len(values) > 100_000 or "pandas" in sys.modules:
        try:
            import pandas as pd
        except ImportError:
            pd = None
    if pd is not None:
        codes, uniq = pd.factorize(np.asarray(values, dtype=object), sort=False)
        uniq = np.asarray(uniq, dtype=str)
    else:
        uniq, codes = np.unique(np.asarray(values, dtype=str), return_inverse=True)
    keys: np.ndarray = uniq
    if len(uniq) and bool(np.all(np.char.isdigit(uniq))):
        lead0 = np.char.startswith(uniq, "0") & (np.char.str_len(uniq) > 1)
        if not lead0.any() and int(np.char.str_len(uniq).max()) <= _MAX_DIGITS:
            try:
                keys = uniq.astype(np.int64)
            except ValueError:  # unicode digits such as superscripts: keep strings
                keys = uniq
    order = np.argsort(keys, kind="stable")
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order))
    return rank[np.asarray(codes, dtype=np.int64).reshape(-1)], keys[order]


def _parse_floats(col: list[str], name: str, path: str, line_of) -> np.ndarray:
    try:
        out = np.fromiter(map(float, col), dtype=np.float64, count=len(col))
    except ValueError:
        out = None
    if out is None:
        for k, v in enumerate(col):  # error path only: find the offending row
            try:
                float(v)
            except ValueError:
                raise DataError(f"column {name!r}: {v!r} is not a number", path, line_of(k)) from None
        raise DataError(f"column {name!r}: not numeric", path)  # pragma: no cover
    bad = np.flatnonzero(~np.isfinite(out))
    if len(bad):
        k = int(bad[0])
        raise DataError(f"column {name!r}: {col[k]!r} is not a finite number", path, line_of(k))
    return out


def _parse_times(col: list[str], name: str, path: str, line_of) -> np.ndarray:
    arr = np.asarray(col, dtype=str)
    try:
        return _parse_floats(col, name, path, line_of)
    except DataError:
        pass
    try:  # ISO dates / datetimes
        return arr.astype("datetime64[s]").astype(np.int64).astype(np.float64)
    except ValueError:
        pass
    for k, v in enumerate(col):
        try:
            float(v)
        except ValueError:
            try:
                np.datetime64(v)
            except ValueError:
                raise DataError(
                    f"column {name!r}: {v!r} is neither a number nor an ISO date",
                    path,
                    line_of(k),
                ) from None
    raise DataError(f"column {name!r}: unparseable timestamps", path)  # pragma: no cover


def _sniff_sep(header: str) -> str:
    for s in ("\t", ",", ";", "|"):
        if s in header:
            return s
    return " "


_ALIASES = {
    "user": ("user", "user_id", "userid", "uid", "user id"),
    "item": ("item", "item_id", "itemid", "iid", "item id"),
    "rating": ("rating", "ratings", "score"),
    "timestamp": ("timestamp", "time", "ts", "date"),
}


def _resolve_col(
    names: list[str], want: str, option: str, default: str | None, path: str, sep: str = ""
) -> int:
    if want in names:
        return names.index(want)
    if default is not None and want == default:  # default name: accept common spellings
        low = [n.lower() for n in names]
        for alias in _ALIASES.get(default, (default,)):
            if alias in low:
                return low.index(alias)
    hint = f" (is the separator {sep!r} right? set option sep)" if len(names) == 1 else ""
    raise DataError(
        f"no column {want!r} (option {option}); columns found: "
        f"{', '.join(map(repr, names))}{hint}",
        path,
        1,
    )


def read_table(
    path: str | os.PathLike,
    *,
    sep: str | None = None,
    header: bool = True,
    user_col: str = "user",
    item_col: str = "item",
    rating_col: str | None = None,
    timestamp_col: str | None = None,
    inter: bool = False,
    options: dict | None = None,
    data: bytes | None = None,
) -> RawInteractions:
    """CSV / TSV with a header, or a RecBole atomic ``.inter`` file (``inter=True``).

    ``sep=None`` sniffs the separator from the first line (tab, comma, ``;``, ``|``, else a
    space; ``.inter`` files are tab-separated). In ``.inter`` headers the type after the
    colon is dropped from each name (``user_id:token`` -> ``user_id``). With
    ``header=False`` columns are named ``"0"``, ``"1"``, ... and the default user / item
    columns mean columns 0 and 1. When a column is asked for by its default name (``user``,
    ``item``, ``rating``, ``timestamp``) and absent, common spellings such as ``user_id``
    are accepted. ``options`` maps those four roles to the option names quoted in messages.
    Blank lines are skipped; quoted CSV fields are supported (slower path).
    """
    p = str(path)
    if sep is not None and (len(sep) != 1 or not sep.isascii() or sep in "\r\n"):
        raise ValueError(f"sep must be one ASCII character, got {sep!r}")
    opt = {"user": "user_col", "item": "item_col", "rating": "rating_col",
           "timestamp": "timestamp_col"}
    opt.update(options or {})
    data = read_bytes(path) if data is None else data
    text = _decode(data, p)
    nl = text.find("\n")
    first = text if nl < 0 else text[:nl]
    if sep is None:
        sep = "\t" if inter else _sniff_sep(first)
    if header:
        import csv

        raw_names = [n.strip() for n in next(csv.reader([first], delimiter=sep))]
        names = [n.split(":", 1)[0] for n in raw_names] if inter else list(raw_names)
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise DataError(f"duplicate column name(s) {dupes} in the header", p, 1)
        if any(n == "" for n in names):
            raise DataError(f"empty column name in the header {first!r} (separator {sep!r})", p, 1)
        body, first_line = ("" if nl < 0 else text[nl + 1:]), 2
    else:
        raw_names = None
        names = [str(i) for i in range(len(first.split(sep)))]
        body, first_line = text, 1
        user_col = "0" if user_col == "user" else user_col
        item_col = "1" if item_col == "item" else item_col
    ncols = len(names)
    if not body.strip():
        raise DataError("no interactions in file (header only)", p)

    if '"' in body:
        grid, line_no = _rows_quoted(body, sep, first_line)
        lens = np.fromiter((len(r) for r in grid), dtype=np.int64, count=len(grid))
    else:
        grid = None
        body, line_no, lens = _rows_plain(body, sep, first_line)
    bad = np.flatnonzero(lens != ncols)
    if len(bad):
        k = int(bad[0])
        shown = sep.join(grid[k]) if grid is not None else body.split("\n")[k]
        raise DataError(
            f"expected {ncols} fields separated by {sep!r}, found {int(lens[k])}: {shown[:80]!r}",
            p,
            int(line_no[k]),
        )

    def line_of(row: int) -> int:
        return int(line_no[row])

    if grid is None:
        flat = body.replace("\n", sep).split(sep) if ncols > 1 else body.split("\n")
        padded = (" " in body and sep != " ") or ("\t" in body and sep != "\t")

        def column(c: int) -> list[str]:
            vals = flat[c::ncols]
            return [v.strip() for v in vals] if padded else vals
    else:

        def column(c: int) -> list[str]:
            return [r[c].strip() for r in grid]

    ucol = _resolve_col(names, user_col, opt["user"], "user", p, sep)
    icol = _resolve_col(names, item_col, opt["item"], "item", p, sep)
    if ucol == icol:
        raise DataError(f"user and item columns are both {names[ucol]!r}", p, 1)
    uvals, ivals = column(ucol), column(icol)
    if raw_names is not None and raw_names[ucol] in uvals:
        rep = np.flatnonzero(
            (np.asarray(uvals, dtype=object) == raw_names[ucol])
            & (np.asarray(ivals, dtype=object) == raw_names[icol])
        )
        if len(rep):
            raise DataError("the header appears again (concatenated files?)", p, line_of(int(rep[0])))
    for vals, name in ((uvals, names[ucol]), (ivals, names[icol])):
        if "" in vals:
            raise DataError(f"empty id in column {name!r}", p, line_of(vals.index("")))
    users, user_ids = _factorize_sorted(uvals)
    items, item_ids = _factorize_sorted(ivals)

    ratings = timestamps = None
    if rating_col is not None:
        c = _resolve_col(names, rating_col, opt["rating"], "rating", p, sep)
        ratings = _parse_floats(column(c), names[c], p, line_of)
    if timestamp_col is not None:
        c = _resolve_col(names, timestamp_col, opt["timestamp"], "timestamp", p, sep)
        timestamps = _parse_times(column(c), names[c], p, line_of)
    return RawInteractions(users, items, p, ratings, timestamps, user_ids, item_ids)


def read_parquet(
    path: str | os.PathLike,
    *,
    user_col: str = "user",
    item_col: str = "item",
    rating_col: str | None = None,
    timestamp_col: str | None = None,
    options: dict | None = None,
) -> RawInteractions:
    """A Parquet table of interactions, through pandas (``pip install 'freqd[parquet]'``).

    Columns are found as in :func:`read_table` (the default names also match ``user_id``
    and the like); ids of any type are tokens, re-indexed like CSV ids (integer-looking ids
    in numeric order). Only the needed columns are read. A missing id, a non-finite rating
    or an unreadable timestamp is an error naming the file and the row (1-based)."""
    p = str(path)
    try:
        import pandas as pd
    except ImportError:
        raise ConfigError("option 'format': parquet files are read with pandas and pyarrow; "
                          "install them with: pip install 'freqd[parquet]'") from None
    opt = {"user": "user_col", "item": "item_col", "rating": "rating_col", "timestamp": "timestamp_col"}
    opt.update(options or {})
    try:
        import pyarrow.parquet as pq

        names = list(pq.read_schema(p).names)
    except ImportError:
        raise ConfigError("option 'format': parquet files need pyarrow; "
                          "install it with: pip install 'freqd[parquet]'") from None
    except OSError as e:
        raise DataError(f"cannot read as Parquet: {e}", p) from None
    except Exception as e:  # noqa: BLE001 - pyarrow raises its own error types for a bad file
        raise DataError(f"not a readable Parquet file ({type(e).__name__}: {e})", p) from None
    want = [("user", user_col), ("item", item_col), ("rating", rating_col), ("timestamp", timestamp_col)]
    try:
        cols = {role: names[_resolve_col(names, c, opt[role], role, p)] for role, c in want if c is not None}
    except DataError as e:  # a Parquet file has no header line to point at
        raise DataError(str(e).removeprefix(f"{p}, line 1: "), p) from None
    if cols["user"] == cols["item"]:
        raise DataError(f"user and item columns are both {cols['user']!r}", p)
    try:
        df = pd.read_parquet(p, columns=list(dict.fromkeys(cols.values())))
    except Exception as e:  # noqa: BLE001
        raise DataError(f"not a readable Parquet file ({type(e).__name__}: {e})", p) from None
    if len(df) == 0:
        raise DataError("no interactions in file (no rows)", p)

    def row_error(msg: str, k: int) -> DataError:
        return DataError(f"row {k + 1}: {msg}", p)

    ids = []
    for role in ("user", "item"):
        col = df[cols[role]]
        miss = np.flatnonzero(col.isna().to_numpy())
        if len(miss):
            raise row_error(f"missing id in column {cols[role]!r}", int(miss[0]))
        vals = col.astype(str).str.strip().tolist()
        if "" in vals:
            raise row_error(f"empty id in column {cols[role]!r}", vals.index(""))
        ids.append(_factorize_sorted(vals))
    (users, user_ids), (items, item_ids) = ids
    ratings = timestamps = None
    if "rating" in cols:
        c = cols["rating"]
        r = pd.to_numeric(df[c], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
        bad = np.flatnonzero(~np.isfinite(r))
        if len(bad):
            raise row_error(f"column {c!r}: {df[c].iloc[int(bad[0])]!r} is not a finite number", int(bad[0]))
        ratings = r
    if "timestamp" in cols:
        c = cols["timestamp"]
        col = df[c]
        if pd.api.types.is_datetime64_any_dtype(col):
            miss = np.flatnonzero(col.isna().to_numpy())
            if len(miss):
                raise row_error(f"column {c!r}: missing timestamp", int(miss[0]))
            timestamps = col.to_numpy(dtype="datetime64[ns]").astype(np.int64) / 1e9
        elif pd.api.types.is_numeric_dtype(col):
            timestamps = col.to_numpy(dtype=np.float64, na_value=np.nan)
            bad = np.flatnonzero(~np.isfinite(timestamps))
            if len(bad):
                raise row_error(f"column {c!r}: {col.iloc[int(bad[0])]!r} is not a finite number", int(bad[0]))
        else:
            def line_of(k: int) -> int:
                return k + 1
            try:
                timestamps = _parse_times(col.astype(str).tolist(), c, p, line_of)
            except DataError as e:  # the CSV parser says "line"; a Parquet file has rows
                raise DataError(str(e).replace(", line ", ", row "), None) from None
    return RawInteractions(users, items, p, ratings, timestamps, user_ids, item_ids)


def _rows_plain(body: str, sep: str, first_line: int) -> tuple[str, np.ndarray, np.ndarray]:
    """(body without blank lines, file line of each row, fields per row); vectorised."""
    body = body.removesuffix("\n")
    b = np.frombuffer(body.encode("utf-8"), dtype=np.uint8)
    nlpos = np.flatnonzero(b == 10)
    n_lines = len(nlpos) + 1
    starts = np.concatenate(([0], nlpos + 1))
    ends = np.concatenate((nlpos, [len(b)]))
    nonblank = ends > starts
    nseps = np.bincount(np.searchsorted(nlpos, np.flatnonzero(b == ord(sep))), minlength=n_lines)
    line_no = np.arange(n_lines, dtype=np.int64) + first_line
    if not nonblank.all():
        lines = body.split("\n")
        keep = np.flatnonzero(nonblank)
        body = "\n".join([lines[k] for k in keep])
        return body, line_no[keep], nseps[keep] + 1
    return body, line_no, nseps + 1


def _rows_quoted(body: str, sep: str, first_line: int) -> tuple[list, np.ndarray]:
    """CSV rows with quoting (csv module); blank lines skipped."""
    import csv
    import io

    reader = csv.reader(io.StringIO(body), delimiter=sep)
    rows, lines = [], []
    prev = 0
    for row in reader:
        if row:
            rows.append(row)
            lines.append(prev + first_line)
        prev = reader.line_num
    return rows, np.asarray(lines, dtype=np.int64)


# -- pre-split folders ----------------------------------------------------------------------
SPLIT_NAMES = ("train", "valid", "test")


def find_file(folder: Path, name: str) -> Path | None:
    """``folder/name`` or ``folder/name.gz``, whichever exists (plain first)."""
    for cand in (folder / name, folder / (name + ".gz")):
        if cand.is_file():
            return cand
    return None


def split_files(folder: Path) -> dict[str, Path] | None:
    """The train/valid/test files of a pre-split folder, or None if any is missing."""
    out = {}
    for s in SPLIT_NAMES:
        f = find_file(folder, s + ".txt")
        if f is None:
            return None
        out[s] = f
    return out


@dataclass
class SplitFiles:
    """Pairs of a pre-split folder, before they become a :class:`Dataset`."""

    pairs: dict  # split name -> (users, items) int64 arrays in file order
    n_users: int
    n_items: int
    files: dict  # split name -> Path


def _read_pair_file(path: Path, header: bool) -> tuple[np.ndarray, np.ndarray, int]:
    """(users, items, line offset of the first data line) of a ``USER\\tITEM`` file."""
    p = str(path)
    data = read_bytes(path)
    offset = 0
    hdr = None
    if header:
        nl = data.find(b"\n")
        hdr = (data if nl < 0 else data[:nl]).strip()
        fields = hdr.split()
        if len(fields) != 2 or all(f.isdigit() for f in fields):
            raise DataError(
                f"expected a header line 'USER<TAB>ITEM', found {hdr[:60].decode('utf-8', 'replace')!r}",
                p,
                1,
            )
        data = b"" if nl < 0 else data[nl + 1:]
        offset = 1
    if hdr is not None and hdr in data:
        # a repeated header line (files concatenated): report where
        pos = data.find(hdr)
        raise DataError("the header appears again (concatenated files?)", p, _line_at(data, pos, offset))
    tok = _int_tokens(data, p, "'<user> <item>' pairs", offset)
    counts, _ = _first_of_line(tok)
    bad = np.flatnonzero((counts != 2) & (counts != 0))
    if len(bad):
        k = int(bad[0])
        raise DataError(f"expected 2 ids (user, item), found {int(counts[k])}", p, k + 1 + offset)
    users = tok.values[0::2]
    items = tok.values[1::2]
    lines = tok.line[0::2] + 1 + offset
    return users, items, lines


def read_split_folder(folder: str | os.PathLike, header: bool = True) -> SplitFiles:
    """A folder of ``train.txt`` / ``valid.txt`` / ``test.txt`` (authors' format), as is.

    ``config.yaml`` (optional) gives ``num_users`` / ``num_items`` (and ``start_idx``,
    default 0); ids outside ``[0, num)`` are errors. Without it the shape is inferred.
    """
    folder = Path(folder)
    files = split_files(folder)
    if files is None:
        missing = [s + ".txt" for s in SPLIT_NAMES if find_file(folder, s + ".txt") is None]
        raise DataError(f"pre-split folder lacks {', '.join(missing)} (plain or .gz)", str(folder))
    n_users = n_items = None
    start = 0
    cfg_path = folder / "config.yaml"
    declared_inters = None
    if cfg_path.is_file():
        import yaml

        try:
            meta = yaml.safe_load(cfg_path.read_text(encoding="utf-8")) or {}
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
            raise DataError(f"cannot read ({e})", str(cfg_path)) from None
        if not isinstance(meta, dict):
            raise DataError("expected a mapping (num_users, num_items, ...)", str(cfg_path))
        for key in ("num_users", "num_items", "num_inters", "start_idx"):
            v = meta.get(key)
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 0):
                raise DataError(f"{key} must be a non-negative integer, got {v!r}", str(cfg_path))
        n_users, n_items = meta.get("num_users"), meta.get("num_items")
        start = meta.get("start_idx") or 0
        declared_inters = meta.get("num_inters")
    for key, n in (("num_users", n_users), ("num_items", n_items)):
        if n is not None and n > _MAX_INDEX:
            raise DataError(f"{key}: {n} exceeds the supported maximum {_MAX_INDEX:,}", str(cfg_path))
    pairs = {}
    line_nos = {}
    total = 0
    for s, f in files.items():
        users, items, lines = _read_pair_file(f, header)
        line_nos[s] = lines
        if start:
            users, items = users - start, items - start
        for arr, what, n in ((users, "user", n_users), (items, "item", n_items)):
            low = np.flatnonzero(arr < 0)
            if len(low):
                k = int(low[0])
                raise DataError(f"{what} id {int(arr[k]) + start} is below start_idx {start}", str(f), int(lines[k]))
            if n is not None:
                high = np.flatnonzero(arr >= n)
                if len(high):
                    k = int(high[0])
                    raise DataError(
                        f"{what} id {int(arr[k]) + start} is out of range: "
                        f"config.yaml says num_{what}s: {n}",
                        str(f),
                        int(lines[k]),
                    )
        pairs[s] = (users, items)
        total += len(users)
    if declared_inters is not None and declared_inters != total:
        raise DataError(
            f"config.yaml says num_inters: {declared_inters} but the split files hold {total} rows",
            str(cfg_path),
        )
    if total == 0:
        raise DataError("no interactions in the split files", str(folder))
    if not len(pairs["train"][0]):
        raise DataError("no training interactions (header only)", str(files["train"]))
    if n_users is None:
        n_users = _inferred_count(pairs, 0, "user", files, line_nos, start)
    if n_items is None:
        n_items = _inferred_count(pairs, 1, "item", files, line_nos, start)
    return SplitFiles(pairs, int(n_users), int(n_items), files)


#: largest number of users / items (ids index int32 CSR matrices and embedding tables)
_MAX_INDEX = 2**31 - 1


def _inferred_count(pairs: dict, col: int, what: str, files: dict, line_nos: dict,
                    start: int = 0) -> int:
    """max id + 1 over the splits, refusing a range mostly unused (ids are 0-based and
    contiguous in this format): one stray huge id would otherwise size the embedding tables."""
    ids = np.concatenate([p[col] for p in pairs.values()])
    if not len(ids):
        return 0
    top = int(ids.max())
    n_distinct = len(np.unique(ids))
    if top + 1 > _MAX_INDEX or top + 1 > 2 * n_distinct + 1000:
        s = next(s for s, p in pairs.items() if len(p[col]) and int(p[col].max()) == top)
        k = int(np.argmax(pairs[s][col] == top))
        raise DataError(
            f"{what} id {top + start} is far beyond the {n_distinct:,} distinct {what} ids of the split "
            f"files (pre-split files hold 0-based contiguous ids); declare num_{what}s in "
            "config.yaml, or load the data with format=lightgcn or csv to re-index it",
            str(files[s]),
            int(line_nos[s][k]),
        )
    return top + 1
