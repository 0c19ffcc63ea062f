"""On-disk cache of built graphs, outside the source tree.

A graph is stored as ``<builder>-<key>.npz`` (scipy ``save_npz``) plus a small
``<builder>-<key>.json`` with what it was built from, in ``$FREQD_CACHE_DIR`` or
``~/.cache/freqd/graphs``. The key is the sha256 of (builder name, parameters, a
fingerprint of the inputs, :data:`GRAPH_CACHE_VERSION`), so a change of data, option or
builder version gives a new file, never a stale one. Files are written atomically; an
unreadable cached file is rebuilt.
"""
from __future__ import annotations

import hashlib
import json
import os
import warnings
import zipfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
import scipy.sparse as sp

from ..errors import ConfigError
from ..utils.atomic import atomic_path, write_json

__all__ = [
    "GRAPH_CACHE_VERSION",
    "array_fingerprint",
    "cached_graph",
    "default_cache_dir",
    "graph_key",
]

#: bump when a builder's output changes for the same inputs (invalidates old files)
GRAPH_CACHE_VERSION = "graphs-1"


def _source_root() -> Path:
    """The checkout holding this package (its repository root if there is one)."""
    pkg = Path(__file__).resolve().parents[1]  # .../freqd
    for cand in (pkg.parent.parent, pkg.parent):
        if (cand / "pyproject.toml").exists():
            return cand
    return pkg


def default_cache_dir() -> Path:
    """``$FREQD_CACHE_DIR`` if set, else ``~/.cache/freqd/graphs``."""
    env = os.environ.get("FREQD_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "freqd" / "graphs"


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in sorted(obj.items(), key=lambda kv: str(kv[0]))}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    return repr(obj)


def graph_key(builder_name: str, params: dict, inputs_fingerprint: str) -> str:
    """sha256 hex digest identifying one built graph."""
    blob = json.dumps(
        {
            "builder": builder_name,
            "params": _jsonable(params),
            "inputs": inputs_fingerprint,
            "version": GRAPH_CACHE_VERSION,
        },
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def array_fingerprint(*arrays: Any) -> str:
    """sha256 (16 hex) over the shapes, dtypes and bytes of arrays / tensors / sparse
    matrices, e.g. the teacher's embeddings for a kNN graph."""
    h = hashlib.sha256()
    for a in arrays:
        if sp.issparse(a):
            m = sp.csr_matrix(a)
            m.sort_indices()
            parts = [np.asarray(m.shape), m.indptr, m.indices, m.data]
        else:
            if type(a).__module__.startswith("torch"):
                a = a.detach().cpu().numpy()
            a = np.ascontiguousarray(a)
            parts = [np.asarray(a.shape), np.frombuffer(a.dtype.str.encode(), np.uint8), a]
        for p in parts:
            h.update(np.ascontiguousarray(p).tobytes())
    return h.hexdigest()[:16]


def _is_within(path: Path, root: Path) -> bool:
    try:
        path.resolve().relative_to(root.resolve())
        return True
    except ValueError:
        return False


def cached_graph(
    builder_name: str,
    params: dict,
    inputs_fingerprint: str,
    build_fn: Callable[[], Any],
    cache_dir: str | os.PathLike | None = None,
) -> sp.csr_matrix:
    """Load the graph for (builder, params, inputs) from the cache, or build and store it.

    ``build_fn()`` must return a scipy sparse matrix; the result is float32 CSR either way.
    ``cache_dir`` defaults to :func:`default_cache_dir`; a folder inside the source tree is
    refused (ConfigError naming FREQD_CACHE_DIR / cache_dir).
    """
    folder = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    root = _source_root()
    if _is_within(folder, root):
        what = "cache_dir" if cache_dir is not None else "FREQD_CACHE_DIR"
        raise ConfigError(
            f"option {what!r}: the graph cache {folder} lies inside the source tree {root}; "
            "choose a folder outside it"
        )
    key = graph_key(builder_name, params, inputs_fingerprint)
    safe = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in builder_name)
    path = folder / f"{safe}-{key[:24]}.npz"
    if path.exists():
        try:
            m = sp.load_npz(path)
            return sp.csr_matrix(m, dtype=np.float32)
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
            # corrupt or truncated by something else: rebuild
            warnings.warn(f"rebuilding unreadable cached graph {path}: {e}", stacklevel=2)
    m = build_fn()
    if not sp.issparse(m):
        raise TypeError(f"build_fn for {builder_name!r} returned {type(m).__name__}, not sparse")
    m = sp.csr_matrix(m, dtype=np.float32)
    with atomic_path(path, suffix=".npz") as tmp, open(tmp, "wb") as fh:
        sp.save_npz(fh, m, compressed=False)
    write_json(
        path.with_suffix(".json"),
        {
            "builder": builder_name,
            "params": _jsonable(params),
            "inputs": inputs_fingerprint,
            "version": GRAPH_CACHE_VERSION,
            "key": key,
            "shape": list(m.shape),
            "nnz": int(m.nnz),
        },
    )
    return m
