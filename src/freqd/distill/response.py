"""Response-based (ranking) distillation baselines: KD, RD, CD, RRD, DCD, UnKD, HetComp.

Formulas and hyperparameters follow ../shared/docs/BASELINES.md section 1.4 (what the FreqD
authors' port "KDs" and the original code compute); each class says where it deliberately
differs. Common rules:

- Nothing of size |U| x |I| is built whole: teacher/student rankings are computed in user
  chunks (:mod:`freqd.distill.ranking`). Per-epoch sampling is vectorised torch code drawn
  from the method's own ``torch.Generator`` (seeded by ``seed``), never a Python loop over
  users or items.
- Lists and samples are non-persistent buffers (they follow ``.to(device)``); everything a
  resumed run needs (current samples, generator state, schedules) is in
  :meth:`extra_state`, so a resumed run samples exactly what an uninterrupted one would.
- Reductions are the authors' (sums over the batch; UnKD's per-user mean), so the published
  lambda values apply. Where the authors do not deduplicate batch users (KD, RD, CD, UnKD,
  HetComp) each unique user's term is computed once and weighted by its count in the batch:
  the same value and gradient as the authors' sum, at the cost of the unique users only.
  ``dedup_users=True`` gives every batch user weight 1 instead.
- ``prepare(cache_dir)`` caches teacher top lists under ``cache_dir`` (when given), keyed
  by the data fingerprint, the teacher's weights and the list parameters.
"""
from __future__ import annotations

import copy
import hashlib
import math
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..config import check
from ..errors import CheckpointError, ConfigError
from ..utils.atomic import torch_save
from .base import Distiller, MethodConfig
from .ranking import (
    ItemExclusion,
    count_higher,
    csr_entries,
    rank_sampling_probs,
    relaxed_ranking_loss,
    sample_with_replacement_cdf,
    sample_without_replacement,
    teacher_topk,
)

__all__ = [
    "CD",
    "DCD",
    "KD",
    "RD",
    "RRD",
    "CDConfig",
    "DCDConfig",
    "HetComp",
    "HetCompConfig",
    "KDConfig",
    "RDConfig",
    "RRDConfig",
    "UnKD",
    "UnKDConfig",
    "full_scores",
]

#: rows per chunk when sampling over per-user lists (bounds the temporary Gumbel keys)
_SAMPLE_ROWS = 4096


# ======================================================================================
# shared machinery
# ======================================================================================
def full_scores(model, users: Tensor, reps) -> Tensor:
    """Differentiable full score rows ``[len(users), |I|]`` of ``model``.

    ``Recommender.score`` runs under ``no_grad`` (it is meant for evaluation); HetComp's
    loss needs gradients through a full row, so this calls the undecorated function
    (``score.__wrapped__``, set by ``torch.no_grad``'s decorator) with grad enabled. Any
    backbone's own ``score`` (dot product, cosine) is thereby respected.
    """
    fn = type(model).score
    fn = getattr(fn, "__wrapped__", fn)
    with torch.enable_grad():
        return fn(model, users, reps)


class _Response(Distiller):
    """Base of the ranking distillers: scoring closures, user weights, state, caching."""

    #: names of the non-persistent buffers that hold per-epoch state (saved by extra_state)
    _epoch_buffers: tuple = ()

    def __init__(self, teacher, student, dataset, cfg):
        super().__init__(teacher, student, dataset, cfg)
        self.epoch = 0
        self.gen = torch.Generator()
        self.gen.manual_seed(int(getattr(cfg, "seed", 0)))
        self._teacher_key: str | None = None
        for name in self._epoch_buffers:
            self.register_buffer(name, None, persistent=False)

    # -- devices and scores ---------------------------------------------------------------
    def _device(self) -> torch.device:
        for p in self.student.parameters():
            return p.device
        return torch.device("cpu")

    def _sync(self, device: torch.device) -> None:
        """Move own buffers to ``device`` and drop teacher reps cached on another device."""
        for _, b in self.named_buffers():
            if b is not None and b.device != device:
                self.to(device)
                break
        if self._teacher_reps is not None and self._teacher_reps[0].device != device:
            self._teacher_reps = None

    def _teacher_fn(self) -> Callable[[Tensor], Tensor]:
        reps = self.teacher_reps()
        dev = reps[0].device
        return lambda u: self.teacher.score(u.to(dev), reps)

    @torch.no_grad()
    def _model_fn(self, model) -> Callable[[Tensor], Tensor]:
        """Score closure over ``model`` in eval mode (reps computed once, detached)."""
        was = model.training
        model.eval()
        try:
            u, i = model.propagate()
        finally:
            model.train(was)
        reps = (u.detach(), i.detach())
        dev = reps[0].device

        def fn(users: Tensor) -> Tensor:
            was2 = model.training
            model.eval()
            try:
                return model.score(users.to(dev), reps)
            finally:
                model.train(was2)

        return fn

    def _topk(self, fn, k: int, option: str, mask_train: bool = True) -> Tensor:
        try:
            return teacher_topk(fn, self.dataset.train, k, chunk_size=self.cfg.chunk_size,
                                mask_train=mask_train, device=self._device())
        except ValueError as e:
            raise ConfigError(f"option 'method.{option}': {e} in dataset {self.dataset.name!r}") from None

    def _batch_users(self, users: Tensor, dedup: bool = True):
        """Unique batch users and their weights (counts, or ones when ``dedup``)."""
        u, counts = torch.unique(users, return_counts=True)
        w = torch.ones_like(counts, dtype=torch.float32) if dedup else counts.float()
        return u, w

    # -- cache ----------------------------------------------------------------------------
    def _teacher_fingerprint(self) -> str:
        if self._teacher_key is None:
            h = hashlib.sha256(type(self.teacher).__name__.encode())
            for k, v in sorted(self.teacher.state_dict().items()):
                h.update(k.encode())
                # non-strided buffers (sparse graphs) derive from the data: fingerprinted there
                if torch.is_tensor(v) and v.layout == torch.strided and v.numel():
                    t = v.detach().cpu().contiguous().view(-1)
                    h.update(str(t.dtype).encode())
                    h.update(memoryview(t.view(torch.uint8).numpy()))
            self._teacher_key = h.hexdigest()[:16]
        return self._teacher_key

    def _cached(self, cache_dir, tag: str, params: dict, compute: Callable[[], dict]) -> dict:
        """``compute()`` (a dict of tensors), loaded from / saved to ``cache_dir`` if given."""
        if cache_dir is None:
            return compute()
        key = hashlib.sha256(repr((self.dataset.fingerprint(), self._teacher_fingerprint(),
                                   tag, sorted(params.items()))).encode()).hexdigest()[:20]
        path = Path(cache_dir) / f"{self.name}-{tag}-{key}.pt"
        dev = self._device()
        if path.exists():
            try:
                data = torch.load(path, map_location="cpu", weights_only=True)
                return {k: v.to(dev) for k, v in data.items()}
            except (OSError, RuntimeError, EOFError, pickle.UnpicklingError):
                path.unlink(missing_ok=True)  # a corrupt cache entry is recomputed
        data = compute()
        torch_save({k: v.cpu() for k, v in data.items()}, path)
        return data

    # -- per-epoch state ------------------------------------------------------------------
    def extra_state(self) -> dict:
        st = {"epoch": int(self.epoch), "generator": self.gen.get_state()}
        for name in self._epoch_buffers:
            b = getattr(self, name)
            if b is not None:
                st[name] = b.detach().cpu()
        return st

    def load_extra_state(self, state: dict) -> None:
        if not state:
            return
        self.epoch = int(state.get("epoch", 0))
        if "generator" in state:
            self.gen.set_state(state["generator"])
        dev = self._device()
        for name in self._epoch_buffers:
            setattr(self, name, state[name].to(dev) if name in state else None)

    @torch.no_grad()
    def _teacher_scores(self, items: Tensor) -> Tensor:
        """The frozen teacher's scores of ``items[u]`` for every user u, ``[U, k]``.

        Computed once per list (chunked so that a chunk gathers at most ~16M teacher
        embedding entries) instead of in every step: the teacher gather dominated the step.
        """
        reps = self.teacher_reps()
        d = reps[1].shape[1]
        n, k = items.shape
        rows = max(1, (1 << 24) // max(1, k * d))
        dev = reps[0].device
        out = [self.teacher.pair_scores(torch.arange(lo, min(lo + rows, n), device=dev),
                                        items[lo:lo + rows].to(dev), reps).float()
               for lo in range(0, n, rows)]
        return torch.cat(out).to(items.device) if out else items.new_zeros(0, k).float()

    def _rows_sample(self, weights_fn: Callable[[slice], Tensor], n_rows: int, n: int,
                     log: bool = False) -> Tensor:
        """Sample ``n`` distinct columns per row, rows in chunks (weights built per chunk)."""
        out = []
        for lo in range(0, n_rows, _SAMPLE_ROWS):
            w = weights_fn(slice(lo, min(lo + _SAMPLE_ROWS, n_rows))).cpu()
            out.append(sample_without_replacement(w, n, self.gen, log=log))
        return torch.cat(out) if out else torch.zeros(0, n, dtype=torch.long)


def _common_checks(cfg) -> None:
    check(cfg.chunk_size >= 1, "method.chunk_size", f"must be >= 1, got {cfg.chunk_size}")


# ======================================================================================
# KD
# ======================================================================================
@dataclass
class KDConfig(MethodConfig):
    """Listwise softmax KD on a top-K list (defaults: CiteULike-t BPR <- BPR)."""

    weight: float = 1.0  #: lambda
    top_k: int = 50  #: K: length of the list the softmax runs over
    tau: float = 1.0  #: softmax temperature for teacher and student scores
    #: whose top-K list: "teacher" (computed once) or "student" (recomputed every epoch)
    guide: Literal["teacher", "student"] = "student"
    #: exclude training items from the list (FIX: the authors' lists are not train-masked)
    mask_train: bool = True
    #: weight every batch user once (False = the authors: a user counts once per batch row)
    dedup_users: bool = False
    chunk_size: int = 1024  #: users per chunk when ranking all items

    def __post_init__(self):
        super().__post_init__()
        _common_checks(self)
        check(self.top_k >= 1, "method.top_k", f"must be >= 1, got {self.top_k}")
        check(self.tau > 0, "method.tau", f"must be > 0, got {self.tau}")


class KD(_Response):
    """KD: ``L = -sum_{u in B} sum_k softmax(s_T(u, pi_u)/tau)_k log softmax(s_S(u, pi_u)/tau)_k``.

    ``pi_u`` is the teacher's (once) or the student's (every epoch) top-K list, with
    training items excluded (the authors' lists include them, so a BPR student mostly
    re-learns its training items; ``mask_train=False`` restores that). Batch users are not
    deduplicated by default, as in the authors' code: a user counts once per batch row.
    """

    name = "kd"
    config_class = KDConfig
    _epoch_buffers = ("lists", "list_t")

    def prepare(self, cache_dir=None) -> None:
        cfg = self.cfg
        if cfg.guide == "teacher":
            data = self._cached(cache_dir, "topk", {"k": cfg.top_k, "mask": cfg.mask_train},
                                lambda: {"lists": self._topk(self._teacher_fn(), cfg.top_k, "top_k",
                                                             cfg.mask_train)})
            self.lists = data["lists"]
            self.list_t = self._teacher_scores(self.lists)
        else:  # validate K against the data now rather than at the first epoch
            most = int(np.diff(self.dataset.train.indptr).max()) if cfg.mask_train else 0
            if cfg.top_k > self.dataset.n_items - most:
                raise ConfigError(f"option 'method.top_k': {cfg.top_k} exceeds the "
                                  f"{self.dataset.n_items - most} rankable items of some user")

    def on_epoch_start(self, epoch: int) -> None:
        self.epoch = epoch
        if self.cfg.guide == "student":
            self.lists = self._topk(self._model_fn(self.student), self.cfg.top_k, "top_k",
                                    self.cfg.mask_train)
            self.list_t = self._teacher_scores(self.lists)

    def loss(self, batch, student_reps):
        self._sync(student_reps[0].device)
        u, w = self._batch_users(batch["users"], self.cfg.dedup_users)
        t = self.list_t[u]
        s = self.student.pair_scores(u, self.lists[u], student_reps)
        tau = self.cfg.tau
        per = -(torch.softmax(t / tau, -1) * F.log_softmax(s / tau, -1)).sum(1)
        loss = (w * per).sum()
        return {"loss": loss}


# ======================================================================================
# RD
# ======================================================================================
@dataclass
class RDConfig(MethodConfig):
    """Ranking Distillation (defaults: the authors' Gowalla BPR config, with its misspelt
    start-epoch key fixed)."""

    weight: float = 1.0  #: lambda (the config gives none; the argparse default is 1)
    top_k: int = 30  #: K: teacher top-K list (train-masked) the student is pulled towards
    temperature: float = 1.0  #: T of the static weights w_k ~ exp(-k/T)
    mu: float = 0.1  #: slope of the dynamic weights tanh(mu * (rank_hat - k))
    n_dynamic: int = 100  #: uniform non-training samples per user per epoch (rank estimate)
    #: epoch from which dynamic weights are used (authors' YAML: 100 under the misspelt key
    #: ``rrd_start_epoch``, which crashed their code)
    start_epoch: int = 100
    renormalize: bool = True  #: L1-renormalise static * dynamic weights (KDs/UnKD ports)
    dedup_users: bool = False  #: see KD
    seed: int = 0  #: seed of the sampling generator
    chunk_size: int = 1024  #: users per chunk when ranking all items

    def __post_init__(self):
        super().__post_init__()
        _common_checks(self)
        check(self.top_k >= 1, "method.top_k", f"must be >= 1, got {self.top_k}")
        check(self.temperature > 0, "method.temperature", "must be > 0")
        check(self.n_dynamic >= 1, "method.n_dynamic", f"must be >= 1, got {self.n_dynamic}")


class RD(_Response):
    """RD: ``L = -sum_u sum_k w_uk log sigmoid(s_S(u, pi_uk))`` over the teacher's top-K.

    Static weights ``w_k ~ exp(-k/T)``; from ``start_epoch`` on they are multiplied by
    ``max(0, tanh(mu (r_hat_k - k)))`` and L1-renormalised, where
    ``r_hat_k = floor((|I|-1) * frac(dynamic scores > s_S(u, pi_k))) + 1`` estimates the
    student's rank of ``pi_k`` from ``n_dynamic`` uniform non-training items per user,
    re-drawn every epoch. Ranks ``k`` are 1-based on both sides (the port compares the
    1-based estimate with a 0-based column index, an off-by-one).
    """

    name = "rd"
    config_class = RDConfig
    _epoch_buffers = ("dynamic",)

    def prepare(self, cache_dir=None) -> None:
        cfg = self.cfg
        data = self._cached(cache_dir, "topk", {"k": cfg.top_k},
                            lambda: {"lists": self._topk(self._teacher_fn(), cfg.top_k, "top_k")})
        self.register_buffer("lists", data["lists"], persistent=False)
        k = torch.arange(1, cfg.top_k + 1, dtype=torch.float64)
        w = torch.exp(-k / cfg.temperature)
        self.register_buffer("static", (w / w.sum()).float().to(self._device()), persistent=False)
        self.register_buffer("ranks", k.float().to(self._device()), persistent=False)
        self._train_excl = ItemExclusion.from_csr(self.dataset.train)

    def on_epoch_start(self, epoch: int) -> None:
        self.epoch = epoch
        if epoch >= self.cfg.start_epoch:
            users = torch.arange(self.dataset.n_users)
            self.dynamic = self._train_excl.sample(users, self.cfg.n_dynamic, self.gen,
                                                   replacement=True).to(self._device())
        else:
            self.dynamic = None

    def weights(self, s: Tensor, dyn_scores: Tensor | None) -> Tensor:
        """RD weights ``[B, K]`` from the student's scores of the top-K ``s`` (detached)."""
        static = self.static.expand_as(s)
        if dyn_scores is None:
            return static
        n = dyn_scores.shape[1]
        above = (s[:, :, None] < dyn_scores[:, None, :]).sum(-1).float()
        r_hat = torch.floor((self.dataset.n_items - 1) * above / n) + 1
        dyn = torch.clamp(torch.tanh(self.cfg.mu * (r_hat - self.ranks)), min=0)
        w = static * dyn
        if self.cfg.renormalize:
            w = w / w.sum(1, keepdim=True).clamp(min=1e-12)
        return w

    def loss(self, batch, student_reps):
        self._sync(student_reps[0].device)
        u, cnt = self._batch_users(batch["users"], self.cfg.dedup_users)
        s = self.student.pair_scores(u, self.lists[u], student_reps)
        dyn = None
        if self.dynamic is not None and self.epoch >= self.cfg.start_epoch:
            with torch.no_grad():
                dyn = self.student.pair_scores(u, self.dynamic[u], student_reps)
        with torch.no_grad():
            w = self.weights(s.detach(), dyn)
        per = (w * F.softplus(-s)).sum(1)  # -log sigmoid(s), stably
        return {"loss": (cnt * per).sum()}


# ======================================================================================
# CD
# ======================================================================================
@dataclass
class CDConfig(MethodConfig):
    """Collaborative Distillation (defaults: the authors' base config)."""

    weight: float = 0.5  #: lambda
    sample_num: int = 3000  #: length of the guide's top list the samples come from
    temperature: float = 20.0  #: T: rank r drawn with p ~ exp(-r / (sample_num * T))
    n_distill: int = 2  #: distinct items per user per epoch
    t1: float = 2.0  #: soft label w = sigmoid((s_T + t2) / t1)
    t2: float = 0.0  #: see t1
    #: "student": re-sample from the student's list every epoch (KDs); "teacher": sample
    #: once from the teacher's list (what the UnKD repo's CD effectively does)
    guide: Literal["teacher", "student"] = "student"
    dedup_users: bool = False  #: see KD
    seed: int = 0  #: seed of the sampling generator
    chunk_size: int = 1024  #: users per chunk when ranking all items

    def __post_init__(self):
        super().__post_init__()
        _common_checks(self)
        check(self.sample_num >= 1, "method.sample_num", f"must be >= 1, got {self.sample_num}")
        check(1 <= self.n_distill <= self.sample_num, "method.n_distill",
              f"must be in [1, sample_num={self.sample_num}], got {self.n_distill}")
        check(self.temperature > 0, "method.temperature", "must be > 0")
        check(self.t1 > 0, "method.t1", "must be > 0")


def cd_rank_weights(sample_num: int, temperature: float) -> Tensor:
    """Probability that CD's "draw two ranks, keep the better one" step yields rank r.

    With p_r ~ exp(-r / (N T)) and tail_r = sum_{j>=r} p_j, the better (smaller) of two iid
    ranks is r with probability ``tail_r^2 - tail_{r+1}^2``. Repeating until ``n`` distinct
    items is then sampling without replacement from these weights.
    """
    p = rank_sampling_probs(sample_num, sample_num * temperature).double()
    tail = torch.flip(torch.cumsum(torch.flip(p, [0]), 0), [0])
    nxt = torch.cat([tail[1:], tail.new_zeros(1)])
    return (tail ** 2 - nxt ** 2).clamp(min=0).float()


class CD(_Response):
    """CD: ``L = -sum_u sum_{j in S_u} [w log sigmoid(s_S) + (1-w) log(1 - sigmoid(s_S))]``,
    ``w = sigmoid((s_T(u,j) + t2) / t1)``: binary cross-entropy with the teacher's soft
    labels on ``n_distill`` items per user drawn by rank from the guide's train-masked top
    ``sample_num`` list. The authors' per-user loop ("draw two ranks, keep the better,
    until n distinct") is replaced by the equivalent exact sampling without replacement
    (:func:`cd_rank_weights`). The log terms are computed as BCE-with-logits (the authors
    add 1e-10 inside the logs; identical for |s| < ~20).
    """

    name = "cd"
    config_class = CDConfig
    _epoch_buffers = ("samples", "samples_t")

    def prepare(self, cache_dir=None) -> None:
        cfg = self.cfg
        most = int(np.diff(self.dataset.train.indptr).max())
        if cfg.sample_num > self.dataset.n_items - most:
            raise ConfigError(f"option 'method.sample_num': {cfg.sample_num} exceeds the "
                              f"{self.dataset.n_items - most} non-training items of some user")
        self._q = torch.log(cd_rank_weights(cfg.sample_num, cfg.temperature))
        if cfg.guide == "teacher":
            self.samples = self._draw(self._teacher_fn())
            self.samples_t = self._teacher_scores(self.samples)

    def _draw(self, fn) -> Tensor:
        """Per user chunk: guide's top ``sample_num``, ranks sampled, items gathered."""
        cfg = self.cfg
        train = self.dataset.train
        out = []
        for lo in range(0, self.dataset.n_users, cfg.chunk_size):
            users = np.arange(lo, min(lo + cfg.chunk_size, self.dataset.n_users))
            top = teacher_topk(fn, train, cfg.sample_num, chunk_size=len(users), users=users)
            ranks = sample_without_replacement(self._q.expand(len(users), -1), cfg.n_distill,
                                               self.gen, log=True)
            out.append(top.gather(1, ranks.to(top.device)).to(self._device()))
        return torch.cat(out)

    def on_epoch_start(self, epoch: int) -> None:
        self.epoch = epoch
        if self.cfg.guide == "student":
            self.samples = self._draw(self._model_fn(self.student))
            self.samples_t = self._teacher_scores(self.samples)

    def loss(self, batch, student_reps):
        self._sync(student_reps[0].device)
        cfg = self.cfg
        u, cnt = self._batch_users(batch["users"], cfg.dedup_users)
        target = torch.sigmoid((self.samples_t[u] + cfg.t2) / cfg.t1)
        s = self.student.pair_scores(u, self.samples[u], student_reps)
        per = F.binary_cross_entropy_with_logits(s, target, reduction="none").sum(1)
        return {"loss": (cnt * per).sum()}


# ======================================================================================
# RRD
# ======================================================================================
@dataclass
class RRDConfig(MethodConfig):
    """Relaxed Ranking Distillation (defaults: CiteULike-t BPR)."""

    weight: float = 0.1  #: lambda
    n_interesting: int = 100  #: K: interesting items per user (from the teacher's top list)
    n_uninteresting: int = 200  #: L: uniform items outside train and the top list
    temperature: float = 10.0  #: T: interesting rank r drawn with p ~ exp(-r/T)
    top_k: int = 500  #: mxK: length of the teacher's (train-masked) top list
    #: sample the interesting items by rank (the paper); False = use the teacher's first
    #: n_interesting items as they are (the variant HetComp_WWW23's README recommends)
    sampling: bool = True
    sort: bool = True  #: sort sampled interesting items by teacher rank (authors' default)
    clip: Optional[float] = 80.0  # noqa: UP045 (evaluated at runtime on 3.9)
    """scores clipped from above at this value (authors: 80); None = no clip"""
    seed: int = 0  #: seed of the sampling generator
    chunk_size: int = 1024  #: users per chunk when ranking all items

    def __post_init__(self):
        super().__post_init__()
        _common_checks(self)
        check(self.top_k >= 1, "method.top_k", f"must be >= 1, got {self.top_k}")
        check(1 <= self.n_interesting <= self.top_k, "method.n_interesting",
              f"must be in [1, top_k={self.top_k}], got {self.n_interesting}")
        check(self.n_uninteresting >= 0, "method.n_uninteresting", "must be >= 0")
        check(self.temperature > 0, "method.temperature", "must be > 0")


class RRD(_Response):
    """RRD: the relaxed ranking loss (:func:`~freqd.distill.ranking.relaxed_ranking_loss`)
    with S1 = the student's scores of K interesting items in teacher order and S2 those of L
    uninteresting items, over the batch's unique users, summed.

    Interesting items: K ranks of the teacher's train-masked top-``top_k`` list drawn
    without replacement with p ~ exp(-r/T) every epoch (then sorted), or simply the first K
    (``sampling=False``). Uninteresting items: L items drawn uniformly without replacement
    from those neither trained on nor in the top list, via sorted exclusion keys
    (:class:`~freqd.distill.ranking.ItemExclusion`) instead of the authors' dense |U| x |I|
    float mask (4.9 GB on Gowalla).
    """

    name = "rrd"
    config_class = RRDConfig
    _epoch_buffers = ("interesting", "uninteresting")

    def prepare(self, cache_dir=None) -> None:
        cfg = self.cfg
        data = self._cached(cache_dir, "topk", {"k": cfg.top_k},
                            lambda: {"lists": self._topk(self._teacher_fn(), cfg.top_k, "top_k")})
        self.register_buffer("lists", data["lists"], persistent=False)
        self._logp = torch.log(rank_sampling_probs(cfg.top_k, cfg.temperature))
        self._excl = ItemExclusion.from_csr(self.dataset.train, self.lists)
        free = int(self._excl.n_free(torch.arange(self.dataset.n_users)).min())
        if cfg.n_uninteresting > free:
            raise ConfigError(f"option 'method.n_uninteresting': {cfg.n_uninteresting} exceeds "
                              f"the {free} items outside train and the top list of some user")

    def on_epoch_start(self, epoch: int) -> None:
        self.epoch = epoch
        cfg = self.cfg
        n_users = self.dataset.n_users
        dev = self._device()
        if cfg.sampling:
            ranks = self._rows_sample(lambda sl: self._logp.expand(sl.stop - sl.start, -1),
                                      n_users, cfg.n_interesting, log=True)
            if cfg.sort:
                ranks = ranks.sort(dim=1).values
            self.interesting = self.lists.gather(1, ranks.to(self.lists.device)).to(dev)
        else:
            self.interesting = self.lists[:, :cfg.n_interesting].to(dev)
        self.uninteresting = self._excl.sample(torch.arange(n_users), cfg.n_uninteresting,
                                               self.gen).to(dev)

    def loss(self, batch, student_reps):
        self._sync(student_reps[0].device)
        u = torch.unique(batch["users"])
        k = self.interesting.shape[1]
        s = self.student.pair_scores(
            u, torch.cat([self.interesting[u], self.uninteresting[u]], 1), student_reps)
        return {"loss": relaxed_ranking_loss(s[:, :k], s[:, k:], clip=self.cfg.clip)}


# ======================================================================================
# DCD
# ======================================================================================
@dataclass
class DCDConfig(MethodConfig):
    """Dual Correction Distillation, as ported by KDs (defaults: CiteULike-t BPR)."""

    weight: float = 0.01  #: lambda
    n_samples: int = 100  #: K: under- and over-estimated items each, per user per epoch
    temperature: float = 10.0  #: T in tanh(max((r_S - r_T)/T, 0))
    top_k: int = 500  #: mxK: teacher's (train-masked) top list the samples come from
    tau: float = 1.0  #: softmax temperature of the "ce" objective
    #: "relaxed": RRD loss with S1 = under-, S2 = over-estimated items (KDs default);
    #: "ce": listwise softmax CE on their union (KDs ``--ablation``)
    objective: Literal["relaxed", "ce"] = "relaxed"
    #: rank the student's scores among non-training items, like the teacher's list (FIX:
    #: the port ranks among all items, so training items inflate every student rank)
    mask_train: bool = True
    clip: Optional[float] = 80.0  # noqa: UP045 (evaluated at runtime on 3.9)
    """scores clipped from above (authors: 80); None = no clip"""
    seed: int = 0  #: seed of the sampling generator
    chunk_size: int = 256  #: users per chunk when ranking all items

    def __post_init__(self):
        super().__post_init__()
        _common_checks(self)
        check(self.top_k >= 1, "method.top_k", f"must be >= 1, got {self.top_k}")
        check(1 <= self.n_samples <= self.top_k, "method.n_samples",
              f"must be in [1, top_k={self.top_k}], got {self.n_samples}")
        check(self.temperature > 0, "method.temperature", "must be > 0")
        check(self.tau > 0, "method.tau", "must be > 0")


class DCD(_Response):
    """DCD (KDs's simplified port): every epoch, the student's rank ``r_S`` of each item of
    the teacher's top-``top_k`` list (teacher rank ``r_T`` = position) is computed per user
    chunk as the number of items the student scores higher (no |U| x |I| argsort; the port
    needs two, 9.8 GB each on Gowalla). K under-estimated items are drawn without
    replacement with p ~ max(tanh(max((r_S - r_T)/T, 0)), 1e-5), K over-estimated ones with
    the sign flipped; the loss is the relaxed ranking loss (S1 = under-estimated in drawing
    order, S2 = over-estimated) over the unique batch users, or softmax CE (``ce``).
    """

    name = "dcd"
    config_class = DCDConfig
    _epoch_buffers = ("under", "over", "teacher_t")

    def prepare(self, cache_dir=None) -> None:
        cfg = self.cfg
        data = self._cached(cache_dir, "topk", {"k": cfg.top_k},
                            lambda: {"lists": self._topk(self._teacher_fn(), cfg.top_k, "top_k")})
        self.register_buffer("lists", data["lists"], persistent=False)

    @staticmethod
    def rank_cap(top_k: int, temperature: float) -> int:
        """Student ranks at or beyond this cap give the same weights as the exact rank:
        ``(r_S - r_T) / T >= 9.1`` for every teacher rank ``r_T < top_k``, and float32
        ``tanh`` is exactly 1 from 9.1 on; over-estimation needs ``r_S < r_T``. So only
        ranks below the cap are computed exactly (a top-``cap`` per row, no full ranking)."""
        return int(top_k + math.ceil(9.1 * temperature))

    @staticmethod
    def correction_weights(r_s: Tensor, r_t: Tensor, temperature: float):
        """(under, over) sampling weights from student and teacher ranks."""
        d = (r_s - r_t).float() / temperature
        under = torch.clamp(torch.tanh(torch.clamp(d, min=0)), min=1e-5)
        over = torch.clamp(torch.tanh(torch.clamp(-d, min=0)), min=1e-5)
        return under, over

    def on_epoch_start(self, epoch: int) -> None:
        self.epoch = epoch
        cfg = self.cfg
        r_s = count_higher(self._model_fn(self.student), self.dataset.train, self.lists,
                           chunk_size=cfg.chunk_size, mask_train=cfg.mask_train,
                           cap=self.rank_cap(cfg.top_k, cfg.temperature)).cpu()
        r_t = torch.arange(cfg.top_k)[None, :]
        under, over = self.correction_weights(r_s, r_t, cfg.temperature)
        n = self.dataset.n_users
        iu = self._rows_sample(lambda sl: under[sl], n, cfg.n_samples)
        io = self._rows_sample(lambda sl: over[sl], n, cfg.n_samples)
        lists = self.lists.cpu()
        dev = self._device()
        self.under = lists.gather(1, iu).to(dev)
        self.over = lists.gather(1, io).to(dev)
        self.teacher_t = (self._teacher_scores(torch.cat([self.under, self.over], 1))
                          if cfg.objective == "ce" else None)

    def loss(self, batch, student_reps):
        self._sync(student_reps[0].device)
        cfg = self.cfg
        u = torch.unique(batch["users"])
        s = self.student.pair_scores(u, torch.cat([self.under[u], self.over[u]], 1),
                                     student_reps)
        if cfg.objective == "relaxed":
            k = self.under.shape[1]
            return {"loss": relaxed_ranking_loss(s[:, :k], s[:, k:], clip=cfg.clip)}
        t = self.teacher_t[u]
        loss = -(torch.softmax(t / cfg.tau, -1) * F.log_softmax(s / cfg.tau, -1)).sum()
        return {"loss": loss}


# ======================================================================================
# UnKD
# ======================================================================================
@dataclass
class UnKDConfig(MethodConfig):
    """Unbiased KD (defaults: CiteULike-t BPR)."""

    weight: float = 0.5  #: lambda
    n_groups: int = 2  #: G: popularity groups of roughly equal interaction mass
    n_distill: int = 2  #: pairs per user, split over the groups
    #: exponent on the groups' inverse-popularity ratios before normalising (0 = equal)
    group_exponent: float = 0.0
    list_size: int = 1000  #: per-group teacher list length (non-training items)
    rank_temperature: float = 20.0  #: pair ranks r (0-based) drawn with p ~ exp(-(r+1)/T)
    dedup_users: bool = False  #: see KD
    seed: int = 0  #: seed of the sampling generator
    chunk_size: int = 1024  #: users per chunk when ranking all items

    def __post_init__(self):
        super().__post_init__()
        _common_checks(self)
        check(self.n_groups >= 1, "method.n_groups", f"must be >= 1, got {self.n_groups}")
        check(self.n_distill >= 1, "method.n_distill", f"must be >= 1, got {self.n_distill}")
        check(self.list_size >= 2, "method.list_size", f"must be >= 2, got {self.list_size}")
        check(self.rank_temperature > 0, "method.rank_temperature", "must be > 0")


def popularity_groups(item_counts: np.ndarray, n_groups: int) -> list:
    """UnKD's ``splitGroup``: items with training interactions, by count (descending, ties
    by id), cut greedily into groups whose mass stays <= total / G (a single item heavier
    than that is a group of its own); a last group lighter than half that is merged into
    the previous one. Returns a list of int64 item arrays (often G, sometimes G +- 1)."""
    items = np.flatnonzero(item_counts > 0)
    order = items[np.lexsort((items, -item_counts[items]))]
    c = item_counts[order].astype(np.float64)
    cum = np.concatenate([[0.0], np.cumsum(c)])
    avg = cum[-1] / n_groups
    groups, start = [], 0
    while start < len(order):  # one iteration per group
        end = int(np.searchsorted(cum, cum[start] + avg, side="right")) - 1  # sum <= avg
        end = max(end, start + 1)
        groups.append(order[start:end])
        start = end
    if len(groups) > 1 and item_counts[groups[-1]].sum() <= avg / 2:
        last = groups.pop()
        groups[-1] = np.concatenate([groups[-1], last])
    return groups


def unkd_pairs_per_group(item_counts: np.ndarray, groups: list, n_distill: int,
                         exponent: float) -> list:
    """Pairs drawn per user from each group, as UnKD computes them: group ratios from the
    inverted mean popularity (rounded to 2 decimals, floored at 0.1), raised to
    ``exponent``, normalised; ``round(ratio * n_distill)`` each, plus one for the first
    groups while the total falls short of ``n_distill``."""
    mean_pop = [float(item_counts[g].mean()) for g in groups]
    hi, lo = max(mean_pop), min(mean_pop)
    inv = [(hi + lo) - p for p in mean_pop]
    tot = sum(inv)
    ratio = [max(round(v / tot, 2) if tot > 0 else 1.0 / len(groups), 0.1) for v in inv]
    ratio = [math.pow(r, exponent) for r in ratio]
    s = sum(ratio)
    ratio = [r / s for r in ratio]
    base = [round(r * n_distill) for r in ratio]
    short = n_distill - sum(base)
    return [b + (1 if i < short else 0) for i, b in enumerate(base)]


class UnKD(_Response):
    """UnKD: items are split into popularity groups of about equal interaction mass; per
    group and user the teacher ranks the group's non-training items (top ``list_size``,
    computed per user chunk, one teacher pass for all groups). Every epoch each user gets
    ``n_g`` pairs (i better than j by teacher rank) per group, ranks drawn iid with
    p ~ exp(-(r+1)/20) and re-drawn when tied. Loss: ``sum_u mean_pairs -log sigmoid(s_S(u,i)
    - s_S(u,j))`` (the original's mean over a user's pairs, summed over batch rows).

    Differences from the port: the teacher is scored through the backbone contract, so the
    port's wrong-arity call (TypeError at construction) cannot occur; a user with fewer
    than two rankable items in a group gets no pair there (the port loops forever), and the
    mean runs over the pairs that exist; the unused ``item_tag`` weights are dropped.
    """

    name = "unkd"
    config_class = UnKDConfig
    _epoch_buffers = ("pos", "neg", "valid")

    def prepare(self, cache_dir=None) -> None:
        cfg = self.cfg
        train = self.dataset.train
        counts = np.bincount(train.indices, minlength=self.dataset.n_items)
        self.groups = popularity_groups(counts, cfg.n_groups)
        self.pairs_per_group = unkd_pairs_per_group(counts, self.groups, cfg.n_distill,
                                                    cfg.group_exponent)
        params = {"list": cfg.list_size, "G": cfg.n_groups}
        data = self._cached(cache_dir, "groups", params, self._group_lists)
        self._lists = [data[f"list{g}"] for g in range(len(self.groups))]
        self._lengths = [data[f"len{g}"] for g in range(len(self.groups))]
        self._probs = rank_sampling_probs(cfg.list_size, cfg.rank_temperature)

    def _group_lists(self) -> dict:
        """Per group: [U, k_g] teacher-ranked non-training items (int32) and lengths [U]."""
        cfg = self.cfg
        train = self.dataset.train
        n_items = self.dataset.n_items
        fn = self._teacher_fn()
        gid = np.full(n_items, -1, dtype=np.int64)
        pos = np.zeros(n_items, dtype=np.int64)
        for g, items in enumerate(self.groups):
            gid[items] = g
            pos[items] = np.arange(len(items))
        lists = {g: [] for g in range(len(self.groups))}
        lengths = {g: [] for g in range(len(self.groups))}
        for lo in range(0, self.dataset.n_users, cfg.chunk_size):
            users = np.arange(lo, min(lo + cfg.chunk_size, self.dataset.n_users))
            with torch.no_grad():
                s = fn(torch.from_numpy(users)).float()
            rows, cols = csr_entries(train.indptr, train.indices, users)
            for g, items in enumerate(self.groups):
                sg = s[:, torch.from_numpy(items).to(s.device)].clone()
                sel = gid[cols] == g
                if sel.any():
                    sg[torch.from_numpy(rows[sel]).to(s.device),
                       torch.from_numpy(pos[cols[sel]]).to(s.device)] = float("-inf")
                k = min(cfg.list_size, len(items))
                idx = torch.topk(sg, k, dim=1).indices.cpu()
                lists[g].append(torch.from_numpy(items)[idx].to(torch.int32))
                n_train_g = np.bincount(rows[sel], minlength=len(users))
                lengths[g].append(torch.from_numpy(np.minimum(k, len(items) - n_train_g)))
        out = {}
        for g in range(len(self.groups)):
            out[f"list{g}"] = torch.cat(lists[g])
            out[f"len{g}"] = torch.cat(lengths[g]).long()
        return out

    def on_epoch_start(self, epoch: int) -> None:
        self.epoch = epoch
        pos, neg, valid = [], [], []
        for g, n_g in enumerate(self.pairs_per_group):
            if n_g == 0:
                continue
            lengths = self._lengths[g].cpu()
            ok = lengths >= 2          # fewer than two rankable items: no pair in this group
            ln = lengths.clamp(min=1)
            a = sample_with_replacement_cdf(self._probs, ln, n_g, self.gen)
            b = sample_with_replacement_cdf(self._probs, ln, n_g, self.gen)
            for _ in range(1000):  # re-draw tied pairs (conditioning each pair on a != b)
                tie = (a == b) & ok[:, None]
                if not bool(tie.any()):
                    break
                r, c = tie.nonzero(as_tuple=True)
                a[r, c] = sample_with_replacement_cdf(self._probs, ln[r], 1, self.gen)[:, 0]
                b[r, c] = sample_with_replacement_cdf(self._probs, ln[r], 1, self.gen)[:, 0]
            lst = self._lists[g].cpu()
            pos.append(lst.gather(1, torch.minimum(a, b)).long())
            neg.append(lst.gather(1, torch.maximum(a, b)).long())
            valid.append(ok[:, None].expand(-1, n_g))
        dev = self._device()
        self.pos = torch.cat(pos, 1).to(dev)
        self.neg = torch.cat(neg, 1).to(dev)
        self.valid = torch.cat(valid, 1).to(dev)

    def loss(self, batch, student_reps):
        self._sync(student_reps[0].device)
        u, cnt = self._batch_users(batch["users"], self.cfg.dedup_users)
        n = self.pos.shape[1]
        s = self.student.pair_scores(u, torch.cat([self.pos[u], self.neg[u]], 1), student_reps)
        v = self.valid[u].float()
        per = (F.softplus(-(s[:, :n] - s[:, n:])) * v).sum(1) / v.sum(1).clamp(min=1)
        return {"loss": (cnt * per).sum()}


# ======================================================================================
# HetComp
# ======================================================================================
@dataclass
class HetCompConfig(MethodConfig):
    """HetComp with a single teacher's training trajectory (defaults: CiteULike-t BPR)."""

    weight: float = 0.005  #: lambda
    #: folder of the teacher run's checkpoints (``<teacher run>/trajectory``, written by
    #: ``freqd train`` with ``train.save_every``); relative paths are from the CWD
    trajectory_dir: str = ""
    #: checkpoint files (in trajectory_dir, or absolute) sorted by epoch, best last. Empty:
    #: ``num_ckpt - 1`` evenly spaced ``epoch_*.pt`` files up to the best epoch, then
    #: ``best.pt`` (or the distiller's teacher if there is no best.pt)
    checkpoints: list[str] = field(default_factory=list)
    num_ckpt: int = 3  #: trajectory length including the final (best) teacher, auto mode
    top_k: int = 50  #: K: length of each checkpoint's train-masked top list
    period: int = 10  #: p: run the dynamic knowledge construction every p epochs
    alpha: float = 1.05  #: DKC threshold alpha * 0.995^(epoch // p)
    clip: float = 40.0  #: student scores clamped to [-clip, clip] (authors: 40)
    dedup_users: bool = False  #: see KD
    chunk_size: int = 1024  #: users per chunk when ranking all items

    def __post_init__(self):
        super().__post_init__()
        _common_checks(self)
        check(self.num_ckpt >= 1, "method.num_ckpt", f"must be >= 1, got {self.num_ckpt}")
        check(self.top_k >= 2, "method.top_k", f"must be >= 2, got {self.top_k}")
        check(self.period >= 1, "method.period", f"must be >= 1, got {self.period}")
        check(self.clip > 0, "method.clip", "must be > 0")


_EPOCH_RE = re.compile(r"epoch_(\d+)\.pt$")


def _load_state(path: Path) -> dict:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as e:
        raise CheckpointError(f"{path}: cannot read checkpoint ({e})") from None
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        return obj["model"]
    if isinstance(obj, dict) and obj and all(torch.is_tensor(v) for v in obj.values()):
        return obj
    raise CheckpointError(f"{path}: not a model checkpoint (expected {{'model': state_dict, ...}})")


def dkc_ndcg(student_top: Tensor, teacher_top: Tensor) -> Tensor:
    """HetComp's per-user ranking similarity, ``[U]``: NDCG of the student's top-K with
    graded gains ``2^exp(-t/10) - 1`` at position t (0-based) for each of its items found in
    the teacher's top-K, rounded to 4 decimals as the authors do."""
    k = student_top.shape[1]
    t = torch.arange(k, dtype=torch.float64)
    gains = (2.0 ** torch.exp(-t / 10)) - 1
    disc = torch.log2(t + 2)
    idcg = (gains / disc).sum()
    out = []
    for lo in range(0, len(student_top), _SAMPLE_ROWS):
        s = student_top[lo:lo + _SAMPLE_ROWS]
        tt = teacher_top[lo:lo + _SAMPLE_ROWS].to(s.device)
        hit = (s[:, :, None] == tt[:, None, :]).any(-1).cpu().double()
        out.append(torch.round((hit * gains / disc).sum(1) / idcg, decimals=4))
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.float64)


class HetComp(_Response):
    """HetComp (Kang et al., WWW'23) on one teacher's training trajectory.

    ``prepare`` loads each trajectory checkpoint into ``copy.deepcopy(teacher)`` and keeps
    its train-masked top-K list (in user chunks); positives are each user's first
    ``min_u |train_u|`` training items. Every ``period`` epochs the dynamic knowledge
    construction (vectorised over users) moves a user to the next checkpoint's list when
    ``d_prev / d_next > alpha * 0.995^(epoch // p)`` or ``< 1``, with ``d = 1 - NDCG`` of
    the student's top-K against that list. Loss on the student's full rows (clamped to
    ``+-clip``), training items masked:

    - while the users' mean checkpoint index is below the last one: ``2 * overall``, where
      ``overall = -sum_{t in pos + top} [s_t - log(e^{s_t} + sum_{j not train, not top} e^{s_j})]``;
    - afterwards ``pos + (top + top_sub) / 2``: relaxed ranking losses of the positives and
      of the first K/2 (and K/10) top items against the remaining non-training items.

    Log terms are computed in log space and floored at log(1e-5) (the authors clamp the
    sums at 1e-5). Differences from the original (documented in BASELINES.md): one teacher
    and its checkpoints instead of six heterogeneous teachers; base loss + lambda * KD.
    """

    name = "hetcomp"
    config_class = HetCompConfig
    _epoch_buffers = ("level", "last_dist")

    # -- trajectory ---------------------------------------------------------------------
    def trajectory_files(self) -> list:
        """Checkpoint paths sorted by epoch, best last (``None`` = the distiller's teacher)."""
        cfg = self.cfg
        if not cfg.trajectory_dir:
            raise ConfigError("option 'method.trajectory_dir': required: the teacher run's "
                              "trajectory folder (train the teacher with train.save_every=N)")
        d = Path(cfg.trajectory_dir)
        if cfg.checkpoints:
            files = [d / c for c in cfg.checkpoints]
            for f in files:
                if not f.is_file():
                    raise CheckpointError(f"{f}: trajectory checkpoint not found "
                                          "(option 'method.checkpoints')")
            return files
        if not d.is_dir():
            raise CheckpointError(f"{d}: trajectory folder not found (option 'method.trajectory_dir')")
        best = d / "best.pt"
        best_epoch = math.inf
        if best.is_file():
            obj = torch.load(best, map_location="cpu", weights_only=True)
            if isinstance(obj, dict) and "epoch" in obj:
                best_epoch = int(obj["epoch"])
        found = []
        for f in d.glob("epoch_*.pt"):
            m = _EPOCH_RE.search(f.name)
            if m and int(m.group(1)) < best_epoch:
                found.append((int(m.group(1)), f))
        found.sort()
        need = cfg.num_ckpt - 1
        if len(found) < need:
            raise CheckpointError(f"{d}: {len(found)} checkpoints before the best epoch, "
                                  f"option 'method.num_ckpt'={cfg.num_ckpt} needs {need}")
        n = len(found)
        pick = [math.ceil(n * j / cfg.num_ckpt) - 1 for j in range(1, cfg.num_ckpt)]
        files = [found[i][1] for i in pick]
        return files + [best if best.is_file() else None]

    def _ranked_lists(self, files: list) -> Tensor:
        perms = []
        for f in files:
            if f is None:
                fn = self._teacher_fn()
            else:
                model = copy.deepcopy(self.teacher)
                try:
                    model.load_state_dict(_load_state(f))
                except RuntimeError as e:
                    raise CheckpointError(f"{f}: does not fit the teacher "
                                          f"({str(e).splitlines()[0]})") from None
                model.eval()
                fn = self._model_fn(model)
            perms.append(self._topk(fn, self.cfg.top_k, "top_k").cpu())
        return torch.stack(perms)                                     # [C, U, K]

    def prepare(self, cache_dir=None) -> None:
        cfg = self.cfg
        files = self.trajectory_files()
        sig = [(str(f), f.stat().st_mtime_ns, f.stat().st_size) if f is not None else None
               for f in files]
        data = self._cached(cache_dir, "trajectory", {"k": cfg.top_k, "files": repr(sig)},
                            lambda: {"perms": self._ranked_lists(files)})
        self.register_buffer("perms", data["perms"].to(self._device()), persistent=False)
        self.n_ckpt = self.perms.shape[0]
        train = self.dataset.train
        deg = np.diff(train.indptr)
        n_pos = int(deg.min()) if len(deg) else 0
        first = train.indptr[:-1][:, None] + np.arange(n_pos)[None, :]
        pos = torch.from_numpy(train.indices[first].astype(np.int64)).reshape(len(deg), n_pos)
        self.register_buffer("positives", pos.to(self._device()), persistent=False)
        n = self.dataset.n_users
        self.level = torch.zeros(n, dtype=torch.long, device=self._device())
        self.last_dist = torch.ones(n, dtype=torch.float64, device=self._device())
        self.dkc_started = False
        self.progress = 0.0  # users' mean checkpoint index (rounded to 2 decimals)

    def top_items(self, users: Tensor) -> Tensor:
        """Each user's current target list ``[B, K]`` (their checkpoint's top-K)."""
        return self.perms[self.level[users], users]

    def on_epoch_start(self, epoch: int) -> None:
        self.epoch = epoch
        cfg = self.cfg
        last = self.n_ckpt - 1
        if not (epoch % cfg.period == 0 and epoch >= cfg.period and self.progress < last):
            return
        student_top = self._topk(self._model_fn(self.student), cfg.top_k, "top_k").cpu()
        perms = self.perms.cpu()
        users = torch.arange(self.dataset.n_users)
        level = self.level.cpu().clone()
        last_dist = self.last_dist.cpu().clone()
        if not self.dkc_started:
            nxt = torch.clamp(level + 1, max=last)
            last_dist = 1.0 - dkc_ndcg(student_top, perms[nxt, users])
            self.dkc_started = True
        else:
            th = cfg.alpha * (0.995 ** (epoch // cfg.period))
            active = level < last
            nxt = torch.clamp(level + 1, max=last)
            nxt2 = torch.clamp(level + 2, max=last)
            next_dist = 1.0 - dkc_ndcg(student_top, perms[nxt, users])
            ratio = last_dist / next_dist           # x/0 = inf (move), 0/0 = nan (stay)
            move = active & ((ratio > th) | (ratio < 1))
            if bool(move.any()):
                mu = users[move]
                last_dist[mu] = 1.0 - dkc_ndcg(student_top[mu], perms[nxt2[mu], mu])
                level[mu] += 1
        dev = self._device()
        self.level = level.to(dev)
        self.last_dist = last_dist.to(dev)
        self.progress = round(float(level.double().mean()), 2)

    def extra_state(self) -> dict:
        st = super().extra_state()
        st["dkc_started"] = bool(self.dkc_started)
        st["progress"] = float(self.progress)
        return st

    def load_extra_state(self, state: dict) -> None:
        super().load_extra_state(state)
        if state:
            self.dkc_started = bool(state.get("dkc_started", False))
            self.progress = float(state.get("progress", 0.0))

    # -- loss ---------------------------------------------------------------------------
    @staticmethod
    def _log_mass_without(lse: Tensor, removed: Tensor) -> Tensor:
        """``log(exp(lse) - sum_j exp(removed_j))`` per row: the mass of a row without some
        of its entries, by subtraction as the authors compute it (in float64, relative to
        the total, so no second full-row pass is needed); floored at 1e-30 of the total."""
        if removed.shape[1] == 0:
            return lse
        rel = 1.0 - torch.exp((removed - lse[:, None]).double()).sum(1)
        return (lse.double() + torch.log(torch.clamp(rel, min=1e-30))).to(lse.dtype)

    def loss(self, batch, student_reps):
        self._sync(student_reps[0].device)
        cfg = self.cfg
        u, cnt = self._batch_users(batch["users"], cfg.dedup_users)
        full = torch.clamp(full_scores(self.student, u, student_reps), -cfg.clip, cfg.clip)
        rows, cols = csr_entries(self.dataset.train.indptr, self.dataset.train.indices,
                                 u.cpu().numpy())
        dev = full.device
        base = full.index_put((torch.from_numpy(rows).to(dev), torch.from_numpy(cols).to(dev)),
                              torch.tensor(float("-inf"), device=dev))  # training items out
        top = self.top_items(u)
        pos = self.positives[u]
        floor = math.log(1e-5)
        lse = torch.logsumexp(base, 1)               # all non-training items
        if self.progress < self.n_ckpt - 1:
            tops = full.gather(1, torch.cat([pos, top], 1))
            log_els = self._log_mass_without(lse, tops[:, pos.shape[1]:])
            below = torch.clamp(torch.logaddexp(tops, log_els[:, None]), min=floor)
            per = 2.0 * (below - tops).sum(1)
        else:
            k = top.shape[1]
            s_half = full.gather(1, top[:, :k // 2])
            s_tenth = s_half[:, :k // 10]
            lm_half = self._log_mass_without(lse, s_half)
            lm_tenth = self._log_mass_without(lse, s_tenth)
            rr = {"clip": None, "floor": 1e-5, "reduction": "none"}
            pos_l = relaxed_ranking_loss(full.gather(1, pos), log_mass=lm_half, **rr)
            top_l = relaxed_ranking_loss(s_half, log_mass=lm_half, **rr)
            sub_l = relaxed_ranking_loss(s_tenth, log_mass=lm_tenth, **rr)
            per = pos_l + (top_l + sub_l) / 2
        return {"loss": (cnt * per).sum()}
