"""The shallow-network torch path on an accelerator: engine timings, then both paper-size sweeps.

Run (on a machine with a GPU):  python benchmarks/shallow_device.py --device cuda --out DIR

1. ``benchmarks/shallow_engine.py`` on the device (batched vs one trial at a time vs autograd, and
   the projected cost of every setting).
2. Both sweeps of spec §5.2 at full settings (d ∈ {5, 10, 20}, T ∈ {2, 3, 5, 10}; 10 trials; 40000
   retraining + 15000 fine-tuning AdamW steps) through ``sims.run``, every setting in its own
   process on the one device (spawned, so that no process inherits a CUDA context), timed as a
   whole; each sweep's table goes to DIR as Parquet, and the final medians are printed beside the
   committed CPU table (figures/shallow/table.csv) with their relative difference.

``--retrain-steps/--ft-steps`` shrink the protocol for a dry run on the CPU.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import multiprocessing as mp
import sys
import time
from pathlib import Path

import pandas as pd

import sims
from loraml.figures.shallow import shallow_table

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--out", type=Path, required=True, help="folder for the sweep tables")
    p.add_argument("--retrain-steps", type=int, default=40000)
    p.add_argument("--ft-steps", type=int, default=15000)
    p.add_argument("--engine-steps", type=int, default=400, help="steps of the engine benchmark (0: skip it)")
    args = p.parse_args(argv)
    device = args.device or sims.default_device()
    args.out.mkdir(parents=True, exist_ok=True)
    try:
        import torch

        name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
        print(f"torch {torch.__version__}, device {device} ({name})", flush=True)
    except Exception as err:  # pragma: no cover - informational only
        print(f"torch device query failed: {err}", flush=True)
    if args.engine_steps:
        sys.path.insert(0, str(ROOT / "benchmarks"))
        import shallow_engine

        t0 = time.perf_counter()
        shallow_engine.main(["--steps", str(args.engine_steps), "--device", device])
        print(f"engine benchmark: {time.perf_counter() - t0:.1f} s", flush=True)
    configs = [sims.shallow_sweep(vary, retrain_steps=args.retrain_steps, ft_steps=args.ft_steps)
               for vary in sims.SHALLOW_SWEEPS]
    n_chunks = sum(len(c.chunks()) for c in configs)
    pool = cf.ProcessPoolExecutor(max_workers=n_chunks, mp_context=mp.get_context("spawn"))
    t0 = time.perf_counter()
    futures = {c.vary: pool.submit(_run, c, device) for c in configs}
    tables = {}
    for vary, fut in futures.items():
        tables[vary], seconds = fut.result()
        tables[vary].to_parquet(args.out / f"shallow-{vary}.parquet", index=False)
        print(f"sweep {vary}: {len(tables[vary])} rows, its own wall {seconds:.1f} s", flush=True)
    pool.shutdown()
    print(f"both sweeps at {args.retrain_steps} + {args.ft_steps} steps on {device}: "
          f"{time.perf_counter() - t0:.1f} s wall in all", flush=True)
    summary = shallow_table(list(tables.values()))
    reference = ROOT / "figures" / "shallow" / "table.csv"
    if reference.exists() and args.retrain_steps == 40000 and args.ft_steps == 15000:
        ref = pd.read_csv(reference)
        merged = summary.merge(ref, on=["sweep", "value", "method", "rank"], suffixes=("", "_cpu"))
        merged["rel_diff"] = (merged["median"] - merged["median_cpu"]).abs() / merged["median_cpu"]
        summary = merged
    text = summary.to_string(float_format=lambda x: f"{x:.4g}")
    (args.out / "summary.txt").write_text(text + "\n")
    print(text)


def _run(config, device):
    """One sweep, its settings in a nested spawn pool of their own (one process per setting)."""
    t0 = time.perf_counter()
    with cf.ProcessPoolExecutor(max_workers=len(config.chunks()), mp_context=mp.get_context("spawn")) as pool:
        table = sims.run(config, executor=pool, progress=False, device=device)
    return table, time.perf_counter() - t0


if __name__ == "__main__":
    main()
