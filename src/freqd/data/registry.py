"""Named datasets: where their files come from and how they are found locally.

A registry name resolves, in order, to a folder under

1. the ``data_dir`` argument (``--data-dir``),
2. the ``FREQD_DATA_DIR`` environment variable,
3. the user cache (``FREQD_CACHE_DIR``, else ``$XDG_CACHE_HOME/freqd``, else
   ``~/.cache/freqd``),
4. a download of the raw files from their public source into the cache, verified against
   the sha256 below (set ``FREQD_OFFLINE=1`` to never download).

Each root is laid out like the project's shared data folder: ``<root>/citeulike/users.dat``,
``<root>/gowalla/train.txt`` ... (plain or ``.gz``), optionally with a ``processed/``
sub-folder holding the pre-split files.
"""
from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import DataError
from ..utils.atomic import atomic_path
from .readers import find_file, split_files

__all__ = [
    "REGISTRY",
    "DatasetSpec",
    "RawFile",
    "cache_dir",
    "data_roots",
    "download",
    "lookup",
    "search_roots",
]


@dataclass(frozen=True)
class RawFile:
    """One raw file of a named dataset: its name in the folder, public URL, sha256."""

    name: str
    url: str
    sha256: str


@dataclass(frozen=True)
class DatasetSpec:
    """A named dataset: folder name, raw files, and the preprocessing that defines it."""

    name: str
    folder: str  # folder name under a data root
    aliases: tuple = ()
    raw: tuple = ()  # RawFile entries, in reading order
    raw_format: str = ""  # DataConfig.format for the raw files ("users.dat", "lightgcn")
    config: dict = field(default_factory=dict)  # DataConfig fields that define the dataset
    processed: str | None = "processed"  # sub-folder with the pre-split files ("." = itself)
    label: str = ""  # how results on it should be labelled
    counts: tuple = ()  # (users, items, train, valid, test) of the defined split


_LIGHTGCN = "https://raw.githubusercontent.com/kuandeng/LightGCN/b067ec05f16a24e0e1efe63cd82385f0c469af20/Data"

REGISTRY: dict[str, DatasetSpec] = {
    s.name: s
    for s in (
        DatasetSpec(
            name="citeulike-t",
            folder="citeulike",
            aliases=("citeulike",),
            raw=(
                RawFile(
                    "users.dat",
                    "https://raw.githubusercontent.com/changun/CollMetric/"
                    "d9026cfce7c6e8dd2640b842ad524b61031b29ac/citeulike-t/users.dat",
                    "02d5d429b2c0362e0ed79f6ef204666b4092563d21493abf4dfb521e8a7078bf",
                ),
            ),
            raw_format="users.dat",
            config={"kcore_user": 5, "split_rule": "paper", "split_order": "file"},
            label="CiteULike-t",
            counts=(5219, 25181, 98405, 12451, 14724),
        ),
        DatasetSpec(
            name="gowalla",
            folder="gowalla",
            raw=(
                RawFile(
                    "train.txt",
                    f"{_LIGHTGCN}/gowalla/train.txt",
                    "7244696fdeb23911319cf7b689f2e15a3c4c92549c873a5677b44e3f13cc3e62",
                ),
                RawFile(
                    "test.txt",
                    f"{_LIGHTGCN}/gowalla/test.txt",
                    "099a2a73924e4b754dc6efd730d764f492321b53c38eb93298850c83acf57be3",
                ),
            ),
            raw_format="lightgcn",
            config={"split_rule": "paper-clamped", "split_order": "file"},
            label="Gowalla (LightGCN release)",
            counts=(29858, 40981, 810054, 100499, 116817),
        ),
        DatasetSpec(
            name="yelp2018",
            folder="yelp2018",
            aliases=("yelp",),
            raw=(
                RawFile(
                    "train.txt",
                    f"{_LIGHTGCN}/yelp2018/train.txt",
                    "1e9568725a9e833d0ac3bae01c94cd95367f73b3bb6104fd26b5f65ea5054093",
                ),
                RawFile(
                    "test.txt",
                    f"{_LIGHTGCN}/yelp2018/test.txt",
                    "9cd9b37926cd1447a06625ffa7914527573fb097c10cb0bbdb1d1b8ded3742fe",
                ),
            ),
            raw_format="lightgcn",
            config={"split_rule": "paper-clamped", "split_order": "file"},
            label="Yelp2018 (LightGCN release; not the paper's extraction)",
            counts=(31668, 38048, 1236439, 153827, 171140),
        ),
        DatasetSpec(
            name="tiny",
            folder="tiny",
            processed=".",
            label="tiny (CiteULike-t sample for tests)",
            counts=(241, 979, 3450, 446, 545),
        ),
    )
}

_ALIASES = {a: s.name for s in REGISTRY.values() for a in (s.name, *s.aliases)}


def lookup(name: str) -> DatasetSpec | None:
    """The spec for a registry name or alias (case-insensitive), else None."""
    key = _ALIASES.get(str(name).lower())
    return REGISTRY[key] if key else None


def cache_dir() -> Path:
    """The user cache: ``FREQD_CACHE_DIR``, else ``$XDG_CACHE_HOME/freqd``, else ~/.cache/freqd."""
    env = os.environ.get("FREQD_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "freqd"


def _shared_data() -> Path | None:
    # the project's shared data folder next to a source checkout (only used for "tiny")
    p = Path(__file__).resolve().parents[4] / "shared" / "data"
    return p if p.is_dir() else None


def search_roots(spec: DatasetSpec, data_dir: str | os.PathLike | None = None) -> list:
    """``[(label, root)]`` searched for ``spec``, in resolution order (may not exist)."""
    roots = []
    if data_dir is not None:
        roots.append(("data_dir", Path(data_dir).expanduser()))
    env = os.environ.get("FREQD_DATA_DIR")
    if env:
        roots.append(("FREQD_DATA_DIR", Path(env).expanduser()))
    roots.append(("cache", cache_dir()))
    if spec.name == "tiny":
        shared = _shared_data()
        if shared is not None:
            roots.append(("shared", shared))
    return roots


def data_roots(spec: DatasetSpec, data_dir: str | os.PathLike | None = None) -> list:
    """``[(label, folder)]``: the existing dataset folders for ``spec``, in resolution order."""
    out = []
    for label, root in search_roots(spec, data_dir):
        for sub in dict.fromkeys((spec.folder, spec.name, *spec.aliases)):
            folder = root / sub
            if folder.is_dir():
                out.append((label, folder))
                break
    return out


def processed_folder(spec: DatasetSpec, folder: Path) -> Path | None:
    """The pre-split folder of a dataset folder, if its three split files exist."""
    if spec.processed is None:
        return None
    p = folder / spec.processed if spec.processed != "." else folder
    return p if p.is_dir() and split_files(p) is not None else None


def raw_paths(spec: DatasetSpec, folder: Path) -> list | None:
    """Paths of all raw files of ``spec`` in ``folder`` (plain or .gz), or None."""
    if not spec.raw:
        return None
    out = [find_file(folder, f.name) for f in spec.raw]
    return out if all(p is not None for p in out) else None


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def download(url: str, dest: Path, sha256: str, timeout: float = 60.0) -> Path:
    """Fetch ``url`` to ``dest`` atomically; verify its sha256 before it appears there."""
    h = hashlib.sha256()
    with atomic_path(dest, suffix=".part") as tmp:
        try:
            req = urllib.request.Request(url, headers={"User-Agent": "freqd"})
            with urllib.request.urlopen(req, timeout=timeout) as resp, open(tmp, "wb") as out:
                while True:
                    chunk = resp.read(1 << 20)
                    if not chunk:
                        break
                    h.update(chunk)
                    out.write(chunk)
        except (urllib.error.URLError, OSError, ValueError) as e:
            # not an OSError any more, so atomic_path only cleans up and re-raises it
            raise _DownloadFailed(str(getattr(e, "reason", None) or e)) from None
        if h.hexdigest() != sha256:
            raise DataError(
                f"checksum mismatch for {url}: got sha256 {h.hexdigest()}, expected {sha256}; "
                "the file was not kept",
                str(dest),
            )
    return dest


class _DownloadFailed(Exception):
    """Internal: a download could not complete (network, HTTP error)."""


def fetch_raw(spec: DatasetSpec, data_dir: str | os.PathLike | None = None) -> Path:
    """Download every raw file of ``spec`` into the cache; DataError when impossible."""
    folder = cache_dir() / spec.folder
    looked = ", ".join(f"{label} {root / spec.folder}" for label, root in search_roots(spec, data_dir))
    where = f"{_where_to_put(spec)} (looked in: {looked})"
    if not spec.raw:
        raise DataError(
            f"dataset {spec.name!r} has no public download and no local copy was found; {where}"
        )
    if os.environ.get("FREQD_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        raise DataError(f"dataset {spec.name!r}: no local copy and FREQD_OFFLINE is set; {where}")
    for f in spec.raw:
        dest = folder / f.name
        if find_file(folder, f.name) is not None:
            continue
        try:
            download(f.url, dest, f.sha256)
        except _DownloadFailed as e:
            raise DataError(
                f"dataset {spec.name!r}: no local copy, and downloading {f.url} failed ({e}); {where}"
            ) from None
    return folder


def _where_to_put(spec: DatasetSpec) -> str:
    cache = cache_dir() / spec.folder
    if spec.raw:
        names = " and ".join(f.name for f in spec.raw)
        srcs = "; ".join(f"{f.name}: {f.url}" for f in spec.raw)
        return (
            f"put {names} (plain or .gz) in {cache}/ , or in <DIR>/{spec.folder}/ and set "
            f"FREQD_DATA_DIR=<DIR> (or pass --data-dir <DIR>). Source: {srcs}"
        )
    return (
        f"put train.txt, valid.txt, test.txt and config.yaml in <DIR>/{spec.folder}/ and set "
        f"FREQD_DATA_DIR=<DIR> (or pass --data-dir <DIR>), or put them in {cache}/"
    )
