"""Experiment trackers behind one small interface (``train.loggers``).

Every run already writes ``train.log``, ``history.csv`` (one row per epoch) and
``metrics.json``; a logger sends the same numbers to a tracker as well:

- ``tensorboard``: event files under ``RUN_DIR/tensorboard`` (``pip install 'freqd[tensorboard]'``;
  view with ``tensorboard --logdir RUN_DIR``). A resumed run purges the events written after
  its checkpoint, so the curves hold every epoch once.
- ``mlflow``: one MLflow run per freqd run (``pip install 'freqd[mlflow]'``), in the tracking
  store MLflow itself picks (``MLFLOW_TRACKING_URI``, else MLflow's default), experiment
  ``MLFLOW_EXPERIMENT_NAME`` or ``freqd``. The resolved config goes in as parameters (dotted
  keys), per-epoch numbers as metrics (``@`` written ``_at_``: ``valid/ndcg_at_10``), the
  test metrics and ``metrics.json`` at the end. A resumed run continues the same MLflow run
  (its id is kept in ``RUN_DIR/mlflow_run_id``).

Only rank 0 of a distributed run logs. The trackers are imported when a run starts, never
at ``import freqd``; a tracker that is not installed is refused before training starts.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from ..errors import ConfigError

#: name -> (module to import, pip extra)
TRACKERS = {"tensorboard": ("torch.utils.tensorboard", "tensorboard"), "mlflow": ("mlflow", "mlflow")}


class RunLogger:
    """Where a run's numbers go besides its own files. Subclasses override what they use."""

    name = ""

    def start(self, run_dir: Path, config: Optional[dict], start_epoch: int) -> None:
        """Called once before the first epoch (``start_epoch`` > 0 when a run resumes)."""

    def log_epoch(self, epoch: int, row: Dict[str, Any]) -> None:
        """One ``history.csv`` row: ``loss`` and its parts, ``train_seconds``, ``valid_*``."""

    def finish(self, metrics: Dict[str, Any]) -> None:
        """The run's ``metrics.json`` (best epoch, valid and test metrics)."""

    def close(self, failed: bool = False) -> None:
        """Always called last, also when training raised (``failed``)."""


def _numbers(row: Dict[str, Any]) -> Dict[str, float]:
    """The finite numbers of a history row, under tracker names: ``valid_ndcg@10`` ->
    ``valid/ndcg@10``, ``train_seconds`` -> ``time/train_seconds``, the rest ``train/...``."""
    out = {}
    for k, v in row.items():
        if k == "epoch" or isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            continue
        if k.startswith("valid_"):
            name = "valid/" + k[len("valid_"):]
        elif k.endswith("_seconds"):
            name = "time/" + k
        else:
            name = "train/" + k
        out[name] = float(v)
    return out


def _flatten(d: dict, prefix: str = "") -> Dict[str, str]:
    out: Dict[str, str] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = json.dumps(v) if isinstance(v, (list, tuple)) else str(v)
    return out


class TensorBoardLogger(RunLogger):
    name = "tensorboard"

    def __init__(self):
        from torch.utils.tensorboard import SummaryWriter  # needs the tensorboard package

        self._writer_class = SummaryWriter
        self.writer = None

    def start(self, run_dir, config, start_epoch):
        # purge_step: drop events a killed run wrote after its last checkpoint
        self.writer = self._writer_class(log_dir=str(Path(run_dir) / "tensorboard"),
                                         purge_step=start_epoch + 1 if start_epoch else None)
        if config is not None and not start_epoch:
            import yaml

            self.writer.add_text("config", "```\n" + yaml.safe_dump(config, sort_keys=False) + "```", 0)

    def log_epoch(self, epoch, row):
        for name, v in _numbers(row).items():
            self.writer.add_scalar(name, v, epoch)

    def finish(self, metrics):
        step = int(metrics.get("best_epoch") or 0)
        for k, v in metrics.get("test", {}).items():
            if "@" in k and isinstance(v, (int, float)):
                self.writer.add_scalar(f"test/{k}", float(v), step)

    def close(self, failed=False):
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def _mlflow_name(name: str) -> str:
    # MLflow names allow letters, digits, _ - . / and spaces; '@' is not one of them
    return name.replace("@", "_at_")


class MLflowLogger(RunLogger):
    name = "mlflow"
    ID_FILE = "mlflow_run_id"

    def __init__(self):
        import mlflow

        self.mlflow = mlflow
        self.run_dir: Optional[Path] = None
        self.active = False

    def start(self, run_dir, config, start_epoch):
        mlflow = self.mlflow
        self.run_dir = Path(run_dir)
        id_file = self.run_dir / self.ID_FILE
        run_id = id_file.read_text().strip() if id_file.is_file() and start_epoch else None
        if run_id is None:
            mlflow.set_experiment(os.environ.get("MLFLOW_EXPERIMENT_NAME") or "freqd")
            run = mlflow.start_run(run_name=self.run_dir.name)
            from ..utils.atomic import write_text

            write_text(id_file, run.info.run_id + "\n")
            if config is not None:
                params = _flatten(config)
                keys = sorted(params)
                for i in range(0, len(keys), 100):  # MLflow takes at most 100 parameters per call
                    mlflow.log_params({k: params[k][:6000] for k in keys[i:i + 100]})
        else:
            mlflow.start_run(run_id=run_id)
        self.active = True

    def log_epoch(self, epoch, row):
        self.mlflow.log_metrics({_mlflow_name(k): v for k, v in _numbers(row).items()}, step=epoch)

    def finish(self, metrics):
        test = {f"test/{_mlflow_name(k)}": float(v) for k, v in metrics.get("test", {}).items()
                if "@" in k and isinstance(v, (int, float))}
        self.mlflow.log_metrics(test, step=int(metrics.get("best_epoch") or 0))
        path = self.run_dir / "metrics.json"
        if path.is_file():
            self.mlflow.log_artifact(str(path))

    def close(self, failed=False):
        if self.active:
            self.mlflow.end_run(status="FAILED" if failed else "FINISHED")
            self.active = False


_CLASSES = {"tensorboard": TensorBoardLogger, "mlflow": MLflowLogger}


def build_loggers(names: Sequence[str]) -> List[RunLogger]:
    """Instantiate the trackers ``names`` (``train.loggers``); a missing package is a
    ConfigError naming the option and the pip extra that installs it."""
    out = []
    for name in dict.fromkeys(names):
        if name not in _CLASSES:
            raise ConfigError(f"option 'train.loggers': unknown logger {name!r} (choose from {sorted(_CLASSES)})")
        try:
            out.append(_CLASSES[name]())
        except ImportError as e:
            module, extra = TRACKERS[name]
            raise ConfigError(f"option 'train.loggers': {name!r} needs {module.split('.')[-1]!r} "
                              f"({e}); install it with: pip install 'freqd[{extra}]'") from None
    return out
