"""Recovery phase diagram (issue: landscape; spec P5): wall time, serial and in a process pool.

Run:  .venv/bin/python benchmarks/landscape_phase.py
Computes ``sims.recovery_phase_table()`` at full size (T ∈ {2, 3, 5}, d ∈ 2..12,
k ∈ 1..4, symmetric and asymmetric adapters, 20 instances per cell: 4920 exact solves) once in
this process and once over a process pool, checks that both give the same table, and prints
the times and their ratio. It also times the most expensive cell alone (T = 5, d = 12, k = 4,
asymmetric: Gauss–Newton matrices of side 480, 20 instances) through the public solver. Target (issue): the whole diagram in ≤ 60 s on 2 cores.
"""

from __future__ import annotations

import os
import time

import numpy as np
from threadpoolctl import threadpool_limits

import theory as th
from sims import recovery_phase_table


def _best(fn, repeat=3):
    best = np.inf
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def largest_cell(reps=20, T=5, d=12, k=4):
    """The most expensive cell of the diagram (asymmetric, n = 2Tdk = 480 unknowns), one batch."""
    rng = np.random.default_rng(0)
    W = np.stack([t.task_weights[:T] for t in th.sample_ground_truth(d, k, T, rng=rng, size=reps)])
    with threadpool_limits(limits=1, user_api="blas"):
        t0 = time.perf_counter()
        fit = th.landscape.fit_population_batch(W, k, rng=1, symmetric=False, n_starts=3, max_iter=60)
        elapsed = time.perf_counter() - t0
    print(f"largest cell (T = {T}, d = {d}, k = {k}, asymmetric, {reps} instances): {elapsed:.2f} s, "
          f"{int(fit.n_iter.sum())} Levenberg–Marquardt steps ({elapsed / fit.n_iter.sum() * 1e3:.1f} ms per "
          f"batched step), {int(np.sum(fit.loss <= 1e-20))} of {reps} at zero loss")


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
    largest_cell()
    phase_diagram()
