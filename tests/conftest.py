import os
from pathlib import Path

import pytest

# tests are many small ops: one thread each avoids oversubscribing a small CI machine
os.environ.setdefault("OMP_NUM_THREADS", "1")
try:
    import torch

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
except ImportError:  # pragma: no cover
    pass

SHARED_DATA = Path(os.environ.get("FREQD_DATA_DIR") or Path(__file__).resolve().parents[2] / "shared" / "data")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The folder laid out like ../shared/data (FREQD_DATA_DIR in CI)."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data folder not found: {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_dir(shared_data) -> Path:
    return shared_data / "tiny"


@pytest.fixture(scope="module")
def tiny_env(shared_data, tmp_path_factory):
    """A folder for one test module's runs, with freqd pointed at the shared data, a private
    graph cache and no progress bars for the module's lifetime."""
    root = tmp_path_factory.mktemp("tiny-runs")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FREQD_DATA_DIR", str(shared_data))
        mp.setenv("FREQD_CACHE_DIR", str(root / "cache"))
        mp.setenv("FREQD_NO_PROGRESS", "1")
        yield root
