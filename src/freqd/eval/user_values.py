"""Each user's test metrics of a run, kept in the run folder for per-user significance tests.

``freqd compare`` and ``freqd bench --user-tests`` pair the per-user metrics of two groups of
runs. Computing them needs each run's best model, but checkpoints are never committed, so a
run restored from its committed result files could not take part. A finished run therefore
also writes ``users_<split>_<protocol>.npz`` (a small file: users x metrics, to commit with
``metrics.json``): the user ids, their values, the metric keys, and the tag of what they
belong to (best and last epoch, the dataset's fingerprint). A reader takes it only while that
tag matches the run and the file has every metric asked for; otherwise the values are
recomputed from the checkpoint (and the file rewritten).
"""
from __future__ import annotations

import io
import zipfile
from pathlib import Path
from typing import Optional, Sequence, Tuple

import numpy as np

from ..utils.atomic import atomic_path

#: the metrics a finished run keeps per user (the paper's; ``freqd compare``'s default)
KEPT_METRICS = ("recall", "ndcg")


def user_values_path(run_dir, split: str, protocol: str) -> Path:
    return Path(run_dir) / f"users_{split}_{protocol}.npz"


def run_tag(metrics: dict, fingerprint: str) -> dict:
    """What a run's per-user values belong to (a later extension of the run invalidates them)."""
    return {"best_epoch": int(metrics["best_epoch"]), "epochs_run": int(metrics["epochs_run"]),
            "fingerprint": str(fingerprint)}


def _read(path: Path) -> Optional[dict]:
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            return {"users": z["users"], "values": z["values"], "keys": [str(k) for k in z["keys"]],
                    "split": str(z["split"]), "protocol": str(z["protocol"]),
                    "tag": {"best_epoch": int(z["best_epoch"]), "epochs_run": int(z["epochs_run"]),
                            "fingerprint": str(z["fingerprint"])}}
    except (OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile):
        return None


def _current(path: Path, split: str, protocol: str, tag: dict) -> Optional[dict]:
    z = _read(path)
    if z is None or z["split"] != split or z["protocol"] != protocol or z["tag"] != tag:
        return None
    return z


def save_user_values(run_dir, split: str, protocol: str, users, values, keys: Sequence[str], tag: dict) -> Path:
    """Write ``users`` [n] and ``values`` [n, len(keys)] atomically (compressed npz); the
    metrics of an up-to-date file that ``keys`` lacks are kept beside them."""
    users = np.asarray(users, dtype=np.int64)
    values = np.asarray(values, dtype=np.float64)
    keys = list(keys)
    if values.shape != (users.shape[0], len(keys)):
        raise ValueError(f"values {values.shape} do not match {users.shape[0]} users x {len(keys)} keys")
    path = user_values_path(run_dir, split, protocol)
    old = _current(path, split, protocol, tag)
    if old is not None and np.array_equal(old["users"], users):
        extra = [i for i, k in enumerate(old["keys"]) if k not in keys]
        keys += [old["keys"][i] for i in extra]
        values = np.concatenate([values, old["values"][:, extra]], axis=1)
    buf = io.BytesIO()
    np.savez_compressed(buf, users=users, values=values, keys=np.asarray(keys, dtype=str),
                        split=np.asarray(split), protocol=np.asarray(protocol),
                        best_epoch=np.asarray(tag["best_epoch"]), epochs_run=np.asarray(tag["epochs_run"]),
                        fingerprint=np.asarray(tag["fingerprint"]))
    with atomic_path(path) as tmp:
        tmp.write_bytes(buf.getvalue())
    return path


def load_user_values(run_dir, split: str, protocol: str, keys: Sequence[str],
                     tag: dict) -> Optional[Tuple[np.ndarray, np.ndarray]]:
    """``(users, values [n, len(keys)])`` from the run's file, or None where there is none,
    it is unreadable, it belongs to another state of the run (``tag``) or lacks a key."""
    z = _current(user_values_path(run_dir, split, protocol), split, protocol, tag)
    if z is None or any(k not in z["keys"] for k in keys):
        return None
    return z["users"], z["values"][:, [z["keys"].index(k) for k in keys]]
