"""freqd: knowledge distillation for recommender systems.

FreqD (Zhu & Zhang, KDD 2025) and the field's baselines, with full-ranking evaluation.
The public API (``load_dataset``, ``train``, ``distill``, ``Run``) is imported lazily so that
``import freqd`` stays fast.

``freqd.train`` and ``freqd.distill`` are functions although subpackages of the same names
exist (``freqd.train.trainer``, ``freqd.distill.freqd``): importing a subpackage would
normally rebind the parent's attribute to the module, so the package's module class keeps
the functions in place (submodules stay importable with ``from freqd.train.x import ...``).
"""
import sys as _sys
import types as _types

__version__ = "0.1.0"

__all__ = ["load_dataset", "train", "distill", "Run", "__version__"]


class _FreqdModule(_types.ModuleType):
    @property
    def train(self):
        from .api import train

        return train

    @train.setter
    def train(self, value):  # the import system binding the subpackage: keep the function
        pass

    @property
    def distill(self):
        from .api import distill

        return distill

    @distill.setter
    def distill(self, value):
        pass


_sys.modules[__name__].__class__ = _FreqdModule


def __getattr__(name):
    if name in ("load_dataset", "Run"):
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'freqd' has no attribute {name!r}")
