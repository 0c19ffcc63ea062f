"""Backbones (BPR-MF, LightGCN, SimpleX); imported lazily so ``import freqd`` stays light."""
from __future__ import annotations

import importlib

_LAZY = {
    "Recommender": "base", "MF": "mf", "MFConfig": "mf", "LightGCN": "lightgcn",
    "LightGCNConfig": "lightgcn", "SimpleX": "simplex", "SimpleXConfig": "simplex",
    "BACKBONES": "registry", "build_backbone": "registry", "backbone_config": "registry",
}

__all__ = [
    "BACKBONES",
    "MF",
    "LightGCN",
    "LightGCNConfig",
    "MFConfig",
    "Recommender",
    "SimpleX",
    "SimpleXConfig",
    "backbone_config",
    "build_backbone",
]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
