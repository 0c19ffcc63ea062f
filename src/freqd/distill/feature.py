"""Feature-based distillation baselines: FitNet, DE, PHR, VkD.

Each pulls a projection of the student's features towards the frozen teacher's
features, per side (users and items have their own projectors). Formulas and the
authors' settings: ``shared/docs/BASELINES.md`` section 1.3. Losses keep the authors'
reduction (sums of squared errors), so their lambda values (``weight``) apply.

Which representation is distilled is explicit on every method: ``teacher_layer`` and
``student_layer`` (``"embedding"`` = the ego tables, ``"final"`` = what ``propagate()``
returns; see :meth:`freqd.models.base.Recommender.features`). The defaults follow
FREQD.md section 3.6 (teacher final, student embedding); the presets that reproduce the
KDs baselines set both to ``final``, which is what KDs's ``get_*_embedding`` returns
(LightGCN propagated, SimpleX tower output).

Batch entities: unless stated otherwise a method sees the batch's unique users, unique
positive items and unique negative items, and sums
``L = L(users) + 0.5 (L(pos items) + L(neg items))`` (DE's reduction, also FreqD's).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from ..config import check
from ..errors import ConfigError
from ..models.base import FEATURE_LAYERS, Reps
from .base import Distiller, MethodConfig
from .projectors import (
    ExpertProjector,
    GumbelExperts,
    LinearProjector,
    LowRankBridge,
    OrthogonalProjector,
    annealed_temperature,
)

__all__ = [
    "DE",
    "PHR",
    "DEConfig",
    "FeatureKDConfig",
    "FitNet",
    "FitNetConfig",
    "PHRConfig",
    "VkD",
    "VkDConfig",
    "batch_entities",
    "residual",
    "segment_loss",
    "sq_error_sum",
]

Layer = Literal["embedding", "final"]
#: one part of the loss: (side "user"/"item", entity ids, weight of the part)
Segment = tuple[str, Tensor, float]


def residual(ps: Tensor, t: Tensor, normalize: bool = False) -> Tensor:
    """``P(S) - T``; with ``normalize`` of the rows scaled to unit length (zero rows stay
    zero), so that ``||row||^2 = 2 - 2 cos(P(S), T)``: what a cosine loss sees."""
    if normalize:
        ps = F.normalize(ps, dim=-1)
        t = F.normalize(t, dim=-1)
    return ps - t


# -- configs ----------------------------------------------------------------------------
@dataclass
class FeatureKDConfig(MethodConfig):
    """Options shared by the feature- and relation-based methods."""

    teacher_layer: Layer = "final"  #: teacher representation distilled: embedding | final
    student_layer: Layer = "embedding"  #: student representation trained: embedding | final

    def __post_init__(self):
        super().__post_init__()
        for opt in ("teacher_layer", "student_layer"):
            v = getattr(self, opt)
            check(v in FEATURE_LAYERS, f"method.{opt}",
                  f"must be one of {list(FEATURE_LAYERS)}, got {v!r}")


def _check_temperature(cfg, prefix: str = "method.") -> None:
    check(cfg.T > 0, prefix + "T", f"must be > 0, got {cfg.T}")
    check(cfg.end_T > 0, prefix + "end_T", f"must be > 0, got {cfg.end_T}")
    check(cfg.end_T <= cfg.T, prefix + "end_T",
          f"must be <= T (annealing goes down), got end_T={cfg.end_T} > T={cfg.T}")
    check(cfg.anneal_epochs >= 1, prefix + "anneal_epochs",
          f"must be >= 1, got {cfg.anneal_epochs}")


@dataclass
class FitNetConfig(FeatureKDConfig):
    """FitNet (``Fit`` in KDs). Defaults: KDs CiteULike BPR<-BPR config."""

    weight: float = 0.05  #: lambda
    entities: Literal["batch", "random"] = "batch"  #: batch: the batch's unique users/items; random: |B| uniform users and |B| uniform items per step (KDs)
    projector: Literal["experts", "linear"] = "experts"  #: experts: ExpertProjector; linear: one Linear
    n_experts: int = 1  #: experts averaged in the projector
    hidden_ratio: float = 5.0  #: expert hidden size = round(hidden_ratio * d_teacher)
    dropout: float = 0.2  #: expert dropout (before each Linear)
    bias: bool = False  #: bias of the linear projector
    norm: bool = False  #: L2-normalise projected student and teacher rows first

    def __post_init__(self):
        super().__post_init__()
        check(self.entities in ("batch", "random"), "method.entities",
              f"must be 'batch' or 'random', got {self.entities!r}")
        check(self.projector in ("experts", "linear"), "method.projector",
              f"must be 'experts' or 'linear', got {self.projector!r}")
        check(self.n_experts >= 1, "method.n_experts", f"must be >= 1, got {self.n_experts}")
        check(self.hidden_ratio > 0, "method.hidden_ratio", f"must be > 0, got {self.hidden_ratio}")
        check(0 <= self.dropout < 1, "method.dropout", f"must be in [0, 1), got {self.dropout}")


@dataclass
class DEConfig(FeatureKDConfig):
    """Distillation Experts (Kang et al. CIKM'20). Defaults: KDs CiteULike BPR config."""

    weight: float = 0.05  #: lambda
    n_experts: int = 30  #: experts per side
    T: float = 1.0  #: Gumbel temperature at epoch 0 (constant when anneal is false)
    end_T: float = 1e-10  #: final temperature (floor of the annealing)
    anneal: bool = True  #: anneal T -> end_T geometrically over anneal_epochs
    anneal_epochs: int = 1000  #: epochs of the annealing (KDs: the configured max epochs, 1000, not the epochs run)

    def __post_init__(self):
        super().__post_init__()
        check(self.n_experts >= 1, "method.n_experts", f"must be >= 1, got {self.n_experts}")
        _check_temperature(self)


@dataclass
class PHRConfig(FeatureKDConfig):
    """Personalized Hint Regression (Kang et al. KBS 2022), low-rank re-implementation."""

    weight: float = 0.01  #: lambda (hyperkdma main_PHR.py)
    rank: int = 8  #: rank r of the personalised part U_e V_e^T of each bridge (<= student dim)
    hidden: int = 128  #: width of the meta-network t_e -> h_e
    base: bool = True  #: add a shared bridge W0 (W_e = W0 + U_e V_e^T); false: W_e = U_e V_e^T

    def __post_init__(self):
        super().__post_init__()
        check(self.rank >= 1, "method.rank", f"must be >= 1, got {self.rank}")
        check(self.hidden >= 1, "method.hidden", f"must be >= 1, got {self.hidden}")


@dataclass
class VkDConfig(FeatureKDConfig):
    """VkD (Miles et al. CVPR'24) as ported by KDs. Defaults: KDs CiteULike BPR config."""

    weight: float = 5e-4  #: lambda
    entities: Literal["batch", "random"] = "batch"  #: as FitNet's entities
    center: bool = True  #: subtract the teacher rows' mean over each segment (not in place)
    norm: bool = False  #: L2-normalise projected student and teacher rows first

    def __post_init__(self):
        super().__post_init__()
        check(self.entities in ("batch", "random"), "method.entities",
              f"must be 'batch' or 'random', got {self.entities!r}")


# -- small pure helpers -------------------------------------------------------------------
def sq_error_sum(pred: Tensor, target: Tensor) -> Tensor:
    """``sum_rows ||pred - target||^2`` (the authors' reduction)."""
    return (pred - target).pow(2).sum()


def batch_entities(batch: dict[str, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
    """Unique users, unique positive items, unique negative items of a batch."""
    return (batch["users"].unique(), batch["pos"].reshape(-1).unique(),
            batch["neg"].reshape(-1).unique())


def batch_segments(batch: dict[str, Tensor]) -> list[Segment]:
    """``L(users) + 0.5 (L(pos) + L(neg))`` as segments."""
    u, p, n = batch_entities(batch)
    return [("user", u, 1.0), ("item", p, 0.5), ("item", n, 0.5)]


def random_segments(batch: dict[str, Tensor], n_users: int, n_items: int) -> list[Segment]:
    """KDs's Fit/VkD draw: |B| distinct uniform users and |B| distinct uniform items
    (vectorised: a random permutation's prefix; |B| is capped at the table size)."""
    b = int(batch["users"].shape[0])
    dev = batch["users"].device
    u = torch.randperm(n_users, device=dev)[: min(b, n_users)]
    i = torch.randperm(n_items, device=dev)[: min(b, n_items)]
    return [("user", u, 1.0), ("item", i, 1.0)]


def segment_loss(parts: list[tuple[str, Tensor]], segments: list[Segment]) -> dict[str, Tensor]:
    """Weighted sum of per-segment losses with per-side totals for logging."""
    total = parts[0][1].new_zeros(())
    by_side = {"user": parts[0][1].new_zeros(()), "item": parts[0][1].new_zeros(())}
    for (side, value), (_, _, w) in zip(parts, segments):
        total = total + w * value
        by_side[side] = by_side[side] + w * value
    return {"loss": total, "kd_user": by_side["user"].detach(), "kd_item": by_side["item"].detach()}


# -- shared distiller plumbing ------------------------------------------------------------
class _FeatureDistiller(Distiller):
    """Resolves the configured layers and checks table shapes once."""

    def __init__(self, teacher, student, dataset, cfg):
        super().__init__(teacher, student, dataset, cfg)
        # shapes from the ego tables: no propagation here, so the teacher's cached final
        # representations are computed on first use, on whatever device the teacher has then
        tu, ti = teacher.features("embedding", None)
        if tu.shape[0] < dataset.n_users or ti.shape[0] < dataset.n_items:
            raise ConfigError(
                f"teacher tables ({tu.shape[0]} users, {ti.shape[0]} items) do not cover the "
                f"dataset ({dataset.n_users} users, {dataset.n_items} items): was the teacher "
                "trained on another dataset?")
        self.d_teacher = int(tu.shape[1])
        self.d_student = int(student.dim)

    def tables(self, student_reps: Reps) -> tuple[Reps, Reps]:
        """((student users, student items), (teacher users, teacher items)) full tables."""
        s = self.student.features(self.cfg.student_layer, student_reps)
        t = self.teacher_features(self.cfg.teacher_layer)
        dev = s[0].device
        if t[0].device != dev:  # teacher left behind (e.g. moved after its reps were cached)
            t = (t[0].to(dev), t[1].to(dev))
            if self.cfg.teacher_layer == "final":
                self._teacher_reps = t
        if t[0].shape[1] != self.d_teacher:
            raise ConfigError(
                f"teacher {self.cfg.teacher_layer!r} features have dim {t[0].shape[1]}, "
                f"expected {self.d_teacher}")
        if s[0].shape[1] != self.d_student:
            raise ConfigError(
                f"student {self.cfg.student_layer!r} features have dim {s[0].shape[1]}, "
                f"expected {self.d_student}")
        return s, t

    def rows(self, side: str, ids: Tensor, s: Reps, t: Reps) -> tuple[Tensor, Tensor]:
        k = 0 if side == "user" else 1
        return s[k][ids], t[k][ids]


# -- FitNet -------------------------------------------------------------------------------
class FitNet(_FeatureDistiller):
    """FitNet: ``sum_e ||P(s_e) - t_e||^2`` per side (optionally on L2-normalised rows).

    Fix over KDs: by default on the batch's unique entities (``L(users) + 0.5 (L(pos) +
    L(neg))``); ``entities="random"`` reproduces KDs's draw of |B| uniform users and |B|
    uniform items (``L(users) + L(items)``), vectorised.
    """

    name = "fitnet"
    config_class = FitNetConfig

    def __init__(self, teacher, student, dataset, cfg: FitNetConfig):
        super().__init__(teacher, student, dataset, cfg)
        ds, dt = self.d_student, self.d_teacher
        if cfg.projector == "linear":
            self.projector_u = LinearProjector(ds, dt, bias=cfg.bias)
            self.projector_i = LinearProjector(ds, dt, bias=cfg.bias)
        else:
            h = max(1, round(cfg.hidden_ratio * dt))
            self.projector_u = ExpertProjector(ds, dt, cfg.n_experts, h, cfg.dropout)
            self.projector_i = ExpertProjector(ds, dt, cfg.n_experts, h, cfg.dropout)

    @torch.no_grad()
    def residuals(self, student_reps=None, normalize: bool = False) -> dict[str, Tensor]:
        """``P(S) - T`` over every user and every item (projectors in eval mode, no dropout;
        for ``freqd spectrum``); ``normalize``: of the row-normalised P(S) and T."""
        was = self.training
        self.eval()
        try:
            if student_reps is None and self.cfg.student_layer == "final":
                student_reps = self.student.propagate()
            s, t = self.tables(student_reps)
            return {"user": residual(self.projector_u(s[0]), t[0], normalize),
                    "item": residual(self.projector_i(s[1]), t[1], normalize)}
        finally:
            self.train(was)

    def segments(self, batch: dict[str, Tensor]) -> list[Segment]:
        if self.cfg.entities == "random":
            return random_segments(batch, self.dataset.n_users, self.dataset.n_items)
        return batch_segments(batch)

    def loss(self, batch: dict[str, Tensor], student_reps: Reps) -> dict[str, Tensor]:
        s, t = self.tables(student_reps)
        segs = self.segments(batch)
        parts = []
        for side, ids, _ in segs:
            se, te = self.rows(side, ids, s, t)
            proj = self.projector_u if side == "user" else self.projector_i
            ps = proj(se)
            if self.cfg.norm:
                ps, te = F.normalize(ps, dim=-1), F.normalize(te, dim=-1)
            parts.append((side, sq_error_sum(ps, te)))
        return segment_loss(parts, segs)


# -- DE -----------------------------------------------------------------------------------
class _GumbelSides(_FeatureDistiller):
    """A Gumbel-softmax expert set per side (``experts_u``, ``experts_i``) with the
    configured temperature schedule (``T`` -> ``end_T`` over ``anneal_epochs``), stepped by
    :meth:`on_epoch_start`: the shared part of DE and HTD."""

    def _init_gumbel_sides(self, n_experts: int) -> None:
        c = self.cfg
        self.experts_u = GumbelExperts(self.d_student, self.d_teacher, n_experts)
        self.experts_i = GumbelExperts(self.d_student, self.d_teacher, n_experts)
        self.epoch = 0
        self.temperature = annealed_temperature(0, c.T, c.end_T, c.anneal_epochs, c.anneal)

    def on_epoch_start(self, epoch: int) -> None:
        self.epoch = int(epoch)
        c = self.cfg
        self.temperature = annealed_temperature(self.epoch, c.T, c.end_T, c.anneal_epochs, c.anneal)


class DE(_GumbelSides):
    """Distillation Experts: ``sum_e ||t_e - sum_k z_ek f_k(s_e)||^2`` with Gumbel-softmax
    gates ``z_e`` drawn from the teacher's selection net ``softmax(W t_e)``, per side;
    ``L = L(users) + 0.5 (L(pos) + L(neg))``. The temperature follows the configured
    schedule, stepped by :meth:`on_epoch_start`."""

    name = "de"
    config_class = DEConfig

    def __init__(self, teacher, student, dataset, cfg: DEConfig):
        super().__init__(teacher, student, dataset, cfg)
        self._init_gumbel_sides(cfg.n_experts)

    def loss(self, batch: dict[str, Tensor], student_reps: Reps) -> dict[str, Tensor]:
        s, t = self.tables(student_reps)
        segs = batch_segments(batch)
        parts = []
        for side, ids, _ in segs:
            se, te = self.rows(side, ids, s, t)
            experts = self.experts_u if side == "user" else self.experts_i
            parts.append((side, sq_error_sum(experts(se, te, self.temperature), te)))
        out = segment_loss(parts, segs)
        out["temperature"] = out["loss"].new_tensor(self.temperature)
        return out

    def extra_state(self) -> dict:
        return {"epoch": self.epoch}

    def load_extra_state(self, state: dict) -> None:
        self.on_epoch_start(int(state.get("epoch", 0)))


# -- PHR ----------------------------------------------------------------------------------
class PHR(_FeatureDistiller):
    """Personalized Hint Regression, **re-implemented** from the paper (Kang et al.,
    Knowledge-Based Systems 2022, doi 10.1016/j.knosys.2021.107958): no official code was
    available. ``sum_e ||t_e - W_e s_e||^2`` with a per-entity bridge ``W_e`` generated from
    ``t_e`` by a meta-network, here low rank so that it fits 2000-d teachers:
    ``W_e = W0 + U(t_e) V(t_e)^T`` of rank ``rank`` (see
    :class:`~freqd.distill.projectors.LowRankBridge`). One meta-network per side;
    ``L = L(users) + 0.5 (L(pos) + L(neg))``. The paper's enrichment of ``t_e`` with
    neighbours' teacher features is not implemented (it is commented out in the only
    third-party code, hyperkdma)."""

    name = "phr"
    config_class = PHRConfig

    def __init__(self, teacher, student, dataset, cfg: PHRConfig):
        super().__init__(teacher, student, dataset, cfg)
        check(cfg.rank <= self.d_student, "method.rank",
              f"must be <= the student dim {self.d_student}, got {cfg.rank}")
        self.bridge_u = LowRankBridge(self.d_student, self.d_teacher, cfg.rank, cfg.hidden, cfg.base)
        self.bridge_i = LowRankBridge(self.d_student, self.d_teacher, cfg.rank, cfg.hidden, cfg.base)

    def loss(self, batch: dict[str, Tensor], student_reps: Reps) -> dict[str, Tensor]:
        s, t = self.tables(student_reps)
        segs = batch_segments(batch)
        parts = []
        for side, ids, _ in segs:
            se, te = self.rows(side, ids, s, t)
            bridge = self.bridge_u if side == "user" else self.bridge_i
            parts.append((side, sq_error_sum(bridge(se, te), te)))
        return segment_loss(parts, segs)


# -- VkD ----------------------------------------------------------------------------------
class VkD(_FeatureDistiller):
    """VkD: ``sum_e ||Q s_e - (t_e - mean)||^2`` with ``Q`` orthonormal columns
    (``torch.nn.utils.parametrizations.orthogonal``) and the teacher rows centred by their
    segment mean (a new tensor: KDs subtracts in place). Optional L2 normalisation.
    Entities as FitNet (``entities``)."""

    name = "vkd"
    config_class = VkDConfig

    def __init__(self, teacher, student, dataset, cfg: VkDConfig):
        super().__init__(teacher, student, dataset, cfg)
        self.projector_u = OrthogonalProjector(self.d_student, self.d_teacher)
        self.projector_i = OrthogonalProjector(self.d_student, self.d_teacher)

    def segments(self, batch: dict[str, Tensor]) -> list[Segment]:
        if self.cfg.entities == "random":
            return random_segments(batch, self.dataset.n_users, self.dataset.n_items)
        return batch_segments(batch)

    def loss(self, batch: dict[str, Tensor], student_reps: Reps) -> dict[str, Tensor]:
        from torch.nn.utils import parametrize

        s, t = self.tables(student_reps)
        segs = self.segments(batch)
        parts = []
        with parametrize.cached():  # one orthogonalisation per projector per step
            for side, ids, _ in segs:
                se, te = self.rows(side, ids, s, t)
                proj = self.projector_u if side == "user" else self.projector_i
                ps = proj(se)
                if self.cfg.center:
                    te = te - te.mean(0, keepdim=True)
                if self.cfg.norm:
                    ps, te = F.normalize(ps, dim=-1), F.normalize(te, dim=-1)
                parts.append((side, sq_error_sum(ps, te)))
        return segment_loss(parts, segs)
