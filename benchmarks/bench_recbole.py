"""Training speed against RecBole 1.2.1 (issue 2, speed bullet). Prints figures; not a test.

The same CiteULike-t training pairs, the same backbone settings (BPR loss, one uniform
negative per positive, batch 2048, Adam lr 1e-3 with the same weight decay), one torch
thread, two epochs, no evaluation counted: seconds per training epoch of

* freqd: ``python -m freqd train citeulike-t ... train.threads=1`` in a subprocess, read
  from the run's ``history.csv`` (``train_seconds``: sampling, propagate, loss, backward,
  optimizer step; the validation/test evaluation after the last epoch is not counted);
* RecBole: a subprocess of RecBole's own interpreter (a separate virtual environment; RecBole
  is not a freqd dependency) that builds ``Config``/``create_dataset``/``data_preparation``/
  ``Trainer`` on an atomic copy of the same split and times ``Trainer._train_epoch``
  (its data loader's batching and negative sampling included, no evaluation).

Runs alternate freqd, RecBole, freqd, RecBole, ... per configuration to spread the load of a
shared machine over both; the load average is printed next to each run.

Usage::

    python benchmarks/bench_recbole.py --recbole-python /work/recbole-venv/bin/python
        [--data-dir DIR] [--rounds 2] [--epochs 2] [--heavy-rounds 1] [--heavy-epochs 1]
        [--threads 1] [--only mf-400 mf-20 lightgcn-64 lightgcn-2000] [--json OUT]

LightGCN d = 2000 takes minutes per epoch on one CPU thread (RecBole about 4), so it runs
``--heavy-rounds`` x ``--heavy-epochs`` (default one pair of one-epoch runs); the whole default
run takes about 10 minutes on a 2-core machine.

The RecBole environment: ``python3 -m venv ENV && ENV/bin/pip install torch==2.13.0
recbole==1.2.1 "numpy<2" "setuptools<70" "pandas<2.3" "scipy<1.14"`` (RecBole 1.2.1 needs
``pkg_resources``, gone from recent setuptools, and predates numpy 2).
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = Path(os.environ.get("FREQD_DATA_DIR") or REPO.parent / "shared" / "data")

#: name -> (freqd backbone, RecBole model, dim, n_layers, weight decay). The weight decays are
#: the presets' (configs/citeulike-t: MF 1e-3; LightGCN teacher 1e-7), passed to both tools.
#: Configurations in HEAVY run --heavy-rounds x --heavy-epochs (one epoch is minutes on a CPU).
CONFIGS = {
    "mf-400": ("mf", "BPR", 400, 0, 1e-3),
    "mf-20": ("mf", "BPR", 20, 0, 1e-3),
    "lightgcn-64": ("lightgcn", "LightGCN", 64, 3, 1e-7),
    "lightgcn-2000": ("lightgcn", "LightGCN", 2000, 3, 1e-7),
}
HEAVY = {"lightgcn-2000"}

# Run by RecBole's interpreter: one JSON argument in, one "RESULT {json}" line out.
RECBOLE_WORKER = r'''
import json, sys, time
args = json.loads(sys.argv[1])
import torch
torch.set_num_threads(args["threads"])
from recbole.config import Config
from recbole.data import create_dataset, data_preparation
from recbole.utils import get_model, get_trainer, init_seed
import recbole
cfg = {
    "data_path": args["data_path"], "benchmark_filename": ["train", "valid", "test"],
    "USER_ID_FIELD": "user_id", "ITEM_ID_FIELD": "item_id",
    "load_col": {"inter": ["user_id", "item_id"]},
    "train_neg_sample_args": {"distribution": "uniform", "sample_num": 1, "alpha": 1.0,
                              "dynamic": False, "candidate_num": 0},
    "train_batch_size": args["batch_size"], "epochs": args["epochs"], "eval_step": 10**6,
    "learner": "adam", "learning_rate": args["lr"], "weight_decay": args["weight_decay"],
    "embedding_size": args["dim"], "use_gpu": False, "seed": 0, "reproducibility": True,
    "show_progress": False, "state": "ERROR", "worker": 0, "save_dataset": False,
    "save_dataloaders": False, "checkpoint_dir": args["tmp"], "log_wandb": False,
    "eval_args": {"order": "RO", "group_by": "user", "mode": "full"},
}
if args["n_layers"]:
    cfg["n_layers"] = args["n_layers"]
config = Config(model=args["model"], dataset="cul", config_dict=cfg)
init_seed(config["seed"], config["reproducibility"])
torch.set_num_threads(args["threads"])
dataset = create_dataset(config)
train_data, _valid, _test = data_preparation(config, dataset)
model = get_model(config["model"])(config, train_data._dataset).to(config["device"])
trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
secs, losses = [], []
for epoch in range(args["epochs"]):
    t0 = time.perf_counter()
    loss = trainer._train_epoch(train_data, epoch, show_progress=False)
    secs.append(time.perf_counter() - t0)
    losses.append(loss if isinstance(loss, float) else list(loss))
print("RESULT " + json.dumps({
    "seconds": secs, "loss": losses, "threads": torch.get_num_threads(),
    "n_users": dataset.user_num, "n_items": dataset.item_num,
    "n_train": len(train_data._dataset), "batches": len(train_data),
    "optimizer": type(trainer.optimizer).__name__,
    "versions": {"recbole": recbole.__version__, "torch": torch.__version__}}))
'''


def _env(threads: int) -> dict:
    env = dict(os.environ)
    for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[k] = str(threads)
    return env


def write_atomic_files(data_dir: Path, out: Path) -> dict:
    """Export CiteULike-t's split with ``freqd data export`` and convert it to RecBole atomic
    files ``out/cul/cul.{train,valid,test}.inter`` (``user_id:token<TAB>item_id:token``)."""
    export = out / "export"
    subprocess.run([sys.executable, "-m", "freqd", "data", "export", "citeulike-t",
                    "--out", str(export), "--data-dir", str(data_dir)], check=True,
                   stdout=subprocess.DEVNULL)
    folder = out / "cul"
    folder.mkdir(parents=True, exist_ok=True)
    rows = {}
    for part in ("train", "valid", "test"):
        lines = (export / f"{part}.txt").read_text().splitlines()
        body = lines[1:]  # header USER\tITEM
        rows[part] = len(body)
        (folder / f"cul.{part}.inter").write_text(
            "user_id:token\titem_id:token\n" + "\n".join(body) + "\n")
    return rows


def run_freqd(name: str, args, work: Path, epochs: int) -> dict:
    """One ``freqd train`` subprocess; per-epoch training seconds from its history.csv."""
    backbone, _, dim, n_layers, wd = CONFIGS[name]
    out = Path(tempfile.mkdtemp(prefix=f"freqd-{name}-", dir=work)) / "run"
    cmd = [sys.executable, "-m", "freqd", "train", "citeulike-t", "--backbone", backbone,
           "--dim", str(dim), "--epochs", str(epochs), "--out", str(out),
           "--data-dir", str(args.data_dir), "--no-progress", f"train.threads={args.threads}",
           f"train.batch_size={args.batch_size}", f"train.lr={args.lr}",
           f"train.weight_decay={wd}", "train.eval_every=1000000"]
    if n_layers:
        cmd.append(f"model.n_layers={n_layers}")
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, env=_env(args.threads))
    if proc.returncode != 0:
        raise RuntimeError(f"freqd failed:\n{proc.stderr[-3000:]}")
    with open(out / "history.csv", newline="") as fh:
        hist = list(csv.DictReader(fh))
    return {"seconds": [float(r["train_seconds"]) for r in hist],
            "loss": [float(r["loss"]) for r in hist]}


def run_recbole(name: str, args, work: Path, atomic: Path, epochs: int) -> dict:
    """One RecBole subprocess (its own interpreter) timing ``Trainer._train_epoch``."""
    _, model, dim, n_layers, wd = CONFIGS[name]
    tmp = Path(tempfile.mkdtemp(prefix=f"recbole-{name}-", dir=work))
    payload = {"data_path": str(atomic), "model": model, "dim": dim, "n_layers": n_layers,
               "weight_decay": wd, "lr": args.lr, "batch_size": args.batch_size,
               "epochs": epochs, "threads": args.threads, "tmp": str(tmp)}
    worker = work / "recbole_worker.py"
    worker.write_text(RECBOLE_WORKER)
    # cwd = tmp: RecBole writes ./log and ./log_tensorboard next to where it runs
    proc = subprocess.run([args.recbole_python, str(worker), json.dumps(payload)], cwd=tmp, check=False,
                          capture_output=True, text=True, env=_env(args.threads))
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"RecBole failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def _load() -> str:
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--recbole-python", default="/work/recbole-venv/bin/python",
                   help="the interpreter of the environment where recbole==1.2.1 is installed")
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    p.add_argument("--only", nargs="+", choices=list(CONFIGS), default=list(CONFIGS))
    p.add_argument("--rounds", type=int, default=2, help="freqd/RecBole pairs per config")
    p.add_argument("--epochs", type=int, default=2, help="training epochs per run")
    p.add_argument("--heavy-rounds", type=int, default=1, help="rounds for lightgcn-2000")
    p.add_argument("--heavy-epochs", type=int, default=1, help="epochs per run for lightgcn-2000")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=2048)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--json", type=Path, default=None, help="also write the raw results here")
    args = p.parse_args(argv)

    import torch

    import freqd

    t_start = time.perf_counter()
    print(f"freqd {getattr(freqd, '__version__', '?')} (torch {torch.__version__}, python "
          f"{sys.version.split()[0]}) vs RecBole from {args.recbole_python}")
    print(f"CPU cores {os.cpu_count()}, threads per run {args.threads}, batch {args.batch_size}, "
          f"lr {args.lr}, {args.epochs} epochs per run, {args.rounds} rounds (lightgcn-2000: "
          f"{args.heavy_epochs} x {args.heavy_rounds}); load avg {_load()}")
    results: dict = {}
    with tempfile.TemporaryDirectory(prefix="bench-recbole-") as d:
        work = Path(d)
        rows = write_atomic_files(args.data_dir, work / "atomic")
        print(f"CiteULike-t split (freqd data export): {rows}")
        for name in args.only:
            res = results[name] = {"freqd": [], "recbole": []}
            heavy = name in HEAVY
            rounds, epochs = (args.heavy_rounds, args.heavy_epochs) if heavy else (args.rounds, args.epochs)
            for r in range(rounds):
                for tool in ("freqd", "recbole"):
                    load = _load()
                    t0 = time.perf_counter()
                    out = (run_freqd(name, args, work, epochs) if tool == "freqd"
                           else run_recbole(name, args, work, work / "atomic", epochs))
                    out["load_before"], out["wall"] = load, time.perf_counter() - t0
                    res[tool].append(out)
                    extra = ""
                    if tool == "recbole":
                        extra = (f"  [{out['n_users']}x{out['n_items']} incl. padding, "
                                 f"{out['batches']} batches, {out['optimizer']}, "
                                 f"RecBole {out['versions']['recbole']} torch {out['versions']['torch']}]")
                    print(f"  {name:14s} round {r + 1} {tool:8s} s/epoch "
                          + " ".join(f"{s:7.2f}" for s in out["seconds"])
                          + f"  (process {out['wall']:.0f}s, load {load}){extra}", flush=True)
    print()
    print(f"{'config':14s} {'freqd s/epoch':>14s} {'RecBole s/epoch':>16s} {'freqd/RecBole':>14s}"
          "   (median over all epochs of all rounds; min in brackets)")
    for name, res in results.items():
        f = [s for o in res["freqd"] for s in o["seconds"]]
        b = [s for o in res["recbole"] for s in o["seconds"]]
        fm, bm = statistics.median(f), statistics.median(b)
        res["summary"] = {"freqd_median": fm, "recbole_median": bm, "ratio": fm / bm,
                          "freqd_min": min(f), "recbole_min": min(b)}
        print(f"{name:14s} {fm:8.2f} [{min(f):5.2f}] {bm:9.2f} [{min(b):5.2f}] {fm / bm:12.2f}x")
    print(f"\ntotal wall {time.perf_counter() - t_start:.0f}s; load avg at the end {_load()}")
    if args.json:
        from freqd.utils.atomic import write_json

        write_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
