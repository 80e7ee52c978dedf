"""The offline digits table at full protocol: wall time of the digits group (all methods, both
fine-tuning schemes, both presets as `loraml reproduce` runs them), the paired intervals it gives,
and how many seeds a target half-width needs.

Run:  .venv/bin/python benchmarks/realdata_digits.py [--seeds 5] [--baseline-seeds 5] [--presets clean paper]
                                                     [--methods SR LoRA-ML] [--target 3] [--stacked SR]

- Runs ``loraml.figures.realdata_configs`` with ``--seeds`` seeds (both presets by default; SR and
  last-layer-ML chunks shared between them, as in `make reproduce`) with no store, and prints
  the wall time. With ``--baseline-seeds``, first runs the group with that many seeds, back to
  back on the same machine, and prints the ratio of the two wall times.
- For the clean preset, prints each method minus SR at the smallest fine-tuning size (paired over
  seeds, ``sims.paired_differences``): the paired standard deviation and the number of seeds k
  whose 95 % half-width t_{0.975, k-1} · sd / √k is at most ``--target`` points.
- ``--stacked METHOD``: one chunk of that method with all the seeds, fine-tuned seed by seed and
  as one stacked pass (sims._seedstack), timed back to back.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time

import numpy as np
from scipy import stats

import sims
from loraml.figures import realdata_configs


def seeds_for(sd: float, half_width: float, level: float = 0.95, most: int = 100_000) -> int:
    """Smallest k >= 2 with t_{(1+level)/2, k-1} · sd / √k <= half_width (the paired interval's
    half-width, were the standard deviation ``sd`` known)."""
    if not sd > 0:
        return 2
    k = max(2, int(np.ceil((stats.norm.ppf(0.5 + level / 2) * sd / half_width) ** 2)))   # a lower bound
    while k < most and stats.t.ppf(0.5 + level / 2, k - 1) * sd / np.sqrt(k) > half_width:
        k += 1
    return k


def group(seeds: int, presets, executor: str, methods=None):
    """The digits group with ``seeds`` seeds (and only ``methods``, if given): (wall seconds,
    {preset: table})."""
    configs = [dataclasses.replace(c, seeds=tuple(range(seeds)), **({"values": tuple(methods)} if methods else {}))
               for c in realdata_configs() if c.preset in presets]
    t0 = time.perf_counter()
    tables = sims.run_many(configs, executor=executor, progress=False, device="cpu")
    return time.perf_counter() - t0, {c.preset: t for c, t in zip(configs, tables)}


def stacked_check(method: str, seeds: int):
    cfg = dataclasses.replace(realdata_configs(preset="clean")[0], seeds=tuple(range(seeds)))
    v = cfg.values.index(method)
    out = {}
    for stacked in (False, True):
        t0 = time.perf_counter()
        sims.simulate_realdata_chunk(cfg, v, tuple(range(seeds)), device="cpu", amp=False, stacked=stacked)
        out["stacked" if stacked else "looped"] = time.perf_counter() - t0
    print(f"{method}, {seeds} seeds in one chunk on the CPU: looped {out['looped']:.1f} s, stacked "
          f"{out['stacked']:.1f} s (stacked / looped = {out['stacked'] / out['looped']:.2f})")
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--executor", choices=("serial", "processes"), default="processes")
    p.add_argument("--seeds", type=int, default=5, help="seeds of the timed group (default 5)")
    p.add_argument("--baseline-seeds", type=int, default=None, help="also time the group with this many seeds first")
    p.add_argument("--presets", nargs="+", choices=("clean", "paper"), default=["clean", "paper"])
    p.add_argument("--methods", nargs="+", choices=sims.RETRAINING_METHODS, default=None,
                   help="only these retraining methods (SR among them for the paired intervals)")
    p.add_argument("--target", type=float, default=3.0, help="target 95 %% half-width in accuracy points")
    p.add_argument("--stacked", default=None, choices=sims.RETRAINING_METHODS, help="time one chunk stacked vs looped")
    args = p.parse_args(argv)
    if args.stacked:
        return stacked_check(args.stacked, args.seeds)
    cores = os.cpu_count()
    if args.baseline_seeds:
        base, _ = group(args.baseline_seeds, args.presets, args.executor, args.methods)
        print(f"digits group, {args.baseline_seeds} seeds, presets {' '.join(args.presets)}: {base:.1f} s "
              f"({args.executor} on {cores} cores)")
    wall, tables = group(args.seeds, args.presets, args.executor, args.methods)
    print(f"digits group, {args.seeds} seeds, presets {' '.join(args.presets)}: {wall:.1f} s "
          f"({args.executor} on {cores} cores)")
    if args.baseline_seeds:
        print(f"ratio ({args.seeds} seeds) / ({args.baseline_seeds} seeds): {wall / base:.2f}")
    if "clean" in tables:
        d = sims.paired_differences(tables["clean"])
        smallest = d[d["n_finetune"] == d["n_finetune"].min()]
        print(f"\nclean preset, n = {int(smallest['n_finetune'].iloc[0])}: method - SR (points), paired over "
              f"{int(smallest['seeds'].min())} seeds; seeds for a 95 % half-width <= {args.target} points")
        for r in smallest.itertuples():
            for which in ("last", "best"):
                sd = 100 * getattr(r, f"{which}_sd")
                half = 100 * (getattr(r, f"{which}_hi") - getattr(r, f"{which}_diff"))
                print(f"  {r.finetuning:10s} {r.retraining:14s} {which}: {100 * getattr(r, f'{which}_diff'):+5.1f} "
                      f"± {half:4.1f}  sd {sd:5.1f}  -> {seeds_for(sd, args.target)} seeds")
    return wall


if __name__ == "__main__":
    main()
