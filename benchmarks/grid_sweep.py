"""A 5 × 5 grid at the paper's settings, swept and plotted from the command line, timed.

Run:  .venv/bin/python benchmarks/grid_sweep.py [--reps 1] [--grid sigma=... n=...]

Issue 17 asks that a 2-D grid of 5 × 5 values at paper settings (paper preset: 5 runs per point,
3000 retraining iterations, 10000 fine-tuning steps, exact reference on) runs and plots in at most
30 s on 2 cores. Each repetition runs, in fresh interpreters with one BLAS thread per process and
an empty store, ``loraml sweep linear --grid ... --executor processes`` and then ``loraml plot``
on the folder it wrote; the time is the two subprocesses' wall clock (interpreter start, imports,
pool start-up, compute, Parquet and PNG writes). The default grid is σ × n (σ ∈ {0.03, 0.1, 0.3,
0.5, 1}, n ∈ {50, 100, 200, 500, 1000}).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_GRID = ["sigma=0.03,0.1,0.3,0.5,1", "n=50,100,200,500,1000"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--grid", nargs="+", default=DEFAULT_GRID)
    args = ap.parse_args()
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    loraml = [sys.executable, "-m", "loraml.cli"]
    for rep in range(args.reps):
        with tempfile.TemporaryDirectory() as tmp:
            store = Path(tmp) / "store"
            t0 = time.perf_counter()
            subprocess.run(loraml + ["sweep", "linear", "--grid", *args.grid, "--store", str(store), "--quiet"],
                           check=True, env=env, cwd=ROOT, stdout=subprocess.DEVNULL)
            t1 = time.perf_counter()
            folder = next(store.iterdir())
            out = Path(tmp) / "grid.png"
            subprocess.run(loraml + ["plot", str(folder), "-o", str(out)], check=True, env=env, cwd=ROOT,
                           stdout=subprocess.DEVNULL)
            t2 = time.perf_counter()
            print(f"rep {rep}: sweep {t1 - t0:.1f} s + plot {t2 - t1:.1f} s = {t2 - t0:.1f} s "
                  f"(grid {' '.join(args.grid)}, {os.cpu_count()} CPUs)")


if __name__ == "__main__":
    main()
