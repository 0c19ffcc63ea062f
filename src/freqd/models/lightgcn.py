"""LightGCN (He et al., SIGIR 2020): linear propagation over the normalised bipartite graph.

``E_0 = [E_users; E_items]``, ``E_{l+1} = Â E_l`` with ``Â = D^-1/2 A D^-1/2`` the
symmetrically normalised adjacency of the user-item graph (``n_users + n_items`` nodes,
no self loops), and the final representation is the mean over layers ``0..L``. ``Â`` is
built once with scipy and kept as a torch sparse CSR tensor (never densified); one
training step costs ``L`` sparse products forward and ``L`` backward.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from ..config import check
from ..utils.numerics import sparse_mm
from .base import Recommender, Reps
from .mf import bpr_loss

__all__ = [
    "LightGCN",
    "LightGCNConfig",
    "Workspace",
    "csr_buffer",
    "layer_mean_",
    "locality_order",
    "normalized_adjacency",
    "register_csr",
    "sym_spmm",
    "to_torch_csr",
]


@dataclass
class LightGCNConfig:
    """LightGCN settings. Teachers: ``dim`` 2000 / 3 layers (CiteULike-t), 2000 / 4
    (Gowalla), 1000 / 3 (Yelp); students: ``dim`` 20 with the teacher's number of layers."""

    #: embedding dimension of the user and item (ego) tables
    dim: int = 20
    #: propagation layers L; the output is the mean of layers 0..L (0 = plain MF)
    n_layers: int = 3
    #: std of the N(0, std^2) initialisation of both tables (authors: 0.1)
    init_std: float = 0.1

    def __post_init__(self):
        check(self.dim >= 1, "dim", f"must be >= 1, got {self.dim}")
        check(self.n_layers >= 0, "n_layers", f"must be >= 0, got {self.n_layers}")
        check(self.init_std > 0, "init_std", f"must be > 0, got {self.init_std}")


def normalized_adjacency(train) -> sp.csr_matrix:
    """``D^-1/2 A D^-1/2`` of the bipartite graph of ``train`` (users first, then items),
    float32 CSR with sorted indices. Isolated nodes get zero rows and columns."""
    r = sp.csr_matrix(train, dtype=np.float32, copy=True)
    r.sum_duplicates()
    r.data[:] = 1.0
    du = np.asarray(r.sum(axis=1)).ravel()
    di = np.asarray(r.sum(axis=0)).ravel()
    with np.errstate(divide="ignore"):
        su = np.where(du > 0, 1.0 / np.sqrt(du), 0.0).astype(np.float32)
        si = np.where(di > 0, 1.0 / np.sqrt(di), 0.0).astype(np.float32)
    rn = sp.diags(su) @ r @ sp.diags(si)
    a = sp.bmat([[None, rn], [rn.T, None]], format="csr", dtype=np.float32)
    a.sort_indices()
    return a


def _csr_tensor(crow: Tensor, col: Tensor, val: Tensor, shape: tuple[int, int]) -> Tensor:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*[Ss]parse CSR tensor support is in beta.*")
        warnings.filterwarnings("ignore", message=".*[Ss]parse invariant checks are implicitly.*")
        return torch.sparse_csr_tensor(crow, col, val, size=shape, check_invariants=False)


def to_torch_csr(m: sp.csr_matrix, dtype: torch.dtype = torch.float32) -> Tensor:
    """scipy CSR -> torch sparse CSR tensor (CPU)."""
    m = sp.csr_matrix(m)
    return _csr_tensor(torch.from_numpy(m.indptr.astype(np.int64)),
                       torch.from_numpy(m.indices.astype(np.int64)),
                       torch.from_numpy(m.data).to(dtype), m.shape)


def register_csr(module: nn.Module, name: str, m: sp.csr_matrix) -> None:
    """Keep a fixed sparse matrix on ``module`` as three non-persistent dense buffers
    (``{name}_crow``, ``{name}_col``, ``{name}_val``): ``.to()`` / ``.double()`` move them,
    ``copy.deepcopy`` works (it does not for sparse CSR tensors) and the state dict stays
    free of data-derived tensors. Read it back with :func:`csr_buffer`."""
    m = sp.csr_matrix(m)
    module.register_buffer(f"{name}_crow", torch.from_numpy(m.indptr.astype(np.int64)), persistent=False)
    module.register_buffer(f"{name}_col", torch.from_numpy(m.indices.astype(np.int64)), persistent=False)
    module.register_buffer(f"{name}_val", torch.from_numpy(m.data.astype(np.float32)), persistent=False)
    setattr(module, f"_{name}_shape", (int(m.shape[0]), int(m.shape[1])))


def csr_buffer(module: nn.Module, name: str) -> Tensor:
    """The torch sparse CSR tensor over the buffers made by :func:`register_csr` (a view,
    no copy), on the buffers' device and dtype."""
    return _csr_tensor(getattr(module, f"{name}_crow"), getattr(module, f"{name}_col"),
                       getattr(module, f"{name}_val"), getattr(module, f"_{name}_shape"))


class _SymSpMM(torch.autograd.Function):
    """``A @ X`` for a *symmetric* sparse ``A``: the backward is ``A @ grad`` (no transpose)."""

    @staticmethod
    def forward(ctx, a: Tensor, x: Tensor) -> Tensor:
        ctx.a = a
        return sparse_mm(a, x)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        return None, sparse_mm(ctx.a, grad.contiguous())


def sym_spmm(a: Tensor, x: Tensor) -> Tensor:
    """Differentiable product of a symmetric sparse matrix (no gradient) and a dense one."""
    return _SymSpMM.apply(a, x)


class Workspace:
    """Two reusable [n, d] scratch buffers for the propagation (allocating and page-faulting
    fresh buffers of a 2000-d teacher costs as much as the sparse products themselves).
    Not copied by ``copy.deepcopy`` and re-made on a device or dtype change."""

    def __init__(self):
        self._bufs: tuple[Tensor, Tensor] | None = None

    def get(self, like: Tensor) -> tuple[Tensor, Tensor]:
        b = self._bufs
        if b is None or b[0].shape != like.shape or b[0].dtype != like.dtype or b[0].device != like.device:
            self._bufs = b = (torch.empty_like(like), torch.empty_like(like))
        return b

    def clear(self) -> None:
        self._bufs = None

    def __deepcopy__(self, memo) -> Workspace:
        return Workspace()

    def __getstate__(self) -> dict:
        return {"_bufs": None}


def layer_mean_(a: Tensor, x: Tensor, n_layers: int, ws: Workspace | None = None) -> Tensor:
    """In place: ``x <- (1 / (L + 1)) * sum_{l=0..L} A^l x`` with ``L`` sparse products
    into two scratch buffers (``beta=0`` products, so scratch contents never leak in)."""
    if n_layers <= 0:
        return x
    w = (ws or Workspace()).get(x)
    cur = x
    for layer in range(n_layers):
        nxt = w[layer % 2]
        nxt.addmm_(a, cur, beta=0.0)
        x.add_(nxt)
        cur = nxt
    return x.mul_(1.0 / (n_layers + 1))


def locality_order(a: sp.csr_matrix) -> np.ndarray:
    """A node order that keeps neighbours close in memory: reverse Cuthill-McKee on the
    (symmetric) graph, from scipy. ``a[order][:, order]`` has a narrow band, so the rows of X
    a sparse product ``a @ X`` reads for one output row lie close together and stay in
    cache. Propagation forward + backward, one thread (``benchmarks/bench_propagation.py``):
    1.12x faster on CiteULike-t at d = 2000, 1.26x on Gowalla at d = 512, the extra
    gather of the result included."""
    from scipy.sparse.csgraph import reverse_cuthill_mckee

    return np.asarray(reverse_cuthill_mckee(sp.csr_matrix(a), symmetric_mode=True), dtype=np.int64)


class _LayerMean(torch.autograd.Function):
    """LightGCN propagation as one linear operator ``P = mean_l Â^l``; ``Â`` symmetric makes
    ``P`` symmetric, so the backward is ``P`` applied to the gradient: nothing is saved for
    it but the graph, and no per-layer tensors are kept alive.

    ``a`` is Â with its nodes in a locality order (:func:`locality_order`), ``pos`` the
    position of every node (users, then items) in that order: the tables are scattered into
    it, propagated, and gathered back, one pass each way, in place of the concatenation."""

    @staticmethod
    def forward(ctx, a: Tensor, pos: Tensor, n_layers: int, ws: Workspace, user_w: Tensor, item_w: Tensor):
        nu = user_w.shape[0]
        x = user_w.new_empty((a.shape[0], user_w.shape[1]))
        x.index_copy_(0, pos[:nu], user_w)
        x.index_copy_(0, pos[nu:], item_w)
        layer_mean_(a, x, n_layers, ws)
        ctx.a, ctx.pos, ctx.n_layers, ctx.ws, ctx.nu = a, pos, n_layers, ws, nu
        ctx.set_materialize_grads(False)
        return x.index_select(0, pos[:nu]), x.index_select(0, pos[nu:])

    @staticmethod
    @once_differentiable
    def backward(ctx, gu: Tensor | None, gi: Tensor | None):
        if gu is None and gi is None:
            return None, None, None, None, None, None
        nu, pos = ctx.nu, ctx.pos
        ref = gu if gu is not None else gi
        g = ref.new_empty((ctx.a.shape[0], ref.shape[1]))
        for idx, grad in ((pos[:nu], gu), (pos[nu:], gi)):
            if grad is None:
                g.index_fill_(0, idx, 0.0)
            else:
                g.index_copy_(0, idx, grad)
        layer_mean_(ctx.a, g, ctx.n_layers, ctx.ws)
        return None, None, None, None, g.index_select(0, pos[:nu]), g.index_select(0, pos[nu:])


class LightGCN(Recommender):
    """LightGCN with BPR loss on the layer-averaged representations.

    The graph ``graph`` is held in non-persistent buffers (moved by ``.to()``, not saved in
    the state dict: it is rebuilt from the training matrix). Weight decay is left to the
    optimizer (the authors' ``weight_decay`` in PROTOCOL.md); there is no extra L2 term.
    ``features("embedding")`` are the ego tables, ``features("final")`` the propagated
    representations.
    """

    name = "lightgcn"
    n_neg = 1

    def __init__(self, n_users: int, n_items: int, cfg: LightGCNConfig | None = None, train=None):
        cfg = cfg if cfg is not None else LightGCNConfig()
        super().__init__(n_users, n_items, cfg.dim)
        if train is None:
            raise ValueError("LightGCN needs the training matrix to build its graph")
        if tuple(train.shape) != (self.n_users, self.n_items):
            raise ValueError(f"training matrix has shape {tuple(train.shape)}, "
                             f"expected ({self.n_users}, {self.n_items})")
        self.cfg = cfg
        self.n_layers = int(cfg.n_layers)
        self.user_emb = nn.Embedding(self.n_users, cfg.dim)
        self.item_emb = nn.Embedding(self.n_items, cfg.dim)
        nn.init.normal_(self.user_emb.weight, std=cfg.init_std)
        nn.init.normal_(self.item_emb.weight, std=cfg.init_std)
        a = normalized_adjacency(train)
        register_csr(self, "graph", a)
        # propagation runs over the same graph with its nodes in a cache-friendly order
        order = locality_order(a)
        pos = np.empty_like(order)
        pos[order] = np.arange(order.size)
        register_csr(self, "graph_local", a[order][:, order])
        self.register_buffer("node_pos", torch.from_numpy(pos), persistent=False)
        self._workspace = Workspace()

    @property
    def graph(self) -> Tensor:
        """The normalised adjacency ``Â`` as a torch sparse CSR tensor [n_nodes, n_nodes]."""
        return csr_buffer(self, "graph")

    def propagate(self) -> Reps:
        """Mean of ``E_0 .. E_L`` split into (users, items); one sparse product per layer."""
        if self.n_layers == 0:
            return self.user_emb.weight, self.item_emb.weight
        return _LayerMean.apply(csr_buffer(self, "graph_local"), self.node_pos, self.n_layers, self._workspace,
                                self.user_emb.weight, self.item_emb.weight)

    def loss(self, batch: dict[str, Tensor], reps: Reps) -> dict[str, Tensor]:
        """BPR loss on the final representations: keys ``"loss"`` and ``"bpr"``."""
        pos = self.pair_scores(batch["users"], batch["pos"], reps)
        neg = self.pair_scores(batch["users"], batch["neg"], reps)
        bpr = bpr_loss(pos, neg)
        return {"loss": bpr, "bpr": bpr.detach()}
