"""Data-parallel training (torchrun, gloo on CPU) against the one-process run.

Why the comparison can be tight: with world size N every rank draws the same permutation
and the same negative-sampling uniforms and keeps its slice of each global batch, so the
N ranks together see exactly the one-process batch (tested below without processes). All
losses are sums over the batch and the gradients are summed over the ranks, so each step's
gradient equals the one-process gradient up to float32 summation order (~1e-7 relative).
BPR-MF has no dropout, so after a few epochs the parameters agree to ~1e-5 (Adam divides
by sqrt(v), which can enlarge a rounding difference in a near-zero gradient coordinate to
a fraction of ``lr``). Tolerances: epoch losses relative 1e-5, parameters absolute 2e-4
(lr = 0.01), ranking metrics absolute 1e-3 (a flipped tie among near-equal scores; equal
in practice). Resuming a 2-process run is exact (bitwise), as for one process.

The process-spawning test launches ONE ``python -m torch.distributed.run --standalone
--nproc_per_node 2`` (a free port is chosen by the rendezvous) that runs this file as a
driver (``_driver``): every run goes through ``freqd.cli.main``, exactly what
``torchrun -m freqd train ...`` executes; one launch keeps the import cost to one.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from freqd.data.sampling import TrainSampler
from freqd.train.distributed import DistContext, SparseGradientReducer, context, rank_seed, wrap_ddp

COMMON = ["--no-progress", "train.lr=0.01", "train.weight_decay=0.01", "train.threads=1"]


# -- no processes ------------------------------------------------------------------------------
@pytest.mark.parametrize("world", [2, 3])
def test_rank_shards_are_the_one_process_batches(world):
    rng = np.random.default_rng(0)
    m = sp.csr_matrix((rng.random((40, 30)) < 0.2).astype(np.float32))
    one = list(TrainSampler(m, 17, n_neg=3, seed=5).epoch())
    shards = [list(TrainSampler(m, 17, n_neg=3, seed=5, rank=r, world_size=world).epoch())
              for r in range(world)]
    assert all(len(s) == len(one) for s in shards)
    for b, batch in enumerate(one):
        sizes = [len(s[b]["users"]) for s in shards]
        assert max(sizes) - min(sizes) <= 1  # balanced slices
        for k in ("users", "pos", "neg"):
            assert torch.equal(torch.cat([s[b][k] for s in shards]), batch[k])


def test_rank_seed():
    assert rank_seed(7, 0) == 7  # rank 0 draws what one process draws
    seeds = {rank_seed(7, r) for r in range(1, 6)} | {rank_seed(8, r) for r in range(1, 6)}
    assert len(seeds) == 10 and all(0 <= s < 2**63 for s in seeds)
    assert rank_seed(7, 3) == rank_seed(7, 3)


def test_single_process_context_is_a_no_op():
    ctx = context()
    assert (ctx.world_size, ctx.rank, ctx.is_main, ctx.active) == (1, 0, True, False)
    assert ctx.sum_floats({"a": 1.5}) == {"a": 1.5}
    assert ctx.broadcast_object({"x": 1}) == {"x": 1}
    assert ctx.broadcast_ints(3, 4) == [3, 4]
    assert ctx.device("cuda:3") == torch.device("cuda:3")
    assert DistContext(rank=1, world_size=2, local_rank=1).device("cuda:0") == torch.device("cuda:1")
    p = torch.nn.Parameter(torch.ones(3))
    p.grad = torch.full((3,), 2.0)
    SparseGradientReducer(ctx, [p])()  # world size 1: untouched
    assert torch.equal(p.grad, torch.full((3,), 2.0))
    m = torch.nn.Linear(2, 2)
    assert wrap_ddp(m, ctx, torch.device("cpu")) is m  # world size 1: not wrapped


# -- two processes -----------------------------------------------------------------------------
def _cli(*args: str) -> None:
    from freqd.cli import main

    rc = main([str(a) for a in args])
    if rc != 0:
        raise SystemExit(f"freqd {' '.join(map(str, args))} exited with {rc}")


def _driver(root: Path, data_dir: str) -> None:
    """Run under torchrun (2 ranks): the runs the test compares."""
    import torch.distributed as dist

    d = ["--data-dir", data_dir]
    # 1. the plain 2-process run (compared with the 1-process run of the same global batch)
    _cli("train", "tiny", "--out", root / "ddp", "--epochs", 3, *d, *COMMON)
    # 2. interrupted after epoch 2, resumed to epoch 3 (compared with 1., exactly)
    _cli("train", "tiny", "--out", root / "part", "--epochs", 2, *d, *COMMON)
    dist.barrier()  # every rank has read metrics.json
    if dist.get_rank() == 0:  # turn the finished 2-epoch run into an interrupted 3-epoch one
        (root / "part" / "metrics.json").unlink()
        cfg = (root / "part" / "config.yaml").read_text()
        assert "epochs: 2" in cfg
        (root / "part" / "config.yaml").write_text(cfg.replace("epochs: 2", "epochs: 3"))
    dist.barrier()
    _cli("train", "tiny", "--out", root / "part", "--epochs", 3, "--resume", *d, *COMMON)
    # 3. sparse gradients (SparseAdam): rows/values all-gathered
    _cli("train", "tiny", "--out", root / "sparse", "--epochs", 2, *d, *COMMON,
         "model.sparse_grad=true", "train.optimizer=sparse_adam", "train.weight_decay=0")
    # 4. a time limit: rank 0's clock decides for every rank (no hang, same last epoch)
    _cli("train", "tiny", "--out", root / "timed", "--epochs", 500, *d, *COMMON, "train.time_limit=1.0")
    # 5. FreqD student: projectors' gradients reduced, frozen teacher and graphs per rank
    _cli("distill", "tiny", "--teacher", root / "teacher", "--method", "freqd", "--out", root / "freqd",
         "--epochs", 2, *d, *COMMON)


def _history(run: Path) -> dict:
    import csv

    with open(run / "history.csv") as fh:
        rows = list(csv.DictReader(fh))
    return {k: np.array([float(r[k]) for r in rows]) for k in rows[0] if k != "train_seconds"}


def _metrics(run: Path) -> dict:
    return json.loads((run / "metrics.json").read_text())


def _params(run: Path) -> dict:
    return torch.load(run / "best.pt", map_location="cpu", weights_only=True)["model"]


def _assert_close_runs(a: Path, b: Path, loss_rtol: float, param_atol: float, metric_atol: float) -> None:
    ha, hb = _history(a), _history(b)
    assert set(ha) == set(hb)
    for k in ha:
        rtol = loss_rtol if not k.startswith("valid_") else 0.0
        np.testing.assert_allclose(hb[k], ha[k], rtol=rtol, atol=metric_atol if k.startswith("valid_") else 0.0,
                                   err_msg=k)
    ma, mb = _metrics(a), _metrics(b)
    assert ma["best_epoch"] == mb["best_epoch"] and ma["epochs_run"] == mb["epochs_run"]
    for split in ("valid", "test"):
        for k, v in ma[split].items():
            if isinstance(v, float):
                assert abs(mb[split][k] - v) <= metric_atol, (split, k, v, mb[split][k])
    pa, pb = _params(a), _params(b)
    for k in pa:
        assert (pa[k] - pb[k]).abs().max().item() <= param_atol, k


@pytest.fixture(scope="module")
def runs(tmp_path_factory, shared_data):
    """One-process reference runs (in this process) and one 2-process torchrun launch."""
    from freqd import api  # (freqd.train is shadowed by the freqd.train subpackage once imported)

    root = tmp_path_factory.mktemp("ddp")
    os.environ.setdefault("FREQD_NO_PROGRESS", "1")
    ds = api.load_dataset("tiny", data_dir=shared_data)
    over = {"train": {"lr": 0.01, "weight_decay": 0.01, "threads": 1, "progress": False}}
    api.train(ds, out=root / "one", epochs=3, overrides=over)
    api.train(ds, out=root / "sparse1", epochs=2, overrides={
        **over, "model": {"sparse_grad": True}, "train": {**over["train"], "optimizer": "sparse_adam",
                                                          "weight_decay": 0.0}})
    api.train(ds, out=root / "teacher", epochs=1, overrides=over)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "FREQD_NO_PROGRESS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           __file__, "--driver", str(root), str(shared_data)]
    proc = subprocess.run(cmd, check=False, env=env, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        pytest.fail(f"torchrun failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return root, proc


def test_two_processes_match_one_process(runs):
    root, _ = runs
    _assert_close_runs(root / "one", root / "ddp", loss_rtol=1e-5, param_atol=2e-4, metric_atol=1e-3)
    ckpt = torch.load(root / "ddp" / "checkpoint.pt", map_location="cpu", weights_only=True)
    assert len(ckpt["ranks"]) == 2  # every rank's RNG states
    assert not torch.equal(ckpt["ranks"][0]["torch"], ckpt["ranks"][1]["torch"])  # per-rank seeds


def test_only_rank_zero_writes(runs):
    root, proc = runs
    log = (root / "ddp" / "train.log").read_text()
    assert log.count("epoch 3 ") == 1  # one writer
    # console: rank 1's INFO records are filtered (each run's header line appears once)
    assert proc.stderr.count(f"{root / 'ddp'}\n") == 1, proc.stderr[-3000:]
    assert proc.stderr.count("data parallel: 2 processes (gloo)") == 6, proc.stderr[-3000:]  # 6 runs
    # dense gradients through DDP's hooks; the sparse-only MF run has nothing for DDP
    assert proc.stderr.count("gradients: DistributedDataParallel\n") == 5, proc.stderr[-3000:]
    assert proc.stderr.count("gradients: sparse all-gather\n") == 1, proc.stderr[-3000:]
    assert "rank 1" not in log
    assert sorted(p.name for p in (root / "ddp").iterdir() if not p.name.startswith(".")) == \
        ["best.pt", "checkpoint.pt", "config.yaml", "history.csv", "metrics.json", "train.log",
         "users_test_standard.npz"]


def test_two_process_resume_is_exact(runs):
    root, _ = runs
    _assert_close_runs(root / "ddp", root / "part", loss_rtol=0.0, param_atol=0.0, metric_atol=0.0)


def test_sparse_gradients(runs):
    root, _ = runs
    _assert_close_runs(root / "sparse1", root / "sparse", loss_rtol=1e-5, param_atol=2e-4, metric_atol=1e-3)


def test_freqd_student_trains_with_two_processes(runs):
    # the KD loss is a sum over each rank's unique batch entities and edge-dropout masks are
    # drawn per rank, so it is not the one-process number; the replicas (student and
    # projectors) must stay identical (checked at every evaluation) and the teacher untouched
    root, _ = runs
    m = _metrics(root / "freqd")
    assert m["method"] == "freqd" and m["epochs_run"] == 2
    h = _history(root / "freqd")
    assert np.isfinite(h["loss"]).all() and (h["kd"] > 0).all()
    assert np.allclose(h["loss"], h["bpr"] + 0.5 * h["kd"], rtol=1e-4)
    ckpt = torch.load(root / "freqd" / "checkpoint.pt", map_location="cpu", weights_only=True)
    assert ckpt["distiller"] and all(k.startswith("proj_") for k in ckpt["distiller"])  # no teacher


def test_time_limit_stops_every_rank_together(runs):
    root, _ = runs
    m = _metrics(root / "timed")
    assert m["stopped_by_time_limit"] and 1 <= m["epochs_run"] < 500
    assert len(_history(root / "timed")["loss"]) == m["epochs_run"]


if __name__ == "__main__" and "--driver" in sys.argv:
    i = sys.argv.index("--driver")
    _driver(Path(sys.argv[i + 1]), sys.argv[i + 2])
