"""The on-disk graph cache: keyed by inputs, atomic, outside the source tree."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from freqd.errors import ConfigError
from freqd.spectral.cache import (
    array_fingerprint,
    cached_graph,
    default_cache_dir,
    graph_key,
)


def _builder(counter: list, value: float = 1.0):
    def build():
        counter.append(1)
        return sp.csr_matrix(np.array([[0, value], [value, 0]], dtype=np.float64))

    return build


def test_build_once_then_load(tmp_path):
    calls: list = []
    a = cached_graph("cooc", {"k": 5, "side": "item"}, "fp1", _builder(calls), tmp_path)
    b = cached_graph("cooc", {"side": "item", "k": 5}, "fp1", _builder(calls), tmp_path)
    assert len(calls) == 1  # param order does not matter
    assert a.dtype == np.float32 and (a != b).nnz == 0
    files = sorted(p.name for p in tmp_path.iterdir())
    assert len(files) == 2 and files[0].endswith(".json") and files[1].endswith(".npz")
    assert not any(name.startswith(".") for name in files)  # no temp files left


def test_key_depends_on_every_input(tmp_path):
    base = graph_key("cooc", {"k": 5}, "fp")
    assert graph_key("cooc", {"k": 6}, "fp") != base
    assert graph_key("cooc", {"k": 5}, "fp2") != base
    assert graph_key("knn", {"k": 5}, "fp") != base
    calls: list = []
    cached_graph("cooc", {"k": 5}, "fp", _builder(calls, 1.0), tmp_path)
    m = cached_graph("cooc", {"k": 5}, "other", _builder(calls, 2.0), tmp_path)
    assert len(calls) == 2 and m[0, 1] == 2.0


def test_env_dir_and_source_tree_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("FREQD_CACHE_DIR", str(tmp_path / "env"))
    assert default_cache_dir() == tmp_path / "env"
    cached_graph("cooc", {}, "fp", _builder([]))
    assert any((tmp_path / "env").glob("cooc-*.npz"))
    inside = Path(__file__).resolve().parents[1] / "src" / "graph-cache"
    monkeypatch.setenv("FREQD_CACHE_DIR", str(inside))
    with pytest.raises(ConfigError, match="FREQD_CACHE_DIR"):
        cached_graph("cooc", {}, "fp", _builder([]))
    with pytest.raises(ConfigError, match="cache_dir"):
        cached_graph("cooc", {}, "fp", _builder([]), cache_dir=inside)
    assert not inside.exists()


def test_corrupt_file_is_rebuilt(tmp_path):
    calls: list = []
    cached_graph("cooc", {}, "fp", _builder(calls), tmp_path)
    (npz,) = tmp_path.glob("*.npz")
    npz.write_bytes(b"garbage")
    with pytest.warns(UserWarning, match="rebuilding"):
        m = cached_graph("cooc", {}, "fp", _builder(calls), tmp_path)
    assert len(calls) == 2 and m.nnz == 2
    assert sp.load_npz(npz).nnz == 2


def test_array_fingerprint():
    import torch

    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    assert array_fingerprint(x) == array_fingerprint(torch.as_tensor(x))
    assert array_fingerprint(x) != array_fingerprint(x.reshape(3, 2))
    assert array_fingerprint(x) != array_fingerprint(x.astype(np.float64))
    s = sp.csr_matrix(x)
    assert array_fingerprint(s) != array_fingerprint(sp.csr_matrix(x * 2))
