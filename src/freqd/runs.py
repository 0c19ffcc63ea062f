"""Runs: resolving a run's configuration, its directory, and loading it back.

A run directory holds::

    config.yaml     the fully resolved configuration (command line > file > preset > defaults)
    checkpoint.pt   last state, for --resume (atomic)
    best.pt         best validation model (atomic)
    history.csv     per-epoch loss, validation metrics and timings
    train.log       the log
    metrics.json    protocol, best_epoch, epochs_run, seconds_per_epoch, eval_seconds, valid, test
    users_test_<protocol>.npz   the best model's per-user test recall/ndcg (freqd.eval.user_values)
"""
from __future__ import annotations

import contextlib
import copy
import logging
import os
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional

from .config import ConfigError, dump_yaml, from_dict, load_yaml, merge, to_dict
from .errors import CheckpointError, FreqdError

log = logging.getLogger("freqd")

#: presets shipped with the package (configs/ at the repository root links here)
PRESET_DIR = Path(__file__).resolve().parent / "configs"

TOP_KEYS = ("kind", "dataset", "data_dir", "data", "backbone", "role", "model", "train",
            "method", "teacher")

DATASET_ALIASES = {"citeulike": "citeulike-t", "yelp": "yelp2018"}


def canonical_dataset(name: str) -> str:
    return DATASET_ALIASES.get(name, name)


def _preset(path: Path) -> dict:
    return load_yaml(path) if path.is_file() else {}


def preset_for(dataset: str, backbone: str, role: str, method: Optional[str] = None) -> dict:
    """The authors' settings for (dataset, backbone, role[, method]), {} where none exist."""
    ds = canonical_dataset(Path(dataset).name if os.sep in dataset else dataset)
    base = _preset(PRESET_DIR / ds / f"{backbone}.yaml")
    out = dict(base.get("common", {}))
    out = merge(out, base.get(role, {}))
    if method:
        m = _preset(PRESET_DIR / "methods" / ds / backbone / f"{method}.yaml")
        out = merge(out, m)
    return out


def _check_top(d: Mapping, where: str) -> None:
    import difflib

    for k in d:
        if k not in TOP_KEYS:
            close = difflib.get_close_matches(k, TOP_KEYS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"unknown option {k!r}{where}{hint}; valid top-level options: {', '.join(TOP_KEYS)}")


def _check_sections(d: Mapping, where: str) -> None:
    """Sections must be mappings (``model=3`` or ``train: 5`` would otherwise vanish in a merge)."""
    for k in ("data", "model", "train", "method"):
        if d.get(k) is not None and not isinstance(d[k], Mapping):
            raise ConfigError(f"option {k!r}{where}: expected a section of options "
                              f"(e.g. {k}.key=value), got {d[k]!r}")


def resolve_config(
    kind: str,
    dataset: str,
    backbone: Optional[str] = None,
    dim: Optional[int] = None,
    method: Optional[str] = None,
    teacher: Optional[str] = None,
    config_file: Optional[str] = None,
    overrides: Optional[Mapping[str, Any]] = None,
    flags: Optional[Mapping[str, Any]] = None,
    role: Optional[str] = None,
) -> dict:
    """Resolve and validate a run's configuration; returns the plain nested dict saved in
    config.yaml. Layers, lowest first: defaults < preset < ``config_file`` < ``flags``
    (named command-line options) < ``overrides`` (``key=value``)."""
    from .data.load import DataConfig
    from .models.registry import backbone_config
    from .train.config import TrainConfig

    dataset = _absolute_ref(dataset)
    over = dict(overrides or {})
    _check_top(over, " on the command line")
    _check_sections(over, " on the command line")
    filecfg = load_yaml(config_file) if config_file else {}
    _check_top(filecfg, f" in {config_file}")
    _check_sections(filecfg, f" in {config_file}")
    flags = {k: v for k, v in (flags or {}).items() if v is not None}

    user = merge(merge(filecfg, flags), over)
    backbone = user.get("backbone") or backbone or "mf"
    if dim is not None:
        user = merge(user, {"model": {"dim": dim}})
    method_sec = user.get("method") if isinstance(user.get("method"), Mapping) else {}
    method = (method_sec or {}).get("name") or method
    if kind == "distill" and not method:
        raise ConfigError("option '--method' is required for distill")
    if role is None:
        role = user.get("role") or ("student" if kind == "distill" else None)
    if role is None:
        # a run is a student when its dimension is the preset student's (20), else a teacher
        sdim = preset_for(dataset, backbone, "student").get("model", {}).get("dim", 20)
        udim = user.get("model", {}).get("dim")
        role = "student" if udim is not None and int(udim) == int(sdim) else "teacher"
    if role not in ("teacher", "student"):
        raise ConfigError(f"option 'role': expected teacher or student, got {role!r}")

    preset = preset_for(dataset, backbone, role, method if kind == "distill" else None)
    full = merge(preset, user)
    full["kind"] = kind
    full["dataset"] = dataset
    full["backbone"] = backbone
    full["role"] = role
    if teacher is not None:
        full["teacher"] = str(teacher)
    _check_top(full, "")
    if full.get("teacher"):
        full["teacher"] = str(Path(str(full["teacher"])).expanduser().resolve())
    if full.get("data_dir"):
        full["data_dir"] = str(Path(str(full["data_dir"])).expanduser().resolve())

    out: dict = {"kind": kind, "dataset": dataset, "data_dir": full.get("data_dir"),
                 "backbone": backbone, "role": role}
    # only the data options the user (or a preset) set: a named dataset keeps its own
    # preprocessing for everything else (validated here, applied by load_dataset)
    from_dict(DataConfig, full.get("data"), prefix="data.")
    out["data"] = dict(full.get("data") or {})
    try:
        out["model"] = to_dict(backbone_config(backbone, full.get("model") or {}))
    except ConfigError:
        raise
    out["train"] = to_dict(from_dict(TrainConfig, full.get("train"), prefix="train."))
    if kind == "distill":
        from .distill.registry import method_config

        msec = dict(full.get("method") or {})
        msec.pop("name", None)
        mcfg = method_config(method, msec)
        out["method"] = {"name": method, **to_dict(mcfg)}
        if not full.get("teacher"):
            raise ConfigError("option '--teacher' is required for distill (a teacher run directory)")
        out["teacher"] = str(full["teacher"])
    elif full.get("method"):
        raise ConfigError("option 'method' only applies to 'freqd distill'")
    return out


def _absolute_ref(dataset: str) -> str:
    """A dataset path as an absolute path (a run must load it again from any folder);
    registry names (a bare name the registry knows) stay as they are."""
    from .data.registry import lookup

    bare = os.sep not in dataset and "/" not in dataset
    if bare and lookup(dataset) is not None:
        return dataset
    p = Path(dataset).expanduser()
    return str(p.resolve()) if p.exists() else dataset


def typed(cfg: dict):
    """Typed config objects (data, model, train, method) of a resolved config dict."""
    from .data.load import DataConfig
    from .models.registry import backbone_config
    from .train.config import TrainConfig

    data = from_dict(DataConfig, cfg.get("data"), prefix="data.")
    model = backbone_config(cfg["backbone"], cfg["model"])
    train = from_dict(TrainConfig, cfg["train"], prefix="train.")
    method = None
    if cfg.get("method"):
        from .distill.registry import method_config

        m = dict(cfg["method"])
        name = m.pop("name")
        method = (name, method_config(name, m))
    return data, model, train, method


# -- run directories ------------------------------------------------------------------------------
@contextlib.contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Exclusive lock on RUN_DIR: a second run pointed at the same folder refuses."""
    lock_path = run_dir / ".lock"
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        fh = open(lock_path, "a+")
    except OSError as e:  # unwritable parent, a file in the way, disk full
        raise FreqdError(f"cannot write {run_dir}: {e.strerror or e}") from None
    try:
        try:
            import fcntl

            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except ImportError:  # pragma: no cover - Windows: no locking
            pass
        except OSError:
            raise FreqdError(f"{run_dir}: another freqd process is using this run directory") from None
        yield
    finally:
        fh.close()


def held_elsewhere(run_dir: Path) -> bool:
    """Whether another process holds RUN_DIR's lock (is training that run right now)."""
    lock_path = Path(run_dir) / ".lock"
    if not lock_path.is_file():
        return False
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: no locking
        return False
    try:
        with open(lock_path, "a+") as fh:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                return True
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
    except OSError:
        return False
    return False


def read_run_config(run_dir: Path) -> dict:
    p = Path(run_dir) / "config.yaml"
    if not p.is_file():
        raise CheckpointError(f"{run_dir}: not a freqd run directory (no config.yaml)")
    return load_yaml(p)


def write_run_config(run_dir: Path, cfg: dict) -> None:
    from .utils.atomic import write_text

    write_text(Path(run_dir) / "config.yaml", dump_yaml(cfg))


def same_config(a: dict, b: dict) -> bool:
    strip = lambda c: {k: v for k, v in c.items() if k not in ("train",)} | {  # noqa: E731
        "train": identity_train(c.get("train", {}))}
    return strip(copy.deepcopy(a)) == strip(copy.deepcopy(b))


def identity_train(train: dict) -> dict:
    """The train settings that make a run's identity: without :data:`IGNORED_TRAIN`, and
    without settings added after runs existed when they hold their default (so that a
    run's identity, and its bench hash, do not change when a new option appears)."""
    return {k: v for k, v in train.items()
            if k not in IGNORED_TRAIN and not (k in NEUTRAL_DEFAULTS and v == NEUTRAL_DEFAULTS[k])}


#: train settings that do not change a run's identity (a run may be resumed under new values)
IGNORED_TRAIN = ("device", "progress", "threads", "eval_chunk", "time_limit", "epochs", "checkpoint_interval",
                 "keep_freed_memory", "loggers", "flush_denormal")

#: train settings that change results but, at these values, are what every run did before
#: they existed: left out of a run's identity at these values only
NEUTRAL_DEFAULTS = {"precision": "fp32"}


def extendable(old_cfg: dict, metrics: dict, new_cfg: dict) -> bool:
    """A finished run that stopped at its wall-clock budget or its epoch cap (not by early
    stopping) can be continued under a larger budget or cap: nothing before the cap depends
    on it, so the continued run equals one started with the larger cap (evidence
    accumulates across sessions). Early-stopped runs are final."""
    if metrics.get("stopped_early"):
        return False
    old_tr, new_tr = old_cfg.get("train", {}), new_cfg.get("train", {})
    if metrics.get("stopped_by_time_limit"):
        old_t, new_t = old_tr.get("time_limit"), new_tr.get("time_limit")
        if new_t is None or (old_t is not None and new_t > old_t):
            return int(new_tr.get("epochs", 1000)) > int(metrics.get("epochs_run", 0))
        return False
    return int(new_tr.get("epochs", 1000)) > int(metrics.get("epochs_run", 0)) == int(old_tr.get("epochs", 0))
