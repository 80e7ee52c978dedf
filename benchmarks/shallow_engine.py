"""Shallow-network engine: this tree against a git revision, chunk by chunk, measured in one run.

Run:  .venv/bin/python benchmarks/shallow_engine.py [--rev d33ccab] [--retrain-steps 4000]
      [--ft-steps 1500] [--trials 5] [--settings 10:3,20:3,10:10] [--repeats 3] [--device cpu]

For each setting d:T it times ``sims.simulate_shallow_chunk`` on one chunk of ``--trials`` trials
(N = 1000, n = 100, float32, the engine's one torch thread) with the engine of revision ``--rev``
(extracted with ``git archive`` into a temporary folder) and with the engine of this working tree,
each in a fresh subprocess whose PYTHONPATH points at that tree, alternating old, new, old, new, ...
for ``--repeats`` rounds, so both see the same machine load. Each subprocess first runs a tiny
warm-up chunk (library loading, first-call costs), then the timed chunk; it reports the seconds of
the timed chunk only. The summary gives, per setting, the best of the repeats for each engine and
their ratio (old / new), the ratio of the medians, and every individual time.

The default (4000 + 1500 steps, a tenth of the protocol's 40000 + 15000) takes a few minutes on
2 cores; cost is linear in the steps, so the ratio carries over to the full protocol. On a shared
machine the individual times vary by tens of per cent: compare the old and new times of one run,
never times of different runs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _child(args):
    """Runs inside the subprocess: warm up, time one chunk, print one JSON line."""
    import sims

    cfg = sims.shallow_sweep("T", (args.T,), d=args.d, trials=args.trials, retrain_steps=args.retrain_steps,
                             ft_steps=args.ft_steps)
    warm = sims.shallow_sweep("T", (args.T,), d=args.d, trials=1, retrain_steps=2, ft_steps=2)
    sims.simulate_shallow_chunk(warm, 0, (0,), device=args.device)
    t0 = time.perf_counter()
    table = sims.simulate_shallow_chunk(cfg, 0, tuple(range(args.trials)), device=args.device)
    seconds = time.perf_counter() - t0
    final = table[table.step == table.step.max()].groupby("method", observed=True).test_mse.median()
    print(json.dumps({"seconds": seconds, "sims": sims.__file__, "median_final_mse": final.to_dict()}))


def _run(tree, d, T, args):
    env = dict(os.environ, PYTHONPATH=str(tree), OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", "--d", str(d), "--T", str(T),
           "--trials", str(args.trials), "--retrain-steps", str(args.retrain_steps), "--ft-steps", str(args.ft_steps),
           "--device", args.device]
    out = subprocess.run(cmd, check=False, env=env, capture_output=True, text=True, cwd=tempfile.gettempdir())
    if out.returncode != 0:
        raise RuntimeError(f"the chunk in {tree} failed:\n{out.stderr}")
    res = json.loads(out.stdout.strip().splitlines()[-1])
    if not Path(res["sims"]).resolve().is_relative_to(Path(tree).resolve()):
        raise RuntimeError(f"the subprocess for {tree} imported {res['sims']}")
    return res


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rev", default="d33ccab", help="git revision of the old engine (default d33ccab)")
    p.add_argument("--retrain-steps", type=int, default=4000, help="AdamW retraining steps (default 4000)")
    p.add_argument("--ft-steps", type=int, default=1500, help="AdamW fine-tuning steps (default 1500)")
    p.add_argument("--trials", type=int, default=5, help="trials in the chunk (default 5, as chunk_trials)")
    p.add_argument("--settings", default="10:3,20:3,10:10", help="d:T settings (default 10:3,20:3,10:10)")
    p.add_argument("--repeats", type=int, default=3, help="alternating old/new rounds (default 3)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--d", type=int, help=argparse.SUPPRESS)
    p.add_argument("--T", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        return _child(args)
    settings = [tuple(int(v) for v in s.split(":")) for s in args.settings.split(",")]
    with tempfile.TemporaryDirectory(prefix="loraml-old-") as old:
        archive = subprocess.run(["git", "-C", str(REPO), "archive", args.rev], capture_output=True, check=True)
        subprocess.run(["tar", "-x", "-C", old], input=archive.stdout, check=True)
        print(f"old: {args.rev} (in {old}); new: working tree {REPO}; chunk of {args.trials} trials, "
              f"{args.retrain_steps} retraining + {args.ft_steps} fine-tuning steps, N = 1000, n = 100, float32, "
              f"device {args.device}", flush=True)
        rows = []
        for d, T in settings:
            times = {"old": [], "new": []}
            medians = {}
            for _ in range(args.repeats):
                for name, tree in (("old", old), ("new", REPO)):
                    res = _run(tree, d, T, args)
                    times[name].append(res["seconds"])
                    medians[name] = res["median_final_mse"]
            o, n = min(times["old"]), min(times["new"])
            med = sorted(times["old"])[(args.repeats - 1) // 2] / sorted(times["new"])[(args.repeats - 1) // 2]
            rows.append((d, T, o, n, med))
            print(f"d = {d:2d}, T = {T:2d}: old {o:7.2f} s, new {n:7.2f} s per chunk -> {o / n:.2f}x   "
                  f"(all: old {' '.join(f'{t:.2f}' for t in times['old'])}; "
                  f"new {' '.join(f'{t:.2f}' for t in times['new'])}; final median test MSE "
                  + ", ".join(f"{m} {medians['old'][m]:.6g} / {medians['new'][m]:.6g}" for m in medians["old"]) + ")",
                  flush=True)
    print("summary (best of the repeats, seconds per chunk; ratio of the best, ratio of the medians):")
    for d, T, o, n, med in rows:
        print(f"  d = {d:2d}, T = {T:2d}: {o:.2f} -> {n:.2f}  ({o / n:.2f}x; medians {med:.2f}x)")


if __name__ == "__main__":
    main()
