"""``freqd spectrum``: where in the graph spectrum a distilled student misses the teacher.

For each student: residual X = P(S) - T on one side (projector at the best epoch, eval
mode), its per-frequency loss ||u_kᵀ X||² over the eigenvectors of the side's graph
Laplacian, grouped in bands of equal count, the filter's weights h(λ)², and the Rayleigh
quotient tr(XᵀLX)/tr(XᵀX) (and that of the teacher's and each student's own final
representation: how smooth each is over the graph). With the full spectrum the per-frequency losses add up to
||X||²_F (Parseval): the command prints that check.

``--residual normalized`` analyses X = P(S)/||P(S)|| - T/||T|| (rows scaled to unit
length) instead: a cosine loss (FreqD's and fd's default) leaves the scale of P(S) free,
so the raw residual of such a student includes a scale mismatch the loss never saw; the
normalised one has ||x_u||² = 2 - 2 cos(P(S)_u, T_u), the quantity the loss reduces.
"""
from __future__ import annotations

import csv
import io
import sys
from pathlib import Path

import numpy as np

from ..errors import ConfigError
from ..utils.atomic import atomic_path, write_text


def load_distiller(student_dir: Path, teacher_run, dataset):
    """Rebuild a distilled run's distiller (with its projectors at the best epoch)."""
    from ..api import Run
    from ..distill.registry import build_distiller
    from ..train.trainer import BEST, load_checkpoint_file

    run = Run(student_dir, dataset=dataset)
    cfg = run.config
    if cfg.get("kind") != "distill":
        raise ConfigError(f"option '--student': {student_dir} is not a distilled run (kind {cfg.get('kind')!r})")
    m = dict(cfg["method"])
    name = m.pop("name")
    if name not in ("freqd", "fd", "freqd-exact", "fitnet"):
        raise ConfigError(f"option '--student': {student_dir} used {name!r}; spectrum needs a run whose projector "
                          "maps the student into the teacher's space: freqd, fd, freqd-exact or fitnet")
    dist = build_distiller(name, teacher_run.model, run.model, dataset, m)
    st = load_checkpoint_file(student_dir / BEST)
    if "distiller" not in st:
        raise ConfigError(f"{student_dir / BEST}: holds no projector state (trained before it was saved); rerun the distillation")
    dist.load_state_dict(st["distiller"])
    dist.eval()
    return name, dist


def cmd_spectrum(a) -> int:
    import torch

    from ..api import Run
    from ..spectral.analysis import band_losses, eigendecomposition, per_frequency_loss, rayleigh_quotient
    from ..spectral.graphs import build_graph, laplacian, normalize_adjacency

    kinds = [k.strip() for k in str(getattr(a, "residual", "raw") or "raw").split(",") if k.strip()]
    if kinds == ["both"]:
        kinds = ["raw", "normalized"]
    bad = [k for k in kinds if k not in ("raw", "normalized")]
    if bad or not kinds or len(set(kinds)) != len(kinds):
        raise ConfigError(f"option '--residual': {getattr(a, 'residual', None)!r}: expected raw, normalized, "
                          "or both comma-separated (raw,normalized), each once")
    device = getattr(a, "device", None) or "cpu"
    if device != "cpu":
        import torch

        if not (device == "cuda" or device.startswith("cuda:")):
            raise ConfigError(f"option '--device': {device!r}: expected cpu or cuda[:N]")
        if not torch.cuda.is_available():
            raise ConfigError(f"option '--device': {device!r} requested but CUDA is not available")
    teacher = Run(a.teacher)
    ds = teacher.dataset
    students = []
    for sdir in a.student:
        name, dist = load_distiller(Path(sdir), teacher, ds)
        students.append((Path(sdir).name, name, dist))
    # the graph: --graph / --k, else the first FreqD-family student's, else co-occurrence top-5
    c0 = next((d.cfg for _, _, d in students if hasattr(d.cfg, "graph")), None)
    graph = a.graph or (c0.graph if c0 else "cooccurrence")
    if graph == "bipartite":
        raise ConfigError("option '--graph': the spectrum is per side; use cooccurrence or knn")
    k = a.k or (c0.k if c0 else 5)
    R = ds.train
    if graph == "knn":
        tf = teacher.model.propagate()[0 if a.side == "user" else 1].detach().cpu().numpy()
        A = build_graph("knn", features=tf, k=k)
    else:
        A = build_graph("cooccurrence", R, side=a.side, k=k)
    A_hat = normalize_adjacency(A)
    n = A_hat.shape[0]
    exact = n <= a.max_dense
    print(f"{graph} graph over {a.side}s: {n:,} nodes, {A_hat.nnz:,} stored entries; "
          f"{'exact eigendecomposition' if exact else f'lowest and highest {a.partial} eigenpairs'} ...", file=sys.stderr)
    spec = eigendecomposition(A_hat, operator="adjacency", exact=exact, max_dense=a.max_dense,
                              n_low=a.partial, n_high=a.partial, device=device)
    lam = np.asarray(spec.lambdas, dtype=np.float64)
    L = laplacian(A_hat)
    L = laplacian(A_hat)
    per_student = {}
    side_idx = 0 if a.side == "user" else 1

    def own_rq(model) -> float:
        """Rayleigh quotient of a model's own final representation on this side (low =
        smooth over the graph: a low-pass filter in the loss acts as a smoothing prior)."""
        with torch.no_grad():
            F_ = model.propagate()[side_idx].detach().cpu().double().numpy()
        return float(rayleigh_quotient(L, F_))

    teacher_rq = own_rq(teacher.model)
    print(f"teacher: Rayleigh quotient of its own {a.side} representation {teacher_rq:.4f}")
    own = {label: own_rq(dist.student) for label, _, dist in students}
    # h(λ)² of each student's filter (1 everywhere for FitNet and fd: every frequency weighted equally)
    h2s = {lab: (np.asarray(d.filt.weights(lam)) if hasattr(d, "filt") else 1.0) * np.ones_like(lam)
           for lab, _, d in students}
    nb = max(1, min(a.bands, len(lam)))
    out = Path(a.out)
    labels = [label for label, _, _ in students]
    summary = io.StringIO()
    summary.write("student,method,residual,rayleigh_quotient,total_mse,sum_per_frequency,lowest_band_share,"
                  "student_rayleigh,teacher_rayleigh,exact\n")
    written = []
    for kind in kinds:
        norm = kind == "normalized"
        what = "||P(S)/|P(S)| - T/|T| ||^2" if norm else "||P(S) - T||^2"
        per_student = {}
        for label, name, dist in students:
            with torch.no_grad():
                X = dist.residuals(normalize=norm)["user" if a.side == "user" else "item"].cpu().double().numpy()
            per = np.asarray(per_frequency_loss(spec.U, X), dtype=np.float64)
            total = float((X ** 2).sum())
            rq = float(rayleigh_quotient(L, X))
            per_student[label] = (per, rq, total, band_losses(lam, per, nb))
            tag = f"[{kind}] " if len(kinds) > 1 else ""
            if exact:
                print(f"{tag}{label} ({name}): sum of per-frequency losses {per.sum():.6g} = {what} {total:.6g} "
                      f"(relative difference {abs(per.sum() - total) / max(total, 1e-30):.1e}); Rayleigh quotient {rq:.4f}; "
                      f"student's own representation {own[label]:.4f}")
            else:
                print(f"{tag}{label} ({name}): partial spectrum covers {per.sum() / max(total, 1e-30):.1%} of {what}; "
                      f"Rayleigh quotient {rq:.4f}; student's own representation {own[label]:.4f}")
        bands = per_student[labels[-1]][3]
        # per-band CSV
        buf = io.StringIO()
        w = csv.writer(buf)
        lo, hi = _band_edges(bands)
        w.writerow(["band", "lambda_lo", "lambda_hi", "n_components"] + [f"h2_mean_{lab}" for lab in labels]
                   + [f"loss_{lab}" for lab in labels])
        counts = _band_counts(bands)
        for i in range(len(lo)):
            sel = (lam >= lo[i]) & (lam <= hi[i])
            w.writerow([i, f"{lo[i]:.6f}", f"{hi[i]:.6f}", counts[i]]
                       + [f"{h2s[lab][sel].mean() if sel.any() else float('nan'):.6f}" for lab in labels]
                       + [f"{_band_values(per_student[lab][3])[i]:.6g}" for lab in labels])
        suffix = f"_{kind}" if len(kinds) > 1 else ""
        write_text(out / f"spectrum_{a.side}{suffix}.csv", buf.getvalue())
        for label, name, _ in students:
            per, rq, total, b = per_student[label]
            low = _band_values(b)[0] / max(per.sum(), 1e-30)
            summary.write(f"{label},{name},{kind},{rq:.6f},{total:.6g},{per.sum():.6g},"
                          f"{low:.6f},{own[label]:.6f},{teacher_rq:.6f},{exact}\n")
        _plot(out / f"spectrum_{a.side}{suffix}.png", lo, hi, labels, [_band_values(per_student[lab][3]) for lab in labels],
              lam, h2s, a.side, graph, norm)
        written += [f"spectrum_{a.side}{suffix}.csv", f"spectrum_{a.side}{suffix}.png"]
    write_text(out / f"summary_{a.side}.csv", summary.getvalue())
    print(f"wrote {out}/" + ", ".join(written + [f"summary_{a.side}.csv"]))
    return 0


def _band_edges(bands):
    if isinstance(bands, dict):
        return np.asarray(bands["lo"]), np.asarray(bands["hi"])
    return np.asarray(bands.lo), np.asarray(bands.hi)


def _band_values(bands):
    if isinstance(bands, dict):
        return np.asarray(bands["loss"])
    return np.asarray(bands.loss)


def _band_counts(bands):
    if isinstance(bands, dict):
        return list(bands.get("count", [0] * len(bands["lo"])))
    return list(getattr(bands, "count", [0] * len(bands.lo)))


def _plot(path: Path, lo, hi, labels, values, lam, h2s, side, graph, normalized=False) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover
        return
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 3.8))
    x = np.arange(len(lo))
    wdt = 0.8 / max(1, len(labels))
    for j, (lab, v) in enumerate(zip(labels, values)):
        ax1.bar(x + j * wdt, v, width=wdt, label=lab)
    ax1.set_xticks(x + 0.4 - wdt / 2)
    # eigenvalues of a Laplacian are >= 0: clamp float round-off (-1e-16 would print "-0.00")
    ax1.set_xticklabels([f"{max(a_, 0.0):.2f}" for a_ in lo], rotation=60, fontsize=7)
    ax1.set_xlabel("band (lowest eigenvalue λ in band)")
    ax1.set_ylabel("||u_kᵀX||² summed in band, X = " + ("P̂(S) - T̂ (rows normalised)" if normalized else "P(S) - T"),
                   fontsize=8)
    ax1.set_yscale("log")
    ax1.set_title(f"per-frequency distillation loss ({side}s, {graph} graph)")
    ax1.legend(fontsize=7)
    for lab, h2 in h2s.items():
        ax2.plot(lam, h2, lw=1.2, label=lab)
    ax2.legend(fontsize=7)
    ax2.set_xlabel("λ")
    ax2.set_ylabel("h(λ)²")
    ax2.set_title("filter weight per frequency")
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
