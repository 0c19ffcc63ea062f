"""``freqd compare``: per-user paired tests between two runs or two groups of runs.

    freqd compare --a bench/runs/freqd-mf-s{0,1,2}-* --b bench/runs/kd-mf-s{0,1,2}-* --labels freqd,kd

Each group's best models are evaluated on the same split and protocol; a user's value for a
group is the mean over the group's runs (seeds), and the tests of
:func:`freqd.eval.significance.paired_user_tests` run over the users with ground truth.
"""
from __future__ import annotations

import csv
import io
import json
import math
import sys
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

from ..errors import ConfigError

DEFAULT_METRICS = "recall@10,ndcg@10,recall@20,ndcg@20"


def parse_metrics(spec: str) -> Tuple[List[str], List[int], List[str]]:
    """``"recall@10,ndcg@20"`` -> (metric names, sorted cut-offs, the keys asked for)."""
    from ..eval.metrics import METRICS

    keys, names, ks = [], [], set()
    for tok in [t.strip() for t in spec.split(",") if t.strip()]:
        name, at, k = tok.partition("@")
        if name not in METRICS or not at or not k.isdigit() or int(k) < 1:
            raise ConfigError(
                f"option '--metrics': {tok!r} is not METRIC@K with METRIC one of {list(METRICS)} and K >= 1"
            )
        keys.append(f"{name}@{int(k)}")
        if name not in names:
            names.append(name)
        ks.add(int(k))
    if not keys:
        raise ConfigError("option '--metrics': give at least one METRIC@K")
    return names, sorted(ks), keys


def _data_key(cfg: dict) -> str:
    return json.dumps({"dataset": cfg.get("dataset"), "data": cfg.get("data") or {}}, sort_keys=True)


def make_evaluator(dataset, protocol: str, names: Sequence[str], ks: Sequence[int], device: str = "cpu"):
    import torch

    from ..eval.evaluator import Evaluator

    return Evaluator(dataset, protocol=protocol, ks=ks, metrics=names, device=torch.device(device))


def run_values(run_dir, ev, split: str, keys: Sequence[str]):
    """One run's best model under evaluator ``ev``: ``(users, values [n_users, len(keys)])``.

    Read from the run's ``users_<split>_<protocol>.npz`` while it is up to date (see
    :mod:`freqd.eval.user_values`; it needs no checkpoint), else computed from the best
    model and written there for the next time."""
    import torch

    from ..api import Run
    from ..eval.user_values import load_user_values, run_tag, save_user_values

    run = Run(run_dir, dataset=ev.dataset, device=str(ev.device))
    tag = run_tag(run.metrics, ev.dataset.fingerprint())
    hit = load_user_values(run_dir, split, ev.protocol, keys, tag)
    if hit is not None:
        return hit
    m = run.model
    with torch.no_grad():
        reps = m.propagate()
        u, vals, all_keys = ev.per_user(lambda q: m.score(q, reps), split)
    u, v = u.numpy(), vals[:, [all_keys.index(k) for k in keys]].numpy()
    save_user_values(run_dir, split, ev.protocol, u, v, keys, tag)
    return u, v


def group_values(run_dirs: Sequence[str], ev, split: str, keys: Sequence[str], cache: Optional[dict] = None):
    """``(users, mean per-user values [n_users, len(keys)] over run_dirs)`` under evaluator
    ``ev``; ``cache`` (a dict) keeps each run's values for the next call."""
    total, users = None, None
    for d in run_dirs:
        key = str(d)
        if cache is not None and key in cache:
            u, v = cache[key]
        else:
            u, v = run_values(d, ev, split, keys)
            if cache is not None:
                cache[key] = (u, v)
        users = u if users is None else users
        total = v if total is None else total + v
    return users, total / len(run_dirs)


def bench_user_tests(rows: List[dict], label: str, protocol: str, split: str = "test",
                     metrics: str = DEFAULT_METRICS) -> str:
    """Markdown: ``label`` against every other student label of a bench's result rows
    (``report._rows``), over the seeds both have, each user averaged over those seeds."""
    from ..api import _dataset_for
    from ..errors import CheckpointError, FreqdError
    from ..eval.significance import paired_user_tests
    from ..runs import read_run_config

    by: dict = {}
    for r in rows:
        by.setdefault(r["label"], {})[int(r["seed"])] = r["run_dir"]
    if label not in by:
        raise ConfigError(f"option '--user-tests': no finished runs labelled {label!r} (labels: {sorted(by)})")
    names, ks, keys = parse_metrics(metrics)
    ev = make_evaluator(_dataset_for(read_run_config(Path(by[label][min(by[label])]))), protocol, names, ks)
    cache: dict = {}
    parts = [f"Per-user paired tests, {label} against each student: test metrics of each user averaged over "
             f"the seeds both methods have, paired t-test (Holm-adjusted over the {len(keys)} metrics) and "
             f"Wilcoxon signed-rank over the users with ground truth; split {split}, protocol {protocol} "
             f"(`freqd compare` gives the same for any two groups of runs).\n"]
    for other in [x for x in by if x not in (label, "teacher")]:
        seeds = sorted(set(by[label]) & set(by[other]))
        if not seeds:
            continue
        try:
            _, va = group_values([by[label][s] for s in seeds], ev, split, keys, cache=cache)
            _, vb = group_values([by[other][s] for s in seeds], ev, split, keys, cache=cache)
        except CheckpointError as e:
            raise FreqdError(f"option '--user-tests': per-user tests need each run's best model "
                             f"or an up-to-date users_{split}_{protocol}.npz: {e}") from None
        parts.append(f"\n### {label} vs {other} (seeds {', '.join(map(str, seeds))})\n\n")
        parts.append(render(paired_user_tests(va, vb, keys), label, other))
    return "".join(parts)


def _fmt_p(p: float) -> str:
    if math.isnan(p):
        return "–"
    return f"{p:.2g}" if p >= 1e-4 else f"{p:.1e}"


def render(rows, label_a: str, label_b: str) -> str:
    out = io.StringIO()
    out.write(f"| metric | users | {label_a} | {label_b} | {label_a} − {label_b} (95% CI) | relative | "
              f"users {label_a} better / {label_b} better / tied | p (paired t) | p (t, Holm) | p (Wilcoxon) |\n")
    out.write("|---|---|---|---|---|---|---|---|---|---|\n")
    for r in rows:
        rel = "–" if math.isnan(r["rel"]) else f"{100 * r['rel']:+.1f}%"
        out.write(
            f"| {r['metric']} | {r['users']:,} | {r['mean_a']:.4f} | {r['mean_b']:.4f} | "
            f"{r['diff']:+.4f} ({r['ci_low']:+.4f}, {r['ci_high']:+.4f}) | {rel} | "
            f"{r['a_better']:,} / {r['b_better']:,} / {r['ties']:,} | {_fmt_p(r['p_t'])} | "
            f"{_fmt_p(r['p_t_holm'])} | {_fmt_p(r['p_wilcoxon'])} |\n"
        )
    return out.getvalue()


def cmd_compare(a) -> int:
    from ..api import _dataset_for
    from ..eval.evaluator import EVAL_SPLITS, PROTOCOLS
    from ..eval.significance import paired_user_tests
    from ..runs import read_run_config
    from ..utils.atomic import atomic_path

    labels = [t.strip() for t in (a.labels or "a,b").split(",")]
    if len(labels) != 2 or not all(labels):
        raise ConfigError(f"option '--labels': expected two comma-separated names, got {a.labels!r}")
    if a.split not in EVAL_SPLITS:
        raise ConfigError(f"option '--split': {a.split!r} is not one of {list(EVAL_SPLITS)}")
    if a.protocol is not None and a.protocol not in PROTOCOLS:
        raise ConfigError(f"option '--protocol': {a.protocol!r} is not one of {list(PROTOCOLS)}")
    both = sorted({str(Path(p).resolve()) for p in a.a} & {str(Path(p).resolve()) for p in a.b})
    if both:
        raise ConfigError(f"options '--a' and '--b': {both[0]} is in both groups")
    names, ks, keys = parse_metrics(a.metrics)

    cfgs = {}
    for opt, dirs in (("--a", a.a), ("--b", a.b)):
        for d in dirs:
            if not Path(d).is_dir():
                raise ConfigError(f"option '{opt}': {d} is not a run directory")
            cfgs[d] = (opt, read_run_config(Path(d)))
    first, (_, cfg0) = next(iter(cfgs.items()))
    for d, (opt, cfg) in cfgs.items():
        if _data_key(cfg) != _data_key(cfg0):
            raise ConfigError(
                f"option '{opt}': {d} was trained on dataset {cfg.get('dataset')!r} with other data options "
                f"than {first} ({cfg0.get('dataset')!r}); per-user tests need the same users and splits"
            )
    protocol = a.protocol or cfg0["train"]["protocol"]
    dataset = _dataset_for(cfg0)
    from ..errors import CheckpointError

    ev = make_evaluator(dataset, protocol, names, ks, a.device)
    vals = {}
    for opt, dirs in (("--a", a.a), ("--b", a.b)):
        try:
            vals[opt] = group_values(dirs, ev, a.split, keys)
        except CheckpointError as e:
            raise CheckpointError(f"option '{opt}': {e} (per-user tests need each run's best model "
                                  f"or an up-to-date users_<split>_<protocol>.npz)") from None
    (users_a, va), (_, vb) = vals["--a"], vals["--b"]
    rows = paired_user_tests(va, vb, keys)

    if a.out:
        with atomic_path(a.out) as tmp:
            with open(tmp, "w", newline="") as f:
                w = csv.writer(f)
                w.writerow(["user"] + [f"{labels[0]}_{k}" for k in keys] + [f"{labels[1]}_{k}" for k in keys])
                for i, u in enumerate(users_a):
                    w.writerow([int(u)] + [f"{x:.6g}" for x in va[i]] + [f"{x:.6g}" for x in vb[i]])
    if a.json:
        print(json.dumps({"a": {"label": labels[0], "runs": list(a.a)}, "b": {"label": labels[1], "runs": list(a.b)},
                          "split": a.split, "protocol": protocol, "n_users_dataset": dataset.n_users,
                          "tests": rows}, indent=2))
        return 0
    n = rows[0]["users"]
    print(f"{labels[0]}: {len(a.a)} run(s), {labels[1]}: {len(a.b)} run(s), each user's value averaged over "
          f"a group's runs; split {a.split}, protocol {protocol}, {n:,} users with ground truth "
          f"(paired tests over these users)")
    if protocol == "paper":
        print(f"(protocol paper: `freqd eval` averages over all {dataset.n_users:,} users, counting those without "
              f"ground truth as 0, i.e. these means times {n / max(dataset.n_users, 1):.4f})")
    print()
    sys.stdout.write(render(rows, labels[0], labels[1]))
    if a.out:
        print(f"\nper-user values: {a.out}", file=sys.stderr)
    return 0
