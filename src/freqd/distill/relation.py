"""Relation-based distillation: HTD (Hierarchical Topology Distillation, Kang et al. KDD'21).

The student learns the teacher's *topology* (cosine similarities between entities)
rather than its coordinates, organised in groups (``shared/docs/BASELINES.md`` section
1.3):

- **Group assignment (GA)**: DE-style experts with a Gumbel-softmax selection from the
  teacher feature, ``l_GA = sum_e ||t_e - sum_k z_ek f_k(s_e)||^2`` per side; an entity's
  hard group is the argmax of the teacher-side selection net (users 0..K-1, items
  K..2K-1).
- **Topology distillation (TD)** over the batch's unique users and unique items
  (pos and neg together), with C the cosine similarity and P_g the (detached) mean of the
  batch's members of group g:

  - entity level: ``sum_{e, e' in the same group} (C(s_e, s_e') - C(t_e, t_e'))^2``;
  - group level, ``choice="second"`` (the authors' default): ``sum_{g, e} (C(P^S_g, s_e) -
    C(P^T_g, t_e))^2``; ``choice="first"``: ``sum_{g, g'} (C(P^S_g, P^S_g') - C(P^T_g,
    P^T_g'))^2`` (prototypes are detached, so this term carries no gradient).

- ``L = alpha * l_TD + (1 - alpha) * l_GA``.

Fixes over the KDs port: the configured temperature is honoured (``T``, ``end_T``,
``anneal``, ``anneal_epochs``; KDs always anneals 1 -> 1e-10 whatever ``htd_T`` says),
and nothing larger than (unique batch entities)^2 is formed: the per-group pair sum is
one masked sum over a same-group mask, with no loop over groups.

Both the original code and KDs keep only same-group pairs whose *teacher* similarity is
positive (they select ``C_T * mask > 0``); ``pair_filter="positive"`` (default) does
the same, ``pair_filter="all"`` sums every same-group pair as the paper's formula reads.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from ..config import check
from ..models.base import Reps
from .feature import FeatureKDConfig, _check_temperature, _GumbelSides, sq_error_sum

__all__ = ["HTD", "HTDConfig", "group_prototypes", "topology_loss"]


@dataclass
class HTDConfig(FeatureKDConfig):
    """HTD. Defaults: KDs CiteULike BPR config (30 groups, choice second, alpha 0.9,
    lambda 0.5) and the authors' temperature schedule (1 -> 1e-10 over 1000 epochs)."""

    weight: float = 0.5  #: lambda
    alpha: float = 0.9  #: L = alpha * TD + (1 - alpha) * GA
    n_groups: int = 30  #: groups (experts) per side; items use ids n_groups..2*n_groups-1
    choice: Literal["first", "second"] = "second"  #: group-level topology: first = prototype-prototype, second = prototype-entity
    pair_filter: Literal["positive", "all"] = "positive"  #: same-group pairs kept: positive = teacher cosine > 0 (authors' code); all = every pair
    T: float = 1.0  #: Gumbel temperature at epoch 0 (constant when anneal is false)
    end_T: float = 1e-10  #: final temperature (floor of the annealing)
    anneal: bool = True  #: anneal T -> end_T geometrically over anneal_epochs
    anneal_epochs: int = 1000  #: epochs of the annealing (the authors' configured max epochs)

    def __post_init__(self):
        super().__post_init__()
        check(0.0 <= self.alpha <= 1.0, "method.alpha", f"must be in [0, 1], got {self.alpha}")
        check(self.n_groups >= 1, "method.n_groups", f"must be >= 1, got {self.n_groups}")
        check(self.choice in ("first", "second"), "method.choice",
              f"must be 'first' or 'second', got {self.choice!r}")
        check(self.pair_filter in ("positive", "all"), "method.pair_filter",
              f"must be 'positive' or 'all', got {self.pair_filter!r}")
        _check_temperature(self)


def group_prototypes(x: Tensor, groups: Tensor) -> tuple[Tensor, Tensor]:
    """Detached mean of ``x`` [N, d] per group present: (prototypes [G, d], group ids [G],
    ascending). Vectorised with ``index_add_``."""
    ids, inv = torch.unique(groups, return_inverse=True)
    x = x.detach()
    sums = x.new_zeros(len(ids), x.shape[1]).index_add_(0, inv, x)
    counts = torch.bincount(inv, minlength=len(ids)).to(x.dtype)
    return sums / counts.unsqueeze(1), ids


def _cos(a: Tensor, b: Tensor) -> Tensor:
    return F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).t()


def topology_loss(s: Tensor, t: Tensor, groups: Tensor, choice: str = "second",
                  pair_filter: str = "positive") -> tuple[Tensor, Tensor]:
    """HTD's topology loss on N entities: student rows ``s`` [N, d_s], teacher rows ``t``
    [N, d_t], hard groups [N]. Returns (entity-level term, group-level term), both sums.

    Memory O(N^2) for the two similarity matrices (N = unique batch entities).
    """
    with torch.no_grad():
        ct = _cos(t, t)
        keep = groups.unsqueeze(1) == groups.unsqueeze(0)
        if pair_filter == "positive":
            keep &= ct > 0
    cs = _cos(s, s)
    entity = torch.where(keep, cs - ct, cs.new_zeros(())).pow(2).sum()

    ps, _ = group_prototypes(s, groups)
    pt, _ = group_prototypes(t, groups)
    if choice == "second":
        group = (_cos(ps, s) - _cos(pt, t)).pow(2).sum()
    elif choice == "first":
        group = (_cos(ps, ps) - _cos(pt, pt)).pow(2).sum()
    else:
        raise ValueError(f"choice must be 'first' or 'second', got {choice!r}")
    return entity, group


class HTD(_GumbelSides):
    """Hierarchical Topology Distillation (see the module docstring for the loss)."""

    name = "htd"
    config_class = HTDConfig

    def __init__(self, teacher, student, dataset, cfg: HTDConfig):
        super().__init__(teacher, student, dataset, cfg)
        self._init_gumbel_sides(cfg.n_groups)

    def loss(self, batch: dict[str, Tensor], student_reps: Reps) -> dict[str, Tensor]:
        (su, si), (tu, ti) = self.tables(student_reps)
        users = batch["users"].unique()
        items = torch.cat([batch["pos"].reshape(-1), batch["neg"].reshape(-1)]).unique()
        s_u, t_u, s_i, t_i = su[users], tu[users], si[items], ti[items]

        T = self.temperature
        ga = (sq_error_sum(self.experts_u(s_u, t_u, T), t_u)
              + sq_error_sum(self.experts_i(s_i, t_i, T), t_i))

        groups = torch.cat([self.experts_u.groups(t_u), self.experts_i.groups(t_i) + self.cfg.n_groups])
        ent, grp = topology_loss(torch.cat([s_u, s_i]), torch.cat([t_u, t_i]), groups,
                                 self.cfg.choice, self.cfg.pair_filter)
        td = ent + grp
        a = self.cfg.alpha
        return {"loss": a * td + (1 - a) * ga, "td": td.detach(), "ga": ga.detach(),
                "temperature": td.new_tensor(T)}

    def extra_state(self) -> dict:
        return {"epoch": self.epoch}

    def load_extra_state(self, state: dict) -> None:
        self.on_epoch_start(int(state.get("epoch", 0)))
