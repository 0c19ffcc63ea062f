"""SimpleX (Mao et al., CIKM 2021): a history-aware two-tower model scored by cosine
similarity and trained with the cosine contrastive loss (CCL) over many negatives.

User tower: ``p_u = g * e_u + (1 - g) * V h_u`` where ``h_u`` is the mean of the item
embeddings of the user's training history (at most ``history_len`` items) and ``V`` a
learnable ``d x d`` matrix; items are their ID embeddings. Score: ``cos(p_u, e_i)``.

CCL for one positive ``(u, i)`` with negatives ``N``::

    (1 - cos(p_u, e_i)) + neg_weight / |N| * sum_{j in N} max(0, cos(p_u, e_j) - margin)

summed over the batch (the library's convention, see PROTOCOL.md; the SimpleX authors'
code averages over the batch, i.e. a learning-rate scale of 1/B).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import check
from ..utils.numerics import sparse_mm
from .base import Recommender, Reps
from .lightgcn import csr_buffer, register_csr

__all__ = ["SimpleX", "SimpleXConfig", "ccl_loss", "truncated_history"]


@dataclass
class SimpleXConfig:
    """SimpleX settings. Teachers: ``dim`` 500 (CiteULike-t, Yelp) / 1000 (Gowalla);
    students 20. Defaults follow PROTOCOL.md (init std 1e-4, history 500, 2000 negatives
    with weight 100); ``margin`` 0.9 and ``gamma`` 0.5 are the SimpleX authors' settings for
    their Yelp18/Gowalla runs (the FreqD documents do not state them)."""

    #: embedding dimension of the user and item tables (and of V)
    dim: int = 20
    #: std of the N(0, std^2) initialisation of the ID tables (authors: 1e-4)
    init_std: float = 1e-4
    #: items of the training history averaged by the user tower (the first ones in the
    #: training matrix's row order, i.e. ascending internal item id)
    history_len: int = 500
    #: negatives per positive in the CCL loss (authors: 2000; 1000 on Yelp)
    n_neg: int = 2000
    #: weight w of the negative part of the CCL loss (authors: 100)
    neg_weight: float = 100.0
    #: cosine margin m: a negative costs only when cos(u, j) > m
    margin: float = 0.9
    #: g in p_u = g * e_u + (1 - g) * V h_u (1 = ignore the history, 0 = history only)
    gamma: float = 0.5
    #: dropout on the user tower output during training (0 = off)
    dropout: float = 0.0
    #: how negative cosines are computed: "gather" the [B, n_neg, d] negative embeddings, or
    #: "full" = one [B, n_items] matrix product, then pick (less memory, and faster on CPU
    #: unless n_items >> n_neg); "auto" = full if n_items <= 16 * n_neg or the gathered
    #: tensor would exceed 256 MB, else gather. Same values and gradients either way.
    neg_scoring: Literal["auto", "gather", "full"] = "auto"

    def __post_init__(self):
        check(self.dim >= 1, "dim", f"must be >= 1, got {self.dim}")
        check(self.init_std > 0, "init_std", f"must be > 0, got {self.init_std}")
        check(self.history_len >= 1, "history_len", f"must be >= 1, got {self.history_len}")
        check(self.n_neg >= 1, "n_neg", f"must be >= 1, got {self.n_neg}")
        check(self.neg_weight >= 0, "neg_weight", f"must be >= 0, got {self.neg_weight}")
        check(-1.0 <= self.margin <= 1.0, "margin", f"must be in [-1, 1], got {self.margin}")
        check(0.0 <= self.gamma <= 1.0, "gamma", f"must be in [0, 1], got {self.gamma}")
        check(0.0 <= self.dropout < 1.0, "dropout", f"must be in [0, 1), got {self.dropout}")
        check(self.neg_scoring in ("auto", "gather", "full"), "neg_scoring",
              f"must be auto, gather or full, got {self.neg_scoring!r}")


def truncated_history(train, history_len: int) -> sp.csr_matrix:
    """Row-normalised history matrix [n_users, n_items]: each user's first
    ``history_len`` training items (row order) with weight 1/len; empty rows stay empty."""
    m = sp.csr_matrix(train, dtype=np.float32, copy=True)
    m.sum_duplicates()
    deg = np.diff(m.indptr).astype(np.int64)
    rank = np.arange(m.nnz, dtype=np.int64) - np.repeat(m.indptr[:-1].astype(np.int64), deg)
    keep = rank < history_len
    users = np.repeat(np.arange(m.shape[0], dtype=np.int64), deg)[keep]
    items = m.indices[keep].astype(np.int64)
    length = np.minimum(deg, history_len)
    w = (1.0 / length[users]).astype(np.float32)
    h = sp.csr_matrix((w, (users, items)), shape=m.shape)
    h.sort_indices()
    return h


def ccl_loss(pos_cos: Tensor, neg_cos: Tensor, neg_weight: float, margin: float) -> Tensor:
    """Cosine contrastive loss summed over the batch. ``pos_cos`` [B], ``neg_cos`` [B, K]."""
    neg = F.relu(neg_cos - margin).mean(1)
    return ((1.0 - pos_cos) + neg_weight * neg).sum()


class SimpleX(Recommender):
    """SimpleX with a mean-aggregated history tower, cosine scores and the CCL loss.

    ``propagate()`` returns (user tower output for all users, item table); the history
    mean is one sparse product with a row-normalised history matrix (held in
    non-persistent buffers ``history_*``). ``features("embedding")`` are the ID tables.
    """

    name = "simplex"

    def __init__(self, n_users: int, n_items: int, cfg: SimpleXConfig | None = None, train=None):
        cfg = cfg if cfg is not None else SimpleXConfig()
        super().__init__(n_users, n_items, cfg.dim)
        if train is None:
            raise ValueError("SimpleX needs the training matrix to build the user histories")
        if tuple(train.shape) != (self.n_users, self.n_items):
            raise ValueError(f"training matrix has shape {tuple(train.shape)}, "
                             f"expected ({self.n_users}, {self.n_items})")
        self.cfg = cfg
        self.n_neg = int(cfg.n_neg)
        self.gamma = float(cfg.gamma)
        self.user_emb = nn.Embedding(self.n_users, cfg.dim)
        self.item_emb = nn.Embedding(self.n_items, cfg.dim)
        nn.init.normal_(self.user_emb.weight, std=cfg.init_std)
        nn.init.normal_(self.item_emb.weight, std=cfg.init_std)
        #: V: maps the aggregated history into the user space (default nn.Linear init)
        self.history_proj = nn.Linear(cfg.dim, cfg.dim, bias=False)
        self.dropout = nn.Dropout(cfg.dropout)
        hist = truncated_history(train, cfg.history_len)
        register_csr(self, "history", hist)
        self._hist_np = hist  # for the lazily built padded index (user_tower)
        self._padded: tuple[Tensor, Tensor] | None = None

    # -- user tower ----------------------------------------------------------------------
    def _fuse(self, e_u: Tensor, h_u: Tensor) -> Tensor:
        out = self.gamma * e_u + (1.0 - self.gamma) * self.history_proj(h_u)
        return self.dropout(out)

    def propagate(self) -> Reps:
        """(user tower output [n_users, d], item table [n_items, d])."""
        h = sparse_mm(csr_buffer(self, "history"), self.item_emb.weight)
        return self._fuse(self.user_emb.weight, h), self.item_emb.weight

    def padded_history(self) -> tuple[Tensor, Tensor]:
        """(index [n_users, L], weight [n_users, L]): each user's truncated history padded
        to the longest one, ``L <= history_len``; padding points at item 0 with weight 0
        (the equivalent of a zero padding row). Built once, on first use."""
        dev = self.item_emb.weight.device
        if self._padded is None or self._padded[0].device != dev:
            h = self._hist_np
            deg = np.diff(h.indptr).astype(np.int64)
            width = max(1, int(deg.max()) if len(deg) else 1)
            rows = np.repeat(np.arange(h.shape[0], dtype=np.int64), deg)
            cols = np.arange(h.nnz, dtype=np.int64) - np.repeat(h.indptr[:-1].astype(np.int64), deg)
            idx = np.zeros((h.shape[0], width), dtype=np.int64)
            w = np.zeros((h.shape[0], width), dtype=np.float32)
            idx[rows, cols] = h.indices
            w[rows, cols] = h.data
            self._padded = (torch.from_numpy(idx).to(dev), torch.from_numpy(w).to(dev))
        return self._padded

    def user_tower(self, users: Tensor) -> Tensor:
        """Tower output for some users only ([len(users), d]); equals
        ``propagate()[0][users]`` (in eval mode) at ``O(len(users) * L * d)`` cost."""
        idx, w = self.padded_history()
        h = F.embedding_bag(idx[users], self.item_emb.weight, mode="sum",
                            per_sample_weights=w[users].to(self.item_emb.weight.dtype))
        return self._fuse(self.user_emb(users), h)

    # -- scoring ---------------------------------------------------------------------------
    def pair_scores(self, users: Tensor, items: Tensor, reps: Reps) -> Tensor:
        """Cosine similarity of (users[b], items[b, ...]) pairs."""
        u, i = reps
        ue = F.normalize(u[users], dim=-1)
        ie = F.normalize(i[items], dim=-1)
        if ie.dim() == 2:
            return (ue * ie).sum(-1)
        return torch.einsum("bd,bkd->bk", ue, ie)

    @torch.no_grad()
    def score(self, users: Tensor, reps: Reps) -> Tensor:
        """Cosine scores [len(users), n_items]."""
        u, i = reps
        return F.normalize(u[users], dim=-1) @ F.normalize(i, dim=-1).T

    def _neg_cosines(self, un: Tensor, items_n: Tensor, neg: Tensor) -> Tensor:
        """cos(user b, item neg[b, k]) from unit user rows ``un`` and the unit item table."""
        b, k = neg.shape
        mode = self.cfg.neg_scoring
        if mode == "auto":
            big = b * k * self.dim * items_n.element_size() > 256 * 2**20
            mode = "full" if big or self.n_items <= 16 * k else "gather"
        if mode == "full":
            return (un @ items_n.T).gather(1, neg)
        rows = items_n.index_select(0, neg.reshape(-1)).view(b, k, -1)
        return torch.bmm(rows, un.unsqueeze(2)).squeeze(2)

    def loss(self, batch: dict[str, Tensor], reps: Reps) -> dict[str, Tensor]:
        """CCL loss summed over the batch: keys ``"loss"`` (= ``"ccl"``), ``"ccl_pos"`` and
        ``"ccl_neg"`` (its two parts)."""
        u, i = reps
        un = F.normalize(u[batch["users"]], dim=-1)
        i_n = F.normalize(i, dim=-1)  # once per step: the table is small next to B x n_neg
        pos = (un * i_n[batch["pos"]]).sum(-1)
        neg = self._neg_cosines(un, i_n, batch["neg"])
        pos_part = (1.0 - pos).sum()
        neg_part = self.cfg.neg_weight * F.relu(neg - self.cfg.margin).mean(1).sum()
        ccl = pos_part + neg_part
        return {"loss": ccl, "ccl": ccl.detach(), "ccl_pos": pos_part.detach(),
                "ccl_neg": neg_part.detach()}
