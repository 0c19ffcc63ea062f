"""The contract every backbone (teacher or student) follows.

A backbone is a ``torch.nn.Module`` built from ``(n_users, n_items, config, train)`` where
``train`` is the scipy CSR training matrix (LightGCN builds its graph from it, SimpleX its
user histories). It knows nothing of distillation or of the trainer.

Training step (the trainer's view)::

    reps = model.propagate()              # once per step: (user_final, item_final)
    out = model.loss(batch, reps)         # dict; out["loss"] is what is minimised
    # a distiller may reuse the same reps: model.features(layer, reps)

Evaluation::

    model.eval(); cache = model.propagate()   # under torch.no_grad(), once per evaluation
    scores = model.score(users, cache)        # [len(users), n_items], higher = better

``batch`` is a dict of LongTensors on the model's device: ``users`` [B], ``pos`` [B],
``neg`` [B, n_neg] (uniform negatives excluding training positives).
"""
from __future__ import annotations

from typing import Dict, Tuple

import torch
from torch import Tensor, nn

Reps = Tuple[Tensor, Tensor]

#: names of the representations a distiller may ask for (see :meth:`Recommender.features`)
FEATURE_LAYERS = ("embedding", "final")


class Recommender(nn.Module):
    """Base class: embedding tables ``user_emb`` / ``item_emb`` (nn.Embedding)."""

    name: str = "base"
    #: negatives per positive the trainer must sample for this backbone
    n_neg: int = 1

    def __init__(self, n_users: int, n_items: int, dim: int):
        super().__init__()
        self.n_users, self.n_items, self.dim = int(n_users), int(n_items), int(dim)

    # -- representations ------------------------------------------------------------------
    def propagate(self) -> Reps:
        """Final user and item representations ([n_users, d], [n_items, d]).

        MF: the tables themselves. LightGCN: the layer-averaged propagated embeddings (one
        sparse CSR product per layer). SimpleX: the user tower output and the item table.
        """
        return self.user_emb.weight, self.item_emb.weight

    def features(self, layer: str = "final", reps: Reps | None = None) -> Reps:
        """The representation a feature distiller uses: ``"embedding"`` (the ego tables)
        or ``"final"`` (what :meth:`propagate` returns). The one place that says which
        layer is "the feature"."""
        if layer == "embedding":
            return self.user_emb.weight, self.item_emb.weight
        if layer == "final":
            return reps if reps is not None else self.propagate()
        raise ValueError(f"unknown feature layer {layer!r}; expected one of {FEATURE_LAYERS}")

    # -- scoring ----------------------------------------------------------------------------
    def pair_scores(self, users: Tensor, items: Tensor, reps: Reps) -> Tensor:
        """Scores of (users[b], items[b, ...]) pairs; ``items`` may have extra dims."""
        u, i = reps
        ue = u[users]
        ie = i[items]
        if ie.dim() == 2:
            return (ue * ie).sum(-1)
        return torch.einsum("bd,bkd->bk", ue, ie)

    @torch.no_grad()
    def score(self, users: Tensor, reps: Reps) -> Tensor:
        """Full-ranking scores [len(users), n_items] for evaluation and serving."""
        u, i = reps
        return u[users] @ i.T

    # -- training ---------------------------------------------------------------------------
    def loss(self, batch: Dict[str, Tensor], reps: Reps) -> Dict[str, Tensor]:
        """The backbone's own recommendation loss; key ``"loss"`` is the total."""
        raise NotImplementedError
