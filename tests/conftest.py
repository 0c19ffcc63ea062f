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
