"""Explicit registry of backbones: name -> (model class, config class)."""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from ..config import from_dict
from ..errors import ConfigError
from .base import Recommender
from .lightgcn import LightGCN, LightGCNConfig
from .mf import MF, MFConfig
from .simplex import SimpleX, SimpleXConfig

__all__ = ["BACKBONES", "backbone_config", "build_backbone"]

BACKBONES: dict[str, tuple[type, type]] = {
    "mf": (MF, MFConfig),
    "lightgcn": (LightGCN, LightGCNConfig),
    "simplex": (SimpleX, SimpleXConfig),
}


def _entry(name: str) -> tuple[type, type]:
    if name not in BACKBONES:
        raise ConfigError(f"unknown backbone {name!r}; available: {', '.join(BACKBONES)}")
    return BACKBONES[name]


def backbone_config(name: str, data: Mapping[str, Any] | None = None, prefix: str = "model."):
    """Strictly validated config of backbone ``name`` from a mapping (unknown keys are
    errors naming ``prefix + key``)."""
    _, cfg_cls = _entry(name)
    return from_dict(cfg_cls, data or {}, prefix=prefix)


def build_backbone(name: str, n_users: int, n_items: int, cfg: Any = None, train=None) -> Recommender:
    """Build backbone ``name``; ``cfg`` is its config object, a mapping of options, or None
    (defaults). ``train`` is the scipy CSR training matrix (LightGCN and SimpleX need it)."""
    model_cls, cfg_cls = _entry(name)
    if cfg is None or isinstance(cfg, Mapping):
        cfg = backbone_config(name, cfg)
    elif not isinstance(cfg, cfg_cls):
        got = type(cfg).__name__ if dataclasses.is_dataclass(cfg) else repr(cfg)
        raise ConfigError(f"backbone {name!r} expects a {cfg_cls.__name__} or a mapping, got {got}")
    return model_cls(n_users, n_items, cfg, train)
