"""The Python API; the CLI is a thin layer over these functions.

    import freqd
    ds = freqd.load_dataset("citeulike-t")
    teacher = freqd.train(ds, backbone="mf", dim=400, out="runs/mf400")
    student = freqd.distill(ds, teacher=teacher, method="freqd", dim=20, out="runs/freqd")
    print(student.metrics["test"]["ndcg@20"])
    recs = student.recommend([0, 5, 9], k=10)
"""
from __future__ import annotations

import contextlib
import logging
import sys
import time
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

from .errors import CheckpointError, ConfigError, FreqdError
from .runs import (extendable, read_run_config, resolve_config, run_lock, same_config, typed,
                   write_run_config)

log = logging.getLogger("freqd")

DatasetLike = Union[str, "Dataset"]  # noqa: F821


def load_dataset(name_or_path, data_dir=None, config=None, **overrides):
    """Load a registry dataset ("citeulike-t", "gowalla", "yelp2018", "tiny") or a path."""
    from .data.load import load_dataset as _load

    return _load(name_or_path, data_dir=data_dir, config=config, **overrides)


def _dataset_for(cfg: dict, dataset=None):
    from .data.dataset import Dataset

    if isinstance(dataset, Dataset):
        return dataset
    return load_dataset(cfg["dataset"], data_dir=cfg.get("data_dir"), **(cfg.get("data") or {}))


def _setup_logging(run_dir: Optional[Path]) -> Optional[logging.Handler]:
    log.setLevel(logging.INFO)
    if not any(getattr(h, "_freqd_console", False) for h in log.handlers):
        h = logging.StreamHandler(sys.stderr)
        h.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
        h._freqd_console = True  # type: ignore[attr-defined]
        log.addHandler(h)
    if run_dir is None:
        return None
    fh = logging.FileHandler(run_dir / "train.log")
    fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(fh)
    return fh


def build_model(cfg: dict, dataset):
    from .models.registry import build_backbone

    return build_backbone(cfg["backbone"], dataset.n_users, dataset.n_items, cfg["model"], dataset.train)


class Run:
    """A finished (or resumable) run directory: its config, metrics and model."""

    def __init__(self, run_dir: Union[str, Path], dataset=None, device: str = "cpu"):
        self.dir = Path(run_dir)
        self.config = read_run_config(self.dir)
        self._dataset = dataset
        self.device = device
        self._model = None

    def __repr__(self) -> str:
        return f"Run({str(self.dir)!r}, kind={self.config.get('kind')}, backbone={self.config.get('backbone')}, dim={self.config['model'].get('dim')})"

    @property
    def metrics(self) -> dict:
        import json

        p = self.dir / "metrics.json"
        if not p.is_file():
            raise CheckpointError(f"{self.dir}: run has not finished (no metrics.json); resume it with --resume")
        try:
            return json.loads(p.read_text())
        except ValueError:
            raise CheckpointError(f"{p}: not valid JSON") from None

    @property
    def dataset(self):
        if self._dataset is None:
            self._dataset = _dataset_for(self.config)
        return self._dataset

    @property
    def model(self):
        """The best validation model, on ``self.device``, in eval mode."""
        if self._model is None:
            from .train.trainer import BEST, load_checkpoint_file

            ds = self.dataset
            st = load_checkpoint_file(self.dir / BEST)
            if st.get("fingerprint") not in (None, ds.fingerprint()):
                raise CheckpointError(f"{self.dir / BEST}: checkpoint does not match the dataset {self.config['dataset']!r} (fingerprint mismatch)")
            m = build_model(self.config, ds)
            try:
                m.load_state_dict(st["model"])
            except (RuntimeError, KeyError) as e:
                raise CheckpointError(f"{self.dir / BEST}: does not match the configured model ({str(e).splitlines()[0]})") from None
            self._model = m.to(self.device).eval()
        return self._model

    def evaluate(self, split: str = "test", protocol: Optional[str] = None, ks: Sequence[int] = None) -> dict:
        import torch

        from .eval.evaluator import evaluate

        m = self.model
        with torch.no_grad():
            reps = m.propagate()
            return evaluate(lambda u: m.score(u, reps), self.dataset, split=split,
                            protocol=protocol or self.config["train"]["protocol"],
                            ks=tuple(ks or self.config["train"]["ks"]), device=torch.device(self.device))

    def evaluate_per_user(self, split: str = "test", protocol: Optional[str] = None, ks: Sequence[int] = None):
        """Each user's metrics on ``split`` (see :meth:`freqd.eval.Evaluator.per_user`):
        ``(users, values, keys)``, the users with ground truth in ascending id order."""
        import torch

        from .eval.evaluator import Evaluator

        m = self.model
        ev = Evaluator(self.dataset, protocol=protocol or self.config["train"]["protocol"],
                       ks=tuple(ks or self.config["train"]["ks"]), device=torch.device(self.device))
        with torch.no_grad():
            reps = m.propagate()
            return ev.per_user(lambda u: m.score(u, reps), split)

    def recommend(self, users: Optional[Sequence[int]] = None, k: int = 20, exclude=None):
        """Top-``k`` items (seen items excluded) for ``users`` (all users if None).
        Returns (users LongTensor, items LongTensor [n, k], scores)."""
        import torch

        from .eval.topk import recommend

        ds = self.dataset
        if users is None:
            users = range(ds.n_users)
        u = torch.as_tensor(list(users), dtype=torch.long)
        if len(u) and (int(u.min()) < 0 or int(u.max()) >= ds.n_users):
            bad = [int(x) for x in u if x < 0 or x >= ds.n_users][:5]
            raise ConfigError(f"option '--users': ids {bad} out of range 0..{ds.n_users - 1}")
        m = self.model
        with torch.no_grad():
            reps = m.propagate()
            kw = {} if exclude is None else {"exclude": exclude}
            items, scores = recommend(lambda x: m.score(x, reps), ds, u, k=k, **kw)
        return u, items, scores

    def export_embeddings(self, out_dir: Union[str, Path], layer: str = "final") -> list:
        """Write user/item embeddings as .npy files; returns the paths."""
        import numpy as np
        import torch

        from .utils.atomic import atomic_path

        out_dir = Path(out_dir)
        m = self.model
        with torch.no_grad():
            u, i = m.features(layer, m.propagate() if layer == "final" else None)
        paths = []
        for name, t in (("user_embeddings.npy", u), ("item_embeddings.npy", i)):
            p = out_dir / name
            with atomic_path(p, suffix=".npy") as tmp:
                np.save(tmp, t.detach().cpu().numpy())
            paths.append(p)
        return paths


def _run(cfg: dict, out: Optional[Union[str, Path]], dataset, resume: bool, teacher_run: Optional[Run] = None) -> Run:
    import torch

    from .train.trainer import Trainer

    ds = _dataset_for(cfg, dataset)
    _, _, train_cfg, method = typed(cfg)
    if out is None:
        raise ConfigError("option '--out' is required (the run directory)")
    from .train.distributed import init_from_env

    dctx = init_from_env(train_cfg.device)  # under torchrun: the process group; else world size 1
    train_cfg.device = str(dctx.device(train_cfg.device))  # cuda -> cuda:LOCAL_RANK
    run_dir = Path(out)
    if dctx.rank > 0:  # rank 0 checks the run directory and owns it; the others follow its verdict
        if dctx.broadcast_object(None):
            return Run(run_dir, dataset=ds, device=train_cfg.device)
    elif run_dir.exists() and (run_dir / "config.yaml").exists():
        old = read_run_config(run_dir)
        if not same_config(old, cfg):
            raise FreqdError(f"{run_dir}: holds a run with a different configuration; choose another --out")
        if (run_dir / "metrics.json").exists() and not resume:
            raise FreqdError(f"{run_dir}: already holds a finished run (use --resume to reuse it, or another --out)")
        if (run_dir / "metrics.json").exists() and resume and extendable(old, Run(run_dir).metrics, cfg):
            from .train.trainer import CKPT

            if not (run_dir / CKPT).is_file():  # never restart a finished run from epoch 1 silently
                n = Run(run_dir).metrics.get("epochs_run")
                raise CheckpointError(f"{run_dir}: finished after {n} epochs; continuing it under the new budget "
                                      f"needs its {CKPT}, which is gone (restored result files?). Keep it as it is "
                                      f"(its own epoch cap), or train the larger budget in another --out")
            log.info("%s: stopped at its time limit; continuing under the new one", run_dir)
            (run_dir / "metrics.json").unlink()
        if (run_dir / "metrics.json").exists() and resume:
            log.info("%s: already finished", run_dir)
            dctx.broadcast_object(True)
            return Run(run_dir, dataset=ds, device=train_cfg.device)
    elif run_dir.exists() and any(not _own_leftover(p) for p in run_dir.iterdir()):
        raise FreqdError(f"{run_dir}: exists and is not a freqd run directory; choose another --out")
    if dctx.is_main:
        dctx.broadcast_object(False)
    fresh = dctx.is_main and not (run_dir / "config.yaml").exists()  # no earlier run to keep
    first_new = _first_missing(run_dir)
    with run_lock(run_dir) if dctx.is_main else contextlib.nullcontext():
        handler = None
        try:
            if dctx.is_main:  # first: a run killed from here on resumes (or restarts) cleanly
                write_run_config(run_dir, cfg)
            handler = _setup_logging(run_dir if dctx.is_main else None)
            torch.manual_seed(train_cfg.seed)
            model = build_model(cfg, ds)
            distiller, weight, extra = None, 0.0, {}
            if method is not None:
                from .distill.registry import build_distiller

                name, mcfg = method
                tmodel = teacher_run.model
                distiller = build_distiller(name, tmodel, model, ds, mcfg)
                t0 = time.perf_counter()
                distiller.to(train_cfg.device)
                distiller.prepare(None)
                weight = mcfg.weight
                extra = {"method": name, "teacher": str(teacher_run.dir),
                         "prepare_seconds": time.perf_counter() - t0}
            log.info("%s %s on %s (%d users, %d items): %s", cfg["kind"], cfg["backbone"], cfg["dataset"],
                     ds.n_users, ds.n_items, run_dir)
            trainer = Trainer(model, ds, train_cfg, out_dir=run_dir, distiller=distiller,
                              kd_weight=weight, extra_metrics=extra, run_config=cfg)
            trainer.fit(resume=resume)
        except Exception:
            if handler is not None:
                log.removeHandler(handler)
                handler.close()
                handler = None
            if fresh:  # failed before anything resumable: leave no partial output behind
                _discard_fresh_run(run_dir, first_new)
            raise
        finally:
            if handler is not None:
                log.removeHandler(handler)
                handler.close()
    return Run(run_dir, dataset=ds, device=train_cfg.device)


def _own_leftover(p: Path) -> bool:
    """What a run killed before its config.yaml landed can leave in its folder: the lock file
    and the temporary file of an atomic write (``.config.yaml.XXXX.tmp``)."""
    return p.name == ".lock" or (p.name.startswith(".") and p.name.endswith(".tmp") and p.is_file())


def _first_missing(path: Path) -> Optional[Path]:
    """The outermost folder of ``path`` (itself included) that does not exist yet, if any."""
    if path.exists():
        return None
    top = path
    while not top.parent.exists() and top.parent != top:
        top = top.parent
    return top


def _discard_fresh_run(run_dir: Path, first_new: Optional[Path]) -> None:
    """Remove what a run that failed before its first checkpoint wrote into ``run_dir``
    (and the folders it created), unless a checkpoint exists to resume from."""
    from .train.trainer import CKPT

    if (run_dir / CKPT).exists():
        return
    for name in ("config.yaml", "train.log", "history.csv", "best.pt", ".lock"):
        with contextlib.suppress(OSError):
            (run_dir / name).unlink()
    if first_new is None:
        return
    d = run_dir
    while True:
        try:
            d.rmdir()  # only if empty
        except OSError:
            return
        if d == first_new:
            return
        d = d.parent


def train(dataset: DatasetLike = "citeulike-t", backbone: str = "mf", dim: Optional[int] = None,
          out: Optional[Union[str, Path]] = None, *, config: Optional[str] = None,
          overrides: Optional[Mapping[str, Any]] = None, resume: bool = False,
          role: Optional[str] = None, **train_options) -> Run:
    """Train a backbone (teacher or student from scratch). ``train_options`` are TrainConfig
    fields (epochs, seed, protocol, device, ...). Returns the finished :class:`Run`."""
    ds_name, ds_obj = (dataset, None) if isinstance(dataset, (str, Path)) else (dataset.source or dataset.name, dataset)
    cfg = resolve_config("train", str(ds_name), backbone=backbone, dim=dim, config_file=config,
                         overrides=overrides, flags={"train": train_options} if train_options else None, role=role)
    return _run(cfg, out, ds_obj, resume)


def distill(dataset: DatasetLike = "citeulike-t", teacher: Union[str, Path, Run] = None, method: str = "freqd",
            dim: Optional[int] = None, out: Optional[Union[str, Path]] = None, *, backbone: Optional[str] = None,
            config: Optional[str] = None, overrides: Optional[Mapping[str, Any]] = None,
            resume: bool = False, **train_options) -> Run:
    """Train a student with its own loss + weight x the method's KD loss."""
    if teacher is None:
        raise ConfigError("option '--teacher' is required (a teacher run directory)")
    ds_name, ds_obj = (dataset, None) if isinstance(dataset, (str, Path)) else (dataset.source or dataset.name, dataset)
    trun = teacher if isinstance(teacher, Run) else Run(teacher, dataset=ds_obj)
    cfg = resolve_config("distill", str(ds_name), backbone=backbone or trun.config["backbone"], dim=dim,
                         method=method, teacher=str(trun.dir), config_file=config, overrides=overrides,
                         flags={"train": train_options} if train_options else None)
    if cfg["method"]["name"] == "hetcomp" and not cfg["method"].get("trajectory_dir"):
        # HetComp distils the teacher's training trajectory: its checkpoints every N epochs
        traj = trun.dir / "trajectory"
        if not traj.is_dir():
            raise ConfigError(f"option '--teacher': hetcomp needs the teacher's trajectory checkpoints in {traj}; "
                              "train the teacher with train.save_every=N (or set method.trajectory_dir)")
        cfg["method"]["trajectory_dir"] = str(traj.resolve())
    ds = _dataset_for(cfg, ds_obj)
    from .train.trainer import BEST, load_checkpoint_file

    tfp = load_checkpoint_file(trun.dir / BEST).get("fingerprint")  # the teacher's training data
    if tfp is not None and tfp != ds.fingerprint():
        raise ConfigError(f"option '--teacher': {trun.dir} was trained on other data ({trun.config['dataset']!r}) than {cfg['dataset']!r}")
    trun._dataset = trun._dataset or ds
    trun.model  # noqa: B018 - load the teacher now: a bad teacher fails before --out is created
    return _run(cfg, out, ds, resume, teacher_run=trun)
