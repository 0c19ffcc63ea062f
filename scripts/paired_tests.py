"""Paired t-tests over seeds between methods of a bench's results.csv (or several, later
files overriding earlier rows of the same label and seed).

    python scripts/paired_tests.py bench/cul-mf/results.csv --pairs freqd:fd freqd:kd freqd:fitnet

Prints a markdown table: for each pair and metric, the seeds both have, the mean difference
(a - b), how many seeds a wins, and the two-sided paired t-test p-value (scipy.stats.ttest_rel).
"""
from __future__ import annotations

import argparse
import csv
import sys

METRICS = ("recall@10", "ndcg@10", "recall@20", "ndcg@20")


def load(paths):
    by = {}
    for p in paths:
        with open(p, newline="") as f:
            for r in csv.DictReader(f):
                by.setdefault(r["label"], {})[int(r["seed"])] = r
    return by


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results", nargs="+", help="results.csv files")
    ap.add_argument("--pairs", nargs="+", required=True, metavar="A:B")
    ap.add_argument("--split", default="test", choices=["test", "valid"])
    a = ap.parse_args(argv)
    from scipy import stats

    by = load(a.results)
    print("| a vs b | metric | seeds | mean a − b | a wins | p (paired t) |\n|---|---|---|---|---|---|")
    for pair in a.pairs:
        x, _, y = pair.partition(":")
        for lab in (x, y):
            if lab not in by:
                print(f"error: no rows labelled {lab!r} in {', '.join(a.results)}", file=sys.stderr)
                return 2
        seeds = sorted(set(by[x]) & set(by[y]))
        for k in METRICS:
            xs = [float(by[x][s][f"{a.split}_{k}"]) for s in seeds]
            ys = [float(by[y][s][f"{a.split}_{k}"]) for s in seeds]
            d = [u - v for u, v in zip(xs, ys)]
            p = float(stats.ttest_rel(xs, ys).pvalue) if len(seeds) > 1 else float("nan")
            print(f"| {x} vs {y} | {k} | {len(seeds)} | {sum(d) / len(d):+.5f} | "
                  f"{sum(v > 0 for v in d)}/{len(d)} | {p:.3g} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
