"""Full-ranking evaluation (both masking protocols), ranking metrics and top-K serving.

Public API (imported lazily so that ``import freqd`` stays light)::

    from freqd.eval import evaluate, Evaluator, recommend, write_recommendations
    evaluate(score_fn, dataset, split="test", protocol="standard", ks=(10, 20, 50))
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "evaluate": "evaluator",
    "Evaluator": "evaluator",
    "PROTOCOLS": "evaluator",
    "hits_from_topk": "evaluator",
    "recommend": "topk",
    "write_recommendations": "topk",
    "topk_ranked": "topk",
    "default_chunk_size": "topk",
    "compute_metrics": "metrics",
    "metric_keys": "metrics",
    "metric_matrix": "metrics",
    "METRICS": "metrics",
    "DEFAULT_KS": "metrics",
    "recall": "metrics",
    "ndcg": "metrics",
    "precision": "metrics",
    "hitrate": "metrics",
    "mrr": "metrics",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
