"""Batched linear engine vs a straightforward per-run implementation, measured in one run.

Run:  .venv/bin/python benchmarks/linear_engine.py [--scale 10] [--rev d33ccab] [--reps 2]
      [--figures-only | --no-figures]

(f) the ten linear figures (five sweeps x presets "paper" and "clean") from an empty store,
    computed and plotted: ``make_linear_figures(out, preset="both", store=<empty>,
    executor="processes", progress=False)`` in a fresh interpreter, for this working tree and for
    a git revision (default d33ccab) extracted with ``git archive``, alternating, each repetition
    with its own empty store and one BLAS thread per process. The time is the subprocess's wall
    clock (interpreter start, imports, pool start-up, compute, PNG + PDF writes); the snippet is
    the same for both trees, so a tree with ``sims.run_many`` is measured through whatever its
    figure code calls.
(e) the engine alone on the 30 chunks of those ten configs, serial, CPU seconds: one
    ``simulate_chunk`` per chunk (what a scheduler sending single chunks runs) vs
    ``simulate_chunks`` on all of them (retraining and fine-tuning batched across chunks of equal
    shapes), whose tables are checked equal bit for bit; skipped where sims does not export it.
(a) the batched engine (``sims.run``) on all five sweeps of spec §5.1 at the paper's full
    settings (5 runs, 3000 outer iterations, 10000/1000/1000/1400/10000 fine-tuning steps),
    serial and with a process pool;
(b) ``sims.reference_trial``: one run at a time, one task at a time, every gradient
    from the full data matrices, as the authors' code does.

(b) at full settings takes minutes per sweep value, so both are also timed on the same reduced
protocol (outer and fine-tuning steps divided by --scale, every value of every sweep, one trial
of (b) per value multiplied by the runs); cost is linear in the step counts, so the ratio carries
over. One full-setting trial of (b) at the default setting is timed too, for an absolute anchor.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import sims

REPO = Path(__file__).resolve().parents[1]

#: Run in a fresh interpreter whose PYTHONPATH is the tree under test; argv[1] is an empty folder.
FIGURES_SNIPPET = """
import sys, time
from pathlib import Path
t0 = time.perf_counter()
import loraml.figures, sims, theory
root = Path(sys.argv[2]).resolve()
for mod in (loraml.figures, sims, theory):
    assert root in Path(mod.__file__).resolve().parents, (mod.__file__, root)   # the tree under test
t1 = time.perf_counter()
tmp = Path(sys.argv[1])
paths = loraml.figures.make_linear_figures(tmp / "figures", preset="both", store=tmp / "store",
                                           executor="processes", progress=False)
assert len([p for p in paths if p.suffix == ".png"]) == 10, paths
print(f"imports {t1 - t0:.2f} s, figures {time.perf_counter() - t1:.2f} s, run_many {hasattr(sims, 'run_many')}")
"""


def _configs(scale: int = 1):
    out = []
    for vary in ("T", "n", "N", "d", "k"):
        cfg = sims.linear_sweep(vary)
        if scale > 1:
            cfg = sims.linear_sweep(vary, outer_steps=cfg.outer_steps // scale, ft_steps=cfg.ft_steps // scale)
        out.append(cfg)
    return out


def _time_engine(configs, executor):
    t0 = time.perf_counter()
    for cfg in configs:
        sims.run(cfg, executor=executor, progress=False)
    return time.perf_counter() - t0


def _time_reference(configs):
    t0 = time.perf_counter()
    for cfg in configs:
        for vi in range(len(cfg.values)):
            sims.reference_trial(cfg, vi, 0)
    return (time.perf_counter() - t0) * configs[0].runs     # one trial per value, × runs


def _time_figures_once(root: Path) -> tuple[float, float, str]:
    """(wall seconds, CPU seconds of the interpreter and its pool workers, its report) of one fresh
    interpreter making the ten linear figures with ``root`` on PYTHONPATH."""
    env = {**os.environ, "PYTHONPATH": str(root), "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1",
           "MKL_NUM_THREADS": "1"}
    with tempfile.TemporaryDirectory(prefix="linfig-") as tmp:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        # cwd is the empty folder, so neither tree's checkout shadows PYTHONPATH.
        proc = subprocess.run([sys.executable, "-c", FIGURES_SNIPPET, tmp, str(root)], check=False, cwd=tmp, env=env,
                              capture_output=True, text=True)
        wall = time.perf_counter() - t0
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    if proc.returncode != 0:
        raise RuntimeError(f"the figures snippet failed for {root}:\n{proc.stderr[-3000:]}")
    return wall, cpu, proc.stdout.strip()


def compare_figures(rev: str = "d33ccab", reps: int = 2, repo: Path = REPO) -> tuple[float, float]:
    """(f): median wall seconds of the revision and of the working tree, measured alternately.

    The CPU seconds (the interpreter plus its pool workers, from getrusage) are printed too: on a
    machine shared with other jobs the wall clock varies by tens of percent between repetitions,
    the CPU total much less; it is the work, and wall ≥ CPU / cores."""
    with tempfile.TemporaryDirectory(prefix=f"linrev-{rev}-") as old:
        archive = subprocess.run(["git", "-C", str(repo), "archive", rev], check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", old], input=archive, check=True)
        times = {rev: [], "tree": []}
        cpus = {rev: [], "tree": []}
        for rep in range(reps):
            for label, root in ((rev, Path(old)), ("tree", repo)):
                wall, cpu, detail = _time_figures_once(root)
                times[label].append(wall)
                cpus[label].append(cpu)
                print(f"(f) rep {rep + 1} {label:>8}: {wall:6.2f} s wall, {cpu:6.2f} s CPU  ({detail})", flush=True)
    t_old, t_new = statistics.median(times[rev]), statistics.median(times["tree"])
    print(f"(f) ten linear figures from an empty store, computed and plotted, {os.cpu_count()} cores: "
          f"{rev} {t_old:.1f} s, working tree {t_new:.1f} s (medians of {reps}) -> {t_old / t_new:.2f}x")
    c_old, c_new = statistics.median(cpus[rev]), statistics.median(cpus["tree"])
    print(f"(f) CPU seconds (interpreter + pool workers): {rev} {c_old:.1f} s, working tree {c_new:.1f} s "
          f"-> {c_old / c_new:.2f}x")
    return t_old, t_new


def compare_grouped(reps: int = 2) -> None:
    """(e): CPU seconds of the 30 chunks one by one vs in one simulate_chunks call, alternating."""
    import pandas as pd

    simulate_chunks = getattr(sims, "simulate_chunks", None)
    if simulate_chunks is None:
        print("(e) skipped: this tree's sims does not export simulate_chunks")
        return
    configs = [sims.linear_sweep(v, preset=p) for p in ("paper", "clean") for v in ("T", "n", "N", "d", "k")]
    jobs = [(cfg, v, trials) for cfg in configs for v, trials in cfg.chunks()]
    cpu = {"one by one": [], "together": []}
    for _ in range(reps):
        t0 = time.process_time()
        alone = [sims.simulate_chunk(*job) for job in jobs]
        cpu["one by one"].append(time.process_time() - t0)
        t0 = time.process_time()
        together = simulate_chunks(jobs)
        cpu["together"].append(time.process_time() - t0)
    for a, b in zip(alone, together):
        pd.testing.assert_frame_equal(a, b, check_exact=True)
    one, tog = min(cpu["one by one"]), min(cpu["together"])
    print(f"(e) engine, the {len(jobs)} chunks of the ten linear configs, serial CPU (min of {reps}): one "
          f"simulate_chunk each {one:.1f} s, simulate_chunks on all {tog:.1f} s -> {one / tog:.2f}x (tables equal bit for bit)")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scale", type=int, default=10, help="step reduction for the (a) vs (b) comparison")
    p.add_argument("--skip-full-reference", action="store_true", help="skip the full-setting trial of (b)")
    p.add_argument("--rev", default="d33ccab", help="git revision for the (f) comparison")
    p.add_argument("--reps", type=int, default=2, help="repetitions of (f) per tree, alternating")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--no-figures", action="store_true", help="skip (f) and (e)")
    which.add_argument("--figures-only", action="store_true", help="only (f) and (e)")
    args = p.parse_args(argv)

    if not args.no_figures:
        compare_figures(args.rev, args.reps)
        compare_grouped(args.reps)
        if args.figures_only:
            return

    full = _configs()
    t_serial = _time_engine(full, "serial")
    t_pool = _time_engine(full, "processes")
    print(f"(a) all five sweeps, paper settings: {t_serial:.1f} s serial, {t_pool:.1f} s with a process pool")

    reduced = _configs(args.scale)
    ta = _time_engine(reduced, "serial")
    tb = _time_reference(reduced)
    print(f"reduced protocol (steps / {args.scale}): (a) {ta:.2f} s serial, (b) {tb:.1f} s "
          f"-> (b)/(a) = {tb / ta:.0f}x; (b) for all five sweeps at full settings ~ {tb * args.scale / 60:.0f} min")

    if not args.skip_full_reference:
        cfg = sims.linear_sweep("T", (3,), runs=1)
        t0 = time.perf_counter()
        sims.reference_trial(cfg, 0, 0)
        tb1 = time.perf_counter() - t0
        t0 = time.perf_counter()
        sims.run(sims.linear_sweep("T", (3,)), progress=False)
        ta5 = time.perf_counter() - t0
        print(f"one full default run (T=3): (b) {tb1:.1f} s per run; (a) {ta5:.2f} s for all 5 runs "
              f"-> {5 * tb1 / ta5:.0f}x")


if __name__ == "__main__":
    main()
