"""The ``freqd`` command line. Every subcommand is a thin layer over :mod:`freqd.api`.

Errors in the user's input (files, options) print one line ``freqd: error: ...`` and exit
with status 2; no traceback (set FREQD_DEBUG=1 to see one).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import List, Optional

EPILOG = "Options not listed here are set with key=value (e.g. train.lr=5e-4 model.n_layers=2 method.alpha=0.3)."


def _add_common_run(p: argparse.ArgumentParser) -> None:
    p.add_argument("dataset", help="registry name (citeulike-t, gowalla, yelp2018, tiny) or a path")
    p.add_argument("--out", required=True, help="run directory to create (or resume)")
    p.add_argument("--dim", type=int, help="embedding dimension")
    p.add_argument("--epochs", type=int, help="maximum epochs (default 1000)")
    p.add_argument("--seed", type=int, help="random seed (default 0)")
    p.add_argument("--protocol", choices=["standard", "paper"], help="masking protocol (default standard)")
    p.add_argument("--device", help="cpu | cuda | cuda:N")
    p.add_argument("--patience", type=int, help="early-stopping patience in evaluations (default 30)")
    p.add_argument("--config", help="YAML file of options (overrides the preset)")
    p.add_argument("--data-dir", help="folder laid out like shared/data (else $FREQD_DATA_DIR, cache, download)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="any other option")


def _flags(a) -> dict:
    train = {"epochs": a.epochs, "seed": a.seed, "protocol": a.protocol, "device": a.device,
             "patience": a.patience}
    if a.no_progress:
        train["progress"] = False
    flags = {"train": {k: v for k, v in train.items() if v is not None}}
    if a.data_dir:
        flags["data_dir"] = a.data_dir
    return flags


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    ap = argparse.ArgumentParser(prog="freqd", description="Knowledge distillation for recommender systems (FreqD and baselines).", epilog=EPILOG)
    ap.add_argument("--version", action="version", version=f"freqd {__version__}")
    sub = ap.add_subparsers(dest="cmd", metavar="COMMAND")
    sub.required = True

    d = sub.add_parser("data", help="inspect and export datasets")
    dsub = d.add_subparsers(dest="data_cmd", metavar="ACTION")
    dsub.required = True
    di = dsub.add_parser("info", help="users, items, interactions, split sizes")
    di.add_argument("dataset")
    di.add_argument("--data-dir")
    di.add_argument("--json", action="store_true")
    di.add_argument("overrides", nargs="*", metavar="data.key=value")
    de = dsub.add_parser("export", help="write train/valid/test.txt (TSV, header USER\\tITEM)")
    de.add_argument("dataset")
    de.add_argument("--out", required=True)
    de.add_argument("--data-dir")
    de.add_argument("overrides", nargs="*", metavar="data.key=value")

    t = sub.add_parser("train", help="train a backbone (teacher or student from scratch)", epilog=EPILOG)
    _add_common_run(t)
    t.add_argument("--backbone", choices=["mf", "lightgcn", "simplex"], default=None, help="default mf")
    t.add_argument("--role", choices=["teacher", "student"], help="which preset to use (default: student if --dim is the preset student's, else teacher)")

    s = sub.add_parser("distill", help="train a student with a KD method", epilog=EPILOG)
    _add_common_run(s)
    s.add_argument("--teacher", required=True, help="teacher run directory")
    s.add_argument("--method", required=True, help="freqd, fd, freqd-exact, fitnet, de, phr, vkd, htd, kd, rd, cd, rrd, dcd, unkd, hetcomp")
    s.add_argument("--backbone", choices=["mf", "lightgcn", "simplex"], help="student backbone (default: the teacher's)")

    e = sub.add_parser("eval", help="evaluate a run's best model")
    e.add_argument("run_dir")
    e.add_argument("--protocol", choices=["standard", "paper"])
    e.add_argument("--split", choices=["valid", "test"], default="test")
    e.add_argument("--device", default="cpu")
    e.add_argument("--json", action="store_true")

    r = sub.add_parser("recommend", help="top-K recommendations (seen items excluded)")
    r.add_argument("run_dir")
    g = r.add_mutually_exclusive_group(required=True)
    g.add_argument("--users", help="comma-separated user ids")
    g.add_argument("--all", action="store_true", help="every user")
    r.add_argument("-k", type=int, default=20)
    r.add_argument("--out", help="file to write (default stdout)")
    r.add_argument("--raw-ids", action="store_true", help="read and write the dataset's raw ids (token formats)")
    r.add_argument("--device", default="cpu")

    x = sub.add_parser("export", help="export a run's embeddings as .npy")
    x.add_argument("run_dir")
    x.add_argument("--out", required=True)
    x.add_argument("--layer", choices=["final", "embedding"], default="final")

    from .cli_extra import register_extra

    register_extra(sub)
    return ap


def _overrides(items: List[str]) -> dict:
    from .config import parse_overrides

    return parse_overrides(items)


def cmd_data(a) -> int:
    from .api import load_dataset

    over = _overrides(a.overrides)
    data = over.pop("data", {})
    if over:
        from .errors import ConfigError

        raise ConfigError(f"unknown option(s) {sorted(over)}: only data.* options apply here")
    ds = load_dataset(a.dataset, data_dir=a.data_dir, **data)
    if a.data_cmd == "info":
        info = ds.info()
        if a.json:
            print(json.dumps(info, indent=2))
        else:
            for k, v in info.items():
                print(f"{k:20s} {v:,}" if isinstance(v, int) and not isinstance(v, bool) else f"{k:20s} {v}")
        return 0
    from .data.load import export_split

    export_split(ds, a.out)
    print(f"wrote {a.out}/train.txt, valid.txt, test.txt ({ds.train.nnz:,} / {ds.valid.nnz:,} / {ds.test.nnz:,} rows)")
    return 0


def cmd_train(a, distill: bool = False) -> int:
    from . import api

    flags = _flags(a)
    over = _overrides(a.overrides)
    if distill:
        run = api.distill(a.dataset, teacher=a.teacher, method=a.method, dim=a.dim, out=a.out,
                          backbone=a.backbone, config=a.config, overrides=_merge(flags, over), resume=a.resume)
    else:
        run = api.train(a.dataset, backbone=a.backbone, dim=a.dim, out=a.out, config=a.config,
                        overrides=_merge(flags, over), resume=a.resume, role=a.role)
    from .train.distributed import context

    if context().is_main:  # under torchrun only rank 0 reports
        print(_summary(run.metrics))
    return 0


def _merge(a: dict, b: dict) -> dict:
    from .config import merge

    return merge(a, b)


def _summary(m: dict) -> str:
    keys = [k for k in ("recall@10", "ndcg@10", "recall@20", "ndcg@20") if k in m["test"]]
    head = f"best epoch {m['best_epoch']} of {m['epochs_run']}  ({m['seconds_per_epoch']:.2f} s/epoch train, {m['eval_seconds']:.2f} s eval)  protocol={m['protocol']}"
    val = "valid  " + "  ".join(f"{k} {m['valid'][k]:.4f}" for k in keys)
    test = "test   " + "  ".join(f"{k} {m['test'][k]:.4f}" for k in keys)
    return "\n".join([head, val, test])


def cmd_eval(a) -> int:
    from .api import Run

    run = Run(a.run_dir, device=a.device)
    res = run.evaluate(split=a.split, protocol=a.protocol)
    if a.json:
        print(json.dumps(res, indent=2))
    else:
        for k, v in res.items():
            print(f"{k:14s} {v:.5f}" if isinstance(v, float) else f"{k:14s} {v}")
    return 0


def cmd_recommend(a) -> int:
    from .api import Run
    from .errors import ConfigError
    from .eval.topk import write_recommendations

    if a.k < 1:
        raise ConfigError(f"option '-k': must be >= 1, got {a.k}")
    run = Run(a.run_dir, device=a.device)
    ds = run.dataset
    users = None
    if a.users is not None:
        toks = [t.strip() for t in a.users.split(",") if t.strip()]
        if a.raw_ids:
            if ds.user_ids is None:
                raise ConfigError("option '--raw-ids': this dataset has integer ids only")
            index = {str(r): i for i, r in enumerate(ds.user_ids)}
            missing = [t for t in toks if t not in index]
            if missing:
                raise ConfigError(f"option '--users': unknown raw user ids {missing[:5]}")
            users = [index[t] for t in toks]
        else:
            try:
                users = [int(t) for t in toks]
            except ValueError:
                raise ConfigError(f"option '--users': expected comma-separated integers, got {a.users!r}") from None
    u, items, _ = run.recommend(users, k=a.k)
    if a.raw_ids and ds.user_ids is None:
        raise ConfigError("option '--raw-ids': this dataset has integer ids only")
    write_recommendations(a.out, u, items, ds.user_ids if a.raw_ids else None, ds.item_ids if a.raw_ids else None)
    if a.out:
        print(f"wrote {len(u):,} users' top-{a.k} to {a.out}" + (" (raw ids)" if a.raw_ids else " (internal ids)"), file=sys.stderr)
    return 0


def cmd_export(a) -> int:
    from .api import Run

    paths = Run(a.run_dir).export_embeddings(a.out, layer=a.layer)
    for p in paths:
        print(p)
    return 0


def _flush_denormal_wanted(overrides) -> bool:
    """train.flush_denormal (default true) as the command line's key=value overrides set it."""
    for kv in overrides or []:
        k, _, v = kv.partition("=")
        if k.strip() == "train.flush_denormal":
            return v.strip().lower() not in ("false", "0", "no", "off")
    return True


def main(argv: Optional[List[str]] = None) -> int:
    import re

    ap = build_parser()
    # key=value overrides may come before or after the options: collect them from leftovers
    a, extra = ap.parse_known_args(argv)
    kv = [x for x in extra if re.match(r"^[A-Za-z_][\w.\-]*=", x)]
    rest = [x for x in extra if x not in kv]
    if rest or (kv and not hasattr(a, "overrides")):
        ap.error("unrecognized arguments: " + " ".join(rest or kv))
    if kv:
        a.overrides = list(a.overrides or []) + kv
    flush = a.cmd in ("train", "distill", "bench", "demo") and _flush_denormal_wanted(getattr(a, "overrides", None))
    if flush:
        # before torch starts its intra-op threads, so that they inherit the mode (the
        # trainer sets it again for its own thread; freqd.utils.numerics)
        from .utils.numerics import flush_denormal

        with flush_denormal():
            return _dispatch(a)
    return _dispatch(a)


def _dispatch(a) -> int:
    from .errors import FreqdError

    try:
        if a.cmd == "data":
            return cmd_data(a)
        if a.cmd == "train":
            return cmd_train(a)
        if a.cmd == "distill":
            return cmd_train(a, distill=True)
        if a.cmd == "eval":
            return cmd_eval(a)
        if a.cmd == "recommend":
            return cmd_recommend(a)
        if a.cmd == "export":
            return cmd_export(a)
        from .cli_extra import dispatch_extra

        return dispatch_extra(a)
    except FreqdError as e:
        if os.environ.get("FREQD_DEBUG"):
            raise
        print(f"freqd: error: {e}", file=sys.stderr)
        return e.exit_code
    except BrokenPipeError:  # e.g. `freqd recommend ... | head`
        try:
            sys.stdout = open(os.devnull, "w")
        except OSError:
            pass
        return 0
    except KeyboardInterrupt:
        print("freqd: interrupted (resume with --resume)", file=sys.stderr)
        return 130
    except OSError as e:  # a resource fault not wrapped where it happened (permissions, disk full)
        if os.environ.get("FREQD_DEBUG"):
            raise
        print(f"freqd: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
