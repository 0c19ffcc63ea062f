"""Load interaction data into a :class:`~freqd.data.dataset.Dataset`, and export splits.

``load_dataset(name_or_path, data_dir=None, config=None, **overrides)``

* a **registry name** (``citeulike-t`` / ``citeulike``, ``gowalla``, ``yelp2018`` / ``yelp``,
  ``tiny``) resolves through ``data_dir``, ``FREQD_DATA_DIR``, the user cache and finally a
  verified download (see :mod:`freqd.data.registry`). With the dataset's own preprocessing
  (the default) its ``processed/`` split is loaded when present, else the split is built
  from the raw files exactly as the paper did; any other option builds from the raw files.
  Bare names are registry names; write ``./gowalla`` for a local folder of that name.
* a **path** to a file or folder in one of the supported formats (see :class:`DataConfig`),
  read and preprocessed as the config says (``format="auto"`` guesses the format).

Parsed datasets are cached as ``.npz`` in ``<cache>/parsed/``, keyed by the sha256 of the
source files and the preprocessing options, so reloading is fast (``cache=False`` to skip).
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import re
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Optional

import numpy as np

from ..config import check, from_dict, merge, to_dict
from ..errors import ConfigError, DataError, FreqdError
from .dataset import Dataset

__all__ = ["DataConfig", "build_dataset", "dataset_info", "export_split", "load_dataset"]

_CACHE_VERSION = "freqd-data-1"
_INT_FORMATS = ("users.dat", "lightgcn", "split")
_SEP_ALIASES = {"\\t": "\t", "tab": "\t", "comma": ",", "space": " ", "semicolon": ";",
                "pipe": "|"}


@dataclass
class DataConfig:
    """How to read and preprocess interaction data (``data.*`` options)."""

    format: Literal["auto", "users.dat", "lightgcn", "csv", "tsv", "inter", "parquet", "split"] = "auto"
    """File format; ``auto`` guesses from the name and the first lines."""
    sep: Optional[str] = None  # noqa: UP045 (evaluated at runtime on 3.9)
    """Field separator for csv/tsv/inter (one character, or tab/comma/space); None = sniff."""
    user_col: str = "user"
    """User id column (csv/tsv/inter); the default also matches user_id, userid, uid."""
    item_col: str = "item"
    """Item id column (csv/tsv/inter); the default also matches item_id, itemid, iid."""
    rating_col: Optional[str] = None  # noqa: UP045 (evaluated at runtime on 3.9)
    """Rating column; None = ``rating`` when rating_threshold needs one, else unused."""
    timestamp_col: Optional[str] = None  # noqa: UP045 (evaluated at runtime on 3.9)
    """Timestamp column; None = ``timestamp`` when split_order=timestamp, else unused."""
    header: bool = True
    """csv/tsv/inter and split files start with a header line."""
    rating_threshold: Optional[float] = None  # noqa: UP045
    """Keep only interactions with rating >= this value (None = keep all)."""
    kcore_user: int = 0
    """Iterative k-core: drop users with fewer interactions than this (0 = off)."""
    kcore_item: int = 0
    """Iterative k-core: drop items with fewer interactions than this (0 = off)."""
    dedup: bool = True
    """Keep only the first occurrence of a repeated (user, item) pair."""
    split_ratios: tuple[float, float, float] = (0.8, 0.1, 0.1)
    """Per-user train / valid / test fractions (sum 1)."""
    split_order: Literal["file", "timestamp", "random"] = "file"
    """Order of each user's interactions before cutting: file order, time, or seeded random."""
    split_rule: Literal["paper", "paper-clamped"] = "paper"
    """l = max(floor(a n), 1), r = floor((a+b) n); paper-clamped: r = max(r, l)."""
    seed: int = 0
    """Seed of the random split order."""
    cache: bool = True
    """Cache the parsed dataset as .npz in the user cache (keyed by the files' sha256)."""

    def __post_init__(self) -> None:
        fmts = ("auto", "users.dat", "lightgcn", "csv", "tsv", "inter", "parquet", "split")
        check(self.format in fmts, "format", f"{self.format!r} is not one of {list(fmts)}")
        if self.sep is not None:
            check(isinstance(self.sep, str), "sep", "expected a string")
            self.sep = _SEP_ALIASES.get(self.sep.lower(), self.sep)
            check(
                len(self.sep) == 1 and self.sep.isascii() and self.sep not in "\n\r\"'"
                and not self.sep.isalnum(),
                "sep",
                f"{self.sep!r} is not a usable separator (one character such as ',' or tab)",
            )
        for name in ("user_col", "item_col"):
            v = getattr(self, name)
            check(isinstance(v, str) and v.strip() != "", name, "expected a column name")
        check(self.user_col != self.item_col, "item_col", "must differ from user_col")
        for name in ("rating_col", "timestamp_col"):
            v = getattr(self, name)
            check(v is None or (isinstance(v, str) and v.strip() != ""), name,
                  "expected a column name or None")
        for name in ("header", "dedup", "cache"):
            check(isinstance(getattr(self, name), bool), name, "expected true/false")
        t = self.rating_threshold
        check(t is None or (isinstance(t, (int, float)) and not isinstance(t, bool)
                            and np.isfinite(t)), "rating_threshold", "expected a finite number")
        for name in ("kcore_user", "kcore_item", "seed"):
            v = getattr(self, name)
            check(isinstance(v, int) and not isinstance(v, bool) and v >= 0, name,
                  "expected an integer >= 0")
        r = self.split_ratios
        check(isinstance(r, (tuple, list)) and len(r) == 3, "split_ratios",
              "expected three numbers: train, valid, test")
        check(all(isinstance(x, (int, float)) and not isinstance(x, bool) and np.isfinite(x)
                  and x >= 0 for x in r), "split_ratios", "fractions must be numbers >= 0")
        check(r[0] > 0, "split_ratios", "the train fraction must be > 0")
        check(abs(sum(r) - 1.0) < 1e-6, "split_ratios", f"must sum to 1, got {sum(r)}")
        self.split_ratios = tuple(float(x) for x in r)
        orders, rules = ("file", "timestamp", "random"), ("paper", "paper-clamped")
        check(self.split_order in orders, "split_order", f"not one of {list(orders)}")
        check(self.split_rule in rules, "split_rule", f"not one of {list(rules)}")
        if self.format in ("users.dat", "lightgcn"):
            check(self.rating_threshold is None, "rating_threshold",
                  f"format {self.format} has no ratings")
            check(self.split_order != "timestamp", "split_order",
                  f"format {self.format} has no timestamps")
        if self.format == "parquet":
            check(self.sep is None, "sep", "does not apply to format=parquet (a Parquet file has typed columns)")
            check(self.header, "header", "does not apply to format=parquet (its columns are always named)")
        if self.format == "split":
            changed = _changed_options(self, _SPLIT_IGNORED)
            check(not changed, changed[0] if changed else "format",
                  "does not apply to a pre-split folder, which loads as it is (format=split)")


_SPLIT_IGNORED = ("sep", "user_col", "item_col", "rating_col", "timestamp_col",
                  "rating_threshold", "kcore_user", "kcore_item", "split_ratios",
                  "split_order", "split_rule", "seed")


def _changed_options(cfg: DataConfig, names) -> list:
    default = {f.name: f.default for f in dataclasses.fields(DataConfig)}
    out = []
    for n in names:
        if n == "seed" and cfg.split_order != "random":
            continue
        if getattr(cfg, n) != default[n]:
            out.append(n)
    return out


def _prep(cfg: DataConfig) -> dict:
    """The options that determine the resulting data (not ``cache``; seed only if random)."""
    d = to_dict(cfg)
    d.pop("cache")
    if cfg.split_order != "random":
        d["seed"] = 0
    return d


def _make_config(base: dict | None, config: DataConfig | None, overrides: dict) -> DataConfig:
    """defaults < ``base`` (a dataset's preset) < ``config`` < ``overrides``.

    With a preset, only the fields of ``config`` that differ from the DataConfig defaults
    override it, so a default-filled config (as built from a YAML/CLI section) keeps a
    named dataset's own preprocessing; use ``overrides`` to force a default value back.
    """
    if config is not None and not isinstance(config, DataConfig):
        raise ConfigError(f"config must be a DataConfig, got {type(config).__name__}")
    defaults = to_dict(DataConfig())
    start = merge(defaults, base or {})
    if config is not None:
        given = to_dict(config)
        if base:
            given = {k: v for k, v in given.items() if v != defaults[k]}
        start = merge(start, given)
    return from_dict(DataConfig, merge(start, overrides))


# -- public entry point ----------------------------------------------------------------------
def load_dataset(
    name_or_path: str | os.PathLike,
    data_dir: str | os.PathLike | None = None,
    config: DataConfig | None = None,
    **overrides: Any,
) -> Dataset:
    """Load a registry dataset or a file/folder as a :class:`Dataset`.

    ``overrides`` are :class:`DataConfig` fields (strings from the command line are
    converted); for a registry name they apply on top of the dataset's own preprocessing,
    for a path on top of ``config`` (or the defaults). Raises DataError / ConfigError on bad
    input or options, naming the file and line or the option.
    """
    from .registry import lookup

    spec = None
    if isinstance(name_or_path, str) and os.sep not in name_or_path and "/" not in name_or_path:
        spec = lookup(name_or_path)
    if spec is not None:
        preset = {"format": spec.raw_format or "split", **spec.config}
        wanted = overrides.get("format", config.format if config is not None else None)
        base = {"format": "split"} if wanted == "split" else preset
        cfg = _make_config(base, config, overrides)
        if cfg.format == "auto":
            cfg = dataclasses.replace(cfg, format=preset["format"])
        return _load_named(spec, cfg, data_dir, _prep(from_dict(DataConfig, merge(
            to_dict(DataConfig()), preset))))
    path = Path(name_or_path).expanduser()
    if not path.exists():
        from .registry import REGISTRY

        names = ", ".join(REGISTRY)
        raise DataError(f"no such file or folder, and not a dataset name (known: {names})",
                        str(name_or_path))
    cfg = _make_config(None, config, overrides)
    return _load_path(path, cfg)


def dataset_info(ds: Dataset) -> dict:
    """Users, items, interactions and split sizes (``Dataset.info()``)."""
    return ds.info()


# -- named datasets ---------------------------------------------------------------------------
def _load_named(spec, cfg: DataConfig, data_dir, preset_prep: dict) -> Dataset:
    from .registry import data_roots, fetch_raw, processed_folder, raw_paths

    if cfg.format not in (spec.raw_format or "split", "split"):
        raise ConfigError(
            f"option 'format': dataset {spec.name!r} is read as "
            f"{spec.raw_format or 'split'}, not {cfg.format}"
        )
    as_published = _prep(cfg) == preset_prep
    for _label, folder in data_roots(spec, data_dir):
        proc = processed_folder(spec, folder) if as_published or cfg.format == "split" else None
        if proc is not None:
            return _load_split(proc, dataclasses.replace(cfg, format="split",
                                                         **_split_defaults()),
                               name=spec.name, spec=spec)
        if cfg.format == "split":
            continue
        raw = raw_paths(spec, folder)
        if raw is not None:
            return _load_files(raw, cfg.format, cfg, name=spec.name, source=str(folder), spec=spec)
    if cfg.format == "split" and spec.raw:
        raise ConfigError(f"option 'format': no pre-split copy of {spec.name!r} found; "
                          f"use format={spec.raw_format} to build it from the raw files")
    folder = fetch_raw(spec, data_dir)  # raises DataError with where-to-put instructions
    raw = raw_paths(spec, folder)
    return _load_files(raw, cfg.format, cfg, name=spec.name, source=str(folder), spec=spec)


def _split_defaults() -> dict:
    d = {f.name: f.default for f in dataclasses.fields(DataConfig)}
    return {k: d[k] for k in _SPLIT_IGNORED}


# -- paths ----------------------------------------------------------------------------------
_TABLE_EXT = {".csv": "csv", ".tsv": "tsv", ".inter": "inter", ".parquet": "parquet", ".pq": "parquet"}


def _strip_gz(name: str) -> str:
    return name.removesuffix(".gz")


def _looks_like_header(data: bytes) -> bool:
    for line in data[:65536].split(b"\n"):
        if line.strip():
            return not all(t.isdigit() for t in line.split())
    return False


def _sniff_int_format(data: bytes, path: str) -> str:
    """users.dat (count matches on every line, first tokens not 0..n-1) else lightgcn."""
    from .readers import _first_of_line, _int_tokens

    head = data[: 1 << 20]
    cut = head.rfind(b"\n")
    head = head[: cut + 1] if 0 < cut < len(head) - 1 else head
    try:
        tok = _int_tokens(head, path, "integer ids")
    except DataError:
        return "lightgcn"  # the real reader will report the problem
    counts, first = _first_of_line(tok)
    lines = np.flatnonzero(counts > 0)
    if not len(lines):
        return "lightgcn"
    heads = tok.values[first[lines]]
    count_ok = bool(np.all(heads == counts[lines] - 1))
    is_line_no = bool(np.array_equal(heads, lines))
    return "users.dat" if count_ok and not is_line_no else "lightgcn"


def _folder_tables(folder: Path, ext: str) -> list:
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and _strip_gz(p.name).lower().endswith(ext))


def detect_format(path: Path) -> str:
    """Guess the DataConfig.format of a file or folder."""
    from .readers import find_file, read_bytes, read_head, split_files

    if path.is_dir():
        files = split_files(path)
        if files is not None and _looks_like_header(read_head(files["train"])):
            return "split"
        if find_file(path, "train.txt") is not None:
            return "lightgcn"
        if find_file(path, "users.dat") is not None:
            return "users.dat"
        for ext, fmt in _TABLE_EXT.items():
            if len(_folder_tables(path, ext)) == 1:
                return fmt
        raise DataError(
            "cannot tell the format of this folder: expected train.txt/valid.txt/test.txt "
            "(pre-split or LightGCN lines), users.dat, or one .inter/.csv/.tsv file; "
            "set format= explicitly", str(path))
    name = _strip_gz(path.name).lower()
    if name == "users.dat":
        return "users.dat"
    for ext, fmt in _TABLE_EXT.items():
        if name.endswith(ext):
            return fmt
    data = read_head(path, 1 << 20)
    if data[:4] == b"PAR1":  # Parquet's magic bytes
        return "parquet"
    if not data.strip():
        read_bytes(path)  # raises the "file is empty" / binary error with the file name
    if _looks_like_header(data):
        return "csv"  # a table with a header; the separator is sniffed
    return _sniff_int_format(data, str(path))


def _source_files(path: Path, fmt: str) -> list:
    from .readers import find_file

    if path.is_file():
        if fmt == "split":
            raise DataError("format split expects a folder with train.txt, valid.txt, test.txt",
                            str(path))
        return [path]
    if fmt == "users.dat":
        f = find_file(path, "users.dat")
        if f is None:
            raise DataError("no users.dat (or users.dat.gz) in this folder", str(path))
        return [f]
    if fmt == "lightgcn":
        files = [find_file(path, n) for n in ("train.txt", "valid.txt", "test.txt")]
        files = [f for f in files if f is not None]
        if not files:
            raise DataError("no train.txt (or .gz) in this folder", str(path))
        return files
    ext = "." + fmt
    found = _folder_tables(path, ext)
    if len(found) != 1:
        what = "no" if not found else f"{len(found)}"
        raise DataError(f"{what} *{ext} files in this folder; pass the file itself", str(path))
    return found


def _load_path(path: Path, cfg: DataConfig) -> Dataset:
    fmt = cfg.format if cfg.format != "auto" else detect_format(path)
    name = _strip_gz(path.name)
    for ext in (".txt", ".dat", ".csv", ".tsv", ".inter", ".parquet", ".pq"):
        if name.endswith(ext) and len(name) > len(ext):
            name = name[: -len(ext)]
    if fmt == "split":
        cfg = dataclasses.replace(cfg, format="split")  # validates option compatibility
        if path.is_file():
            raise DataError("format split expects a folder with train.txt, valid.txt, test.txt",
                            str(path))
        return _load_split(path, cfg, name=name)
    cfg = dataclasses.replace(cfg, format=fmt)
    return _load_files(_source_files(path, fmt), fmt, cfg, name=name, source=str(path))


# -- reading + preprocessing ------------------------------------------------------------------
def _load_split(folder: Path, cfg: DataConfig, name: str, spec=None) -> Dataset:
    from .readers import SPLIT_NAMES, read_split_folder, split_files

    found = split_files(folder)
    files = list(found.values()) if found else []
    cfg_yaml = folder / "config.yaml"
    key_files = files + ([cfg_yaml] if cfg_yaml.is_file() else [])
    meta = {"format": "split", "from": "processed" if spec else "split",
            "files": [str(f) for f in key_files], "config": _prep(cfg)}
    if spec is not None:
        meta["label"] = spec.label
    cache = _Cache(name, "split", key_files, cfg)
    ds = cache.load(name, str(folder))
    if ds is not None:
        return ds
    sf = read_split_folder(folder, header=cfg.header)
    ds = Dataset.from_pairs(name, *(sf.pairs[s] for s in SPLIT_NAMES), n_users=sf.n_users,
                            n_items=sf.n_items, source=str(folder), meta=meta)
    _warn_overlap(ds, folder)
    cache.save(ds)
    return ds


def _warn_overlap(ds: Dataset, folder: Path) -> None:
    for a, b in (("train", "valid"), ("train", "test"), ("valid", "test")):
        both = ds.split(a).multiply(ds.split(b)).nnz
        if both:
            warnings.warn(f"{folder}: {both} (user, item) pairs are in both {a} and {b}",
                          stacklevel=3)


def _wanted_cols(cfg: DataConfig) -> tuple:
    """(rating column, timestamp column) to read: the named ones, or the default names when
    rating_threshold / split_order=timestamp need them; None = not read."""
    rating_col = cfg.rating_col
    if rating_col is None and cfg.rating_threshold is not None:
        rating_col = "rating"
    ts_col = cfg.timestamp_col
    if ts_col is None and cfg.split_order == "timestamp":
        ts_col = "timestamp"
    return rating_col, ts_col


def _col_options(cfg: DataConfig) -> dict:
    """The option names that messages about the rating / timestamp columns quote."""
    return {
        "rating": "rating_col" + ("" if cfg.rating_col else " (needed by rating_threshold)"),
        "timestamp": "timestamp_col" + ("" if cfg.timestamp_col else " (needed by split_order=timestamp)"),
    }


def _read_raw(files: list, fmt: str, cfg: DataConfig, spec=None):
    from .readers import RawInteractions, read_bytes, read_lightgcn, read_table, read_users_dat
    from .registry import sha256_bytes

    parts = []
    for k, f in enumerate(files):
        if fmt == "parquet":  # binary: pandas reads the file itself
            from .readers import read_parquet

            rc, tc = _wanted_cols(cfg)
            parts.append(read_parquet(f, user_col=cfg.user_col, item_col=cfg.item_col, rating_col=rc,
                                      timestamp_col=tc, options=_col_options(cfg)))
            continue
        data = read_bytes(f)
        if spec is not None and k < len(spec.raw):
            got = sha256_bytes(data)
            if got != spec.raw[k].sha256:
                warnings.warn(
                    f"{f}: sha256 {got} differs from the published {spec.raw[k].name} "
                    f"({spec.raw[k].sha256}); results may not match the paper's data",
                    stacklevel=4,
                )
        if fmt == "users.dat":
            parts.append(read_users_dat(f, data=data))
        elif fmt == "lightgcn":
            parts.append(read_lightgcn(f, data=data))
        else:
            rating_col, ts_col = _wanted_cols(cfg)
            sep = cfg.sep if cfg.sep is not None else ("\t" if fmt == "tsv" else None)
            parts.append(read_table(f, sep=sep, header=cfg.header, user_col=cfg.user_col,
                                    item_col=cfg.item_col, rating_col=rating_col,
                                    timestamp_col=ts_col, inter=fmt == "inter",
                                    options=_col_options(cfg), data=data))
    if len(parts) == 1:
        return parts[0]
    return RawInteractions(
        np.concatenate([p.users for p in parts]),
        np.concatenate([p.items for p in parts]),
        " + ".join(p.path for p in parts),
    )


def build_dataset(raw, cfg: DataConfig, name: str, source: str = "", meta: dict | None = None
                  ) -> Dataset:
    """Threshold, de-duplicate, k-core, re-index and split ``raw`` as ``cfg`` says."""
    from .preprocess import dedup_mask, kcore_mask, rating_mask, reindex, split_per_user

    if not len(raw.users):
        raise DataError("no interactions", raw.path)
    token = raw.user_ids is not None
    if token:
        ucodes, uraw, icodes, iraw = raw.users, raw.user_ids, raw.items, raw.item_ids
    else:
        ucodes, uraw = reindex(raw.users)
        icodes, iraw = reindex(raw.items)
    idx = np.arange(len(ucodes))
    if cfg.rating_threshold is not None:
        if raw.ratings is None:
            raise ConfigError("option 'rating_threshold': the data has no rating column")
        idx = idx[rating_mask(raw.ratings, cfg.rating_threshold)]
        if not len(idx):
            raise DataError(f"no rating >= {cfg.rating_threshold} (option rating_threshold)",
                            raw.path)
    if cfg.dedup:
        idx = idx[dedup_mask(ucodes[idx], icodes[idx])]
    if cfg.kcore_user > 1 or cfg.kcore_item > 1:
        keep = kcore_mask(ucodes[idx], icodes[idx], cfg.kcore_user, cfg.kcore_item)
        if not keep.any():
            raise DataError(
                f"k-core filtering (kcore_user={cfg.kcore_user}, kcore_item={cfg.kcore_item}) "
                f"removes every interaction; lower these options", raw.path)
        idx = idx[keep]
    users, uu = reindex(ucodes[idx])
    items, iu = reindex(icodes[idx])
    user_ids, item_ids = uraw[uu], iraw[iu]
    if not token:  # integer ids: keep the mapping only if re-indexing changed anything
        if np.array_equal(user_ids, np.arange(len(user_ids))):
            user_ids = None
        if np.array_equal(item_ids, np.arange(len(item_ids))):
            item_ids = None
    ts = None
    if cfg.split_order == "timestamp":
        if raw.timestamps is None:
            raise ConfigError("option 'split_order': timestamp order needs a timestamp column")
        ts = raw.timestamps[idx]
    tr, va, te = split_per_user(users, cfg.split_ratios, cfg.split_order, cfg.split_rule,
                                ts, cfg.seed)
    return Dataset.from_pairs(
        name, (users[tr], items[tr]), (users[va], items[va]), (users[te], items[te]),
        n_users=len(uu), n_items=len(iu), user_ids=user_ids, item_ids=item_ids,
        source=source, meta=dict(meta or {}),
    )


def _load_files(files: list, fmt: str, cfg: DataConfig, name: str, source: str,
                spec=None) -> Dataset:
    cache = _Cache(name, fmt, files, cfg)
    ds = cache.load(name, source)
    if ds is not None:
        return ds
    raw = _read_raw(files, fmt, cfg, spec)
    meta = {"format": fmt, "from": "raw", "files": [str(f) for f in files],
            "config": _prep(cfg)}
    if spec is not None:
        meta["label"] = spec.label
    ds = build_dataset(raw, cfg, name, source, meta)
    cache.save(ds)
    return ds


# -- .npz cache ----------------------------------------------------------------------------
class _Cache:
    """Parsed datasets in ``<cache>/parsed/<name>-<key>.npz``; failures are never fatal."""

    def __init__(self, name: str, fmt: str, files: list, cfg: DataConfig):
        self.path = None
        self.files = [str(f) for f in files]
        if not cfg.cache:
            return
        from .registry import cache_dir

        h = hashlib.sha256(_CACHE_VERSION.encode())
        h.update(json.dumps({"format": fmt, "config": _prep(cfg)}, sort_keys=True).encode())
        try:
            for f in files:
                h.update(Path(f).name.encode())
                h.update(hashlib.sha256(Path(f).read_bytes()).digest())
        except OSError:
            return
        safe = re.sub(r"[^A-Za-z0-9._-]+", "_", name)[:60] or "data"
        self.path = cache_dir() / "parsed" / f"{safe}-{h.hexdigest()[:24]}.npz"

    def load(self, name: str, source: str) -> Dataset | None:
        if self.path is None or not self.path.is_file():
            return None
        import scipy.sparse as sp

        try:
            with np.load(self.path, allow_pickle=False) as z:
                nu, ni = (int(x) for x in z["shape"])
                mats = []
                for s in ("train", "valid", "test"):
                    ind, ptr = z[s + "_indices"], z[s + "_indptr"]
                    mats.append(sp.csr_matrix((np.ones(len(ind), np.float32), ind, ptr),
                                              shape=(nu, ni)))
                uid = z["user_ids"] if "user_ids" in z.files else None
                iid = z["item_ids"] if "item_ids" in z.files else None
                meta = json.loads(str(z["meta"]))
        except Exception:  # noqa: BLE001 - a corrupt or foreign cache entry: rebuild
            return None
        meta["cache"] = str(self.path)
        meta["files"] = self.files
        return Dataset(name, *mats, user_ids=uid, item_ids=iid, source=source, meta=meta)

    def save(self, ds: Dataset) -> None:
        if self.path is None:
            return
        arrays = {"shape": np.array([ds.n_users, ds.n_items], dtype=np.int64),
                  "meta": np.array(json.dumps(ds.meta))}
        for s in ("train", "valid", "test"):
            m = ds.split(s)
            arrays[s + "_indices"] = m.indices
            arrays[s + "_indptr"] = m.indptr
        if ds.user_ids is not None:
            arrays["user_ids"] = np.asarray(ds.user_ids)
        if ds.item_ids is not None:
            arrays["item_ids"] = np.asarray(ds.item_ids)
        from ..utils.atomic import atomic_path

        with contextlib.suppress(OSError, FreqdError, ValueError), \
                atomic_path(self.path) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, **arrays)


# -- export -----------------------------------------------------------------------------------
def _pairs_text(m) -> str:
    """``USER\tITEM`` header, then one ``user\titem`` row per stored entry (CSR order)."""
    users = np.repeat(np.arange(m.shape[0], dtype=np.int64), np.diff(m.indptr))
    if not len(users):
        return "USER\tITEM\n"
    rows = map("%d\t%d".__mod__, zip(users.tolist(), m.indices.tolist()))
    return "USER\tITEM\n" + "\n".join(rows) + "\n"


_EXPORT_FILES = ("train.txt", "valid.txt", "test.txt", "config.yaml")


def export_split(dataset: Dataset, out_dir: str | os.PathLike) -> Path:
    """Write ``train.txt`` / ``valid.txt`` / ``test.txt`` (+ ``config.yaml``) to ``out_dir``.

    The authors' format: TSV with header ``USER\\tITEM``, 0-based internal ids, rows sorted
    by user and, within a user, by item id (the stored order). All files are written into a
    temporary folder next to ``out_dir`` and moved into place only when complete, so a
    failure leaves nothing behind (an existing ``out_dir`` keeps its other files).
    """
    out = Path(out_dir).expanduser()
    if out.exists() and not out.is_dir():
        raise FreqdError(f"cannot export to {out}: it is a file, not a folder")
    texts = {f"{s}.txt": _pairs_text(dataset.split(s)) for s in ("train", "valid", "test")}
    n_inters = dataset.train.nnz + dataset.valid.nnz + dataset.test.nnz
    texts["config.yaml"] = (f"num_users: {dataset.n_users}\nnum_items: {dataset.n_items}\n"
                            f"num_inters: {n_inters}\nstart_idx: 0\n")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    except OSError as e:
        raise FreqdError(f"cannot write {out}: {e.strerror or e}") from None
    try:
        for fname in _EXPORT_FILES:
            with open(tmp / fname, "w", encoding="utf-8", newline="\n") as fh:
                fh.write(texts[fname])
                fh.flush()
                os.fsync(fh.fileno())
        if not out.exists():
            os.rename(tmp, out)
        else:
            for fname in _EXPORT_FILES:
                os.replace(tmp / fname, out / fname)
            tmp.rmdir()
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise FreqdError(f"cannot write {out}: {e.strerror or e}") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
