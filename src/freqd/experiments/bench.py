"""``freqd bench``: the paper's comparison in one command, resumable.

A bench is a grid of runs under ``OUT/runs/``: one teacher, and per seed a student from
scratch and one student per method. Every run is an ordinary run directory named by a hash
of its resolved configuration, so a finished run is reused (also by a later bench with
other methods or seeds) and an interrupted one resumes from its last checkpoint: nothing
finished is redone and nothing is lost. After the grid, the report (results.csv, table.md,
efficiency.md, plots) is written from the run directories alone.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from ..errors import ConfigError, FreqdError

log = logging.getLogger("freqd")


@dataclass
class RunSpec:
    """One run of the grid."""

    label: str  # "teacher", "scratch" or a method name
    kind: str  # "train" | "distill"
    seed: int
    cfg: dict  # resolved configuration
    out: Path = field(default=Path("."))

    @property
    def done(self) -> bool:
        p = self.out / "metrics.json"
        if not p.is_file():
            return False
        from ..runs import extendable, read_run_config

        try:
            return not extendable(read_run_config(self.out), json.loads(p.read_text()), self.cfg)
        except (ValueError, FreqdError):
            return False

    @property
    def stuck(self) -> bool:
        """A finished run that the larger budget would continue, but whose checkpoint is gone
        (e.g. restored from committed result files): it stays as it is."""
        from ..train.trainer import CKPT

        return (self.out / "metrics.json").is_file() and not self.done and not (self.out / CKPT).is_file()


def config_hash(cfg: dict) -> str:
    """Hash of a resolved config, ignoring settings that do not change results."""
    c = json.loads(json.dumps(cfg, default=str))
    from ..runs import identity_train

    if "train" in c:
        c["train"] = identity_train(c["train"])
    c.pop("data_dir", None)
    if "teacher" in c:  # identify the teacher by its own hash (its folder name), not its path
        c["teacher"] = Path(c["teacher"]).name
    return hashlib.sha256(json.dumps(c, sort_keys=True).encode()).hexdigest()[:10]


def _merge_over(*ds: Optional[dict]) -> dict:
    from ..config import merge

    out: dict = {}
    for d in ds:
        if d:
            out = merge(out, d)
    return out


def parse_method(item: str) -> tuple:
    """``"freqd+filter=quadratic+alpha=0.3"`` -> ("freqd", {"filter": "quadratic", "alpha": "0.3"}):
    a method with option overrides, reported under the whole string as its label."""
    name, *opts = item.split("+")
    over = {}
    for o in opts:
        if "=" not in o:
            raise ConfigError(f"option '--methods': {item!r}: expected method+key=value")
        k, v = o.split("=", 1)
        over[k.strip()] = v.strip()
    return name.strip(), over


def seed_range(seeds) -> List[int]:
    """``--seeds``: N (seeds 0..N-1), or a list / range of seeds: ``"3,4"``, ``"3-4"``, ``[3, 4]``."""
    if isinstance(seeds, str):
        out: List[int] = []
        try:
            if seeds.strip().isdigit():
                out = list(range(int(seeds)))
            else:
                for part in seeds.split(","):
                    lo, _, hi = part.strip().partition("-")
                    out += list(range(int(lo), int(hi) + 1)) if hi else [int(lo)]
        except ValueError:
            raise ConfigError(f"option '--seeds': expected N (seeds 0..N-1), a list such as 3,4 or a range "
                              f"such as 3-4, got {seeds!r}") from None
    elif isinstance(seeds, int):
        out = list(range(seeds))
    else:
        out = [int(x) for x in seeds]
    if not out:
        raise ConfigError(f"option '--seeds': no seed in {seeds!r} (N must be >= 1)")
    if min(out) < 0 or len(set(out)) != len(out):
        raise ConfigError(f"option '--seeds': seeds must be distinct and >= 0, got {seeds!r}")
    return out


def plan_grid(
    dataset: str,
    backbone: str,
    methods: Sequence[str],
    seeds: int,
    out: Path,
    teacher_backbone: Optional[str] = None,
    teacher_dir: Optional[str] = None,
    protocol: Optional[str] = None,
    overrides: Optional[dict] = None,
    teacher_overrides: Optional[dict] = None,
    data_dir: Optional[str] = None,
    teacher_seed: int = 0,
    scratch: bool = True,
) -> List[RunSpec]:
    """Resolve every run's configuration (validating all of them before anything runs)."""
    from ..registry_names import check_methods
    from ..runs import resolve_config

    check_methods(methods)
    seed_list = seed_range(seeds)
    tb = teacher_backbone or backbone
    common = _merge_over({"train": {"protocol": protocol}} if protocol else None,
                         {"data_dir": data_dir} if data_dir else None, overrides)
    runs_dir = out / "runs"
    specs: List[RunSpec] = []
    if teacher_dir:
        tdir = Path(teacher_dir)
        if not (tdir / "metrics.json").is_file():
            raise ConfigError(f"option '--teacher': {tdir} is not a finished run (no metrics.json)")
        from ..runs import read_run_config

        tcfg = read_run_config(tdir)
        specs.append(RunSpec("teacher", "train", int(tcfg.get("train", {}).get("seed", 0)), tcfg, tdir))
    else:
        tcfg = resolve_config("train", dataset, backbone=tb, role="teacher",
                              overrides=_merge_over(common, teacher_overrides, {"train": {"seed": teacher_seed}}))
        tdir = runs_dir / f"teacher-{tb}-d{tcfg['model']['dim']}-{config_hash(tcfg)}"
        specs.append(RunSpec("teacher", "train", teacher_seed, tcfg, tdir))
    for seed in seed_list:
        over = _merge_over(common, {"train": {"seed": seed}})
        if scratch:
            scfg = resolve_config("train", dataset, backbone=backbone, role="student", overrides=over)
            specs.append(RunSpec("scratch", "train", seed, scfg,
                                 runs_dir / f"scratch-{backbone}-d{scfg['model']['dim']}-s{seed}-{config_hash(scfg)}"))
        for item in methods:
            m, mover = parse_method(item)
            mcfg = resolve_config("distill", dataset, backbone=backbone, method=m, teacher=str(tdir),
                                  role="student", overrides=_merge_over(over, {"method": mover} if mover else None))
            safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in item)
            specs.append(RunSpec(item, "distill", seed, mcfg,
                                 runs_dir / f"{safe}-{backbone}-s{seed}-{config_hash(mcfg)}"))
    return specs


def _cli_args(spec: RunSpec) -> List[str]:
    """A subprocess command that runs ``spec`` (its resolved config passed as a YAML file)."""
    from ..config import dump_yaml
    from ..utils.atomic import write_text

    cfg_file = spec.out.parent / f".{spec.out.name}.yaml"
    write_text(cfg_file, dump_yaml({k: v for k, v in spec.cfg.items() if k not in ("kind", "teacher")}))
    args = [sys.executable, "-m", "freqd", spec.kind, spec.cfg["dataset"], "--out", str(spec.out),
            "--config", str(cfg_file), "--resume", "--no-progress"]
    if spec.kind == "distill":
        args += ["--teacher", spec.cfg["teacher"], "--method", spec.cfg["method"]["name"]]
    return args


def _run_inprocess(spec: RunSpec) -> None:
    from .. import api

    c = {k: v for k, v in spec.cfg.items() if k not in ("kind", "teacher", "dataset")}
    if spec.kind == "train":
        api.train(spec.cfg["dataset"], backbone=spec.cfg["backbone"], out=spec.out, overrides=c,
                  resume=True, role=spec.cfg["role"])
    else:
        m = dict(c)
        api.distill(spec.cfg["dataset"], teacher=spec.cfg["teacher"], method=spec.cfg["method"]["name"],
                    out=spec.out, backbone=spec.cfg["backbone"], overrides=m, resume=True)


class Progress:
    def __init__(self, specs: List[RunSpec]):
        self.total = len(specs)
        self.t0 = time.perf_counter()

    def line(self, done: int, running: List[str], msg: str = "") -> None:
        el = time.perf_counter() - self.t0
        left = self.total - done - len(running)
        run = ", ".join(running) if running else "-"
        print(f"[bench] {done}/{self.total} done, running: {run}, {left} left, {el / 60:.1f} min so far {msg}",
              file=sys.stderr, flush=True)


def _check_data(todo: List[RunSpec]) -> None:
    """Load each dataset the unfinished runs need once, here: a missing or malformed file
    is reported by this process (with where to put the file), not buried in the log of a
    worker process."""
    from ..api import _dataset_for

    seen = set()
    for s in todo:
        key = repr((s.cfg["dataset"], s.cfg.get("data_dir"), s.cfg.get("data")))
        if key not in seen:
            seen.add(key)
            _dataset_for(s.cfg)


def run_grid(specs: List[RunSpec], jobs: int = 1, progress: bool = True) -> None:
    """Run every unfinished spec (teacher first); finished runs are skipped, and so are runs
    that another process is training (a teacher being trained elsewhere is waited for)."""
    from ..runs import held_elsewhere

    prog = Progress(specs)
    done = sum(s.done for s in specs)
    if jobs > 1:
        _check_data([s for s in specs if not s.done])
    teacher = [s for s in specs if s.label == "teacher"]
    rest = [s for s in specs if s.label != "teacher"]
    elsewhere: List[str] = []
    kept: List[str] = []
    for batch in ([teacher, rest] if teacher else [rest]):
        if batch is teacher:
            _wait_for_teacher(teacher)
        # another bench (or freqd train/distill) over the same folder is training these:
        # leave them to it (two benches over one grid share its runs)
        todo = [s for s in batch if not s.done]
        for s in [s for s in todo if s.stuck]:
            log.warning("bench: %s/s%d finished under a smaller budget and has no checkpoint to continue from: "
                        "kept as it is (%s)", s.label, s.seed, s.out)
            kept.append(f"{s.label}/s{s.seed}")
            todo.remove(s)
            done += 1
        for s in [s for s in todo if held_elsewhere(s.out)]:
            log.info("bench: %s/s%d is being trained by another process; left to it", s.label, s.seed)
            elsewhere.append(f"{s.label}/s{s.seed}")
            todo.remove(s)
        failed: List[str] = []
        if jobs <= 1:
            for s in todo:
                prog.line(done, [f"{s.label}/s{s.seed}"])
                try:
                    _run_inprocess(s)
                except FreqdError as e:  # the other runs go on; the grid reports it at the end
                    log.error("bench: %s/s%d failed: %s", s.label, s.seed, e)
                    failed.append(f"{s.label}/s{s.seed} ({e})")
                    continue
                done += 1
        else:
            running: Dict[subprocess.Popen, RunSpec] = {}
            queue = list(todo)
            # the cores shared by the runs that go side by side (a lone teacher gets them all)
            cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
            threads = max(1, cores // max(1, min(jobs, len(todo))))
            while queue or running:
                while queue and len(running) < jobs:
                    s = queue.pop(0)
                    s.out.parent.mkdir(parents=True, exist_ok=True)
                    logf = open(s.out.parent / f".{s.out.name}.out", "ab")
                    env = dict(os.environ, FREQD_NO_PROGRESS="1")
                    env.setdefault("OMP_NUM_THREADS", str(threads))
                    p = subprocess.Popen(_cli_args(s), stdout=logf, stderr=subprocess.STDOUT, env=env)
                    running[p] = s
                    prog.line(done, [f"{r.label}/s{r.seed}" for r in running.values()])
                time.sleep(0.5)
                for p in [p for p in running if p.poll() is not None]:
                    s = running.pop(p)
                    if p.returncode != 0:
                        failed.append(f"{s.label}/s{s.seed} (exit {p.returncode}, log {s.out.parent / ('.' + s.out.name + '.out')})")
                    else:
                        done += 1
                        prog.line(done, [f"{r.label}/s{r.seed}" for r in running.values()])
        if failed:
            raise FreqdError("bench runs failed: " + "; ".join(failed))
    if kept:
        prog.line(done, [], "(kept at their earlier budget, no checkpoint to continue from: " + ", ".join(kept) + ")")
    if elsewhere:
        prog.line(done, [], "(this process is done; still running in another process: " + ", ".join(elsewhere) + ")")
    else:
        prog.line(done, [], "(grid complete)")


def _wait_for_teacher(teacher: List[RunSpec], poll: float = 5.0) -> None:
    """A teacher that another process is training: wait for it (the students need it)."""
    from ..runs import held_elsewhere

    for s in teacher:
        said = False
        while not s.done and held_elsewhere(s.out):
            if not said:
                log.info("bench: waiting for the teacher %s, trained by another process", s.out)
                said = True
            time.sleep(poll)


def bench(dataset: str, backbone: str = "mf", methods: Sequence[str] = ("fd", "freqd"), seeds: int = 1,
          out: str | Path = "bench", jobs: int = 1, report: bool = True, **kw) -> Path:
    """Plan, run and report a grid; returns the output folder."""
    out = Path(out)
    specs = plan_grid(dataset, backbone, methods, seeds, out, **kw)
    failed: Optional[FreqdError] = None
    try:
        run_grid(specs, jobs=jobs)
    except FreqdError as e:  # failed runs: still report what finished, then say what failed
        failed = e
    if report and any(s.done for s in specs):
        from .report import write_report

        write_report(out, specs)
    if failed is not None:
        raise failed
    return out
