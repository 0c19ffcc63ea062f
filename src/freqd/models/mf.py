"""BPR-MF: dot-product matrix factorisation trained with the BPR loss (Rendle et al. 2009)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import check
from .base import Recommender, Reps

__all__ = ["MF", "MFConfig", "bpr_loss"]


@dataclass
class MFConfig:
    """BPR-MF settings. Teachers use ``dim`` 400 (CiteULike-t) / 300 (Gowalla, Yelp),
    students 20 (PROTOCOL.md)."""

    #: embedding dimension of the user and item tables
    dim: int = 20
    #: std of the N(0, std^2) initialisation of both tables (authors: 0.01)
    init_std: float = 0.01
    #: nn.Embedding(sparse=True): sparse gradients for torch.optim.SparseAdam (lazy Adam,
    #: much faster per step for large tables). SparseAdam applies no weight decay, so the
    #: authors' L2 regularisation is lost; dense Adam with weight decay stays the default.
    sparse_grad: bool = False

    def __post_init__(self):
        check(self.dim >= 1, "dim", f"must be >= 1, got {self.dim}")
        check(self.init_std > 0, "init_std", f"must be > 0, got {self.init_std}")


def bpr_loss(pos: Tensor, neg: Tensor) -> Tensor:
    """``-sum_b mean_k log sigmoid(pos[b] - neg[b, k])`` (the authors' reduction: summed
    over the batch, averaged over the negatives). ``pos`` [B], ``neg`` [B] or [B, K]."""
    if neg.dim() == 1:
        neg = neg[:, None]
    return -F.logsigmoid(pos[:, None] - neg).mean(1).sum()


class MF(Recommender):
    """BPR matrix factorisation: ``score(u, i) = <e_u, e_i>``.

    ``propagate()`` returns the tables themselves; ``features("embedding")`` and
    ``features("final")`` are therefore the same tensors.
    """

    name = "mf"
    n_neg = 1

    def __init__(self, n_users: int, n_items: int, cfg: MFConfig | None = None, train=None):
        cfg = cfg if cfg is not None else MFConfig()
        super().__init__(n_users, n_items, cfg.dim)
        self.cfg = cfg
        self.sparse_grad = bool(cfg.sparse_grad)
        self.user_emb = nn.Embedding(self.n_users, cfg.dim, sparse=self.sparse_grad)
        self.item_emb = nn.Embedding(self.n_items, cfg.dim, sparse=self.sparse_grad)
        nn.init.normal_(self.user_emb.weight, std=cfg.init_std)
        nn.init.normal_(self.item_emb.weight, std=cfg.init_std)

    def _rows(self, table: Tensor, idx: Tensor) -> Tensor:
        # F.embedding keeps the gradient sparse when the table is a sparse-grad leaf
        if self.sparse_grad and table.is_leaf:
            return F.embedding(idx, table, sparse=True)
        return table[idx]

    def pair_scores(self, users: Tensor, items: Tensor, reps: Reps) -> Tensor:
        u, i = reps
        ue = self._rows(u, users)
        ie = self._rows(i, items)
        if ie.dim() == 2:
            return (ue * ie).sum(-1)
        return torch.einsum("bd,bkd->bk", ue, ie)

    def loss(self, batch: dict[str, Tensor], reps: Reps) -> dict[str, Tensor]:
        """BPR loss: keys ``"loss"`` and ``"bpr"`` (equal)."""
        pos = self.pair_scores(batch["users"], batch["pos"], reps)
        neg = self.pair_scores(batch["users"], batch["neg"], reps)
        bpr = bpr_loss(pos, neg)
        return {"loss": bpr, "bpr": bpr.detach()}
