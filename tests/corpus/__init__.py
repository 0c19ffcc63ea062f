"""A corpus of malformed interaction files, generated (nothing binary is committed).

Each :class:`Case` is a set of files to write into an empty folder, a ``freqd`` command line
run in that folder, the substrings its one error line must contain (the file and line, or
the option), and the paths that must not exist afterwards (no partial output).

``OK_VARIANTS`` are encodings of one small dataset that must load to the same data (BOM,
CRLF, gzip, a pre-split folder mixing .gz and plain files).
"""
from __future__ import annotations

import gzip
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path


def gz(data: bytes) -> bytes:
    """Deterministic gzip (no timestamp in the header)."""
    return gzip.compress(data, mtime=0)


@dataclass
class Case:
    id: str
    files: dict  # relative path -> bytes
    argv: list  # freqd arguments
    expect: list  # substrings of the error line
    absent: list = field(default_factory=list)  # paths that must not exist afterwards


LGN = b"0 1 2\n1 2 3\n2 3 4\n3 1 4\n"  # LightGCN lines: user item item ...
HDR = b"USER\tITEM\n"
SPLIT = {  # a valid pre-split folder (authors' format, no config.yaml)
    "sp/train.txt": HDR + b"0\t1\n0\t2\n1\t0\n1\t2\n2\t1\n2\t2\n",
    "sp/valid.txt": HDR + b"0\t0\n2\t0\n",
    "sp/test.txt": HDR + b"1\t1\n0\t3\n",
}
GARBAGE = bytes((i * 7919 + 13) % 256 for i in range(2048))  # binary, contains NUL bytes
HUGE = b"9" * 25


def _split(**over: bytes) -> dict:
    files = dict(SPLIT)
    for k, v in over.items():
        name = f"sp/{k.replace('_', '.')}"
        if v is None:
            files.pop(name)
        else:
            files[name] = v
    return files


def info(path: str, *extra: str) -> list:
    return ["data", "info", path, *extra]


CASES = [
    # -- LightGCN lines (integer ids) -------------------------------------------------------
    Case("lgn-text", {"d.txt": b"0 1 2\n1 abc 3\n"}, info("d.txt"), ["d.txt, line 2", "'abc'"]),
    Case("lgn-wrong-separator", {"d.txt": b"0 1 2\n1,2,3\n"}, info("d.txt"),
         ["d.txt, line 2", "'1,2,3'"]),
    Case("lgn-negative-id", {"d.txt": b"0 1 2\n1 -3\n"}, info("d.txt"),
         ["d.txt, line 2", "negative id '-3'"]),
    Case("lgn-huge-id", {"d.txt": b"0 1 2\n1 " + HUGE + b"\n"}, info("d.txt"),
         ["d.txt, line 2", "too large"]),
    Case("lgn-float-id", {"d.txt": b"0 1 2\n\n1 2.5\n"}, info("d.txt"),
         ["d.txt, line 3", "'2.5' is not an integer"]),
    Case("lgn-empty", {"d.txt": b""}, info("d.txt"), ["d.txt", "empty"]),
    Case("lgn-whitespace-only", {"d.txt": b"\n \n\t\r\n"}, info("d.txt"), ["d.txt", "empty"]),
    Case("lgn-binary", {"d.txt": GARBAGE}, info("d.txt"), ["d.txt, line 1", "binary"]),
    Case("lgn-latin1", {"d.txt": b"0 1 2\n1 \xe9\n"}, info("d.txt"), ["d.txt, line 2"]),
    Case("lgn-utf16", {"d.txt": "0 1 2\n".encode("utf-16")}, info("d.txt"), ["d.txt", "UTF-16"]),
    Case("gz-corrupt", {"d.txt.gz": b"\x1f\x8b\x08\x00garbage"}, info("d.txt.gz"),
         ["d.txt.gz", "gzip"]),
    Case("gz-truncated", {"d.txt.gz": gz(LGN * 50)[:40]}, info("d.txt.gz"), ["d.txt.gz", "gzip"]),
    Case("kcore-empties", {"d.txt": LGN}, info("d.txt", "data.kcore_user=5"),
         ["d.txt", "kcore_user=5", "removes every interaction"]),
    # -- CiteULike users.dat ------------------------------------------------------------------
    Case("usersdat-count", {"users.dat": b"2 1 2\n3 4 5\n"}, info("users.dat"),
         ["users.dat, line 2", "count says 3"]),
    Case("usersdat-truncated", {"users.dat": b"2 1 2\n3 4 5 6\n3 1 2"}, info("users.dat"),
         ["users.dat, line 3", "count says 3"]),
    Case("usersdat-negative", {"users.dat": b"2 1 2\n1 -3\n"}, info("users.dat"),
         ["users.dat, line 2", "negative"]),
    Case("usersdat-huge", {"users.dat": b"1 " + HUGE + b"\n"}, info("users.dat"),
         ["users.dat, line 1", "too large"]),
    Case("usersdat-blank-line", {"users.dat": b"1 1\n\n1 2\n"}, info("users.dat"),
         ["users.dat, line 2", "blank line"]),
    Case("usersdat-text", {"users.dat": b"1 1\n1 x\n"}, info("users.dat"), ["users.dat, line 2"]),
    # -- CSV / TSV / RecBole .inter (token ids) ----------------------------------------------
    Case("csv-truncated-row", {"d.csv": b"user,item\n1,2\n3\n"}, info("d.csv"),
         ["d.csv, line 3", "expected 2 fields"]),
    Case("csv-wrong-separator", {"d.csv": b"user;item\n1;2\n"}, info("d.csv", "data.sep=,"),
         ["d.csv, line 1", "no column 'user'", "separator"]),
    Case("csv-duplicate-header", {"d.csv": b"user,item\n1,2\nuser,item\n3,4\n"}, info("d.csv"),
         ["d.csv, line 3", "header appears again"]),
    Case("csv-header-only", {"d.csv": b"user,item\n"}, info("d.csv"), ["d.csv", "header only"]),
    Case("csv-missing-column", {"d.csv": b"user,rating\n1,5\n"}, info("d.csv"),
         ["d.csv, line 1", "no column 'item'"]),
    Case("csv-nan-rating", {"d.csv": b"user,item,rating\n1,2,5\n1,3,nan\n"},
         info("d.csv", "data.rating_threshold=3"), ["d.csv, line 3", "'nan'"]),
    Case("csv-text-rating", {"d.csv": b"user,item,rating\n1,2,5\n1,3,good\n"},
         info("d.csv", "data.rating_threshold=3"), ["d.csv, line 3", "'good'"]),
    Case("csv-empty-id", {"d.csv": b"user,item\n1,2\n1,\n"}, info("d.csv"),
         ["d.csv, line 3", "empty id"]),
    Case("csv-threshold-empties", {"d.csv": b"user,item,rating\n1,2,1\n1,3,2\n"},
         info("d.csv", "data.rating_threshold=4"), ["d.csv", "rating_threshold"]),
    Case("inter-bad-timestamp",
         {"d.inter": b"user_id:token\titem_id:token\ttimestamp:float\n1\t2\t5\n1\t3\tyesterday\n"},
         info("d.inter", "data.split_order=timestamp"), ["d.inter, line 3", "'yesterday'"]),
    # -- pre-split folders (integer ids, loaded as they are) ---------------------------------
    Case("split-negative", _split(train_txt=HDR + b"0\t1\n1\t-2\n"), info("sp"),
         ["train.txt, line 3", "negative"]),
    Case("split-huge-id", _split(valid_txt=HDR + b"0\t0\n2\t99999999999\n"), info("sp"),
         ["valid.txt, line 3", "99999999999"]),
    Case("split-out-of-range", {**SPLIT, "sp/config.yaml": b"num_users: 3\nnum_items: 3\n"},
         info("sp"), ["test.txt, line 3", "out of range"]),
    Case("split-duplicate-header", _split(train_txt=HDR + b"0\t1\n" + HDR + b"1\t2\n"),
         info("sp"), ["train.txt, line 3", "header appears again"]),
    Case("split-text", _split(test_txt=HDR + b"0\tfoo\n"), info("sp"), ["test.txt, line 2"]),
    Case("split-truncated-line", _split(train_txt=HDR + b"0\t1\n1\n"), info("sp"),
         ["train.txt, line 3", "expected 2 ids"]),
    Case("split-missing-file", _split(test_txt=None), info("sp", "data.format=split"),
         ["sp", "test.txt"]),
    Case("split-empty-train", _split(train_txt=HDR), info("sp"),
         ["train.txt", "no training interactions"]),
    Case("split-bad-config-yaml", {**SPLIT, "sp/config.yaml": b"num_users: [3\n"}, info("sp"),
         ["config.yaml"]),
    Case("split-binary", _split(valid_txt=HDR + GARBAGE), info("sp"), ["valid.txt", "binary"]),
    # -- options and paths ----------------------------------------------------------------------
    Case("missing-path", {}, info("nope.txt"), ["nope.txt", "no such file"]),
    Case("data-unknown-option", {"d.txt": LGN}, info("d.txt", "data.kcore=3"), ["kcore"]),
    Case("data-bad-ratios", {"d.txt": LGN}, info("d.txt", "data.split_ratios=0.5,0.5,0.5"),
         ["split_ratios"]),
    Case("data-not-data-option", {"d.txt": LGN}, info("d.txt", "train.lr=3"), ["train"]),
    # -- export leaves nothing behind ---------------------------------------------------------
    Case("export-binary", {"d.txt": GARBAGE}, ["data", "export", "d.txt", "--out", "exp"],
         ["d.txt, line 1", "binary"], absent=["exp"]),
    Case("export-kcore-empties", {"d.txt": LGN},
         ["data", "export", "d.txt", "--out", "exp/sub", "data.kcore_item=9"],
         ["kcore_item=9"], absent=["exp"]),
    # -- train on bad data: --out is never created ---------------------------------------------
    Case("train-bad-data", {"d.txt": b"0 1 2\n1 -3\n"},
         ["train", "d.txt", "--dim", "4", "--epochs", "1", "--out", "run"],
         ["d.txt, line 2", "negative"], absent=["run"]),
]

# one small dataset, encoded in ways that must all load to the same data
OK_VARIANTS = {
    "plain": {"d.txt": LGN},
    "crlf": {"d.txt": LGN.replace(b"\n", b"\r\n")},
    "bom-crlf": {"d.txt": b"\xef\xbb\xbf" + LGN.replace(b"\n", b"\r\n")},
    "gzip": {"d.txt.gz": gz(LGN)},
    "gzip-bom-crlf": {"d.txt.gz": gz(b"\xef\xbb\xbf" + LGN.replace(b"\n", b"\r\n"))},
    "no-final-newline": {"d.txt": LGN.rstrip(b"\n")},
    "tabs-and-spaces": {"d.txt": LGN.replace(b" ", b" \t ")},
}

SPLIT_VARIANTS = {
    "plain": dict(SPLIT),
    "mixed-gz": {"sp/train.txt.gz": gz(SPLIT["sp/train.txt"]),
                 "sp/valid.txt": SPLIT["sp/valid.txt"],
                 "sp/test.txt.gz": gz(SPLIT["sp/test.txt"])},
    "bom-crlf": {k: b"\xef\xbb\xbf" + v.replace(b"\n", b"\r\n") for k, v in SPLIT.items()},
}


def write_files(root: Path, files: dict) -> None:
    for rel, data in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)


def cli_env(data_dir: Path, cache_dir: Path) -> dict:
    """Environment for a ``freqd`` subprocess: shared data, a private cache, no progress
    bars, no FREQD_DEBUG (which would turn errors into tracebacks)."""
    env = dict(os.environ)
    env.pop("FREQD_DEBUG", None)
    env.update(FREQD_DATA_DIR=str(data_dir), FREQD_CACHE_DIR=str(cache_dir),
               FREQD_NO_PROGRESS="1", PYTHONUNBUFFERED="1")
    return env


def run_cli(argv: list, cwd: Path, env: dict, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python -m freqd ARGV`` in ``cwd``; text output captured."""
    return subprocess.run([sys.executable, "-m", "freqd", *map(str, argv)], cwd=cwd, env=env, check=False,
                          capture_output=True, text=True, timeout=timeout)


def error_lines(stderr: str) -> list:
    return [ln for ln in stderr.splitlines() if ln.startswith("freqd: error:")]
