"""Training-step cost with and without ``train.keep_freed_memory`` (freqd.utils.memory).

The setting is process-wide and cannot be undone, so each variant runs
``benchmarks/bench_freqd.py`` in its own process: ``--heap system`` (glibc's default:
blocks above 32 MiB are mapped afresh and page-faulted in on every allocation) and
``--heap keep`` (the trainer's default), alternating, ``--repeats`` times each. Prints the
median seconds per step of fd and FreqD (linear, batch-local) under both, their ratios,
and each process's peak RSS.

    python benchmarks/bench_heap.py --dataset citeulike-t --steps 5 --threads 1
"""
from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

ROW = re.compile(r"^\| (?P<name>[^|]+?) \| (?P<s>[0-9.]+) \|")
RSS = re.compile(r"^peak RSS (?P<gb>[0-9.]+) GB")


def run_once(heap: str, a) -> tuple[dict, float]:
    cmd = [sys.executable, str(Path(__file__).with_name("bench_freqd.py")), "--dataset", a.dataset,
           "--steps", str(a.steps), "--filters", "linear", "--skip-full", "--heap", heap]
    if a.threads:
        cmd += ["--threads", str(a.threads)]
    if a.data_dir:
        cmd += ["--data-dir", a.data_dir]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        sys.exit(f"bench_freqd.py --heap {heap} failed:\n{out.stderr[-2000:]}")
    rows, rss = {}, float("nan")
    for line in out.stdout.splitlines():
        m = ROW.match(line)
        if m and m["name"] != "variant":
            rows[m["name"]] = float(m["s"])
        m = RSS.match(line)
        if m:
            rss = float(m["gb"])
    return rows, rss


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="citeulike-t")
    ap.add_argument("--data-dir", default=os.environ.get("FREQD_DATA_DIR"))
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=2, help="processes per variant (alternating)")
    a = ap.parse_args()
    times: dict = {"system": {}, "keep": {}}
    rss: dict = {"system": [], "keep": []}
    for _ in range(a.repeats):
        for heap in ("system", "keep"):
            rows, peak = run_once(heap, a)
            for name, s in rows.items():
                times[heap].setdefault(name, []).append(s)
            rss[heap].append(peak)
    print(f"{a.dataset}, {a.steps} timed steps per process, {a.repeats} processes per variant, "
          f"threads {a.threads or 'default'}\n")
    print("| variant | heap system s/step | heap keep s/step | system / keep |\n|---|---|---|---|")
    for name in times["system"]:
        s, k = statistics.median(times["system"][name]), statistics.median(times["keep"][name])
        print(f"| {name} | {s:.4f} | {k:.4f} | {s / k:.2f}x |")
    print(f"\npeak RSS per process: system {max(rss['system']):.2f} GB, keep {max(rss['keep']):.2f} GB")


if __name__ == "__main__":
    main()
