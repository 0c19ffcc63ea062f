"""Floating-point mode for CPU training: subnormal numbers flushed to zero.

Adam keeps a first-moment estimate per weight that decays by beta1 = 0.9 per step where the
weight gets (almost) no gradient, e.g. a projector's weights behind a hidden unit that ReLU
keeps at zero; within a few hundred steps such values fall below float32's smallest normal
number (1.18e-38) and become subnormal, and so do weights updated from them. x86 CPUs handle
subnormal operands in microcode, tens of times slower than normal arithmetic, so one
matrix product over a weight with a small fraction of subnormal entries slows a whole
training step: measured here, an fd step with a 2000-d LightGCN teacher went from 1.2 s
to 23 s per batch at epoch 32, with 0.3-0.7% of the output layer's weights subnormal
(``benchmarks/bench_denormal.py``, docs/RESULTS.md session 12). Flushing them to zero
(FTZ/DAZ, ``torch.set_flush_denormal``) changes only values below 1.18e-38.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch


def flush_denormal_enabled() -> bool:
    """Whether subnormal float32 numbers are flushed to zero on this thread now."""
    x = torch.tensor([1e-39], dtype=torch.float32)  # subnormal
    return bool((x * 1.0).item() == 0.0)


@contextmanager
def flush_denormal(enabled: bool = True) -> Iterator[bool]:
    """Inside the block, flush subnormal numbers to zero (``enabled``, where the CPU supports
    it) or keep them (``enabled=False``); restore the previous mode afterwards. Yields
    whether the mode is on. The mode is per thread: it covers the calling thread and the
    intra-op threads torch starts after it (the command line sets it before any torch work;
    with ``train.threads=1`` the calling thread does all of a run's arithmetic)."""
    before = flush_denormal_enabled()
    if enabled == before:
        yield before
        return
    supported = torch.set_flush_denormal(enabled)
    try:
        yield bool(enabled and supported)
    finally:
        torch.set_flush_denormal(before)


def sparse_mm(a, y):
    """``torch.sparse.mm(a, y)`` for a float32 sparse ``a``, in float32 whatever autocast
    is doing: under ``train.precision=bf16`` autocast would cast both operands to bfloat16,
    which torch's sparse CSR/COO kernels do not take on the CPU. Half-precision ``y`` is
    promoted; the graph products are a small share of a step, so they stay in float32."""
    import torch

    if y.dtype in (torch.bfloat16, torch.float16):
        y = y.float()
    dev = y.device.type
    if torch.is_autocast_enabled(dev):
        with torch.autocast(dev, enabled=False):
            return torch.sparse.mm(a, y)
    return torch.sparse.mm(a, y)


def sparse_operand(y):
    """``y`` promoted to float32 if it is half precision (the dense operand of a sparse
    product; see :func:`sparse_mm`)."""
    import torch

    return y.float() if y.dtype in (torch.bfloat16, torch.float16) else y
