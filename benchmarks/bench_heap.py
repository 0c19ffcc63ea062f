"""Training-step cost with and without ``train.keep_freed_memory`` (freqd.utils.memory).

The setting is process-wide and cannot be undone, so every variant runs in its own
process: ``--heap system`` (glibc's default: blocks above 32 MiB are mapped afresh and
page-faulted in on every allocation) and ``--heap keep`` (the trainer's default),
alternating, ``--repeats`` times each. Prints the median seconds per step under both,
their ratio, and each process's peak RSS:

- fd and FreqD (linear, batch-local) steps, 400 -> 20: ``benchmarks/bench_freqd.py``;
- backbone training steps (propagate, BPR loss, backward, Adam with weight decay) of
  BPR-MF 400 and LightGCN 2000 (3 layers), the paper's teachers.

    python benchmarks/bench_heap.py --dataset citeulike-t --steps 5 --threads 1
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROW = re.compile(r"^\| (?P<name>[^|]+?) \| (?P<s>[0-9.]+) \|")
RSS = re.compile(r"^peak RSS (?P<gb>[0-9.]+) GB")


def backbone_child(a) -> None:
    """Time ``a.steps`` training steps of backbone ``a.child`` ("mf:400") and print JSON."""
    import resource

    import torch

    if a.threads:
        torch.set_num_threads(a.threads)
    if a.heap == "keep":
        from freqd.utils.memory import keep_freed_memory

        keep_freed_memory()
    from freqd.data.load import load_dataset
    from freqd.data.sampling import TrainSampler
    from freqd.models.registry import build_backbone

    name, dim = a.child.split(":")
    ds = load_dataset(a.dataset, data_dir=a.data_dir)
    torch.manual_seed(0)
    model = build_backbone(name, ds.n_users, ds.n_items, {"dim": int(dim)}, ds.train)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-3)
    sampler = TrainSampler(ds.train, 2048, 1, torch.Generator().manual_seed(0))
    batches = list(sampler.epoch())
    times = []
    for i in range(a.steps + 1):
        t0 = time.perf_counter()
        loss = model.loss(batches[i % len(batches)], model.propagate())["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i:
            times.append(time.perf_counter() - t0)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(json.dumps({"s": statistics.median(times), "rss": rss, "steps_per_epoch": len(batches)}))


def run_child(cmd: list[str]) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{out.stderr[-2000:]}")
    return out.stdout


def run_once(heap: str, a) -> tuple[dict, dict]:
    common = ["--dataset", a.dataset, "--steps", str(a.steps), "--heap", heap]
    if a.threads:
        common += ["--threads", str(a.threads)]
    if a.data_dir:
        common += ["--data-dir", a.data_dir]
    times, rss = {}, {}
    if not a.no_freqd:
        text = run_child([sys.executable, str(Path(__file__).with_name("bench_freqd.py")), *common,
                          "--filters", "linear", "--skip-full"])
        for line in text.splitlines():
            m = ROW.match(line)
            if m and m["name"] != "variant":
                times[m["name"]] = float(m["s"])
            m = RSS.match(line)
            if m:
                rss["fd / freqd process"] = float(m["gb"])
    for spec in [s for s in a.backbones.split(",") if s]:
        res = json.loads(run_child([sys.executable, __file__, "--child", spec, *common]).splitlines()[-1])
        label = f"{spec.replace(':', ' ')} training step ({res['steps_per_epoch']} steps/epoch)"
        times[label] = res["s"]
        rss[label] = res["rss"]
    return times, rss


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="citeulike-t")
    ap.add_argument("--data-dir", default=os.environ.get("FREQD_DATA_DIR"))
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=2, help="processes per variant (alternating)")
    ap.add_argument("--backbones", default="mf:400,lightgcn:2000", help="backbone:dim list ('' = none)")
    ap.add_argument("--no-freqd", action="store_true", help="skip the fd / FreqD steps")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--heap", default="keep", choices=["keep", "system"], help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        return backbone_child(a)
    times: dict = {"system": {}, "keep": {}}
    rss: dict = {"system": {}, "keep": {}}
    for _ in range(a.repeats):
        for heap in ("system", "keep"):
            t, r = run_once(heap, a)
            for name, s in t.items():
                times[heap].setdefault(name, []).append(s)
            for name, gb in r.items():
                rss[heap][name] = max(gb, rss[heap].get(name, 0.0))
    print(f"{a.dataset}, {a.steps} timed steps per process, {a.repeats} processes per variant, "
          f"threads {a.threads or 'default'}\n")
    print("| variant | heap system s/step | heap keep s/step | system / keep |\n|---|---|---|---|")
    for name in times["system"]:
        s, k = statistics.median(times["system"][name]), statistics.median(times["keep"][name])
        print(f"| {name} | {s:.4f} | {k:.4f} | {s / k:.2f}x |")
    print("\n| process | peak RSS system | peak RSS keep |\n|---|---|---|")
    for name in rss["system"]:
        print(f"| {name} | {rss['system'][name]:.2f} GB | {rss['keep'][name]:.2f} GB |")


if __name__ == "__main__":
    main()
