"""Batched linear engine vs a straightforward per-run implementation, measured in one run.

Run:  .venv/bin/python benchmarks/linear_engine.py [--scale 10]

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
import time

import sims


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


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scale", type=int, default=10, help="step reduction for the (a) vs (b) comparison")
    p.add_argument("--skip-full-reference", action="store_true", help="skip the full-setting trial of (b)")
    args = p.parse_args(argv)

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
