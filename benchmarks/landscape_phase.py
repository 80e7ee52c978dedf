"""Recovery phase diagram (issue: landscape; spec P5): wall time, serial and in a process pool.

Run:  .venv/bin/python benchmarks/landscape_phase.py
Computes ``sims._landscape.recovery_phase_table()`` at full size (T ∈ {2, 3, 5}, d ∈ 2..12,
k ∈ 1..4, symmetric and asymmetric adapters, 20 instances per cell: 4920 exact solves) once in
this process and once over a process pool, checks that both give the same table, and prints
the times and their ratio. It also times the linear solve of one Levenberg–Marquardt step on the
largest Gauss–Newton matrices of the diagram (T = 5, d = 12, k = 4, asymmetric: side 480, 20
instances), batched LU (numpy) against the Cholesky solve the solver uses, as a ratio measured
in this run. Target (issue): the whole diagram in ≤ 60 s on 2 cores.
"""

from __future__ import annotations

import os
import time

import numpy as np
from threadpoolctl import threadpool_limits

from sims._landscape import recovery_phase_table
from theory import landscape as L


def _best(fn, repeat=3):
    best = np.inf
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def linear_solve(B=20, T=5, d=12, k=4):
    rng = np.random.default_rng(0)
    U, V = rng.standard_normal((2, B, T, d, k))
    with threadpool_limits(limits=1, user_api="blas"):
        K = L._gram(U, V, T)
        n = K.shape[-1]
        K[:, np.arange(n), np.arange(n)] += 1e-6 * np.abs(K).max()
        g = rng.standard_normal((B, n))
        t_lu = _best(lambda: np.linalg.solve(K, g[..., None]))
        t_ch = _best(lambda: L._spd_solve(K, g))
        t_gram = _best(lambda: L._gram(U, V, T))
    x_lu = np.linalg.solve(K, g[..., None])[..., 0]
    err = np.abs(L._spd_solve(K, g) - x_lu).max() / np.abs(x_lu).max()
    print(f"one LM step at the largest cell (n = {n}, batch {B}): Gram assembly {t_gram * 1e3:.1f} ms, "
          f"LU {t_lu * 1e3:.1f} ms, Cholesky {t_ch * 1e3:.1f} ms (LU/Cholesky = {t_lu / t_ch:.2f}x, "
          f"max rel. difference {err:.1e})")


def phase_diagram():
    t0 = time.perf_counter()
    serial = recovery_phase_table(executor="serial")
    t_serial = time.perf_counter() - t0
    t0 = time.perf_counter()
    pooled = recovery_phase_table(executor="processes")
    t_pool = time.perf_counter() - t0
    assert serial.equals(pooled), "the table depends on the executor"
    print(f"phase diagram, {len(serial)} solves: serial {t_serial:.1f} s, "
          f"process pool ({os.cpu_count()} cores) {t_pool:.1f} s (ratio {t_serial / t_pool:.2f}x; target ≤ 60 s)")
    rate = serial.groupby(["T", "adapters"])["recovered"].mean().unstack()
    print("fraction recovered over all cells:\n" + rate.round(3).to_string())


if __name__ == "__main__":
    linear_solve()
    phase_diagram()
