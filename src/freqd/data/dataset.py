"""The in-memory dataset every other module consumes.

A :class:`Dataset` holds a binary user x item training matrix in CSR form and the
per-user validation and test items, also as CSR matrices of the same shape. Ids are
internal, contiguous and 0-based; ``user_ids`` / ``item_ids`` map them back to the raw ids
when the source had raw ids worth keeping (token formats), else they are ``None``.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import scipy.sparse as sp


def _pairs_to_csr(users: np.ndarray, items: np.ndarray, n_users: int, n_items: int) -> sp.csr_matrix:
    users = np.asarray(users, dtype=np.int64)
    items = np.asarray(items, dtype=np.int64)
    m = sp.csr_matrix(
        (np.ones(len(users), dtype=np.float32), (users, items)), shape=(n_users, n_items)
    )
    m.sum_duplicates()
    m.data[:] = 1.0
    m.sort_indices()
    return m


@dataclass
class Dataset:
    """Train / valid / test interactions over ``n_users`` x ``n_items`` (binary)."""

    name: str
    train: sp.csr_matrix
    valid: sp.csr_matrix
    test: sp.csr_matrix
    user_ids: Optional[np.ndarray] = None  # raw id of internal user u, if kept
    item_ids: Optional[np.ndarray] = None
    source: str = ""  # where it was read from (path or registry name)
    meta: dict = field(default_factory=dict)

    @classmethod
    def from_pairs(
        cls,
        name: str,
        train: tuple[np.ndarray, np.ndarray],
        valid: tuple[np.ndarray, np.ndarray],
        test: tuple[np.ndarray, np.ndarray],
        n_users: int | None = None,
        n_items: int | None = None,
        **kw,
    ) -> "Dataset":
        """Build from (users, items) arrays per split; shape inferred if not given."""
        if n_users is None:
            n_users = int(max((u.max() + 1 if len(u) else 0) for u, _ in (train, valid, test)))
        if n_items is None:
            n_items = int(max((i.max() + 1 if len(i) else 0) for _, i in (train, valid, test)))
        return cls(
            name,
            _pairs_to_csr(*train, n_users, n_items),
            _pairs_to_csr(*valid, n_users, n_items),
            _pairs_to_csr(*test, n_users, n_items),
            **kw,
        )

    # -- shape -------------------------------------------------------------------------
    @property
    def n_users(self) -> int:
        return self.train.shape[0]

    @property
    def n_items(self) -> int:
        return self.train.shape[1]

    def split(self, name: str) -> sp.csr_matrix:
        if name not in ("train", "valid", "test"):
            raise ValueError(f"unknown split {name!r}")
        return getattr(self, name)

    def train_pairs(self) -> tuple[np.ndarray, np.ndarray]:
        """(users, items) int64 arrays of the training interactions, row-major order."""
        m = self.train
        users = np.repeat(np.arange(m.shape[0], dtype=np.int64), np.diff(m.indptr))
        return users, m.indices.astype(np.int64)

    def info(self) -> dict:
        n_tr, n_va, n_te = self.train.nnz, self.valid.nnz, self.test.nnz
        return {
            "name": self.name,
            "users": self.n_users,
            "items": self.n_items,
            "interactions": n_tr + n_va + n_te,
            "train": n_tr,
            "valid": n_va,
            "test": n_te,
            "density": (n_tr + n_va + n_te) / max(1, self.n_users * self.n_items),
            "users_without_valid": int((np.diff(self.valid.indptr) == 0).sum()),
            "users_without_test": int((np.diff(self.test.indptr) == 0).sum()),
            "raw_ids": self.user_ids is not None,
        }

    def fingerprint(self) -> str:
        """sha256 over shapes and the three splits' indices: identifies the data exactly."""
        h = hashlib.sha256()
        h.update(np.array([self.n_users, self.n_items], dtype=np.int64).tobytes())
        for m in (self.train, self.valid, self.test):
            h.update(m.indptr.astype(np.int64).tobytes())
            h.update(m.indices.astype(np.int64).tobytes())
        return h.hexdigest()[:16]
