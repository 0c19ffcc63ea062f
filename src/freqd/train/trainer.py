"""The training loop: one loop for teachers, students from scratch and distilled students.

Per epoch: shuffle the training pairs, sample uniform negatives (excluding positives),
step Adam on ``base loss + weight * KD loss``; evaluate on validation every
``eval_every`` epochs; keep the best checkpoint by the monitored metric; stop after
``patience`` evaluations without improvement; at the end evaluate the best model on test.

Everything needed to continue is checkpointed atomically at every evaluation
(``checkpoint.pt``: model, distiller, optimizer, RNG and sampler states, history), so an
interrupted run resumed with ``resume=True`` ends with exactly the metrics of an
uninterrupted one (CPU).
"""
from __future__ import annotations

import logging
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional

import numpy as np
import torch

from ..data.dataset import Dataset
from ..errors import CheckpointError, FreqdError
from ..models.base import Recommender
from ..utils.atomic import torch_save, write_json, write_text
from ..utils.numerics import flush_denormal
from .config import TrainConfig
from .distributed import SparseGradientReducer, rank_seed, wrap_ddp
from .distributed import context as dist_context

log = logging.getLogger("freqd")

CKPT = "checkpoint.pt"
BEST = "best.pt"


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise FreqdError(f"option 'train.device': {name!r} requested but CUDA is not available")
    return torch.device(name)


@dataclass
class History:
    rows: List[dict] = field(default_factory=list)

    def csv(self) -> str:
        if not self.rows:
            return ""
        keys: List[str] = []
        for r in self.rows:
            keys += [k for k in r if k not in keys]
        lines = [",".join(keys)]
        for r in self.rows:
            lines.append(",".join("" if r.get(k) is None else f"{r[k]:.6g}" if isinstance(r.get(k), float) else str(r[k]) for k in keys))
        return "\n".join(lines) + "\n"


class _Objective(torch.nn.Module):
    """One training step's loss: the model's own loss + ``kd_weight`` x the distiller's.

    A module so that DistributedDataParallel can wrap it (its gradient hooks are armed by
    ``forward()``). The model and the distiller are its submodules; the frozen teacher is
    not (it lives outside the distiller's module tree)."""

    def __init__(self, model: Recommender, distiller, kd_weight: float):
        super().__init__()
        self.model = model
        self.distiller = distiller
        self.kd_weight = float(kd_weight)

    def forward(self, batch: Dict[str, torch.Tensor]):
        reps = self.model.propagate()
        out = self.model.loss(batch, reps)
        total = out["loss"]
        parts = {k: v.detach().float().reshape(()) for k, v in out.items() if k != "loss"}
        if self.distiller is not None:
            kd = self.distiller.loss(batch, reps)
            total = total + self.kd_weight * kd["loss"]
            parts["kd"] = kd["loss"].detach().float().reshape(())
            parts.update({f"kd_{k}": v.detach().float() for k, v in kd.items()
                          if k != "loss" and torch.is_tensor(v) and v.dim() == 0})
        return total, parts


class Trainer:
    """Fit ``model`` on ``dataset`` (optionally with a ``distiller``), writing to ``out_dir``."""

    def __init__(
        self,
        model: Recommender,
        dataset: Dataset,
        cfg: TrainConfig,
        out_dir: Optional[Path] = None,
        distiller=None,
        kd_weight: float = 0.0,
        extra_metrics: Optional[dict] = None,
        on_epoch_end: Optional[Callable[[int, dict], None]] = None,
        run_config: Optional[dict] = None,
    ):
        self.cfg = cfg
        self.dataset = dataset
        self.dist = dist_context()  # world size 1 unless launched by torchrun (distributed.py)
        self.device = self.dist.device(resolve_device(cfg.device))
        if cfg.keep_freed_memory and self.device.type == "cpu":
            from ..utils.memory import keep_freed_memory

            keep_freed_memory()
        self.model = model.to(self.device)
        self.distiller = distiller
        self.kd_weight = float(kd_weight)
        if distiller is not None:
            distiller.to(self.device)
            distiller.teacher.to(self.device)
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.extra_metrics = extra_metrics or {}
        self.on_epoch_end = on_epoch_end
        self.run_config = run_config  # the resolved config, for the trackers' parameters
        # trackers (train.loggers): rank 0 of a run with a directory; a missing package is
        # refused here, before any training
        from .loggers import build_loggers

        self.loggers = build_loggers(cfg.loggers) if cfg.loggers and self.out_dir is not None and self.dist.is_main else []
        params = list(self.model.parameters())
        if distiller is not None:
            params += [p for p in distiller.parameters() if p.requires_grad]
        if cfg.optimizer == "sparse_adam":
            dense = [p for p in params if not getattr(self.model, "sparse_grad", False) or p not in set(self.model.parameters())]
            self.optimizer = torch.optim.SparseAdam(params, lr=cfg.lr) if not dense else _MixedAdam(self.model, params, cfg.lr)
        else:
            self.optimizer = _adam(params, cfg.lr, cfg.weight_decay)
        from ..data.sampling import TrainSampler

        if dataset.train.nnz == 0:
            raise FreqdError(f"{dataset.source or dataset.name}: no training interactions")
        self.gen = torch.Generator().manual_seed(cfg.seed)
        self.sampler = TrainSampler(dataset.train, batch_size=cfg.batch_size, n_neg=model.n_neg, generator=self.gen,
                                    rank=self.dist.rank, world_size=self.dist.world_size)
        # the objective (student loss + kd_weight x KD loss) as one module: under torchrun it is
        # wrapped in DistributedDataParallel, whose hooks sum the dense gradients over the
        # ranks during backward(); sparse embedding gradients are summed after it
        self.objective = _Objective(self.model, distiller, self.kd_weight)
        self._forward: Callable = self.objective
        self._sparse_reducer: SparseGradientReducer | None = None
        self._params = [p for p in dict.fromkeys(params) if p.requires_grad]
        self._peer_rng: list | None = None  # every rank's RNG states, gathered at evaluations
        if self.dist.active:  # replicas start equal
            self.dist.broadcast_parameters(self._params)
            sparse = list(self.model.parameters()) if getattr(self.model, "sparse_grad", False) else []
            self._forward = wrap_ddp(self.objective, self.dist, self.device, skip=sparse)
            if sparse:
                self._sparse_reducer = SparseGradientReducer(self.dist, sparse)
            how = ", ".join(x for x in ("DistributedDataParallel" if self._forward is not self.objective else "",
                                         "sparse all-gather" if sparse else "") if x)
            log.info("data parallel: %d processes (%s), global batch %d (%s per rank); gradients: %s",
                     self.dist.world_size, self.dist.backend, cfg.batch_size,
                     f"~{cfg.batch_size // self.dist.world_size}", how)
        self.epoch = 0
        self.best: Optional[dict] = None  # {"epoch", "valid"}
        self.bad_evals = 0
        self.history = History()
        self.train_seconds: List[float] = []
        self.eval_seconds: List[float] = []
        self.stopped_early = False
        self.stopped_by_time = False
        self.io_seconds = 0.0  # checkpoint writes (counted by train.time_limit)
        self._last_write = time.perf_counter()
        self._write_cost = 0.0  # seconds the last checkpoint write took
        self._best_payload: Optional[dict] = None  # best model not yet written to best.pt
        self._unsaved = False  # state changed since the last checkpoint write

    # -- evaluation ---------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, split: str) -> Dict[str, float]:
        from ..eval.evaluator import evaluate

        self.model.eval()
        reps = self.model.propagate()
        res = evaluate(
            lambda users: self.model.score(users, reps),
            self.dataset,
            split=split,
            protocol=self.cfg.protocol,
            ks=self.cfg.ks,
            chunk_size=self.cfg.eval_chunk,
            device=self.device,
        )
        self.model.train()
        return res

    # -- checkpoints -----------------------------------------------------------------------------
    def _state(self) -> dict:
        st = {
            "format": 1,
            "epoch": self.epoch,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "best": self.best,
            "bad_evals": self.bad_evals,
            "history": self.history.rows,
            "train_seconds": self.train_seconds,
            "eval_seconds": self.eval_seconds,
            "io_seconds": self.io_seconds,
            "rng": {
                "torch": torch.get_rng_state(),
                "numpy": _np_state(),
                "python": repr(random.getstate()),
                "sampler": self.gen.get_state(),
            },
            "fingerprint": self.dataset.fingerprint(),
        }
        if torch.cuda.is_available() and self.device.type == "cuda":
            st["rng"]["cuda"] = torch.cuda.get_rng_state(self.device)
        if self.distiller is not None:
            st["distiller"] = self.distiller.state_dict()
            st["distiller_extra"] = self.distiller.extra_state()
        if self._peer_rng is not None:
            st["ranks"] = self._peer_rng
        return st

    def _rank_rng(self) -> dict:
        """This rank's global RNG states (+ distiller extra state), for a distributed checkpoint."""
        st = {"torch": torch.get_rng_state(), "numpy": _np_state(), "python": repr(random.getstate())}
        if torch.cuda.is_available() and self.device.type == "cuda":
            st["cuda"] = torch.cuda.get_rng_state(self.device)
        if self.distiller is not None:
            st["distiller_extra"] = self.distiller.extra_state()
        return st

    def _load_rank_rng(self, st: dict) -> None:
        """Ranks > 0: restore their own RNG states; the sampler's state is shared."""
        ranks = st.get("ranks")
        if not ranks or len(ranks) != self.dist.world_size:
            log.warning("checkpoint written by %s process(es), resumed by %d: rank %d reseeds its RNGs "
                        "(continues, but not bit for bit)", len(ranks) if ranks else 1, self.dist.world_size, self.dist.rank)
            seed_everything(rank_seed(self.cfg.seed + self.epoch, self.dist.rank))
            return
        mine = ranks[self.dist.rank]
        torch.set_rng_state(mine["torch"])
        _np_set_state(mine["numpy"])
        random.setstate(eval(mine["python"], {"__builtins__": {}}))  # tuple of ints only
        if "cuda" in mine and self.device.type == "cuda":
            torch.cuda.set_rng_state(mine["cuda"], self.device)
        if self.distiller is not None and "distiller_extra" in mine:
            self.distiller.load_extra_state(mine["distiller_extra"])

    def save_checkpoint(self, force: bool = True) -> bool:
        """Write best.pt (if the best model changed) and checkpoint.pt, atomically each.

        ``force=False`` applies ``train.checkpoint_interval`` (see its doc): the write is
        skipped if it would come too soon after the last one; a later write (at the latest
        when the run stops) saves the state. Returns whether it wrote."""
        if self.out_dir is None:
            return False
        now = time.perf_counter()
        iv = self.cfg.checkpoint_interval
        if iv is None:
            iv = 10.0 * self._write_cost if self._write_cost > 0.5 else 0.0
        if not force and now - self._last_write < iv:
            self._unsaved = True
            return False
        self._write_best()
        t1 = time.perf_counter()
        torch_save(self._state(), self.out_dir / CKPT)
        done = time.perf_counter()
        self.io_seconds += done - t1
        self._write_cost = done - now
        self._last_write = done
        self._unsaved = False
        return True

    def _write_best(self) -> None:
        if self._best_payload is not None and self.out_dir is not None:
            t0 = time.perf_counter()
            torch_save(self._best_payload, self.out_dir / BEST)
            self._best_payload = None
            self.io_seconds += time.perf_counter() - t0

    def load_checkpoint(self, path: Path) -> None:
        st = load_checkpoint_file(path)
        if st.get("fingerprint") != self.dataset.fingerprint():
            raise CheckpointError(f"{path}: checkpoint was trained on different data (dataset fingerprint mismatch)")
        try:
            self.model.load_state_dict(st["model"])
            self.optimizer.load_state_dict(st["optimizer"])
            if self.distiller is not None:
                self.distiller.load_state_dict(st["distiller"])
                self.distiller.load_extra_state(st.get("distiller_extra", {}))
        except (RuntimeError, KeyError, ValueError) as e:
            raise CheckpointError(f"{path}: does not match this model/config ({str(e).splitlines()[0]})") from None
        self.epoch = int(st["epoch"])
        self.best = st["best"]
        self.bad_evals = int(st["bad_evals"])
        self.history.rows = list(st["history"])
        self.train_seconds = list(st["train_seconds"])
        self.eval_seconds = list(st["eval_seconds"])
        self.io_seconds = float(st.get("io_seconds", 0.0))
        rng = st["rng"]
        torch.set_rng_state(rng["torch"])
        _np_set_state(rng["numpy"])
        random.setstate(eval(rng["python"], {"__builtins__": {}}))  # tuple of ints only
        self.gen.set_state(rng["sampler"])
        if "cuda" in rng and self.device.type == "cuda":
            torch.cuda.set_rng_state(rng["cuda"], self.device)
        if self.dist.rank > 0:
            self._load_rank_rng(st)

    # -- the loop ---------------------------------------------------------------------------------
    def fit(self, resume: bool = False) -> dict:
        cfg = self.cfg
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        if resume and self.out_dir is not None and (self.out_dir / CKPT).exists():
            self.load_checkpoint(self.out_dir / CKPT)
            log.info("resumed from %s at epoch %d", self.out_dir / CKPT, self.epoch)
        else:
            seed_everything(rank_seed(cfg.seed, self.dist.rank))  # = cfg.seed on rank 0
            self.gen.manual_seed(cfg.seed)  # the sampler's stream is the same on every rank
        self.model.train()
        if self.distiller is not None:
            self.distiller.train()
        for lg in self.loggers:
            lg.start(self.out_dir, self.run_config, self.epoch)
        flush = cfg.flush_denormal and self.device.type == "cpu"
        try:
            with flush_denormal(flush):
                metrics = self._fit_epochs()
        except BaseException:
            self._close_loggers(failed=True)
            raise
        self._close_loggers()
        return metrics

    def _close_loggers(self, failed: bool = False) -> None:
        for lg in self.loggers:
            try:
                lg.close(failed=failed)
            except Exception as e:  # a tracker failing to close must not hide the run's outcome
                log.warning("logger %s: close failed: %s", lg.name, e)

    def _log_epoch(self, row: dict) -> None:
        for lg in self.loggers:
            lg.log_epoch(row["epoch"], row)

    def _fit_epochs(self) -> dict:
        cfg = self.cfg
        n_batches = self.sampler.n_batches
        while self.epoch < cfg.epochs and not self._should_stop():
            epoch = self.epoch + 1
            if self.distiller is not None:
                self.distiller.on_epoch_start(epoch)
            t0 = time.perf_counter()
            sums: Dict[str, float] = {}
            bar = _progress(n_batches, f"epoch {epoch}", cfg.progress and self.dist.is_main)
            for batch in self.sampler.epoch():
                batch = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
                parts = self.step(batch)  # 0-dim tensors: summed on the device, read once per epoch
                for k, v in parts.items():
                    v = v.double() if v.device.type != "mps" else v  # (MPS has no float64)
                    sums[k] = sums[k] + v if k in sums else v
                if bar is not None:
                    bar.update(1)
                    if bar.n % 10 == 0 or bar.n == n_batches:  # reading the loss waits for the device
                        el = time.perf_counter() - t0
                        bar.set_postfix(loss=f"{float(parts['loss']):.4g}",
                                        it_s=f"{bar.n * cfg.batch_size / max(el, 1e-9):.0f}/s", refresh=False)
            if bar is not None:
                bar.close()
            sums = {k: float(v) for k, v in sums.items()}
            sums = self.dist.sum_floats(sums)  # batch sums over the ranks = the global batch's
            dt = time.perf_counter() - t0
            self.train_seconds.append(dt)
            self.epoch = epoch
            row = {"epoch": epoch, "train_seconds": dt}
            row.update({k: v / n_batches for k, v in sums.items()})
            if not math.isfinite(row["loss"]):
                raise FreqdError(f"training diverged at epoch {epoch}: loss is {row['loss']} (lower train.lr or the method weight)")
            evaluate_now = epoch % cfg.eval_every == 0 or epoch == cfg.epochs
            if evaluate_now and self.dist.active:
                if not self.dist.replicas_agree(self._params):
                    raise FreqdError(f"distributed: the replicas' parameters differ at epoch {epoch}")
                self._peer_rng = self.dist.gather_objects(self._rank_rng())
            if evaluate_now and self.dist.is_main:  # rank 0 evaluates, checkpoints and logs
                t1 = time.perf_counter()
                valid = self.evaluate("valid")
                self.eval_seconds.append(time.perf_counter() - t1)
                row.update({f"valid_{k}": v for k, v in valid.items() if "@" in k})
                self._update_best(epoch, valid)
                if self.distiller is not None and hasattr(self.distiller, "diagnostics"):
                    row.update(self.distiller.diagnostics())
                if self.on_epoch_end is not None:
                    self.on_epoch_end(epoch, row)
                self.history.rows.append(row)
                self._log_epoch(row)
                self.save_checkpoint(force=False)
                self._write_history()
                log.info("epoch %d  loss %.4f  valid %s %.5f  best %.5f@%d  (%.1fs train, %.1fs eval)",
                         epoch, row["loss"], cfg.monitor, valid.get(cfg.monitor, float("nan")),
                         self.best["valid"][cfg.monitor], self.best["epoch"], dt, self.eval_seconds[-1])
            else:
                self.history.rows.append(row)
                self._log_epoch(row)  # (no loggers on ranks > 0)
                log.info("epoch %d  loss %.4f  (%.1fs)", epoch, row["loss"], dt)
            if self.dist.active:  # rank 0's early-stopping counter and clock: every rank stops together
                self.bad_evals, self.train_seconds, self.eval_seconds, self.io_seconds = self.dist.broadcast_object(
                    (self.bad_evals, self.train_seconds, self.eval_seconds, self.io_seconds))
        if self._unsaved and self.dist.is_main:  # throttled writes: the state at the stop is saved
            self.save_checkpoint()
        return self.finish()

    def _should_stop(self) -> bool:
        spent = sum(self.train_seconds) + sum(self.eval_seconds) + self.io_seconds
        if self.cfg.time_limit is not None and spent >= self.cfg.time_limit:
            self.stopped_by_time = True
            return True
        if self.bad_evals >= self.cfg.patience:
            self.stopped_early = True
            return True
        return False

    def step(self, batch: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """One optimisation step; returns the loss parts as detached 0-dim tensors (on the
        model's device: no host synchronisation per step)."""
        if self.cfg.precision == "bf16":
            with torch.autocast(self.device.type, dtype=torch.bfloat16):
                total, parts = self._forward(batch)
            total = total.float()
        else:
            total, parts = self._forward(batch)
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        if self._sparse_reducer is not None:
            self._sparse_reducer()
        self.optimizer.step()
        parts["loss"] = total.detach().float().reshape(())
        return parts

    def _update_best(self, epoch: int, valid: dict) -> None:
        m = self.cfg.monitor
        score = valid.get(m, float("-inf"))
        if self.best is None or score > self.best["valid"][m]:
            self.best = {"epoch": epoch, "valid": valid}
            self.bad_evals = 0
            if self.out_dir is not None:
                best = {"model": self.model.state_dict(), "epoch": epoch,
                        "fingerprint": self.dataset.fingerprint()}
                if self.distiller is not None:  # projectors at the best epoch (for `freqd spectrum`)
                    best["distiller"] = self.distiller.state_dict()
                # written with the next checkpoint (save_checkpoint): a copy until then
                self._best_payload = _detached_copy(best)
            else:
                self._best_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        else:
            self.bad_evals += 1
        if self.cfg.save_every and epoch % self.cfg.save_every == 0 and self.out_dir is not None:
            torch_save({"model": self.model.state_dict(), "epoch": epoch},
                       self.out_dir / "trajectory" / f"epoch_{epoch:04d}.pt")

    def _write_history(self) -> None:
        if self.out_dir is not None:
            write_text(self.out_dir / "history.csv", self.history.csv())

    def _write_user_values(self, metrics: dict) -> None:
        """The best model's per-user test metrics (``users_test_<protocol>.npz``, see
        :mod:`freqd.eval.user_values`), so that per-user tests need no checkpoint."""
        from ..eval.evaluator import Evaluator
        from ..eval.user_values import KEPT_METRICS, run_tag, save_user_values

        ev = Evaluator(self.dataset, protocol=self.cfg.protocol, ks=self.cfg.ks, metrics=KEPT_METRICS,
                       chunk_size=self.cfg.eval_chunk, device=self.device)
        self.model.eval()
        with torch.no_grad():
            reps = self.model.propagate()
            users, values, keys = ev.per_user(lambda u: self.model.score(u, reps), "test")
        self.model.train()
        save_user_values(self.out_dir, "test", self.cfg.protocol, users.numpy(), values.numpy(), keys,
                         run_tag(metrics, self.dataset.fingerprint()))

    def finish(self) -> dict:
        """Load the best model, evaluate it on test, write metrics.json."""
        if not self.dist.is_main:  # rank 0 does this; the others get its metrics
            return self.dist.broadcast_object(None)
        if self.best is None:  # no evaluation happened (e.g. epochs < eval_every): evaluate now
            self._update_best(self.epoch, self.evaluate("valid"))
        if self.out_dir is not None:
            self._write_best()
            st = load_checkpoint_file(self.out_dir / BEST)
            self.model.load_state_dict(st["model"])
        else:
            self.model.load_state_dict(self._best_state)
        t1 = time.perf_counter()
        test = self.evaluate("test")
        test_eval = time.perf_counter() - t1
        evals = self.eval_seconds or [test_eval]
        metrics = {
            "protocol": self.cfg.protocol,
            "best_epoch": self.best["epoch"],
            "epochs_run": self.epoch,
            "stopped_early": self.stopped_early,
            "stopped_by_time_limit": self.stopped_by_time,
            "seconds_per_epoch": float(np.mean(self.train_seconds)) if self.train_seconds else 0.0,
            "eval_seconds": float(np.mean(evals)),
            "checkpoint_seconds": round(self.io_seconds, 3),
            "valid": {k: v for k, v in self.best["valid"].items()},
            "test": test,
        }
        metrics.update(self.extra_metrics)
        if self.out_dir is not None:
            write_json(self.out_dir / "metrics.json", metrics)
            self._write_user_values(metrics)
            for lg in self.loggers:
                lg.finish(metrics)
            if self.cfg.save_every:
                torch_save({"model": self.model.state_dict(), "epoch": self.best["epoch"]},
                           self.out_dir / "trajectory" / "best.pt")
        log.info("best epoch %d: test %s", self.best["epoch"],
                 "  ".join(f"{k} {v:.5f}" for k, v in test.items() if k.split("@")[0] in ("recall", "ndcg") and isinstance(v, float)))
        return self.dist.broadcast_object(metrics)


def _detached_copy(obj):
    """A deep copy of a (nested) state dict whose tensors are detached clones."""
    if torch.is_tensor(obj):
        return obj.detach().clone()
    if isinstance(obj, dict):
        return type(obj)((k, _detached_copy(v)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return type(obj)(_detached_copy(v) for v in obj)
    return obj


def load_checkpoint_file(path: Path) -> dict:
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        st = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated / corrupt / not a torch file
        detail = (str(e).splitlines() or [""])[0].split(". ")[0][:120]
        raise CheckpointError(f"{path}: not a valid checkpoint, truncated or corrupt ({type(e).__name__}: {detail})") from None
    if not isinstance(st, dict) or "model" not in st:
        raise CheckpointError(f"{path}: not a freqd checkpoint (no model state)")
    return st


def _np_state():
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos), "has_gauss": int(has_gauss), "cached": float(cached)}


def _np_set_state(st) -> None:
    np.random.set_state(("MT19937", st["keys"].numpy().astype(np.uint32), st["pos"], st["has_gauss"], st["cached"]))


def _progress(total: int, desc: str, enabled: bool):
    if not enabled or os.environ.get("FREQD_NO_PROGRESS"):
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, leave=False, unit="batch", mininterval=0.5, dynamic_ncols=True)


class _MixedAdam(torch.optim.Optimizer):
    """SparseAdam for the sparse embedding tables + Adam for every other parameter."""

    def __init__(self, model, params, lr):
        sparse = [p for p in model.parameters()]
        ids = {id(p) for p in sparse}
        dense = [p for p in params if id(p) not in ids]
        self.sparse = torch.optim.SparseAdam(sparse, lr=lr)
        self.dense = torch.optim.Adam(dense, lr=lr)
        super().__init__(params, {"lr": lr})

    def step(self, closure=None):
        self.sparse.step()
        self.dense.step()

    def zero_grad(self, set_to_none: bool = True):
        self.sparse.zero_grad(set_to_none)
        self.dense.zero_grad(set_to_none)

    def state_dict(self):
        return {"sparse": self.sparse.state_dict(), "dense": self.dense.state_dict()}

    def load_state_dict(self, st):
        self.sparse.load_state_dict(st["sparse"])
        self.dense.load_state_dict(st["dense"])


def _adam(params, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """Adam with (coupled, L2-style) weight decay, as the authors train. The fused kernel
    does the same update several times faster on CPU for large embedding tables."""
    try:
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, fused=True)
    except (RuntimeError, TypeError, ValueError):  # older torch / unsupported device
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
