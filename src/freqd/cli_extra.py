"""Subcommands beyond the foundation (spectrum, bench, demo) are registered here."""
from __future__ import annotations


def register_extra(sub) -> None:
    pass


def dispatch_extra(a) -> int:  # pragma: no cover
    raise SystemExit(f"unknown command {a.cmd}")
