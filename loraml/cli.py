"""The ``loraml`` command line: reproduce figures, run sweeps, show stored results."""

from __future__ import annotations

import argparse
import inspect
import sys
import time
from pathlib import Path

EPILOG = "Examples:\n  loraml reproduce --only linear\n  loraml sweep linear --vary T --values 2 3 5 --runs 5\n" \
         "  loraml show results/linear-<hash>"


#: The figure groups of ``loraml.figures.GROUPS``, named here so that parsing the command line
#: does not import matplotlib (a test keeps the two lists equal).
GROUP_NAMES = ("theory", "linear", "shallow")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="loraml", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG,
        description="Executable theory of low-rank meta-learning: reproduce figures, run sweeps, show results.",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    r = sub.add_parser("reproduce", help="regenerate every figure (or some groups) into --out",
                       description="Regenerate the toolkit's figures; PNG/PDF files are overwritten. "
                                   "Sweep results are cached in --store, so a rerun only plots.")
    r.add_argument("--only", choices=GROUP_NAMES, action="append",
                   help="regenerate only this figure group (repeatable); default: all groups")
    r.add_argument("--preset", choices=("paper", "clean", "both"), default="both",
                   help="protocol of the linear sweeps: 'paper' (the authors' quirks Q1-Q4, written to "
                        "figures/linear/), 'clean' (written to figures/linear-clean/) or both (default)")
    _common(r)
    r.add_argument("--out", type=Path, default=Path("figures"),
                   help="folder the figure groups are written under (default: ./figures)")
    r.add_argument("--fast", action="store_true",
                   help="far fewer steps and runs, for a quick look (not the committed figures)")

    s = sub.add_parser("sweep", help="run one sweep and store its table",
                       description="Run one sweep of the paper's linear experiment; results go to the Parquet "
                                   "store, one file per chunk, and an interrupted sweep resumes where it stopped.")
    s.add_argument("kind", choices=("linear",), help="experiment family (linear: spec §5.1)")
    s.add_argument("--vary", required=True, choices=("T", "n", "N", "d", "k"), help="the swept parameter")
    s.add_argument("--values", type=int, nargs="+", help="its values (default: the paper's)")
    s.add_argument("--preset", choices=("paper", "clean"), default="paper",
                   help="'paper' reproduces the authors' protocol with its quirks, 'clean' fixes them")
    s.add_argument("--runs", type=int, default=5, help="independent trials per value (default 5)")
    s.add_argument("--seed", type=int, default=0, help="root seed of every random stream (default 0)")
    s.add_argument("--steps", type=int, help="fine-tuning steps (default: the paper's for this sweep)")
    s.add_argument("--outer-steps", type=int, help="retraining outer iterations (default 3000)")
    s.add_argument("--chunk-trials", type=int, default=0, help="trials per stored chunk (0: all runs in one)")
    s.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                   help="override any other config field, e.g. --set sigma=0.2 (repeatable)")
    s.add_argument("--force", action="store_true", help="recompute chunks that are already stored")
    _common(s)

    w = sub.add_parser("show", help="print a summary of a stored sweep",
                       description="Print the final test loss per method and swept value (mean, min, max over "
                                   "trials), the Lemma 1 optimum and the base error ‖Â − A*‖².")
    w.add_argument("folder", type=Path, help="a results folder, e.g. results/linear-<hash>")
    return p


def _common(p):
    p.add_argument("--store", type=Path, default=Path("results"), help="root of the results store (default ./results)")
    p.add_argument("--executor", choices=("serial", "processes"), default="processes",
                   help="run chunks in this process or in a process pool (default: processes)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _parse_set(items):
    from sims import LinearConfig

    fields = LinearConfig.__dataclass_fields__
    out = {}
    for item in items:
        name, sep, raw = item.partition("=")
        if not sep or name not in fields:
            raise ValueError(f"--set takes NAME=VALUE with NAME a config field; got {item!r}. "
                             f"Fields:\n{LinearConfig.describe()}")
        default = fields[name].default
        out[name] = type(default)(raw) if isinstance(default, (int, float)) and not isinstance(default, bool) else raw
    return out


def summarize(table):
    """Final-step test loss per method and value: mean, min, max; plus optimum and A_error means."""
    last = table[table["step"] == table.groupby(["value"])["step"].transform("max")]
    g = last.groupby(["value", "method"], observed=True)
    out = g["test_loss"].agg(["mean", "min", "max"]).add_prefix("final_loss_")
    out["optimum"] = g["optimum"].mean()
    out["A_error"] = g["A_error"].mean()
    return out


def _cmd_reproduce(args):
    from .figures import GROUPS

    for name in args.only or list(GROUPS):
        make = GROUPS[name]
        options = {"preset": args.preset, "store": args.store, "executor": args.executor,
                   "progress": not args.quiet}
        accepted = inspect.signature(make).parameters
        t0 = time.perf_counter()
        paths = make(args.out, fast=args.fast, **{k: v for k, v in options.items() if k in accepted})
        print(f"{name}: {len(paths)} files in {time.perf_counter() - t0:.1f} s")
        for path in paths:
            print(f"  {path}")


def _cmd_sweep(args):
    import sims

    overrides = _parse_set(args.set)
    if args.steps is not None:
        overrides["ft_steps"] = args.steps
    if args.outer_steps is not None:
        overrides["outer_steps"] = args.outer_steps
    cfg = sims.linear_sweep(args.vary, args.values, preset=args.preset, runs=args.runs, seed=args.seed,
                            chunk_trials=args.chunk_trials, **overrides)
    t0 = time.perf_counter()
    table = sims.run(cfg, executor=args.executor, store=args.store, force=args.force, progress=not args.quiet)
    print(f"{len(table)} rows in {time.perf_counter() - t0:.1f} s -> {args.store / ('linear-' + cfg.key)}")
    print(summarize(table).to_string(float_format=lambda x: f"{x:.4g}"))


def _cmd_show(args):
    import sims

    table = sims.read_store(args.folder)
    print(f"{args.folder}: vary {table['vary'].iloc[0]}, preset {table['preset'].iloc[0]}, "
          f"{table['trial'].nunique()} trials, {int(table['step'].max())} fine-tuning steps")
    print(summarize(table).to_string(float_format=lambda x: f"{x:.4g}"))


def main(argv=None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        {"reproduce": _cmd_reproduce, "sweep": _cmd_sweep, "show": _cmd_show}[args.command](args)
    except ValueError as err:
        first = str(err).splitlines()[0]
        print(f"loraml {args.command}: error: {first}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
