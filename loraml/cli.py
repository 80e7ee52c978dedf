"""The ``loraml`` command line: reproduce figures, run sweeps, show stored results."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import re
import sys
import time
from pathlib import Path

EPILOG = "Examples:\n  loraml reproduce --only linear\n  loraml sweep linear --vary T --values 2 3 5 --runs 5\n" \
         "  loraml sweep linear --vary sigma --values 0.05 0.1 0.2 --set covariance=toeplitz\n" \
         "  loraml sweep linear --grid sigma=0.05,0.1 n=100,1000 --steps 1000\n" \
         "  loraml sweep shallow --vary d --values 5 10 --runs 10\n  loraml sweep finetune --runs 5\n" \
         "  loraml realdata digits --seeds 0 1\n" \
         "  loraml realdata vision --data-root ~/data/cifar-10-batches-py --device cuda\n" \
         "  loraml realdata convai --data ~/data/ConvAI2 --persona-map ~/data/persona_map --model ~/roberta-base " \
         "--device cuda\n" \
         "  loraml show results/linear-<hash> --format md\n" \
         "  loraml plot results/linear-<hash> -o sweep.png"


#: The figure groups of ``loraml.figures.GROUPS``, named here so that parsing the command line
#: does not import matplotlib (a test keeps the two lists equal).
GROUP_NAMES = ("theory", "linear", "landscape", "loraone", "shallow", "realdata", "offpaper")


class _Parser(argparse.ArgumentParser):
    """argparse, but a parse error is ONE line on stderr that names the option (no usage block)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(
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
    r.add_argument("--device", choices=("cpu", "cuda"),
                   help="torch device of the shallow-network group (default: cuda when available)")
    r.add_argument("--out", type=Path, default=Path("figures"),
                   help="folder the figure groups are written under (default: ./figures)")
    r.add_argument("--fast", action="store_true",
                   help="far fewer steps and runs, for a quick look (not the committed figures)")

    s = sub.add_parser("sweep", help="run one sweep and store its table",
                       description="Run one sweep; results go to the Parquet store, one file per chunk, and an "
                                   "interrupted sweep resumes where it stopped.")
    kinds = s.add_subparsers(dest="kind", required=True, metavar="KIND")

    lin = kinds.add_parser("linear", help="the paper's linear experiment (spec 5.1)",
                           description="One sweep of the paper's linear experiment (spec 5.1).")
    lin.add_argument("--vary", metavar="NAME",
                     help="the swept field: T, n, N, d, k (the paper's) or any other numeric config field, e.g. "
                          "sigma, lr_A, ft_steps, condition, rho, nu, k_fit, norm_ratio (see --set for the list)")
    lin.add_argument("--values", nargs="+", metavar="V",
                     help="its values (default: the paper's, for T, n, N, d, k)")
    lin.add_argument("--grid", nargs="+", metavar="NAME=V1,V2",
                     help="sweep a grid instead of --vary: every combination of two or more fields' values, "
                          "e.g. --grid sigma=0.05,0.1 n=100,1000")
    lin.add_argument("--preset", choices=("paper", "clean"), default="paper",
                     help="'paper' reproduces the authors' protocol with its quirks, 'clean' fixes them")
    lin.add_argument("--runs", type=int, default=5, help="independent trials per value (default 5)")
    lin.add_argument("--steps", type=int, help="fine-tuning steps (default: the paper's for this sweep)")
    lin.add_argument("--outer-steps", type=int, help="retraining outer iterations (default 3000)")
    _sweep_common(lin)

    sh = kinds.add_parser("shallow", help="the shallow-network check (spec 5.2), torch",
                          description="One sweep of the shallow-network experiment (spec 5.2): batched torch "
                                      "training of all trials at once.")
    sh.add_argument("--vary", required=True, choices=("d", "T"), help="the swept parameter")
    sh.add_argument("--values", type=int, nargs="+", help="its values (default: d 5 10 20, T 2 3 5 10)")
    sh.add_argument("--runs", type=int, default=10, help="trials per value (default 10)")
    sh.add_argument("--steps", type=int, help="fine-tuning AdamW steps (default 15000)")
    sh.add_argument("--retrain-steps", type=int, help="retraining AdamW steps (default 40000)")
    sh.add_argument("--device", choices=("cpu", "cuda"), help="torch device (default: cuda when available)")
    _sweep_common(sh)

    ft = kinds.add_parser("finetune", help="LoRA-ML meets LoRA-One: 2 bases x 4 fine-tuning methods",
                          description="Fine-tune the test task from the SR and LoRA-ML bases with vanilla LoRA "
                                      "GD, spectral init + GD, spectral init + preconditioned GD and the Lemma 1 "
                                      "closed form; prints the steps to reach 1.01 x the Lemma 1 optimum.")
    for name, default, text in (("d", 10, "dimension"), ("k", 1, "adapter rank"), ("T", 3, "retraining tasks"),
                                ("N", 5000, "samples per retraining task"), ("n", 100, "test-task samples"),
                                ("runs", 5, "independent runs"), ("steps", 300, "fine-tuning steps recorded"),
                                ("seed", 0, "root seed")):
        ft.add_argument(f"--{name}", type=int, default=default, help=f"{text} (default {default})")
    ft.add_argument("--sigma", type=float, default=0.1, help="noise level (default 0.1)")
    ft.add_argument("--csv", type=Path, help="also write the whole table (base, method, run, step, test_error) here")

    rd = sub.add_parser("realdata", help="PEFT-ML on real data: digits (offline), CIFAR-10 or ConvAI2 (spec realdata)",
                        description="Retrain an MLP-Mixer with SR, LoRA-ML, last-layer-ML and Reptile on four binary "
                                    "tasks, fine-tune on a new one with LoRA or a new head; or (convai) RoBERTa on 10 "
                                    "PersonaChat personas, fine-tuned on each of 10 unseen ones, for every LoRA rank. "
                                    "Results go to the Parquet store (one chunk per method and seed, or per method, "
                                    "rank, seed and persona for convai; resumable), tables (Markdown, CSV) and a "
                                    "figure go to --out.")
    rd.add_argument("dataset", choices=("digits", "vision", "convai"),
                    help="'digits': scikit-learn's bundled digits, runs anywhere; 'vision': CIFAR-10 from --data-root; "
                         "'convai': PersonaChat from --data, --persona-map and --model")
    rd.add_argument("--data-root", type=Path,
                    help="vision: folder with the CIFAR-10 python batches (data_batch_1..5, test_batch)")
    rd.add_argument("--data", type=Path,
                    help="convai: folder with train_self_original.txt and valid_self_original.txt (PersonaChat)")
    rd.add_argument("--persona-map", type=Path,
                    help="convai: a persona-map pickle (dict of numpy.int32 cluster ids to lists of members, each "
                         "a persona's sorted sentences without their last character), one file for both splits "
                         "or a folder with train_persona_map and valid_persona_map")
    rd.add_argument("--model", type=Path,
                    help="convai: local RoBERTa checkpoint folder with its tokenizer (save_pretrained of roberta-base)")
    rd.add_argument("--ranks", type=int, nargs="+",
                    help="convai: LoRA ranks (default 1 4 8 12 16)")
    rd.add_argument("--preset", choices=("paper", "clean"), default="clean",
                    help="'paper' keeps the authors'-code quirks (vision V1-V4 and V6; convai C1-C4), "
                         "'clean' fixes them (default)")
    rd.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4], help="seeds (default 0 1 2 3 4)")
    rd.add_argument("--methods", nargs="+", choices=("SR", "LoRA-ML", "last-layer-ML", "Reptile"),
                    help="retraining methods (default: all four)")
    rd.add_argument("--epochs", type=int, help="retraining epochs (default: 100 vision, 30 digits)")
    rd.add_argument("--reptile-epochs", type=int, help="Reptile outer epochs (default: 5 vision, 30 digits)")
    rd.add_argument("--ft-epochs", type=int, help="fine-tuning epochs (default: 100 vision, 40 digits)")
    rd.add_argument("--n-finetune", type=int, nargs="+",
                    help="fine-tuning sample sizes (default: every image for vision, 10 20 40 80 120 digits)")
    rd.add_argument("--device", choices=("cpu", "cuda"),
                    help="torch device (default: cuda when available for vision and convai, cpu for digits); "
                         "float16 mixed precision with a GradScaler on cuda for vision")
    rd.add_argument("--out", type=Path, help="folder of the table and figure (default figures/realdata/<dataset>-<preset>)")
    rd.add_argument("--chunk-trials", type=int, default=1,
                    help="seeds per stored chunk, (seed, persona) pairs for convai (default 1; 0: all in one)")
    rd.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                    help="override any other config field, e.g. --set width=256 (repeatable)")
    rd.add_argument("--force", action="store_true", help="recompute chunks that are already stored")
    _common(rd)

    w = sub.add_parser("show", help="print a summary of a stored sweep",
                       description="Print the final test loss per method and swept value (mean, min, max over "
                                   "trials), the Lemma 1 optimum and the base error ‖Â − A*‖².")
    w.add_argument("folder", type=Path, help="a results folder, e.g. results/linear-<hash>")
    w.add_argument("--format", choices=("table", "csv", "md", "json"), default="table",
                   help="'table' (default: a header, the summary and the records), or the summary alone as "
                        "CSV, Markdown or JSON (one object per row)")

    pl = sub.add_parser("plot", help="draw a stored sweep",
                        description="Draw a stored sweep in the house style: one panel per swept value (the "
                                    "metric against the fine-tuning step, mean and min-max band over trials), or "
                                    "for a 2-D grid a heat map of the final values per method. --metric A_error "
                                    "draws the base error against the swept value (or its heat map).")
    pl.add_argument("folder", type=Path, help="a results folder, e.g. results/linear-<hash>")
    pl.add_argument("-o", "--output", type=Path, help="the figure file, .png or .pdf (default: FOLDER/plot-METRIC.png)")
    pl.add_argument("--metric", choices=("test_loss", "A_error"), default="test_loss",
                    help="what to draw (default test_loss)")
    return p


def _sweep_common(p):
    p.add_argument("--seed", type=int, default=0, help="root seed of every random stream (default 0)")
    p.add_argument("--chunk-trials", type=int, default=0, help="trials per stored chunk (0: all runs in one)")
    p.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                   help="override any other config field, e.g. --set sigma=0.2 (repeatable)")
    p.add_argument("--force", action="store_true", help="recompute chunks that are already stored")
    _common(p)


def _common(p):
    p.add_argument("--store", type=Path, default=Path("results"), help="root of the results store (default ./results)")
    p.add_argument("--executor", choices=("serial", "processes", "dask"), default="processes",
                   help="run chunks in this process, in a process pool (default) or on dask: a local cluster "
                        "started for the command, or the cluster at --address")
    p.add_argument("--address", metavar="tcp://HOST:PORT",
                   help="with --executor dask: the scheduler of an existing dask cluster (dask-scheduler)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _linear_sweep_from_args(args, sims):
    """The LinearConfig of ``sweep linear``: --vary/--values or --grid, and the overrides."""
    overrides = _parse_set(args.set, sims.LinearConfig, _owned_fields(args))
    if args.steps is not None:
        overrides["ft_steps"] = args.steps
    if args.outer_steps is not None:
        overrides["outer_steps"] = args.outer_steps
    common = dict(preset=args.preset, runs=args.runs, seed=args.seed, chunk_trials=args.chunk_trials, **overrides)
    if (args.vary is None) == (args.grid is None):
        raise ValueError("--vary NAME (with --values) or --grid NAME=V1,V2 NAME=V1,V2: give exactly one.")
    if args.grid is not None:
        if args.values is not None:
            raise ValueError("--values goes with --vary; a --grid lists its values as NAME=V1,V2.")
        grid = {}
        for item in args.grid:
            name, sep, raw = item.partition("=")
            if not sep or name not in sims.VARIABLE or name in grid:
                raise ValueError(f"--grid takes NAME=V1,V2,... with NAME a distinct numeric field among "
                                 f"{', '.join(sims.VARIABLE)}; got {item!r}.")
            grid[name] = _parse_values(raw.split(","), name, sims, f"--grid {item}")
        if len(grid) < 2:
            raise ValueError(f"--grid needs two or more fields (one field: --vary); got {' '.join(args.grid)!r}.")
        return sims.linear_sweep(grid=grid, **common)
    if args.vary not in sims.VARIABLE:
        raise ValueError(f"--vary {args.vary}: invalid choice (not a numeric config field); choose among {', '.join(sims.VARIABLE)}.")
    values = None if args.values is None else _parse_values(args.values, args.vary, sims, "--values")
    return sims.linear_sweep(args.vary, values, **common)


def _parse_values(raw, name, sims, option):
    """Command-line values of field ``name``: ints for integer fields, floats otherwise."""
    kind = int if name in sims.INT_FIELDS else float
    out = []
    for item in raw:
        try:
            out.append(kind(item))
        except ValueError:
            raise ValueError(f"{option}: the field {name!r} takes {kind.__name__} values; got {item!r}.") from None
    return tuple(out)


#: Config fields that a command sets from a flag of its own (field -> flag; None: computed, never
#: given): ``--set`` refuses them, and the messages of the configs name the flag instead of the field.
_OWNED = {
    "linear": {"vary": "--vary", "values": "--values", "preset": "--preset", "runs": "--runs", "seed": "--seed",
               "chunk_trials": "--chunk-trials", "ft_steps": "--steps", "outer_steps": "--outer-steps"},
    "shallow": {"vary": "--vary", "values": "--values", "trials": "--runs", "seed": "--seed",
                "chunk_trials": "--chunk-trials", "ft_steps": "--steps", "retrain_steps": "--retrain-steps"},
    "finetune": {"d": "--d", "k": "--k", "T": "--T", "N": "--N", "n": "--n", "sigma": "--sigma", "runs": "--runs",
                 "seed": "--seed", "max_steps": "--steps"},
    "realdata": {"dataset": "DATASET", "preset": "--preset", "values": "--methods", "seeds": "--seeds",
                 "retrain_epochs": "--epochs", "reptile_epochs": "--reptile-epochs", "ft_epochs": "--ft-epochs",
                 "n_finetune": "--n-finetune", "chunk_trials": "--chunk-trials", "data_root": "--data-root",
                 "root": "--data-root", "fingerprint": None, "data_files": None},
    "convai": {"preset": "--preset", "methods": "--methods", "ranks": "--ranks", "seeds": "--seeds",
               "retrain_epochs": "--epochs", "reptile_epochs": "--reptile-epochs", "ft_epochs": "--ft-epochs",
               "chunk_trials": "--chunk-trials", "data": "--data", "persona_map": "--persona-map",
               "model": "--model", "fingerprint": None, "data_files": None, "checkpoint_dir": None},
}
#: Arguments of the scheduler and the store (``sims.run``) and of ``reproduce``: their flags.
_RUN_FLAGS = {"store": "--store", "executor": "--executor", "device": "--device", "force": "--force",
              "progress": "--quiet", "out": "--out", "only": "--only", "preset": "--preset", "address": "--address"}


def _kind(args) -> str | None:
    """The key of ``_OWNED`` for this command line: the sweep kind or the real-data experiment."""
    if args.command == "sweep":
        return args.kind
    if args.command == "realdata":
        return "convai" if args.dataset == "convai" else "realdata"
    return None


def _owned_fields(args) -> dict:
    """Fields of this command's config that a flag sets (field -> flag), the swept ones included."""
    owned = dict(_OWNED.get(_kind(args), {}))
    if _kind(args) in ("linear", "shallow"):
        swept = getattr(args, "vary", None)
        grid = getattr(args, "grid", None)
        names = [item.partition("=")[0] for item in grid] if grid else [swept] if swept else []
        for name in names:
            owned[name] = "--grid" if grid else "--values"
        if grid:
            owned.update(vary="--grid", values="--grid")
    return owned


#: The arguments of the store reader and the plot, for ``show`` and ``plot``.
_VIEW_FLAGS = {"folder": "folder", "fmt": "--format", "metric": "--metric", "path": "-o/--output"}


def _flag_map(args) -> dict:
    """Config field or function argument -> the user's flag (or positional argument), for the
    messages of this command."""
    if args.command in ("show", "plot"):
        return dict(_VIEW_FLAGS)
    flags = dict(_RUN_FLAGS)
    cls = _config_class(args)
    if cls is not None:
        flags.update({f.name: f"--set {f.name}" for f in dataclasses.fields(cls)})
    flags.update({k: v for k, v in _owned_fields(args).items() if v is not None})
    return flags


def _config_class(args):
    import sims

    return {"linear": sims.LinearConfig, "shallow": sims.ShallowConfig, "realdata": sims.RealDataConfig,
            "convai": sims.ConvAIConfig}.get(_kind(args))


_QUOTED = r"'[^']+'(?:(?:, | and | or )'[^']+')*"
_CONFIG_FUNCS = r"(?:LinearConfig|ShallowConfig|RealDataConfig|ConvAIConfig|linear_sweep|shallow_sweep|" \
                r"realdata_sweep|finetune_comparison)"


def _user_message(message: str, flags: dict | None) -> str:
    """A message of the library in the command line's words: "The 'trials' parameter of
    ShallowConfig must be ..." becomes "--runs must be ...", and a config's own prefix goes."""
    if not flags:
        return message

    def names(match):
        found = list(dict.fromkeys(flags.get(n, f"'{n}'") for n in re.findall(r"'([^']+)'", match.group(1))))
        return found[0] if len(found) == 1 else ", ".join(found[:-1]) + " and " + found[-1]

    message = re.sub(r" \(the '[^']+' parameter(?: of [A-Za-z_][\w.]*)?\)", "", message)   # "--data (the ...)"
    message = re.sub(rf"The ({_QUOTED}) parameters? of [A-Za-z_][\w.]*", names, message)
    message = re.sub(rf"^{_CONFIG_FUNCS} with ({_QUOTED})", names, message)
    return re.sub(rf"^{_CONFIG_FUNCS}: ", "", message)


def _parse_set(items, cls, owned=None):
    """The ``--set NAME=VALUE`` overrides of config class ``cls``, each converted to its field's type
    (ints, reals, booleans, comma-separated lists); ``owned`` (field -> flag) are the fields that
    another flag sets, refused here so that neither silently overrides the other."""
    fields = {f.name: f for f in dataclasses.fields(cls)}            # not the ClassVars (engine_version)
    owned = owned or {}
    settable = [name for name in fields if name not in owned]
    out = {}
    for item in items:
        name, sep, raw = item.partition("=")
        if not sep or name not in fields:
            raise ValueError(f"--set takes NAME=VALUE with NAME one of {', '.join(settable)}; got {item!r} "
                             f"(see --help).")
        if name in owned:
            flag = owned[name]
            if flag is None:
                raise ValueError(f"--set {item}: {name!r} is computed by the command (from the data files it "
                                 f"reads, or where it stores), not set.")
            if flag in ("--values", "--grid") and name not in ("vary", "values"):
                raise ValueError(f"--set {item}: {name!r} is the swept field; give its values with {flag}.")
            raise ValueError(f"--set {item}: {name!r} is set by {flag}; give it there.")
        if name in out:
            raise ValueError(f"--set {item}: {name!r} is set twice; give each field once.")
        out[name] = _set_value(name, raw, fields[name].default, item)
    return out


def _set_value(name, raw, default, item):
    """One ``--set`` value, as the type of the field's default."""
    def convert(kind, text):
        if kind is bool:
            if text.lower() in ("true", "1", "yes"):
                return True
            if text.lower() in ("false", "0", "no"):
                return False
            raise ValueError(text)
        return kind(text)

    if isinstance(default, (tuple, list)):
        kinds = {type(v) for v in default}
        kind = int if kinds == {int} else str
        try:
            return tuple(convert(kind, part) for part in raw.split(","))
        except ValueError:
            raise ValueError(f"--set {item}: the field {name!r} takes a comma-separated list of {kind.__name__} "
                             f"values; got {raw!r}.") from None
    if isinstance(default, (bool, int, float)):
        kind = type(default)
        try:
            return convert(kind, raw)
        except ValueError:
            allowed = "true or false" if kind is bool else f"{kind.__name__} values"
            raise ValueError(f"--set {item}: the field {name!r} takes {allowed}; got {raw!r}.") from None
    return raw


def _check_folder(path, option):
    """An output folder must be creatable and writable: checked before any work, so that a bad
    --store or --out fails at once (not after the sweep) and leaves nothing behind."""
    if path is None:
        return
    from sims import folder_problem

    problem = folder_problem(path)
    if problem is not None:
        raise ValueError(f"{option} {path}: {problem}.")


def _check_outputs(args):
    for attr, option in (("store", "--store"), ("out", "--out")):
        _check_folder(getattr(args, attr, None), option)
    if getattr(args, "csv", None) is not None:
        if args.csv.is_dir() or not args.csv.name:
            raise ValueError(f"--csv {args.csv}: is a folder, not a file.")
        _check_folder(args.csv.parent, "--csv")


def summarize(table):
    """Final-step metric per method and value (and rank): mean, median, min, max over trials. A
    real-data table (a ``phase`` column) gets its own summary: test accuracy per fine-tuning scheme,
    n_finetune (convai: rank and persona) and retraining method, mean, SE and median over seeds."""
    if "phase" in table.columns:
        import sims

        if "persona" in table.columns:
            return sims.convai_summary(table).set_index(["finetuning", "rank", "retraining", "persona"])
        return sims.realdata_summary(table).set_index(["finetuning", "n_finetune", "retraining"])
    metric = "test_loss" if "test_loss" in table.columns else "test_mse"
    grid = [c for c in str(table["vary"].iloc[0]).split(",") if c in table.columns] if "vary" in table.columns else []
    keys = ["value", *(grid if len(grid) > 1 else []), "method"] + (["rank"] if "rank" in table.columns else [])
    last = table[table["step"] == table.groupby(["value"])["step"].transform("max")]
    g = last.groupby(keys, observed=True)
    out = g[metric].agg(["mean", "median", "min", "max"]).add_prefix("final_")
    for extra in ("optimum", "optimum_exact", "A_error"):
        if extra in table.columns:
            out[extra] = g[extra].mean()
    return out


def _executor(args):
    """The executor named on the command line: a name, or a dask Client for --address."""
    if args.address is None:
        return args.executor
    if args.executor != "dask":
        raise ValueError(f"The '--address' option needs --executor dask. Got --executor {args.executor}.")
    try:
        from distributed import Client
    except ImportError:
        raise ValueError("The '--address' option needs dask.distributed: pip install 'loraml[dask]'.") from None
    try:
        return Client(args.address, timeout=30)
    except (OSError, TimeoutError, ValueError) as err:
        raise ValueError(f"The '--address' option must name a reachable dask scheduler. Got {args.address!r} "
                         f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else 'no answer'}).") from None


def _cmd_reproduce(args):
    from .figures import reproduce

    reproduce(args.out, only=args.only, fast=args.fast, preset=args.preset, store=args.store,
              executor=_executor(args), progress=not args.quiet, device=args.device)


def _cmd_sweep(args):
    import sims

    if args.kind == "finetune":
        table = sims.finetune_comparison(d=args.d, k=args.k, T=args.T, N=args.N, n=args.n, sigma=args.sigma,
                                         runs=args.runs, seed=args.seed, max_steps=args.steps)
        if args.csv:
            sims.atomic_write(args.csv, lambda tmp: table.to_csv(tmp, index=False))
        print(sims.finetune_summary(table).to_string(index=False, float_format=lambda x: f"{x:.4g}"))
        return
    if args.kind == "linear":
        cfg = _linear_sweep_from_args(args, sims)
        engine = {}
    else:
        overrides = _parse_set(args.set, sims.ShallowConfig, _owned_fields(args))
        if args.steps is not None:
            overrides["ft_steps"] = args.steps
        if args.retrain_steps is not None:
            overrides["retrain_steps"] = args.retrain_steps
        cfg = sims.shallow_sweep(args.vary, args.values, trials=args.runs, seed=args.seed,
                                 chunk_trials=args.chunk_trials, **overrides)
        engine = {"device": args.device or sims.default_device()}
    t0 = time.perf_counter()
    table = sims.run(cfg, executor=_executor(args), store=args.store, force=args.force, progress=not args.quiet,
                     **engine)
    print(f"{len(table)} rows in {time.perf_counter() - t0:.1f} s -> {args.store / (args.kind + '-' + cfg.key)}")
    print(summarize(table).to_string(float_format=lambda x: f"{x:.4g}"))


def _cmd_realdata(args):
    import sims

    if args.dataset == "convai":
        return _cmd_convai(args)
    for flag, option in (("data", "--data"), ("persona_map", "--persona-map"), ("model", "--model"),
                         ("ranks", "--ranks")):
        if getattr(args, flag) is not None:
            raise ValueError(f"The '{option}' option is for 'loraml realdata convai'. Got it with {args.dataset}.")
    if args.dataset == "digits" and args.data_root is not None:
        raise ValueError("The '--data-root' option is for vision (CIFAR-10); digits are scikit-learn's bundled "
                         "images and read no folder.")
    overrides = _parse_set(args.set, sims.RealDataConfig, _owned_fields(args))
    for flag, name in (("methods", "values"), ("epochs", "retrain_epochs"), ("reptile_epochs", "reptile_epochs"),
                       ("ft_epochs", "ft_epochs"), ("n_finetune", "n_finetune")):
        if getattr(args, flag) is not None:
            overrides[name] = tuple(getattr(args, flag)) if isinstance(getattr(args, flag), list) else getattr(args, flag)
    if args.dataset == "vision":
        sims.read_cifar10(args.data_root)             # one line naming --data-root before any work
        overrides["data_root"] = str(args.data_root.resolve())
        device = args.device or sims.default_device()
    else:
        device = args.device or "cpu"
    cfg = sims.realdata_sweep(args.dataset, preset=args.preset, seeds=tuple(args.seeds),
                              chunk_trials=args.chunk_trials, **overrides)
    out = args.out or Path("figures") / "realdata" / f"{args.dataset}-{args.preset}"
    _check_folder(out, "--out")                           # the default folder too, before any work
    table = _run_real(cfg, args, device, args.store / f"realdata-{cfg.key}")
    from .figures.realdata import realdata_markdown, write_realdata_outputs

    title = f"{args.dataset}, {args.preset} preset, {len(cfg.seeds)} seed(s)"
    _print_outputs(realdata_markdown(sims.realdata_summary(table)),
                   write_realdata_outputs(table, out, title=title, name=args.dataset))


def _run_real(cfg, args, device, folder):
    """Run a real-data sweep as the command line asked (CUDA in this process), with one line of timing."""
    import sims

    t0 = time.perf_counter()
    table = sims.run(cfg, executor="serial" if device == "cuda" else _executor(args), store=args.store,
                     force=args.force, progress=not args.quiet, device=device)
    print(f"{len(table)} rows in {time.perf_counter() - t0:.1f} s -> {folder}")
    return table


def _print_outputs(markdown: str, paths) -> None:
    print(markdown, end="")
    for path in paths:
        print(f"  {path}")


def _cmd_convai(args):
    import sims

    if args.data_root is not None:
        raise ValueError("The '--data-root' option is for vision; convai takes --data, --persona-map and --model.")
    if args.n_finetune is not None:
        raise ValueError("The '--n-finetune' option is for digits and vision; convai fine-tunes on every dialogue "
                         "of a test persona but its held-out ones.")
    for flag, option in (("data", "--data"), ("persona_map", "--persona-map"), ("model", "--model")):
        if getattr(args, flag) is None:
            raise ValueError(f"The '{option}' option is required for convai: {sims.CONVAI_HELP}.")
    overrides = _parse_set(args.set, sims.ConvAIConfig, _owned_fields(args))
    for flag, name in (("methods", "methods"), ("epochs", "retrain_epochs"), ("reptile_epochs", "reptile_epochs"),
                       ("ft_epochs", "ft_epochs"), ("ranks", "ranks")):
        if getattr(args, flag) is not None:
            overrides[name] = tuple(getattr(args, flag)) if isinstance(getattr(args, flag), list) else getattr(args, flag)
    device = args.device or sims.default_device()
    cfg = sims.realdata_sweep("convai", preset=args.preset, seeds=tuple(args.seeds), data=args.data,
                              persona_map=args.persona_map, model=args.model, chunk_trials=args.chunk_trials,
                              **overrides)
    folder = args.store / f"convai-{cfg.key}"
    cfg = sims.ConvAIConfig(**{**cfg.to_dict(), "checkpoint_dir": str((folder / "retrained").resolve())})
    out = args.out or Path("figures") / "realdata" / f"convai-{args.preset}"
    _check_folder(out, "--out")                           # the default folder too, before any work
    table = _run_real(cfg, args, device, folder)
    from .figures.realdata import convai_markdown, write_convai_outputs

    title = f"ConvAI2, {args.preset} preset, {len(cfg.seeds)} seed(s), {cfg.n_test_personas} test personas"
    _print_outputs(convai_markdown(sims.convai_summary(table)), write_convai_outputs(table, out, title=title))


@contextlib.contextmanager
def _store_lines(command):
    """The store's lines (a chunk file left out and why; logger ``sims``) go to stderr as
    ``loraml COMMAND: ...`` inside the block."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"loraml {command}: %(message)s"))
    logger = logging.getLogger("sims")
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)


def _cmd_show(args):
    import sims

    with _store_lines("show"):
        table = sims.read_store(args.folder)
    summary = summarize(table)
    if args.format != "table":
        from .figures.explore import format_summary

        print(format_summary(summary, args.format), end="")
        return
    preset = f", preset {table['preset'].iloc[0]}" if "preset" in table.columns else ""
    if "phase" in table.columns:
        print(f"{args.folder}: {table['dataset'].iloc[0]} real data{preset}, {table['seed'].nunique()} seed(s)")
    else:
        print(f"{args.folder}: vary {table['vary'].iloc[0]}{preset}, {table['trial'].nunique()} trials, "
              f"{int(table['step'].max())} fine-tuning steps")
    print(summary.to_string(float_format=lambda x: f"{x:.4g}"))
    print(record_summary(sims.read_records(args.folder)))


def _cmd_plot(args):
    import sims

    from .figures.explore import check_plot_path, plot_stored

    if args.output is not None:
        check_plot_path(args.output)                      # before reading anything
    with _store_lines("plot"):
        table = sims.read_store(args.folder)
    out = args.output or args.folder / f"plot-{'accuracy' if 'phase' in table.columns else args.metric}.png"
    path = plot_stored(table, out, metric=args.metric, title=str(args.folder))
    print(path)


def record_summary(records) -> str:
    """What computed a stored sweep: one line per distinct (engine, toolkit, libraries) among the
    chunks shown, and one line counting the chunk files left out (``"problem"`` in their record)."""
    groups: dict[str, list] = {}
    left_out = sum("problem" in r for r in records)
    for r in records:
        if "problem" in r:
            continue
        commit = (r.get("git_commit") or "unknown")[:12] + ("+dirty" if r.get("git_dirty") else "")
        libs = ", ".join(f"{k} {v}" for k, v in r.get("versions", {}).items() if v)
        line = (f"{r.get('kind')} engine version {r.get('engine_version')}, loraml {r.get('loraml_version')} "
                f"(commit {commit}), seed {r.get('seed')}; {libs}")
        groups.setdefault(line, []).append(r["file"])
    lines = [f"record ({len(files)} chunk{'s' * (len(files) != 1)}): {line}" for line, files in groups.items()]
    if left_out:
        lines.append(f"left out: {left_out} chunk file{'s' * (left_out != 1)} (each named on stderr with the reason)")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        _check_outputs(args)
        {"reproduce": _cmd_reproduce, "sweep": _cmd_sweep, "show": _cmd_show, "plot": _cmd_plot,
         "realdata": _cmd_realdata}[args.command](args)
    except ValueError as err:
        first = (str(err).splitlines() or [type(err).__name__])[0]
        print(f"loraml {args.command}: error: {_user_message(first, _flag_map(args))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"loraml {args.command}: interrupted; the chunks already stored are kept, rerun to resume",
              file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
