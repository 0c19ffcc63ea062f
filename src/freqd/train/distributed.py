"""Data-parallel training across processes (``torchrun``): one replica per rank.

Launch any ``freqd train`` / ``freqd distill`` command under ``torchrun``::

    torchrun --standalone --nproc_per_node 2 -m freqd train gowalla --out runs/mf300 --dim 300
    torchrun --nnodes 2 --node_rank R --nproc_per_node 8 --rdzv_backend c10d \\
             --rdzv_endpoint HOST:29500 -m freqd distill gowalla --teacher runs/mf300 ...

:func:`init_from_env` reads ``WORLD_SIZE`` / ``RANK`` / ``LOCAL_RANK`` (set by torchrun) and
starts the process group: ``gloo`` on CPU, ``nccl`` on CUDA (device ``cuda:LOCAL_RANK``).
Without those variables (or with ``WORLD_SIZE=1``) nothing happens and every helper here
is a no-op, so the single-process path is unchanged.

How a step is parallelised (see docs/SCALING.md):

* Batches: every rank draws the *same* permutation and the *same* negative-sampling
  uniforms from the shared seed (:class:`freqd.data.sampling.TrainSampler` with ``rank`` /
  ``world_size``) and keeps its contiguous slice of each global batch of ``batch_size``
  triples. The union of the ranks' slices is exactly the one-process batch, negatives
  included.
* Gradients: the trainer's objective (the student's loss + lambda x the distiller's
  loss) is one module, :class:`freqd.train.trainer._Objective`, wrapped in
  ``DistributedDataParallel`` by :func:`wrap_ddp`: DDP's hooks all-reduce the dense
  gradients in buckets *during* ``backward()`` (communication overlaps the rest of the
  backward pass), with a **SUM** communication hook instead of DDP's mean: every loss in
  freqd is a sum over the batch (the authors' reduction), so the sum of the ranks'
  gradients is the gradient of the one-process global batch (up to float summation
  order). Weight decay is added by the optimizer after the reduction, on parameters that
  are identical on every rank. Sparse embedding gradients (``model.sparse_grad`` +
  ``sparse_adam``) are left out of DDP and exchanged after ``backward()`` as (row, value)
  lists with ``all_gather`` (:class:`SparseGradientReducer`; works with nccl, where DDP has
  no sparse all-reduce). The frozen teacher lives outside the wrapped module tree and
  FreqD's graphs are built per rank: neither is broadcast nor reduced.
* Randomness: the sampler's generator is the same on every rank. torch/numpy/python global
  generators (dropout, FreqD edge dropout, random entities) are seeded per rank with
  :func:`rank_seed` (rank 0 keeps ``seed``, so rank 0 draws what a one-process run draws).
  A distiller's own generators (response methods) keep their configured seed on every
  rank, so their per-epoch draws over all users are the one-process draws.
* Rank 0 evaluates, logs and writes checkpoints / metrics; the others wait and receive the
  early-stopping counter (:meth:`DistContext.broadcast_ints`). Checkpoints hold every
  rank's RNG states (``"ranks"``), so a resumed run with the same number of processes
  continues exactly.
"""
from __future__ import annotations

import atexit
import datetime
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import ConfigError

__all__ = ["DistContext", "SparseGradientReducer", "context", "init_from_env", "rank_seed", "shutdown", "wrap_ddp"]

log = logging.getLogger("freqd")

def rank_seed(seed: int, rank: int) -> int:
    """Seed of rank ``rank``'s global RNGs: ``seed`` itself on rank 0 (so rank 0 of an
    N-process run draws what a one-process run draws), a well-mixed 63-bit value derived
    from ``(seed, rank)`` with numpy's ``SeedSequence`` on the other ranks."""
    if rank == 0:
        return int(seed)
    import numpy as np

    return int(np.random.SeedSequence([int(seed) % 2**63, int(rank)]).generate_state(1, np.uint64)[0] >> 1)


@dataclass
class DistContext:
    """Where this process stands in a data-parallel job (world size 1 = not distributed)."""

    rank: int = 0  #: global rank
    world_size: int = 1  #: number of processes
    local_rank: int = 0  #: rank on this machine (selects the GPU)
    backend: str | None = None  #: "gloo" / "nccl" once initialised

    @property
    def active(self) -> bool:
        """True when more than one process trains."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """True on rank 0 (evaluates, logs, writes files)."""
        return self.rank == 0

    def device(self, name: str | torch.device) -> torch.device:
        """The device this rank trains on for a configured ``train.device``: ``cuda`` (or
        any ``cuda:N``) becomes ``cuda:LOCAL_RANK`` when distributed."""
        dev = torch.device(name)
        if self.active and dev.type == "cuda":
            return torch.device("cuda", self.local_rank)
        return dev

    def _comm_device(self) -> torch.device:
        return torch.device("cuda", self.local_rank) if self.backend == "nccl" else torch.device("cpu")

    # -- collectives (no-ops with one process) ----------------------------------------------
    def barrier(self) -> None:
        if self.active:
            import torch.distributed as dist

            dist.barrier()

    def broadcast_object(self, obj: Any = None, src: int = 0) -> Any:
        """``obj`` from rank ``src`` on every rank (picklable objects)."""
        if not self.active:
            return obj
        import torch.distributed as dist

        box = [obj if self.rank == src else None]
        dist.broadcast_object_list(box, src=src)
        return box[0]

    def gather_objects(self, obj: Any) -> list[Any] | None:
        """Every rank's ``obj`` as a list (index = rank) on every rank."""
        if not self.active:
            return [obj]
        import torch.distributed as dist

        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def broadcast_ints(self, *values: int, src: int = 0) -> list[int]:
        """Integers from rank ``src`` (e.g. the early-stopping counter); also a sync point."""
        if not self.active:
            return [int(v) for v in values]
        import torch.distributed as dist

        t = torch.tensor([int(v) for v in values], dtype=torch.int64, device=self._comm_device())
        dist.broadcast(t, src=src)
        return [int(v) for v in t.tolist()]

    def sum_floats(self, values: dict[str, float]) -> dict[str, float]:
        """Per-key sums over the ranks (float64; keys missing on a rank count as 0)."""
        if not self.active:
            return dict(values)
        import torch.distributed as dist

        keys: list[str] = []
        for ks in self.gather_objects(sorted(values)):
            keys += [k for k in ks if k not in keys]
        t = torch.tensor([float(values.get(k, 0.0)) for k in keys], dtype=torch.float64,
                         device=self._comm_device())
        dist.all_reduce(t)
        return dict(zip(keys, t.tolist()))

    def broadcast_parameters(self, params: Iterable[torch.Tensor], src: int = 0) -> None:
        """Overwrite every rank's parameters with rank ``src``'s (replicas start equal)."""
        if not self.active:
            return
        import torch.distributed as dist

        with torch.no_grad():
            for p in params:
                dist.broadcast(p.data, src=src)

    def replicas_agree(self, params: Iterable[torch.Tensor]) -> bool:
        """Cheap check that every rank holds the same parameters (float64 checksums)."""
        if not self.active:
            return True
        with torch.no_grad():
            sums = [float(p.detach().double().sum()) + 1e-3 * float(p.detach().double().abs().sum())
                    for p in params]
        got = self.gather_objects(sums)
        return all(g == got[0] for g in got)


_CONTEXT: DistContext | None = None


def context() -> DistContext:
    """The current :class:`DistContext`: the one :func:`init_from_env` made, else one read
    from an already initialised ``torch.distributed`` (a user's own launcher), else world
    size 1."""
    if _CONTEXT is not None:
        return _CONTEXT
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return DistContext(rank=dist.get_rank(), world_size=dist.get_world_size(),
                           local_rank=int(os.environ.get("LOCAL_RANK", "0")), backend=dist.get_backend())
    return DistContext()


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"environment variable {name}={raw!r}: expected an integer (set by torchrun)") from None


class _QuietFollowers(logging.Filter):
    """Drop the ``freqd`` logger's INFO records on ranks other than 0."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING


def init_from_env(device: str = "cpu", timeout_s: float | None = None) -> DistContext:
    """Start the process group from torchrun's environment, once per process.

    ``device`` is the configured ``train.device``: CUDA devices use ``nccl`` and pin this
    process to ``cuda:LOCAL_RANK``; otherwise ``gloo``. ``FREQD_DIST_BACKEND`` overrides
    the backend, ``FREQD_DIST_TIMEOUT`` (seconds, default 3600) bounds how long ranks wait
    for rank 0's evaluation. Returns the context (world size 1 when not launched by torchrun).
    """
    global _CONTEXT
    if _CONTEXT is not None:
        return _CONTEXT
    world = _env_int("WORLD_SIZE", 1)
    if world <= 1:
        _CONTEXT = context()
        return _CONTEXT
    import torch.distributed as dist

    rank, local = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    if not dist.is_available():
        raise ConfigError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    cuda = torch.device(device).type == "cuda"
    if cuda:
        if not torch.cuda.is_available():
            raise ConfigError(f"option 'train.device': {device!r} requested but CUDA is not available")
        if local >= torch.cuda.device_count():
            raise ConfigError(f"LOCAL_RANK={local} but this machine has {torch.cuda.device_count()} GPU(s): "
                              "use --nproc_per_node <= the number of GPUs")
        torch.cuda.set_device(local)
    backend = os.environ.get("FREQD_DIST_BACKEND") or ("nccl" if cuda else "gloo")
    timeout = float(timeout_s if timeout_s is not None else os.environ.get("FREQD_DIST_TIMEOUT", "3600"))
    if not dist.is_initialized():
        kw = {"device_id": torch.device("cuda", local)} if backend == "nccl" else {}
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout), **kw)
    _CONTEXT = DistContext(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local,
                           backend=dist.get_backend())
    if rank != 0:
        log.addFilter(_QuietFollowers())
    atexit.register(shutdown)
    return _CONTEXT


def shutdown() -> None:
    """Destroy the process group started by :func:`init_from_env` (if any)."""
    global _CONTEXT
    import torch.distributed as dist

    if _CONTEXT is not None and _CONTEXT.active and dist.is_initialized():
        dist.destroy_process_group()
    _CONTEXT = None


def _allreduce_sum_hook(state, bucket):
    """DDP communication hook: the bucket's gradients summed over the ranks (DDP's default
    hook divides by the world size; freqd's losses are sums, so the sum is the one-process
    gradient of the global batch)."""
    import torch.distributed as dist

    fut = dist.all_reduce(bucket.buffer(), async_op=True).get_future()
    return fut.then(lambda f: f.value()[0])


def wrap_ddp(module: torch.nn.Module, ctx: DistContext, device: torch.device,
             skip: Sequence[torch.Tensor] = ()) -> torch.nn.Module:
    """``module`` in ``DistributedDataParallel`` with summed gradients (world size 1, or no
    dense trainable parameter: ``module`` itself). Parameters in ``skip`` (sparse embedding tables) and all buffers are
    left out of DDP's broadcasts and reductions. ``find_unused_parameters``: a rank's slice of
    a batch may leave a distiller's part unused (it then contributes zeros)."""
    if not ctx.active:
        return module
    from torch.nn.parallel import DistributedDataParallel as DDP

    skip_ids = {id(p) for p in skip}
    if not any(p.requires_grad and id(p) not in skip_ids for p in module.parameters()):
        return module  # nothing dense to reduce (e.g. sparse MF alone)
    ignore = [n for n, p in module.named_parameters() if id(p) in skip_ids]
    ignore += [n for n, _ in module.named_buffers()]
    if ignore:
        DDP._set_params_and_buffers_to_ignore_for_model(module, ignore)
    ddp = DDP(module, device_ids=[device.index] if device.type == "cuda" else None,
              broadcast_buffers=False, find_unused_parameters=True)
    ddp.register_comm_hook(None, _allreduce_sum_hook)
    return ddp


class SparseGradientReducer:
    """Sum the sparse (COO) gradients of ``params`` over the ranks after ``backward()``: their
    rows and values are ``all_gather``-ed and summed, so the result stays sparse for
    ``SparseAdam``. A parameter without a gradient on this rank contributes nothing."""

    def __init__(self, ctx: DistContext, params: Sequence[torch.Tensor]):
        self.ctx = ctx
        self.params = [p for p in dict.fromkeys(params) if p.requires_grad]

    def __call__(self) -> None:
        if not self.ctx.active:
            return
        for p in self.params:
            p.grad = self._sum_sparse(p)

    def _sum_sparse(self, p: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        g = p.grad
        if g is None:
            rows = torch.empty(0, dtype=torch.long, device=p.device)
            vals = p.new_zeros((0,) + tuple(p.shape[1:]))
        else:
            if not g.is_sparse:
                g = g.to_sparse(1)
            g = g.coalesce()
            rows, vals = g.indices()[0], g.values()
        n = torch.tensor([rows.numel()], dtype=torch.long, device=self.ctx._comm_device())
        sizes = [torch.zeros_like(n) for _ in range(self.ctx.world_size)]
        dist.all_gather(sizes, n)
        sizes_l = [int(s) for s in sizes]
        m = max(sizes_l)
        dev = self.ctx._comm_device()
        pr = torch.zeros(m, dtype=torch.long, device=dev)
        pv = torch.zeros((m,) + tuple(vals.shape[1:]), dtype=vals.dtype, device=dev)
        pr[:rows.numel()] = rows.to(dev)
        pv[:rows.numel()] = vals.to(dev)
        all_r = [torch.empty_like(pr) for _ in sizes_l]
        all_v = [torch.empty_like(pv) for _ in sizes_l]
        dist.all_gather(all_r, pr)
        dist.all_gather(all_v, pv)
        r = torch.cat([x[:k] for x, k in zip(all_r, sizes_l)]).to(p.device)
        v = torch.cat([x[:k] for x, k in zip(all_v, sizes_l)]).to(p.device)
        return torch.sparse_coo_tensor(r[None], v, tuple(p.shape), check_invariants=False).coalesce()
