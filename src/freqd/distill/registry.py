"""Explicit registry of distillation methods: name -> (module, class).

Classes are imported only when asked for, so ``import freqd`` stays light. Each class has
``config_class`` (a dataclass subclassing :class:`~freqd.distill.base.MethodConfig`).
"""
from __future__ import annotations

import importlib
from typing import Any, Mapping

from ..config import from_dict
from ..errors import ConfigError

METHODS: dict[str, tuple[str, str]] = {
    # feature-based
    "freqd": ("freqd.distill.freqd", "FreqD"),
    "fd": ("freqd.distill.freqd", "FD"),
    "freqd-exact": ("freqd.distill.freqd", "FreqDExact"),
    "fitnet": ("freqd.distill.feature", "FitNet"),
    "de": ("freqd.distill.feature", "DE"),
    "phr": ("freqd.distill.feature", "PHR"),
    "vkd": ("freqd.distill.feature", "VkD"),
    # relation-based
    "htd": ("freqd.distill.relation", "HTD"),
    # response-based
    "kd": ("freqd.distill.response", "KD"),
    "rd": ("freqd.distill.response", "RD"),
    "cd": ("freqd.distill.response", "CD"),
    "rrd": ("freqd.distill.response", "RRD"),
    "dcd": ("freqd.distill.response", "DCD"),
    "unkd": ("freqd.distill.response", "UnKD"),
    "hetcomp": ("freqd.distill.response", "HetComp"),
}

#: how reports group methods (the paper's table layout)
GROUPS = {
    "response": ["kd", "rd", "cd", "rrd", "dcd", "unkd", "hetcomp"],
    "feature": ["fitnet", "de", "phr", "vkd", "fd"],
    "relation": ["htd"],
    "freqd": ["freqd", "freqd-exact"],
}


def method_class(name: str):
    if name not in METHODS:
        raise ConfigError(
            f"unknown method {name!r}; available: {', '.join(sorted(METHODS))}"
        )
    mod, cls = METHODS[name]
    try:
        module = importlib.import_module(mod)
        return getattr(module, cls)
    except (ImportError, AttributeError) as e:  # pragma: no cover - only while building
        raise ConfigError(f"method {name!r} is not available in this build ({e})") from None


def method_config(name: str, data: Mapping[str, Any] | None = None):
    """Strictly validated config object of method ``name`` (unknown keys are errors)."""
    cls = method_class(name)
    return from_dict(cls.config_class, data or {}, prefix="method.")


def build_distiller(name: str, teacher, student, dataset, cfg=None):
    """Build method ``name``; ``cfg`` is a config object, a mapping of overrides, or None."""
    cls = method_class(name)
    if cfg is None or isinstance(cfg, Mapping):
        cfg = method_config(name, cfg)
    return cls(teacher, student, dataset, cfg)
