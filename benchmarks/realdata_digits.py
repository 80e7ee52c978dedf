"""The offline digits table at full protocol: wall time of all methods, both fine-tuning schemes,
5 seeds, on this machine (must stay under 5 minutes on 2 CPU cores).

Run:  .venv/bin/python benchmarks/realdata_digits.py [--executor processes] [--seeds 0 1 2 3 4]

Runs ``sims.realdata_sweep("digits")`` (clean preset) with no store, prints the wall time, the
time per chunk (one retraining method and seed, with its 2 × 5 fine-tunings) and the summary.
"""

from __future__ import annotations

import argparse
import os
import time

import sims


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--executor", choices=("serial", "processes"), default="processes")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--preset", choices=("paper", "clean"), default="clean")
    args = p.parse_args(argv)
    cfg = sims.realdata_sweep("digits", preset=args.preset, seeds=tuple(args.seeds))
    t0 = time.perf_counter()
    table = sims.run(cfg, executor=args.executor, progress=False, device="cpu")
    wall = time.perf_counter() - t0
    chunks = len(cfg.chunks())
    print(f"digits, {args.preset} preset, {len(cfg.values)} methods x {len(cfg.seeds)} seeds = {chunks} chunks, "
          f"{len(cfg.finetuning)} schemes x {len(cfg.n_finetune)} sample sizes each, executor {args.executor} "
          f"on {os.cpu_count()} cores: {wall:.1f} s ({wall / chunks:.1f} s per chunk of wall time)")
    print(sims.realdata_summary(table).to_string(index=False, float_format=lambda x: f"{x:.3f}"))
    return wall


if __name__ == "__main__":
    main()
