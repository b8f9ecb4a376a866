"""``python -m superpos run EXPERIMENT``: the hypothesis experiments, each printing a verdict and writing a report."""
from __future__ import annotations

import argparse

from superpos.cli.common import _arg_type, add_settings, config_from_args


def register(sub) -> None:
    """``run all`` and one ``run NAME`` per registered experiment, with a flag per config field."""
    from superpos.protocol.registry import EXPERIMENTS
    from superpos.protocol.run_all import PRESETS

    run = sub.add_parser("run", help="run an experiment (prints a verdict, writes report.md/.html + figures)",
                         description="Run one of superpos's hypothesis experiments on a model.")
    exp = run.add_subparsers(dest="experiment", required=True, metavar="EXPERIMENT")
    p = exp.add_parser("all", help="every experiment in sequence, then an index page linking the reports",
                       description=f"Run {', '.join(EXPERIMENTS)} "
                                   "with their defaults (or a --preset's) into OUT/<name>, then write OUT/index.html "
                                   "and OUT/index.md with each verdict and a link to its report. Hours on a CPU with "
                                   "the default model at the defaults; --preset replication 70-80 minutes for the default model on one "
                                   "core of a 2-core CPU and several hours for gemma3-270m, "
                                   "--quick is a smoke run.")
    p.add_argument("--out", default="runs/all", help="output folder (default runs/all)")
    p.add_argument("--model", default=None, help="model for every experiment (default: smollm2-135m)")
    p.add_argument("--corpus", default=None,
                   help="text: .txt/.jsonl file, folder or dataset name (default: pydoc_data.topics)")
    p.add_argument("--only", type=_experiments, default=None, help="comma list of experiments to run (default: all)")
    p.add_argument("--preset", choices=list(PRESETS), default=None,
                   help="; ".join(f"{k}: {v}" for k, v in PRESETS.items()) + " (default: each experiment's defaults)")
    p.add_argument("--quick", dest="preset", action="store_const", const="quick", help="the same as --preset quick")
    p.add_argument("--resume", action="store_true",
                   help="keep each experiment an earlier run into OUT finished with the very same command")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    p.set_defaults(func=cmd_all)

    for e in EXPERIMENTS.values():
        p = exp.add_parser(e.name, help=e.help, description=e.description)
        add_settings(p, e.config)
        if e.controls:
            p.add_argument("--calibrate", action="store_true",
                           help="also run the identical analysis on its controls (" + "; ".join(
                               f"{c.kind}: {c.name}" for c in e.controls) + ") into OUT/controls/ and write "
                           "OUT/calibration.md with real, null and planted side by side")
        p.set_defaults(func=cmd_experiment)


def cmd_experiment(args) -> int:
    """Build the experiment's config from the flags (one per field), run it, print its verdict."""
    from superpos.protocol.registry import EXPERIMENTS

    e = EXPERIMENTS[args.experiment]
    cfg = config_from_args(e.config, args)
    if getattr(args, "calibrate", False):
        from superpos.protocol.calibration import run_calibrated

        cal = run_calibrated(e.name, cfg)
        _print_verdict(cal.verdict or cal.real.verdict, cfg.out)
        print(f"calibration: {'every control as expected' if cal.calibrated else 'A CONTROL FAILED'} "
              f"({cfg.out}/calibration.md)")
        return 0 if cal.calibrated else 1
    _print_verdict(e.run(cfg).verdict, cfg.out)
    return 0


def register_replicate(sub) -> None:
    """``superpos replicate``: the replication tables from several ``run all`` folders (run first with --models)."""
    from superpos.protocol.replication import DEFAULT_CORPORA, DEFAULT_MODELS
    from superpos.protocol.run_all import PRESETS
    from superpos.settings import PARSERS

    names = _arg_type(PARSERS["name_list"])

    p = sub.add_parser("replicate", help="run every model × corpus and put the runs side by side (one table per "
                                         "experiment)",
                       description="With --models: `run all` for every model × corpus (at --preset) into "
                                   "RUNS_DIR/MODEL+CORPUS, resuming (an experiment already finished there with the "
                                   "same command is kept), then the tables. Without: "
                                   "read the given `run all` output folders. Either way, write one markdown table per "
                                   "experiment: each run's verdict and the numbers it rests on, each column labelled "
                                   "with its folder's name, under a table of the runs (model, corpus, preset, time).")
    p.add_argument("runs", nargs="*", help="`run all` output folders (added after the --models runs)")
    p.add_argument("--models", type=names, default=None,
                   help=f"comma list of models to run (e.g. {','.join(DEFAULT_MODELS)}); empty: only read RUNS")
    p.add_argument("--corpora", type=names, default=list(DEFAULT_CORPORA),
                   help=f"comma list of corpora for --models (default {','.join(DEFAULT_CORPORA)})")
    p.add_argument("--preset", choices=list(PRESETS), default="replication",
                   help="settings of each `run all` (default replication)")
    p.add_argument("--runs-dir", default="runs/replication", help="where the --models runs go (default runs/replication)")
    p.add_argument("--reading", default=None, help="markdown file put above the tables (the hand-written reading)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    p.add_argument("--out", default="replication.md", help="markdown file to write (default replication.md)")
    p.set_defaults(func=cmd_replicate)


def cmd_replicate(args) -> int:
    """Run the pairs (with --models), write the replication tables and say where."""
    import shlex
    from pathlib import Path

    from superpos.errors import SuperposError
    from superpos.protocol.replication import run_pairs, write_replication

    runs = run_pairs(args.models, args.corpora, Path(args.runs_dir), args.preset, args.device) if args.models else []
    runs += [Path(r) for r in args.runs]
    if not runs:
        raise SuperposError("nothing to tabulate: give `run all` folders or --models")
    reading = None
    if args.reading:
        try:
            reading = Path(args.reading).read_text()
        except OSError as e:
            raise SuperposError(f"cannot read --reading {args.reading} ({e.strerror})") from None
    parts = ["python -m superpos replicate"]
    if args.models:
        parts += ["--models", ",".join(args.models), "--corpora", ",".join(args.corpora), "--preset", args.preset,
                  "--runs-dir", args.runs_dir]
    if args.reading:
        parts += ["--reading", args.reading]
    command = " ".join(shlex.quote(p) if i else p for i, p in enumerate(parts + ["--out", str(args.out)] + args.runs))
    print(f"wrote {write_replication(runs, args.out, command, reading)}")
    return 0


def _experiments(text: str) -> list[str]:
    from superpos.protocol.run_all import parse_only

    try:
        return parse_only(text)
    except Exception as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def cmd_all(args) -> int:
    """``superpos run all``: every experiment, then the index page; exit 1 if any failed."""
    from pathlib import Path

    from superpos.protocol.registry import EXPERIMENTS
    from superpos.protocol.run_all import run_all

    out = Path(args.out)
    rows = run_all(args.only or list(EXPERIMENTS), out, args.model, args.corpus, args.device, args.seed, args.preset,
                   resume=args.resume)
    print()
    for r in rows:
        print(f"{r['name']:>14}  {r['status']:<6} {r['seconds']:>7.0f} s  {r['headline'][:100]}")
    print(f"index: {out / 'index.html'}")
    return 0 if all(r["status"] == "ok" for r in rows) else 1


def _print_verdict(v, out: str) -> None:
    print(v.headline)
    for line in v.criteria:
        print("  " + line)
    if getattr(v, "context", None):
        print("  " + v.context)
    print(f"report: {out}/report.md")
