"""The contract every distillation method follows.

A distiller is an ``nn.Module`` built from ``(teacher, student, dataset, config)``. The
teacher is frozen (``requires_grad_(False)``, eval mode) and never receives gradients; the
distiller's own trainable parts (projectors, experts) are its registered parameters, and
the trainer optimises ``student.parameters()`` plus ``distiller.parameters()`` (which
excludes the teacher: it is held outside the module tree, see ``self.teacher``).

Per training step the trainer calls::

    reps = student.propagate()
    base = student.loss(batch, reps)
    kd = distiller.loss(batch, reps)          # dict, kd["loss"] = the method's KD loss
    total = base["loss"] + cfg.weight * kd["loss"]

``weight`` (lambda) lives in the method's config. Losses keep each method's published
reduction (mostly sums), so that the authors' lambda values stay meaningful.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional

import torch
from torch import Tensor, nn

from ..config import check
from ..data.dataset import Dataset
from ..models.base import Recommender, Reps


@dataclass
class MethodConfig:
    """Fields every method has. Subclasses add their own (with defaults = the authors')."""

    weight: float = 0.5  #: lambda: total loss = base loss + weight * KD loss

    def __post_init__(self):
        check(self.weight >= 0, "method.weight", f"must be >= 0, got {self.weight}")


class Distiller(nn.Module):
    name: str = "base"
    config_class = MethodConfig

    def __init__(self, teacher: Recommender, student: Recommender, dataset: Dataset, cfg):
        super().__init__()
        # keep the teacher out of the module tree: its parameters are never optimised,
        # never saved in the student's checkpoint, never all-reduced
        object.__setattr__(self, "teacher", teacher)
        teacher.eval()
        teacher.requires_grad_(False)
        object.__setattr__(self, "student", student)
        self.dataset = dataset
        self.cfg = cfg
        self._teacher_reps: Optional[Reps] = None

    # -- teacher representations, computed once ---------------------------------------------
    @torch.no_grad()
    def teacher_reps(self) -> Reps:
        """The frozen teacher's final (propagated) user/item representations, cached."""
        dev = self._student_device()
        if self._teacher_reps is None:
            u, i = self.teacher.propagate()
            self._teacher_reps = (u.detach().to(dev), i.detach().to(dev))
        elif self._teacher_reps[0].device != dev:  # the trainer moved the student
            self._teacher_reps = tuple(t.to(dev) for t in self._teacher_reps)
        return self._teacher_reps

    def _student_device(self) -> torch.device:
        p = next(self.student.parameters(), None)
        return p.device if p is not None else torch.device("cpu")

    @torch.no_grad()
    def teacher_features(self, layer: str = "final") -> Reps:
        if layer == "final":
            return self.teacher_reps()
        u, i = self.teacher.features(layer, None)
        dev = self._student_device()
        return u.detach().to(dev), i.detach().to(dev)

    # -- hooks -------------------------------------------------------------------------------
    def prepare(self, cache_dir: Optional[Path] = None) -> None:
        """One-off pre-computation (teacher top-K lists, graphs). Cache under cache_dir."""

    def on_epoch_start(self, epoch: int) -> None:
        """Per-epoch work (re-sampling, temperature annealing)."""

    def loss(self, batch: Dict[str, Tensor], student_reps: Reps) -> Dict[str, Tensor]:
        raise NotImplementedError

    # -- state beyond parameters (samplers, schedules) for checkpoint/resume ---------------
    def extra_state(self) -> dict:
        return {}

    def load_extra_state(self, state: dict) -> None:
        pass
