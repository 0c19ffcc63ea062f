"""FreqD (Zhu & Zhang, KDD 2025), its equal-weight ablation ``fd`` and ``freqd-exact``.

Spec: docs FREQD.md. For each side (users, items) a graph over that side's entities gives
Â; FreqD filters both the projected student and the teacher with a low-pass polynomial
filter H = h(Â) (linear: (1-α)I + αÂ; quadratic: that twice; or custom coefficients) and
pulls H P(S) towards H T on the batch's unique entities. With MSE on all rows and no
dropout this is Σ_k h(λ_k)² ||u_kᵀ (P(S) - T)||²: knowledge k reweighted by h(λ_k)².

Cost (section 4 of the spec): the authors project every user and item row through the
5-expert projector on every step. Here only the rows the batch needs are projected: the
batch rows' k-hop neighbourhood under this step's dropped Â (``path="local"``, default).
``path="full"`` computes the same loss over the full tables (the reference the tests and
the benchmark compare against; same dropout masks -> same number).

Per-step randomness (edge dropout, projector dropout) uses torch's global generator, whose
state the trainer checkpoints, so resumed runs are exact.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Dict, Literal, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ..config import check
from ..errors import ConfigError
from .base import Distiller, MethodConfig
from .feature import residual

log = logging.getLogger("freqd")


@dataclass
class FreqDConfig(MethodConfig):
    """FreqD options (FREQD.md section 5); defaults are the authors'."""

    weight: float = 0.5  #: lambda (KD losses are sums, as in the authors' code)
    graph: Literal["cooccurrence", "knn", "bipartite"] = "cooccurrence"
    #: cooccurrence: top-K of R Rᵀ / Rᵀ R; knn: cosine kNN on teacher embeddings; bipartite: user-item graph
    k: int = 5  #: neighbours per node (cooccurrence, knn)
    filter: Literal["linear", "quadratic", "custom"] = "linear"
    alpha: float = 0.5  #: filter strength in [0, 1]; h(λ)² is monotone on [0, 2] only for α <= 0.5
    coeffs: Optional[Tuple[float, ...]] = None  #: custom filter coefficients, lowest degree first
    coeff_basis: Literal["ahat", "lambda"] = "ahat"  #: H = Σ c_j Â^j, or h(λ) = Σ c_j λ^j
    keep_prob: float = 0.5  #: edge dropout keep probability in (0, 1]; 1 = no dropout
    mask_mode: Literal["per_hop", "shared"] = "per_hop"  #: a fresh dropout mask per Â product, or one per call
    loss: Literal["cosine", "mse"] = "cosine"  #: per-row 1 - cos, or squared error (theorem's form)
    placement: Literal["before", "after"] = "before"  #: project before filtering (teacher space) or after
    experts: int = 5  #: experts averaged in each projector
    dropout: float = 0.2  #: projector dropout
    hidden: Optional[int] = None  #: projector hidden size (None = teacher dim)
    teacher_layer: Literal["embedding", "final"] = "final"  #: teacher representation distilled
    student_layer: Literal["embedding", "final"] = "embedding"  #: student representation distilled
    item_weight: float = 0.5  #: L = L_users + item_weight (L_pos_items + L_neg_items)
    path: Literal["local", "full"] = "local"  #: batch-local fast path or the full-table reference
    log_rayleigh: bool = False  #: log the residual's Rayleigh quotient at every evaluation

    def __post_init__(self):
        super().__post_init__()
        check(self.k >= 1, "method.k", f"must be >= 1, got {self.k}")
        check(0.0 <= self.alpha <= 1.0, "method.alpha", f"must be in [0, 1], got {self.alpha}")
        check(0.0 < self.keep_prob <= 1.0, "method.keep_prob", f"must be in (0, 1], got {self.keep_prob}")
        check(self.experts >= 1, "method.experts", f"must be >= 1, got {self.experts}")
        check(0.0 <= self.dropout < 1.0, "method.dropout", f"must be in [0, 1), got {self.dropout}")
        check(self.item_weight >= 0, "method.item_weight", "must be >= 0")
        check(self.hidden is None or self.hidden >= 1, "method.hidden", "must be >= 1")
        if self.filter == "custom":
            check(bool(self.coeffs), "method.coeffs", "filter=custom needs coefficients, e.g. method.coeffs=0.5,0.3,0.2")
        else:
            check(self.coeffs is None, "method.coeffs", f"only used with method.filter=custom (filter is {self.filter!r})")

    def make_filter(self):
        from ..spectral.filters import linear, polynomial, quadratic

        if self.filter == "linear":
            return linear(self.alpha)
        if self.filter == "quadratic":
            return quadratic(self.alpha)
        return polynomial(self.coeffs, basis=self.coeff_basis)


@dataclass
class FDConfig(FreqDConfig):
    """Equal-weight feature KD: FreqD with α = 0 and keep_prob = 1 (H = I)."""

    alpha: float = 0.0
    keep_prob: float = 1.0

    def __post_init__(self):
        super().__post_init__()
        check(self.alpha == 0.0, "method.alpha", "fd is FreqD with alpha 0: use --method freqd for other values")
        check(self.keep_prob == 1.0, "method.keep_prob", "fd is FreqD with keep_prob 1: use --method freqd for other values")
        check(self.filter != "custom", "method.filter", "fd has no filter: use --method freqd")


def _row_loss(zs: Tensor, zt: Tensor, kind: str) -> Tensor:
    if kind == "cosine":
        return (1.0 - F.cosine_similarity(zs, zt, dim=-1, eps=1e-8)).sum()
    return ((zs - zt) ** 2).sum()


class FreqD(Distiller):
    name = "freqd"
    config_class = FreqDConfig

    def __init__(self, teacher, student, dataset, cfg: FreqDConfig):
        super().__init__(teacher, student, dataset, cfg)
        from .projectors import ExpertProjector

        self.filt = cfg.make_filter()
        tu, ti = self.teacher_features(cfg.teacher_layer)
        su, si = student.features(cfg.student_layer, None) if cfg.student_layer == "embedding" else (None, None)
        d_s = student.dim
        d_t = tu.shape[1]
        if tu.shape[0] != dataset.n_users or ti.shape[0] != dataset.n_items:
            raise ConfigError(
                f"option '--teacher': teacher has {tu.shape[0]} users / {ti.shape[0]} items, "
                f"the dataset {dataset.n_users} / {dataset.n_items}")
        self.d_t = d_t
        # the same projector d_S -> d_T whether it runs before or after the filter
        self.proj_user = ExpertProjector(d_s, d_t, cfg.experts, cfg.hidden or d_t, cfg.dropout)
        self.proj_item = ExpertProjector(d_s, d_t, cfg.experts, cfg.hidden or d_t, cfg.dropout)
        self.ops: Dict[str, object] = {}
        self.laplacians: Dict[str, object] = {}
        self._diag: dict = {}

    # -- graphs ------------------------------------------------------------------------------
    def _graph_params(self, side: str) -> dict:
        c = self.cfg
        return {"graph": c.graph, "k": c.k, "side": side}

    def prepare(self, cache_dir=None) -> None:
        """Build (or load from the cache) one normalised graph per side."""
        from ..spectral.cache import array_fingerprint, cached_graph
        from ..spectral.filters import SparseOp
        from ..spectral.graphs import build_graph, normalize_adjacency

        c = self.cfg
        device = next(self.parameters()).device
        R = self.dataset.train
        sides = ["bipartite"] if c.graph == "bipartite" else ["user", "item"]
        for side in sides:
            if c.graph == "knn":
                feats = self.teacher_features(c.teacher_layer)[0 if side == "user" else 1].cpu()
                fp = array_fingerprint(feats)
                build = lambda s=side, f=feats: build_graph("knn", features=f.numpy(), k=c.k)  # noqa: E731
            else:
                fp = self.dataset.fingerprint()
                build = lambda s=side: build_graph(c.graph, R, side=s if s != "bipartite" else "user", k=c.k)  # noqa: E731
            A = cached_graph(f"{c.graph}-{side}", self._graph_params(side), fp, build, cache_dir)
            A_hat = normalize_adjacency(A)
            self.ops[side] = SparseOp.from_scipy(A_hat, device=device)
            self.laplacians[side] = A_hat
            log.info("freqd: %s graph over %s: %d nodes, %d edges", c.graph, side, A_hat.shape[0], A_hat.nnz)

    def _op(self, side: str):
        key = "bipartite" if self.cfg.graph == "bipartite" else side
        if key not in self.ops:
            self.prepare(None)
        op = self.ops[key]
        dev = self.proj_user.bank.w1.device
        if op.device != dev:
            op = op.to(dev)
            self.ops[key] = op
        return op

    # -- features over graph nodes -------------------------------------------------------------
    def _node_features(self, side: str, nodes: Tensor, student_reps, project: bool) -> Tuple[Tensor, Tensor]:
        """(student [projected] features, teacher features) of graph nodes ``nodes``.

        For the bipartite graph node ids 0..n_users-1 are users, the rest items."""
        c = self.cfg
        tu, ti = self.teacher_features(c.teacher_layer)
        su, si = self.student.features(c.student_layer, student_reps)
        if self.cfg.graph != "bipartite":
            s, t = (su, tu) if side == "user" else (si, ti)
            proj = self.proj_user if side == "user" else self.proj_item
            xs = s[nodes]
            return (proj(xs) if project else xs), t[nodes]
        nu = self.dataset.n_users
        is_user = nodes < nu
        out_s = None
        xt = torch.empty(nodes.numel(), tu.shape[1], device=tu.device, dtype=tu.dtype)
        xt[is_user] = tu[nodes[is_user]]
        xt[~is_user] = ti[nodes[~is_user] - nu]
        xs_u = su[nodes[is_user]]
        xs_i = si[nodes[~is_user] - nu]
        if project:
            xs_u, xs_i = self.proj_user(xs_u), self.proj_item(xs_i)
        out_s = xs_u.new_empty(nodes.numel(), xs_u.shape[1])
        out_s = out_s.index_put((is_user.nonzero().squeeze(1),), xs_u)
        out_s = out_s.index_put(((~is_user).nonzero().squeeze(1),), xs_i)
        return out_s, xt

    def _side_loss(self, side: str, rows: Tensor, student_reps) -> Tensor:
        from ..spectral.filters import full_filter, sample_hops
        from ..spectral.local import local_filter_plan

        c = self.cfg
        if c.graph == "bipartite" and side == "item":
            rows = rows + self.dataset.n_users
        op = self._op(side)
        hops = sample_hops(op, self.filt, c.keep_prob, None, mask_mode=c.mask_mode)
        before = c.placement == "before"
        if c.path == "local":
            plan = local_filter_plan(hops, self.filt, rows)
            if before and c.graph != "bipartite":
                # H P(X) = (1/E) sum_e (H h_e) W2_e + (H 1) b2: the filter commutes with the
                # projector's last (linear) layer, so only the hidden layer runs on the
                # neighbourhood and the expensive d_T x d_T layer on the batch rows alone.
                # The same number as projecting the neighbourhood, in far fewer FLOPs.
                xs, xt = self._node_features(side, plan.cols, student_reps, project=False)
                zs = self._filtered_projection(side, plan, xs)
            else:
                xs, xt = self._node_features(side, plan.cols, student_reps, project=before)
                zs = plan.apply(xs)
            zt = plan.apply(xt)
        else:
            n = op.n
            allnodes = torch.arange(n, device=rows.device)
            xs, xt = self._node_features(side, allnodes, student_reps, project=before)
            zs, zt = full_filter(hops, self.filt, xs)[rows], full_filter(hops, self.filt, xt)[rows]
        if not before:
            zs = self._project_rows(side, zs)
        return _row_loss(zs, zt, c.loss)

    def _filtered_projection(self, side: str, plan, x: Tensor, masks=None) -> Tensor:
        """(H P(x))[rows] with P the side's expert projector, computed as
        scale (H h(x)) W2 + (H 1) mean_e b2_e, with h(x) [n, E*h] the experts' hidden layers
        after dropout (``ExpertProjector.expert_hidden``: per expert, row and unit, as in its
        forward) and W2 the experts' output layers stacked [E*h, d_T]: the filter runs once
        on the [n, E*h] hidden stack, the d_T x d_T layer on the batch rows alone, and the
        1/keep rescaling and the 1/E mean fold into that last GEMM.

        ``masks``: ``(m_in [E, n, d_S], m_hid [E, n, h])`` as ``sample_masks`` draws them
        instead of drawing (tests compare against ``plan.apply(P(x, masks))``).
        """
        proj = self.proj_user if side == "user" else self.proj_item
        bank = proj.bank
        h, scale = proj.expert_hidden(x, masks)
        ones = torch.ones(x.shape[0], 1, device=x.device, dtype=x.dtype)
        hb2 = plan.apply(ones) * bank.b2.mean(0)  # (H 1) b2
        return torch.addmm(hb2, plan.apply(h), bank.w2.reshape(-1, bank.d_out), alpha=scale)

    def _project_rows(self, side: str, z: Tensor) -> Tensor:
        """Projection after the filter (``placement="after"``), with the side's projector."""
        return (self.proj_user if side == "user" else self.proj_item)(z)

    # -- the loss -----------------------------------------------------------------------------
    def loss(self, batch: Dict[str, Tensor], student_reps) -> Dict[str, Tensor]:
        users = torch.unique(batch["users"])
        pos = torch.unique(batch["pos"])
        neg = torch.unique(batch["neg"])
        lu = self._side_loss("user", users, student_reps)
        lp = self._side_loss("item", pos, student_reps)
        ln = self._side_loss("item", neg, student_reps)
        total = lu + self.cfg.item_weight * (lp + ln)
        return {"loss": total, "user": lu.detach(), "item": (lp + ln).detach()}

    # -- analysis -----------------------------------------------------------------------------
    @torch.no_grad()
    def residuals(self, student_reps=None, normalize: bool = False) -> Dict[str, Tensor]:
        """P(S) - T over every node of each side (projector in eval mode, no dropout);
        ``normalize``: of the row-normalised P(S) and T (see :func:`feature.residual`)."""
        was = self.training
        self.eval()
        try:
            out = {}
            sides = ["bipartite"] if self.cfg.graph == "bipartite" else ["user", "item"]
            for side in sides:
                n = self._op("user" if side != "item" else "item").n
                nodes = torch.arange(n, device=self.proj_user.bank.w1.device)
                xs, xt = self._node_features("user" if side == "bipartite" else side, nodes, student_reps, project=True)
                out[side] = residual(xs, xt, normalize)
            return out
        finally:
            self.train(was)

    @torch.no_grad()
    def diagnostics(self) -> Dict[str, float]:
        """Rayleigh quotient tr(XᵀLX)/tr(XᵀX) of the residual X = P(S) - T per side (low =
        smooth = the low-frequency knowledge is matched worse than the high-frequency)."""
        if not self.cfg.log_rayleigh:
            return {}
        from ..spectral.analysis import rayleigh_quotient
        from ..spectral.graphs import laplacian

        reps = self.student.propagate() if self.cfg.student_layer == "final" else None
        out = {}
        for side, X in self.residuals(reps).items():
            L = laplacian(self.laplacians[side])
            out[f"rayleigh_{side}"] = float(rayleigh_quotient(L, X.cpu().double().numpy()))
        return out


class FD(FreqD):
    """Equal-weight ablation: plain feature KD with FreqD's projector and loss (H = I)."""

    name = "fd"
    config_class = FDConfig


@dataclass
class FreqDExactConfig(FreqDConfig):
    """Exact spectral reweighting through an eigendecomposition (graphs up to max_nodes)."""

    keep_prob: float = 1.0
    weight_fn: Literal["filter", "step", "exp", "equal"] = "filter"
    #: filter: h(λ)² of method.filter/alpha; step: 1 for λ <= cutoff else 0; exp: exp(-t λ)
    cutoff: float = 1.0  #: step weight cut-off in [0, 2]
    t: float = 1.0  #: exp weight rate
    max_nodes: int = 30000  #: refuse graphs larger than this (dense eigendecomposition)
    loss: Literal["cosine", "mse"] = "mse"

    def __post_init__(self):
        super().__post_init__()
        check(self.keep_prob == 1.0, "method.keep_prob", "freqd-exact has no edge dropout (keep_prob must be 1)")
        check(0.0 <= self.cutoff <= 2.0, "method.cutoff", "must be in [0, 2]")
        check(self.max_nodes >= 1, "method.max_nodes", "must be >= 1")


class FreqDExact(FreqD):
    """Loss Σ_rows ||(M P(S))[r] - (M T)[r]||² with M = U diag(sqrt w(λ)) Uᵀ exactly, so that
    with MSE on all rows it equals Σ_k w(λ_k) ||u_kᵀ(P(S) - T)||². M is dense (N x N), so the
    cost is that of the full table; meant for graphs up to ``max_nodes`` nodes."""

    name = "freqd-exact"
    config_class = FreqDExactConfig

    def __init__(self, teacher, student, dataset, cfg: FreqDExactConfig):
        # refuse a too-large graph here, before any graph is built or eigendecomposed (a
        # dense eigendecomposition of a 30k-node graph alone takes minutes to hours)
        sizes = ({"bipartite": dataset.n_users + dataset.n_items} if cfg.graph == "bipartite"
                 else {"user": dataset.n_users, "item": dataset.n_items})
        big = {side: n for side, n in sizes.items() if n > cfg.max_nodes}
        if big:
            raise ConfigError(
                "option 'method.max_nodes': freqd-exact needs a dense eigendecomposition of each graph; "
                + ", ".join(f"the {side} graph has {n:,} nodes" for side, n in big.items())
                + f" > {cfg.max_nodes:,}. Use --method freqd (no eigendecomposition) or raise method.max_nodes")
        super().__init__(teacher, student, dataset, cfg)

    def prepare(self, cache_dir=None) -> None:
        super().prepare(cache_dir)
        from ..spectral.analysis import eigendecomposition, weight_function

        c = self.cfg
        for side, A_hat in self.laplacians.items():
            spec = eigendecomposition(A_hat, operator="adjacency", exact=True, max_dense=c.max_nodes)
            lam = torch.as_tensor(spec.lambdas, dtype=torch.float64).clamp(0, 2)
            if c.weight_fn == "filter":
                w = weight_function("filter", filter=self.filt)(lam)
            elif c.weight_fn == "step":
                w = weight_function("step", cutoff=c.cutoff)(lam)
            elif c.weight_fn == "exp":
                w = weight_function("exp", t=c.t)(lam)
            else:
                w = weight_function("equal")(lam)
            U = torch.as_tensor(spec.U, dtype=torch.float64)
            M = (U * torch.sqrt(torch.as_tensor(w, dtype=torch.float64).clamp_min(0))) @ U.T
            self.register_buffer(f"M_{side}", M.float().to(self.proj_user.bank.w1.device), persistent=False)

    def _side_loss(self, side: str, rows: Tensor, student_reps) -> Tensor:
        c = self.cfg
        key = "bipartite" if c.graph == "bipartite" else side
        if c.graph == "bipartite" and side == "item":
            rows = rows + self.dataset.n_users
        M = getattr(self, f"M_{key}", None)
        if M is None:
            self.prepare(None)
            M = getattr(self, f"M_{key}")
        n = M.shape[0]
        nodes = torch.arange(n, device=rows.device)
        before = c.placement == "before"
        xs, xt = self._node_features(side if c.graph != "bipartite" else "user", nodes, student_reps, project=before)
        Mb = M[rows]
        zs, zt = Mb @ xs, Mb @ xt
        if not before:
            zs = self._project_rows(side, zs)
        return _row_loss(zs, zt, c.loss)
