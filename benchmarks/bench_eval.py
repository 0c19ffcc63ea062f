"""Evaluation speed and memory (issue 2, "Speed and memory"). Prints ratios, not a timed test.

1. CiteULike-t, random MF embeddings (d = 20 and 400): evaluation throughput (users/s) and
   the time of ``Evaluator.evaluate`` divided by the floor, i.e. the bare chunked score
   matmul + ``torch.topk`` for the same users and chunks (no masking, no metrics).
   Target: <= 1.5x.
2. Gowalla (processed, 29,858 x 40,981): peak resident memory of a full evaluation (valid +
   test), measured in a fresh subprocess (``ru_maxrss``, and the VmHWM high-water mark reset
   just before evaluating where Linux allows it). Target: < 4 GB.

Usage::

    python benchmarks/bench_eval.py [--data-dir DIR] [--threads 1] [--dims 20 400]
                                    [--repeats 3] [--no-gowalla]

The data folder defaults to $FREQD_DATA_DIR, else ../shared/data next to the repository.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = Path(os.environ.get("FREQD_DATA_DIR") or REPO.parent / "shared" / "data")
FOLDERS = {"citeulike-t": "citeulike", "gowalla": "gowalla"}


# -- data ------------------------------------------------------------------------------------
def _read_pairs(path: Path) -> np.ndarray:
    """A ``USER<TAB>ITEM`` file with a header line (optionally .gz) as an int64 [n, 2]."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        fh.readline()  # header
        arr = np.array(fh.read().split(), dtype=np.int64)
    return arr.reshape(-1, 2)


def load(name: str, data_dir: Path, local: bool = False):
    """The processed split via ``freqd.data.load_dataset`` when the data layer has it, else
    via a minimal TSV reader of ``<data_dir>/<folder>/processed/{train,valid,test}.txt[.gz]``."""
    from freqd.errors import FreqdError

    try:
        if local:
            raise ImportError("--local-reader")
        from freqd.data import load_dataset  # type: ignore[attr-defined]

        return load_dataset(name, data_dir=data_dir, format="split")
    except (ImportError, AttributeError) as e:  # data layer not there yet
        if not local:
            print(f"(load_dataset unavailable: {e}; using the local TSV reader)", file=sys.stderr)
    except FreqdError as e:
        print(f"(load_dataset failed: {e}; using the local TSV reader)", file=sys.stderr)
    from freqd.data.dataset import Dataset

    folder = data_dir / FOLDERS[name] / "processed"
    parts = []
    for split in ("train", "valid", "test"):
        path = folder / f"{split}.txt.gz"
        if not path.exists():
            path = folder / f"{split}.txt"
        a = _read_pairs(path)
        parts.append((a[:, 0], a[:, 1]))
    return Dataset.from_pairs(name, *parts)


# -- timing ----------------------------------------------------------------------------------
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def best_of(fn, repeats: int, device: torch.device) -> float:
    """Best wall time of ``repeats`` calls (synchronising CUDA around each)."""
    times = []
    for _ in range(repeats):
        _sync(device)
        t = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t)
    return min(times)


def floor_run(U: torch.Tensor, V: torch.Tensor, users: torch.Tensor, chunk: int, k: int) -> None:
    """The floor: chunked score matmul + top-K for the same users, nothing else."""
    for s in range(0, len(users), chunk):
        torch.topk(U[users[s : s + chunk]] @ V.T, k, dim=1)


def matmul_run(U: torch.Tensor, V: torch.Tensor, users: torch.Tensor, chunk: int) -> None:
    """The score matmul alone, same chunks."""
    for s in range(0, len(users), chunk):
        U[users[s : s + chunk]] @ V.T


def time_split(ds, U: torch.Tensor, V: torch.Tensor, split: str, args) -> dict:
    """Evaluator (reused), evaluate() (one-shot), floor and matmul timings for one split."""
    from freqd.eval import Evaluator, default_chunk_size, evaluate

    dev = U.device
    cs = default_chunk_size(ds.n_items, args.chunk_mb * 2**20)

    def score_fn(u: torch.Tensor) -> torch.Tensor:
        return U[u] @ V.T

    ev = Evaluator(ds, protocol=args.protocol, device=dev, chunk_size=cs)  # ks (10, 20, 50)
    ev.evaluate(score_fn, split)  # warm-up (builds the split's index once)
    users = ev._prepare(split)[2].to(dev)
    k = ev.ks[-1]
    t_eval = best_of(lambda: ev.evaluate(score_fn, split), args.repeats, dev)
    t_once = best_of(
        lambda: evaluate(score_fn, ds, split, args.protocol, chunk_size=cs, device=dev),
        args.repeats,
        dev,
    )
    t_floor = best_of(lambda: floor_run(U, V, users, cs, k), args.repeats, dev)
    t_mm = best_of(lambda: matmul_run(U, V, users, cs), args.repeats, dev)
    return {
        "d": U.shape[1],
        "split": split,
        "users": len(users),
        "chunk": cs,
        "matmul_s": t_mm,
        "floor_s": t_floor,
        "eval_s": t_eval,
        "eval_once_s": t_once,
        "users_per_s": len(users) / t_eval,
        "ratio": t_eval / t_floor,
        "ratio_once": t_once / t_floor,
    }


def bench_citeulike(args) -> list[dict]:
    ds = load("citeulike-t", args.data_dir, args.local_reader)
    dev = torch.device(args.device)
    rows = []
    for d in args.dims:
        g = torch.Generator().manual_seed(d)
        U = (torch.randn(ds.n_users, d, generator=g) * 0.1).to(dev)
        V = (torch.randn(ds.n_items, d, generator=g) * 0.1).to(dev)
        rows += [time_split(ds, U, V, split, args) for split in ("valid", "test")]
    return rows


# -- memory (child process) ------------------------------------------------------------------
def _vm(field: str) -> int | None:
    """``VmRSS`` / ``VmHWM`` of this process in bytes (Linux), else None."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _reset_hwm() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM (Linux >= 4.0)
        return True
    except OSError:
        return False


def memory_child(
    name: str, d: int, data_dir: Path, protocol: str, device: str, local: bool = False
) -> dict:
    from freqd.eval import Evaluator

    dev = torch.device(device)
    ds = load(name, data_dir, local)
    g = torch.Generator().manual_seed(0)
    U = (torch.randn(ds.n_users, d, generator=g) * 0.1).to(dev)
    V = (torch.randn(ds.n_items, d, generator=g) * 0.1).to(dev)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
        cuda_before = torch.cuda.memory_allocated(dev)
    rss_before = _vm("VmRSS")
    maxrss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    hwm_reset = _reset_hwm()
    ev = Evaluator(ds, protocol=protocol, device=dev)
    _sync(dev)
    t = time.perf_counter()
    res = {s: ev.evaluate(lambda u: U[u] @ V.T, s) for s in ("valid", "test")}
    _sync(dev)
    seconds = time.perf_counter() - t
    cuda_peak = None
    if dev.type == "cuda":
        cuda_peak = torch.cuda.max_memory_allocated(dev) - cuda_before
    maxrss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {
        "dataset": name,
        "shape": [ds.n_users, ds.n_items],
        "d": d,
        "chunk": ev.chunk_size,
        "users": res["valid"]["n_users"] + res["test"]["n_users"],
        "eval_s": seconds,
        "rss_before": rss_before,
        "peak_during_eval": _vm("VmHWM") if hwm_reset else None,
        "maxrss_before": maxrss_before,
        "maxrss_after": maxrss_after,
        "maxrss_delta": maxrss_after - maxrss_before,
        "ndcg10_test": res["test"]["ndcg@10"],
        "cuda_peak_extra": cuda_peak,
    }


def bench_memory(args) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--_memory-child",
        "gowalla",
        "--dims",
        "20",
        "--data-dir",
        str(args.data_dir),
        "--threads",
        str(args.threads),
        "--protocol",
        args.protocol,
        "--device",
        args.device,
    ] + (["--local-reader"] if args.local_reader else [])
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


# -- main ------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--dims", type=int, nargs="+", default=[20, 400])
    p.add_argument("--repeats", type=int, default=3, help="best of N timings")
    p.add_argument("--protocol", default="standard", choices=["standard", "paper"])
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--chunk-mb", type=int, default=256, help="score chunk budget (MB)")
    p.add_argument("--local-reader", action="store_true", help="read processed/ TSVs directly")
    p.add_argument("--no-gowalla", action="store_true", help="skip the Gowalla memory run")
    p.add_argument("--_memory-child", dest="memory_child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    if args.memory_child:
        m = memory_child(
            args.memory_child,
            args.dims[0],
            args.data_dir,
            args.protocol,
            args.device,
            args.local_reader,
        )
        print(json.dumps(m))
        return 0

    print(
        f"torch {torch.__version__}, device {args.device}, {args.threads} thread(s), "
        f"protocol={args.protocol}, best of {args.repeats}"
    )
    print("\nCiteULike-t, random MF, ks=(10, 20, 50); floor = chunked matmul + topk(50)")
    hdr = (
        f"{'d':>4} {'split':>5} {'users':>6} {'chunk':>6} {'matmul ms':>10} {'floor ms':>9} "
        f"{'eval ms':>9} {'users/s':>10} {'eval/floor':>10} {'evaluate()/floor':>16}"
    )
    print(hdr)
    ok = True
    for r in bench_citeulike(args):
        ok &= r["ratio"] <= 1.5
        print(
            f"{r['d']:>4} {r['split']:>5} {r['users']:>6} {r['chunk']:>6} "
            f"{r['matmul_s'] * 1e3:>10.1f} {r['floor_s'] * 1e3:>9.1f} {r['eval_s'] * 1e3:>9.1f} "
            f"{r['users_per_s']:>10,.0f} "
            f"{r['ratio']:>9.2f}x {r['ratio_once']:>15.2f}x"
        )
    print(f"target eval/floor <= 1.5x: {'met' if ok else 'NOT met'}")

    if not args.no_gowalla:
        m = bench_memory(args)
        gb = 1024**3
        print(
            f"\nGowalla {m['shape'][0]:,} x {m['shape'][1]:,}, d={m['d']}, chunk={m['chunk']} users, "
            f"valid+test evaluation in a fresh process"
        )
        print(
            f"  time {m['eval_s']:.1f} s ({m['users'] / m['eval_s']:,.0f} users/s), "
            f"test ndcg@10 {m['ndcg10_test']:.5f} (random embeddings)"
        )
        print(
            f"  RSS before evaluating {m['rss_before'] / gb:.2f} GB; "
            f"peak during evaluation (VmHWM) "
            + (f"{m['peak_during_eval'] / gb:.2f} GB" if m["peak_during_eval"] else "n/a")
        )
        print(
            f"  ru_maxrss: {m['maxrss_before'] / gb:.2f} GB before, {m['maxrss_after'] / gb:.2f} GB "
            f"after (delta {m['maxrss_delta'] / gb:.2f} GB); target < 4 GB: "
            f"{'met' if m['maxrss_after'] < 4 * gb else 'NOT met'}"
        )
        if m["cuda_peak_extra"] is not None:
            print(
                f"  CUDA: peak allocated during evaluation beyond the embeddings "
                f"{m['cuda_peak_extra'] / gb:.2f} GB"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
