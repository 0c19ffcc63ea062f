"""Training-loop settings (the same for teachers, students from scratch and distilled students)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional, Tuple

from ..config import check


@dataclass
class TrainConfig:
    epochs: int = 1000  #: maximum number of epochs
    batch_size: int = 2048  #: training triples per step
    lr: float = 1e-3  #: Adam learning rate
    weight_decay: float = 1e-3  #: Adam weight decay on all trainable parameters
    optimizer: Literal["adam", "sparse_adam"] = "adam"
    #: "sparse_adam": lazy Adam on sparse embedding gradients (MF only; no weight decay)
    eval_every: int = 1  #: evaluate on validation every N epochs
    patience: int = 30  #: stop after this many evaluations without improvement
    monitor: str = "ndcg@10"  #: validation metric for early stopping / best checkpoint
    ks: Tuple[int, ...] = (10, 20, 50)  #: cut-offs of every reported metric
    protocol: Literal["standard", "paper"] = "standard"  #: masking protocol (PROTOCOL.md)
    seed: int = 0  #: seeds torch, numpy and the negative sampler
    device: str = "cpu"  #: "cpu", "cuda" or "cuda:N"
    eval_chunk: Optional[int] = None  #: users per evaluation chunk (None = from a memory budget)
    save_every: int = 0  #: also keep trajectory/epoch_XXXX.pt every N epochs (0 = off; HetComp)
    threads: Optional[int] = None  #: torch intra-op threads (None = torch default)
    progress: bool = True  #: show a progress bar
    time_limit: Optional[float] = None  #: stop after this many seconds of training + evaluation + checkpoint writes (None = no limit)
    checkpoint_interval: Optional[float] = None
    #: minimum seconds between checkpoint writes (0 = after every evaluation). None = auto:
    #: after every evaluation, unless one write takes over 0.5 s (a large model); then at
    #: most one write per 10 write-durations, so that writes stay under ~10% of the run.
    #: The state is always written when the run stops.
    loggers: Tuple[Literal["tensorboard", "mlflow"], ...] = ()
    #: experiment trackers that also get every epoch's numbers (freqd.train.loggers;
    #: e.g. train.loggers=tensorboard,mlflow). Changes no number a run computes.
    keep_freed_memory: bool = True
    #: CPU: keep freed memory in the process heap instead of returning every large block to
    #: the system (glibc mallopt; measured: FreqD step 1.6x, BPR-MF 400 step 2.2x faster, peak
    #: RSS 7-30% higher; see freqd.utils.memory). Changes no number a run computes.
    flush_denormal: bool = True
    #: CPU: flush subnormal floats (|x| < 1.2e-38 in float32) to zero during training
    #: (torch.set_flush_denormal). Adam's first moments of projector weights that get
    #: (almost) no gradient decay into that range, and CPU arithmetic on subnormal operands
    #: is slow: an fd step with a 2000-d LightGCN teacher went from 1.2 s to 23 s per batch
    #: at epoch 32 (docs/RESULTS.md, session 12). Changes only values below 1.2e-38.
    precision: Literal["fp32", "bf16"] = "fp32"
    #: "bf16": the training step's forward pass runs under torch.autocast with bfloat16,
    #: so its dense matrix products (and theirs in the backward pass) run in bfloat16 with
    #: float32 accumulation; parameters, gradients, Adam's state, sparse (graph) products,
    #: the negative sampling and every evaluation stay float32. Worth it where large dense
    #: products dominate the step (feature KD into a 2000-d teacher space: the projectors'
    #: d_T x d_T layers) on hardware with fast bfloat16 (GPUs from Ampere on, CPUs with AMX
    #: or AVX512-BF16); it changes the numbers (bfloat16 keeps 8 bits of mantissa), so it
    #: is part of a run's identity (benchmarks/bench_freqd.py --precision bf16 measures it).

    def __post_init__(self):
        check(self.epochs >= 1, "train.epochs", f"must be >= 1, got {self.epochs}")
        check(self.batch_size >= 1, "train.batch_size", f"must be >= 1, got {self.batch_size}")
        check(self.lr > 0, "train.lr", f"must be > 0, got {self.lr}")
        check(self.weight_decay >= 0, "train.weight_decay", f"must be >= 0, got {self.weight_decay}")
        check(self.eval_every >= 1, "train.eval_every", f"must be >= 1, got {self.eval_every}")
        check(self.patience >= 1, "train.patience", f"must be >= 1, got {self.patience}")
        check(len(self.ks) > 0 and all(k >= 1 for k in self.ks), "train.ks",
              f"must be positive integers, got {self.ks}")
        self.ks = tuple(sorted(set(int(k) for k in self.ks)))
        name, _, k = self.monitor.partition("@")
        check(name in ("recall", "ndcg", "precision", "hitrate", "mrr") and k.isdigit(),
              "train.monitor", f"expected e.g. 'ndcg@10', got {self.monitor!r}")
        check(int(k) in self.ks, "train.monitor",
              f"cut-off {k} of {self.monitor!r} is not in train.ks={list(self.ks)}")
        check(self.save_every >= 0, "train.save_every", f"must be >= 0, got {self.save_every}")
        check(self.device == "cpu" or self.device.startswith("cuda") or self.device == "mps",
              "train.device", f"expected cpu, cuda or cuda:N, got {self.device!r}")
        check(self.time_limit is None or self.time_limit > 0, "train.time_limit", "must be > 0 seconds")
        check(self.threads is None or self.threads >= 1, "train.threads", "must be >= 1")
        check(self.checkpoint_interval is None or self.checkpoint_interval >= 0, "train.checkpoint_interval",
              "must be >= 0 seconds (or null for auto)")
        check(self.precision in ("fp32", "bf16"), "train.precision",
              f"expected fp32 or bf16, got {self.precision!r}")
        if self.optimizer == "sparse_adam":
            check(self.weight_decay == 0, "train.optimizer",
                  "sparse_adam applies no weight decay: set train.weight_decay=0 explicitly")
