"""freqd: knowledge distillation for recommender systems.

FreqD (Zhu & Zhang, KDD 2025) and the field's baselines, with full-ranking evaluation.
The public API is imported lazily so that ``import freqd`` stays fast.
"""
__version__ = "0.1.0"

__all__ = ["load_dataset", "train", "distill", "Run", "__version__"]


def __getattr__(name):
    if name in ("load_dataset", "train", "distill", "Run"):
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'freqd' has no attribute {name!r}")
