"""Subcommands built on the foundation: bench, demo, spectrum, compare."""
from __future__ import annotations

import sys

DEMO_METHODS = ("fd", "freqd")


def register_extra(sub) -> None:
    b = sub.add_parser("bench", help="the paper's comparison: teacher, scratch and methods over seeds")
    b.add_argument("dataset")
    b.add_argument("--backbone", default="mf", choices=["mf", "lightgcn", "simplex"], help="student backbone")
    b.add_argument("--teacher-backbone", choices=["mf", "lightgcn", "simplex"], help="default: --backbone")
    b.add_argument("--teacher", help="use this finished teacher run instead of training one")
    b.add_argument("--methods", default="fd,freqd", help="comma-separated methods (default fd,freqd)")
    b.add_argument("--seeds", default="1",
                   help="students per method: N (seeds 0..N-1), or a list / range of seeds (3,4 or 3-4)")
    b.add_argument("--out", required=True)
    b.add_argument("--protocol", choices=["standard", "paper"])
    b.add_argument("--jobs", type=int, default=1, help="runs in parallel processes")
    b.add_argument("--epochs", type=int, help="epoch cap for every run")
    b.add_argument("--patience", type=int, help="early-stopping patience for every run")
    b.add_argument("--data-dir")
    b.add_argument("--device")
    b.add_argument("--report-only", action="store_true", help="only rebuild the report from finished runs")
    b.add_argument("--eval-protocol", choices=["standard", "paper"],
                   help="with --report-only: re-evaluate every run's best model under this protocol (table_<protocol>.md)")
    b.add_argument("--skip-missing", action="store_true",
                   help="with --eval-protocol: leave out (and list under the table) the runs with neither a checkpoint "
                        "nor an up-to-date metrics_<protocol>.json, instead of stopping")
    b.add_argument("--user-tests", metavar="METHOD",
                   help="with --report-only: per-user paired tests of METHOD against every other student "
                        "(user_tests.md, or user_tests_<protocol>.md with --eval-protocol)")
    b.add_argument("overrides", nargs="*", metavar="key=value", help="options for every run (teacher.* for the teacher only)")

    d = sub.add_parser("demo", help="the main job: teacher, scratch, fd and freqd on citeulike-t (BPR-MF), with a report")
    d.add_argument("--dataset", default="citeulike-t")
    d.add_argument("--out", default="freqd-demo")
    d.add_argument("--seeds", type=int, default=1)
    d.add_argument("--jobs", type=int, default=None,
                   help="students trained in parallel processes (default: all three on the CPU, one thread each; 1 on cuda)")
    d.add_argument("--teacher-time", type=float, default=None, help="teacher training budget in seconds (default 150)")
    d.add_argument("--student-time", type=float, default=None, help="budget per student in seconds (default 220)")
    d.add_argument("--epochs", type=int, default=None, help="epoch cap for every run")
    d.add_argument("--patience", type=int, default=None, help="early-stopping patience (default 30)")
    d.add_argument("--full", action="store_true", help="no time budgets: up to 1000 epochs, patience 30")
    d.add_argument("--data-dir")
    d.add_argument("--device")
    d.add_argument("overrides", nargs="*", metavar="key=value")

    s = sub.add_parser("spectrum", help="per-frequency loss of trained students over a graph's spectrum")
    s.add_argument("--teacher", required=True, help="teacher run directory")
    s.add_argument("--student", required=True, action="append", help="distilled student run directory (repeatable)")
    s.add_argument("--side", choices=["user", "item"], default="user")
    s.add_argument("--bands", type=int, default=20)
    s.add_argument("--graph", choices=["cooccurrence", "knn"], default=None, help="default: the first student's graph")
    s.add_argument("--k", type=int, default=None)
    s.add_argument("--max-dense", type=int, default=30000, help="exact eigendecomposition up to this many nodes")
    s.add_argument("--partial", type=int, default=200, help="above --max-dense: lowest and highest M eigenpairs")
    s.add_argument("--residual", default="raw",
                   help="raw: P(S) - T; normalized: P(S)/||P(S)|| - T/||T|| per row (the scale a cosine loss "
                        "leaves free removed; its squared norm is 2 - 2 cos per row); raw,normalized: both from "
                        "one eigendecomposition (files suffixed _raw / _normalized)")
    s.add_argument("--device", default="cpu", help="where the dense eigendecomposition runs (cpu or cuda)")
    s.add_argument("--out", required=True)

    c = sub.add_parser("compare", help="per-user paired tests between two runs or two groups of seeds",
                       description="Evaluate each run's best model on one split, average each user's metrics over "
                                   "a group's runs, and test the paired per-user differences (paired t, Holm over "
                                   "the metrics, Wilcoxon signed-rank).")
    c.add_argument("--a", nargs="+", required=True, metavar="RUN", help="run directories of the first group")
    c.add_argument("--b", nargs="+", required=True, metavar="RUN", help="run directories of the second group")
    c.add_argument("--labels", default="a,b", help="names of the two groups (default a,b)")
    c.add_argument("--split", default="test", help="valid or test (default test)")
    c.add_argument("--protocol", help="standard or paper (default: the first run's)")
    c.add_argument("--metrics", default="recall@10,ndcg@10,recall@20,ndcg@20", help="comma-separated METRIC@K")
    c.add_argument("--device", default="cpu")
    c.add_argument("--json", action="store_true", help="print the tests as JSON")
    c.add_argument("--out", help="also write every user's values to this CSV")


def _split_over(items):
    from .config import parse_overrides

    over = parse_overrides(items or [])
    teacher = over.pop("teacher", None)
    if teacher is not None and not isinstance(teacher, dict):
        from .errors import ConfigError

        raise ConfigError("option 'teacher': use teacher.<key>=value for teacher-only options")
    return over, teacher or {}


def dispatch_extra(a) -> int:
    if a.cmd == "bench":
        return cmd_bench(a)
    if a.cmd == "demo":
        return cmd_demo(a)
    if a.cmd == "spectrum":
        from .experiments.spectrum import cmd_spectrum

        return cmd_spectrum(a)
    if a.cmd == "compare":
        from .experiments.compare import cmd_compare

        return cmd_compare(a)
    raise SystemExit(f"unknown command {a.cmd}")  # pragma: no cover


def _bench_common(a, over: dict) -> dict:
    from .config import merge

    tr = {}
    if getattr(a, "epochs", None):
        tr["epochs"] = a.epochs
    if getattr(a, "patience", None):
        tr["patience"] = a.patience
    if getattr(a, "device", None):
        tr["device"] = a.device
    return merge({"train": tr} if tr else {}, over)


def cmd_bench(a) -> int:
    from pathlib import Path

    from .errors import ConfigError
    from .experiments.bench import plan_grid, run_grid
    from .experiments.report import write_report

    if a.skip_missing and not (a.report_only and a.eval_protocol):
        raise ConfigError("option '--skip-missing': only with --report-only --eval-protocol")
    if a.user_tests and not a.report_only:
        raise ConfigError("option '--user-tests': only with --report-only")
    over, tover = _split_over(a.overrides)
    methods = [m.strip() for m in a.methods.split(",") if m.strip()]
    specs = plan_grid(a.dataset, a.backbone, methods, a.seeds, Path(a.out), teacher_backbone=a.teacher_backbone,
                      teacher_dir=a.teacher, protocol=a.protocol, overrides=_bench_common(a, over),
                      teacher_overrides=tover, data_dir=a.data_dir)
    if not a.report_only:
        run_grid(specs, jobs=a.jobs)
    rep = write_report(Path(a.out), specs, eval_protocol=a.eval_protocol if a.report_only else None,
                       skip_missing=a.skip_missing)
    if rep:
        print(rep["table"])
        if a.report_only and a.eval_protocol:
            print(f"wrote {a.out}/table_{a.eval_protocol}.md")
        else:
            print(f"wrote {a.out}/results.csv, table.md, efficiency.md, bars.png, curves.png")
    if a.user_tests:
        from .experiments.compare import bench_user_tests
        from .experiments.report import _rows
        from .utils.atomic import write_text

        rows = _rows(specs)
        protocol = a.eval_protocol or (rows[0]["protocol"] if rows else "standard")
        text = bench_user_tests(rows, a.user_tests, protocol)
        name = f"user_tests_{a.eval_protocol}.md" if a.eval_protocol else "user_tests.md"
        write_text(Path(a.out) / name, text)
        print(text)
        print(f"wrote {a.out}/{name}")
    return 0


def cmd_demo(a) -> int:
    """BPR-MF teacher (400) -> students (20) from scratch, fd and freqd on citeulike-t.

    The authors' settings (presets); to finish in about 15 minutes on 2 CPU cores each run
    gets a wall-clock budget (train.time_limit) unless --full is given, and the output
    says so. Runs are resumable: the same command with --full (or larger budgets)
    continues them instead of starting again.
    """
    from pathlib import Path

    from .config import merge
    from .experiments.bench import plan_grid, run_grid
    from .experiments.report import write_report

    over, tover = _split_over(a.overrides)
    tr: dict = {}
    ttr: dict = {}
    shortened = []
    if not a.full:
        tt = a.teacher_time if a.teacher_time is not None else DEMO_TEACHER_SECONDS
        st = a.student_time if a.student_time is not None else DEMO_STUDENT_SECONDS
        ttr["time_limit"], tr["time_limit"] = tt, st
        shortened = [f"teacher training stops after {tt:.0f} s", f"each student after {st:.0f} s"]
    if a.epochs:
        tr["epochs"] = a.epochs
        shortened.append(f"at most {a.epochs} epochs")
    if a.patience:
        tr["patience"] = a.patience
        shortened.append(f"patience {a.patience}")
    if a.device:
        tr["device"] = a.device
    if shortened:
        print("freqd demo: shortened to fit about 15 minutes on 2 CPU cores: " + ", ".join(shortened)
              + " (the paper: up to 1000 epochs, patience 30; --full runs that, and continues these runs)",
              file=sys.stderr)
    common = merge({"train": tr} if tr else {}, over)
    specs = plan_grid(a.dataset, "mf", DEMO_METHODS, a.seeds, Path(a.out), overrides=common,
                      teacher_overrides=merge({"train": ttr} if ttr else {}, tover), data_dir=a.data_dir)
    jobs = a.jobs if a.jobs is not None else (1 if str(a.device or "cpu").startswith("cuda") else 1 + len(DEMO_METHODS))
    run_grid(specs, jobs=jobs)
    rep = write_report(Path(a.out), specs)
    print(rep["table"])
    from .experiments.compare import bench_user_tests
    from .utils.atomic import write_text

    tests = bench_user_tests(rep["rows"], "freqd", rep["rows"][0]["protocol"], metrics="recall@20,ndcg@20")
    write_text(Path(a.out) / "user_tests.md", tests)
    print(tests)
    if shortened:
        print("Shortened: " + ", ".join(shortened) + ". Epochs run and best epochs: " + a.out + "/results.csv.")
    print(f"Report: {a.out}/table.md, user_tests.md, efficiency.md, results.csv, bars.png, curves.png")
    return 0


# demo budget (see README: measured on 2 CPU cores)
# teacher alone on every core, then the three students side by side (``--jobs``), each with
# its own budget: about 180 + 540 s of training plus evaluation and the report
DEMO_TEACHER_SECONDS = 180.0
DEMO_STUDENT_SECONDS = 540.0
