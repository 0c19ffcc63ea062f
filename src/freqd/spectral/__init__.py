"""Graphs, polynomial filters and frequency analysis for FreqD (docs: FREQD.md §2-5).

Submodules (imported lazily, so ``import freqd.spectral.graphs`` does not load torch):

* :mod:`.graphs`: sparse, chunked graph builders (co-occurrence top-K, kNN, bipartite),
  normalisation and Laplacian (scipy CSR float32);
* :mod:`.filters`: polynomial filters h, edge dropout, the full-table filter;
* :mod:`.local`: the batch-local filter (H X)[B] = H[B, N_k(B)] X[N_k(B)];
* :mod:`.analysis`: eigendecomposition, per-frequency and band losses, Rayleigh quotient,
  exact spectral reweighting;
* :mod:`.cache`: the on-disk graph cache.

The names below can be imported from ``freqd.spectral`` directly.
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "graphs": [
        "cooccurrence_topk", "knn_graph", "bipartite_graph", "symmetrize_choices",
        "normalize_adjacency", "laplacian", "build_graph",
    ],
    "filters": [
        "PolyFilter", "linear", "quadratic", "polynomial", "identity", "make_filter",
        "lambda_to_ahat", "ahat_to_lambda", "filter_weights", "SparseOp", "as_sparse_op",
        "edge_dropout_mask", "edge_dropout", "sample_hops", "HopOps", "full_filter",
    ],
    "local": ["LocalFilterPlan", "local_filter_plan", "local_filter"],
    "analysis": [
        "Spectrum", "eigendecomposition", "per_frequency_loss", "band_losses",
        "rayleigh_quotient", "weight_function", "exact_reweighted_loss",
    ],
    "cache": ["cached_graph", "graph_key", "array_fingerprint", "default_cache_dir"],
}
_WHERE = {name: mod for mod, names in _EXPORTS.items() for name in names}

__all__ = [
    "HopOps",
    "LocalFilterPlan",
    "PolyFilter",
    "SparseOp",
    "Spectrum",
    "ahat_to_lambda",
    "array_fingerprint",
    "as_sparse_op",
    "band_losses",
    "bipartite_graph",
    "build_graph",
    "cached_graph",
    "cooccurrence_topk",
    "default_cache_dir",
    "edge_dropout",
    "edge_dropout_mask",
    "eigendecomposition",
    "exact_reweighted_loss",
    "filter_weights",
    "full_filter",
    "graph_key",
    "identity",
    "knn_graph",
    "lambda_to_ahat",
    "laplacian",
    "linear",
    "local_filter",
    "local_filter_plan",
    "make_filter",
    "normalize_adjacency",
    "per_frequency_loss",
    "polynomial",
    "quadratic",
    "rayleigh_quotient",
    "sample_hops",
    "symmetrize_choices",
    "weight_function",
]


def __getattr__(name: str) -> Any:
    mod = _WHERE.get(name)
    if mod is None:
        raise AttributeError(f"module 'freqd.spectral' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{mod}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
