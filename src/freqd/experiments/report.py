"""Bench reports: results.csv, table.md (the paper's layout), efficiency.md and plots.

Everything is read back from the run directories, so a report can be rebuilt at any time
(``freqd bench ... --report-only``)."""
from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from ..errors import FreqdError
from ..utils.atomic import write_text

METRICS = ("recall@10", "ndcg@10", "recall@20", "ndcg@20")


def _rows(specs) -> List[dict]:
    rows = []
    for s in specs:
        p = s.out / "metrics.json"
        if not p.is_file():
            continue
        m = json.loads(p.read_text())
        row = {
            "label": s.label, "kind": s.kind, "seed": s.seed,
            "dataset": s.cfg["dataset"], "backbone": s.cfg["backbone"], "dim": s.cfg["model"]["dim"],
            "protocol": m["protocol"], "best_epoch": m["best_epoch"], "epochs_run": m["epochs_run"],
            "seconds_per_epoch": round(m["seconds_per_epoch"], 4), "eval_seconds": round(m["eval_seconds"], 4),
            "run_dir": str(s.out),
        }
        for k in METRICS:
            row[f"test_{k}"] = m["test"].get(k)
            row[f"valid_{k}"] = m["valid"].get(k)
        rows.append(row)
    return rows


def _mean_std(xs: Sequence[float]):
    n = len(xs)
    mu = sum(xs) / n
    sd = math.sqrt(sum((x - mu) ** 2 for x in xs) / (n - 1)) if n > 1 else 0.0
    return mu, sd


def paired_p(a: Sequence[float], b: Sequence[float]) -> Optional[float]:
    """Two-sided paired t-test p-value over seeds (None with fewer than 2 pairs)."""
    if len(a) < 2 or len(a) != len(b):
        return None
    from scipy import stats

    d = [x - y for x, y in zip(a, b)]
    if all(abs(x - d[0]) < 1e-15 for x in d):
        return 0.0 if abs(d[0]) > 0 else 1.0
    return float(stats.ttest_rel(a, b).pvalue)


def _order(labels: Sequence[str]) -> List[tuple]:
    from ..distill.registry import GROUPS

    out = []
    if "teacher" in labels:
        out.append(("", "teacher"))
    if "scratch" in labels:
        out.append(("", "scratch"))
    for g in ("response", "feature", "relation", "freqd"):
        for m in GROUPS[g]:
            for lab in labels:
                if lab.split("+")[0] == m:
                    out.append((g, lab))
    for lab in labels:
        if lab not in [x[1] for x in out]:
            out.append(("other", lab))
    return out


def make_table(rows: List[dict]) -> str:
    by: Dict[str, Dict[int, dict]] = {}
    for r in rows:
        by.setdefault(r["label"], {})[r["seed"]] = r
    order = _order(list(by))
    protocol = sorted({r["protocol"] for r in rows})
    ds = sorted({r["dataset"] for r in rows})
    out = io.StringIO()
    out.write(f"Dataset: {', '.join(ds)} | protocol: {', '.join(protocol)} | test metrics at the best validation epoch, "
              f"mean ± std over seeds (n = number of seeds)\n\n")
    out.write("| group | method | n | " + " | ".join(k.replace("@", "@") for k in METRICS) + " |\n")
    out.write("|---|---|---|" + "---|" * len(METRICS) + "\n")
    baselines = [m for g, m in order if g in ("response", "feature", "relation")]
    freqds = [m for g, m in order if g == "freqd"]
    best_base = {}
    for k in METRICS:
        cands = [(sum(r[f"test_{k}"] for r in by[m].values()) / len(by[m]), m) for m in baselines]
        best_base[k] = max(cands)[1] if cands else None
    for g, m in order:
        seeds = sorted(by[m])
        cells = []
        for k in METRICS:
            xs = [by[m][s][f"test_{k}"] for s in seeds]
            mu, sd = _mean_std(xs)
            mark = ""
            if g == "freqd" and best_base[k]:
                common = [s for s in seeds if s in by[best_base[k]]]
                p = paired_p([by[m][s][f"test_{k}"] for s in common], [by[best_base[k]][s][f"test_{k}"] for s in common])
                if p is not None and p < 0.05:
                    mb = sum(by[best_base[k]][s][f"test_{k}"] for s in common) / len(common)
                    mark = "*" if mu > mb else "▼"
            cells.append(f"{mu:.4f} ± {sd:.4f}{mark}")
        out.write(f"| {g} | {m} | {len(seeds)} | " + " | ".join(cells) + " |\n")
    for f in freqds:
        cells = []
        for k in METRICS:
            b = best_base[k]
            if not b:
                cells.append("-")
                continue
            mf = sum(r[f"test_{k}"] for r in by[f].values()) / len(by[f])
            mb = sum(r[f"test_{k}"] for r in by[b].values()) / len(by[b])
            cells.append(f"{100 * (mf - mb) / mb:+.1f}% (vs {b})" if mb else "-")
        out.write(f"| | improvement of {f} over the best baseline | | " + " | ".join(cells) + " |\n")
    out.write("\n`*` / `▼`: significantly better / worse than the best baseline of that column "
              "(paired t-test over seeds, p < 0.05).\n")

    def span(xs) -> str:
        lo, hi = min(xs), max(xs)
        return f"{lo}" if lo == hi else f"{lo}–{hi}"

    # the training budget each row had: a fixed-epoch comparison says so in its own table
    out.write("\nEpochs run (best epoch), over seeds: " + "; ".join(
        f"{m} {span([by[m][s]['epochs_run'] for s in by[m]])} ({span([by[m][s]['best_epoch'] for s in by[m]])})"
        for _, m in order) + ".\n")
    return out.getvalue()


def make_efficiency(rows: List[dict], specs) -> str:
    import torch

    out = io.StringIO()
    out.write("| run | dim | parameters | training s/epoch (mean) | epochs run (mean) | score 1,000 users x all items (ms) |\n|---|---|---|---|---|---|\n")
    seen = set()
    by: Dict[str, List[dict]] = {}
    for r in rows:
        by.setdefault(r["label"], []).append(r)
    for label, rs in by.items():
        spec = next(s for s in specs if s.label == label and (s.out / "metrics.json").is_file())
        params, ms = "-", "-"
        if label in ("teacher", "scratch") or label not in seen:
            try:
                from ..api import Run

                run = Run(spec.out)
                model = run.model
                params = f"{sum(p.numel() for p in model.parameters()):,}"
                users = torch.arange(min(1000, model.n_users))
                import time

                with torch.no_grad():
                    reps = model.propagate()
                    model.score(users, reps)
                    t0 = time.perf_counter()
                    for _ in range(3):
                        reps = model.propagate()
                        model.score(users, reps)
                    ms = f"{(time.perf_counter() - t0) / 3 * 1000:.1f}"
            except Exception:  # pragma: no cover - report what is available
                pass
            seen.add(label)
        spe = sum(r["seconds_per_epoch"] for r in rs) / len(rs)
        ep = sum(r["epochs_run"] for r in rs) / len(rs)
        out.write(f"| {label} | {rs[0]['dim']} | {params} | {spe:.2f} | {ep:.0f} | {ms} |\n")
    out.write("\nParameters count the served model only (projectors are dropped after training). "
              "Scoring time: propagate + score 1,000 users against all items on this machine's CPU.\n")
    return out.getvalue()


def mean_curves(specs, metric: str = "valid_ndcg@10") -> Dict[str, tuple]:
    """Per label: (epochs, mean of ``metric`` over the label's seeds, number of seeds), over
    the epochs every one of those seeds evaluated (a run that stopped earlier shortens its
    label's curve, so that no point mixes seeds)."""
    per: Dict[str, List[Dict[int, float]]] = {}
    for s in specs:
        h = s.out / "history.csv"
        if not h.is_file():
            continue
        with h.open(newline="") as f:
            vals = {int(r["epoch"]): float(r[metric]) for r in csv.DictReader(f) if r.get(metric)}
        if vals:
            per.setdefault(s.label, []).append(vals)
    out: Dict[str, tuple] = {}
    for lab, runs in per.items():
        epochs = sorted(set.intersection(*(set(v) for v in runs)))
        out[lab] = (epochs, [sum(v[e] for v in runs) / len(runs) for e in epochs], len(runs))
    return out


def write_plots(out_dir: Path, rows: List[dict], specs) -> List[Path]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover - plots are an optional extra
        return []
    paths = []
    by: Dict[str, List[dict]] = {}
    for r in rows:
        by.setdefault(r["label"], []).append(r)
    labels = [m for _, m in _order(list(by))]
    fig, axes = plt.subplots(1, 2, figsize=(max(6, 1.1 * len(labels) + 2), 3.6))
    for ax, k in zip(axes, ("recall@20", "ndcg@20")):
        mus, sds = [], []
        for lab in labels:
            mu, sd = _mean_std([r[f"test_{k}"] for r in by[lab]])
            mus.append(mu)
            sds.append(sd)
        ax.bar(range(len(labels)), mus, yerr=sds, capsize=3,
               color=["#888" if lab in ("teacher", "scratch") else "#c44" if lab.startswith("freqd") else "#48c" for lab in labels])
        ax.set_xticks(range(len(labels)))
        ax.set_xticklabels(labels, rotation=45, ha="right")
        ax.set_title(f"test {k}")
    fig.tight_layout()
    p = out_dir / "bars.png"
    fig.savefig(p, dpi=120)
    plt.close(fig)
    paths.append(p)
    curves = mean_curves(specs)
    fig, ax = plt.subplots(figsize=(7.5, 4.0))
    cmap = plt.get_cmap("tab20")
    styles = ["-", "--", "-.", ":"]
    for i, (lab, (xs, ys, n)) in enumerate(curves.items()):
        if lab in ("teacher", "scratch"):
            kw = {"color": "black" if lab == "teacher" else "0.5", "ls": "--", "lw": 1.2}
        else:
            kw = {"color": cmap(i % 20), "ls": styles[(i // 20 + i) % len(styles)] if not lab.startswith("freqd") else "-",
                  "lw": 2.0 if lab.startswith("freqd") else 1.1}
        ax.plot(xs, ys, label=f"{lab} (n={n})", **kw)
    ax.set_xlabel("epoch")
    ax.set_ylabel("valid NDCG@10 (mean over seeds)")
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    p = out_dir / "curves.png"
    fig.savefig(p, dpi=120)
    plt.close(fig)
    paths.append(p)
    return paths


def reevaluate(rows: List[dict], protocol: str, skip_missing: bool = False,
               skipped: Optional[List[str]] = None) -> List[dict]:
    """The same runs' best models evaluated on test under another masking protocol
    (model selection stays the one of the protocol they were trained with).

    A run with neither its best checkpoint nor an up-to-date cache is an error, unless
    ``skip_missing``: then it is left out and its folder name appended to ``skipped``.

    Each result is kept in the run folder as ``metrics_<protocol>.json`` (a small file, like
    metrics.json, to commit with the run), tagged with the best and last epoch it belongs to:
    a later report reuses it while the run is unchanged, even where the checkpoint is gone,
    and re-evaluates once the run has been extended."""
    from ..api import Run
    from ..errors import CheckpointError

    out = []
    for r in rows:
        run_dir = Path(r["run_dir"])
        cache = run_dir / f"metrics_{protocol}.json"
        tag = {"best_epoch": int(r["best_epoch"]), "epochs_run": int(r["epochs_run"])}
        res = None
        if cache.is_file():
            try:
                c = json.loads(cache.read_text())
                if c.get("protocol") == protocol and all(c.get(k) == v for k, v in tag.items()):
                    res = c["test"]
            except (ValueError, KeyError, TypeError):
                res = None
        if res is None:
            try:
                res = Run(run_dir).evaluate("test", protocol=protocol)
            except CheckpointError as e:
                if skip_missing:
                    if skipped is not None:
                        skipped.append(f"{r['label']}/s{r['seed']} ({run_dir.name})")
                    continue
                raise FreqdError(f"cannot re-evaluate {run_dir} under protocol '{protocol}' (no up-to-date "
                                 f"{cache.name} either): {e}") from None
            write_text(cache, json.dumps({"protocol": protocol, "selected_under": r["protocol"], **tag,
                                          "test": {k: float(v) for k, v in res.items() if isinstance(v, (int, float))}}, indent=2) + "\n")
        r = dict(r, protocol=f"{protocol} (selected under {r['protocol']})")
        for k in METRICS:
            r[f"test_{k}"] = res[k]
        out.append(r)
    return out


def write_report(out_dir: Path, specs, eval_protocol: Optional[str] = None, skip_missing: bool = False) -> dict:
    """results.csv, table.md, efficiency.md and the plots; with ``eval_protocol`` (another
    protocol than the runs were trained with) only table_<protocol>.md, where
    ``skip_missing`` leaves out, and lists under the table, the runs that can no longer be
    re-evaluated (no checkpoint, no up-to-date metrics_<protocol>.json)."""
    out_dir = Path(out_dir)
    rows = _rows(specs)
    if rows and eval_protocol and eval_protocol != rows[0]["protocol"]:
        skipped: List[str] = []
        rows = reevaluate(rows, eval_protocol, skip_missing=skip_missing, skipped=skipped)
        if not rows:
            raise FreqdError(f"no run can be re-evaluated under protocol '{eval_protocol}' (no checkpoints, "
                             f"no metrics_{eval_protocol}.json): left out {len(skipped)} runs")
        table = make_table(rows)
        if skipped:
            table += (f"\nLeft out (neither a checkpoint nor an up-to-date metrics_{eval_protocol}.json): "
                      + ", ".join(skipped) + ".\n")
        write_text(out_dir / f"table_{eval_protocol}.md", table)
        return {"table": table, "rows": rows}
    if not rows:
        return {}
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
    write_text(out_dir / "results.csv", buf.getvalue())
    table = make_table(rows)
    write_text(out_dir / "table.md", table)
    write_text(out_dir / "efficiency.md", make_efficiency(rows, specs))
    write_plots(out_dir, rows, specs)
    return {"table": table, "rows": rows}
