"""Interaction data: readers, preprocessing, the dataset registry and the Dataset class.

``load_dataset``, ``DataConfig``, ``export_split`` and ``dataset_info`` are imported lazily
(from :mod:`freqd.data.load`) so that importing this package stays cheap.
"""
from __future__ import annotations

__all__ = ["DataConfig", "dataset_info", "export_split", "load_dataset"]


def __getattr__(name: str):
    if name in __all__:
        from . import load

        return getattr(load, name)
    raise AttributeError(f"module 'freqd.data' has no attribute {name!r}")
