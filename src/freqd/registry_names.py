"""Validation of method names without importing the methods."""
from __future__ import annotations

from typing import Sequence

from .errors import ConfigError


def check_methods(methods: Sequence[str]) -> None:
    from .distill.registry import METHODS

    bad = [m.split("+")[0] for m in methods if m.split("+")[0] not in METHODS]
    if bad:
        raise ConfigError(f"option '--methods': unknown method(s) {bad}; available: {', '.join(sorted(METHODS))}")
    if len(set(methods)) != len(methods):
        raise ConfigError(f"option '--methods': a method is listed twice: {list(methods)}")
