"""Recovery phase diagram (spec P5): wall time of the standard diagram on a process pool.

Run:  .venv/bin/python benchmarks/landscape_phase.py [--serial] [--save TABLE.pkl]
Computes ``sims.recovery_phase_table()`` at full size: T ∈ {2, 3, 4, 5}, d ∈ 2..12, k ∈ 1..4,
symmetric and asymmetric adapters, 50 instances per cell (16400 instances). Each instance is
classified by ``theory.identifiability_batch`` and fitted once by the exact solver (its landing
rate). The classification is cheap where mathematics settles it (the Jacobian at the truth, the
rank argument, the plane construction at T = 3, d = 3k − 1, the pencil construction at T ≥ 4,
d = 2k, asymmetric); the multi-start search (16 symmetric / 8 asymmetric starts of 60
Levenberg–Marquardt steps) runs only where none applies — T ∈ {4, 5} with 2k ≤ d below the rank
argument's bound, symmetric at d = 2k — and dominates the classification's cost. Where the
Jacobian at the truth has excess null directions (7800 instances), the second-order test and
curve following decide (T = 2: a closed-form curve).

The six cells where A* is isolated only at second order (asymmetric, d = 2k, T ∈ {4, 5}) were
searched with 4 × the starts: 33.3 s of CPU serially (classification alone), finding
alternatives on 36, 2, 6 of 50 instances at (4, 4, 2), (4, 6, 3), (4, 8, 4); the pencil
construction takes 2.5 s there (most of it examining the alternatives to second order) and
lists 44, 33, 50 (same instances; ``second_order_cells`` prints it). With it the full run
measured 68.2 s wall on the shared 2-core machine (load average 1.15 before, 1.71 after; 110 s and
124 s in earlier runs at load 1.7 → 3.1 and 2.3 → 2.9), 133.3 s of worker CPU, i.e. 66.7 s on 2
free cores.

Prints the wall time, the CPU time of the pool's workers (each job reports its own
``time.process_time``: the workers are forked by a forkserver, not by this process, so
``getrusage`` of the children never counts them), the load average (the machine is shared), the
time by part, and the class counts; also the instances left "undetermined" (each listed) and
the cells whose class differs from the first-order rule (continuum ⇔ excess null directions).
Target (issue): the standard diagram in ≤ 2 minutes on 2 cores. ``--serial`` also times the
serial run and checks that the table does not depend on the executor. ``--save`` pickles the table.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing as mp
import os
import sys
import time

import numpy as np
from threadpoolctl import threadpool_limits

import theory as th
from sims import recovery_phase_table


def _one_thread():
    """Pool initializer: one BLAS thread per worker (the pool supplies the parallelism), as the
    toolkit's own pools run."""
    threadpool_limits(1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")


def _timed(fn, *args):
    t0 = time.process_time()
    out = fn(*args)
    return out, time.process_time() - t0


class TimedPool:
    """A process pool whose jobs report their own CPU time (summed in ``cpu``), for
    ``recovery_phase_table(executor=...)``: an object with ``submit`` returning futures."""

    def __init__(self, workers):
        # forkserver, as the toolkit's pools: never fork a process whose BLAS threads may be busy
        self.inner = cf.ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("forkserver"),
                                            initializer=_one_thread)
        self.cpu = 0.0

    def submit(self, fn, *args):
        out = cf.Future()

        def done(f):
            try:
                result, cpu = f.result()
            except BaseException as exc:       # noqa: BLE001 (handed to the caller)
                out.set_exception(exc)
                return
            self.cpu += cpu
            out.set_result(result)

        self.inner.submit(_timed, fn, *args).add_done_callback(done)
        return out

    def shutdown(self):
        self.inner.shutdown()


def second_order_cells():
    """CPU time of the classification alone (serial) on the six cells where A* is isolated only
    at second order, and how many instances have an alternative."""
    total = 0.0
    with threadpool_limits(limits=1, user_api="blas"):
        for T, d, k in [(4, 2, 1), (4, 4, 2), (4, 6, 3), (4, 8, 4), (5, 2, 1), (5, 4, 2)]:
            t0 = time.process_time()
            tab = recovery_phase_table(Ts=(T,), ds=(d,), ks=(k,), adapters=("asymmetric",), landing=False)
            dt = time.process_time() - t0
            total += dt
            print(f"  ({T}, {d}, {k}) asymmetric: {dt:.2f} s CPU, {int((tab['n_alternatives'] > 0).sum())} of "
                  f"{len(tab)} with alternatives, {dict(tab['status'].value_counts())}, "
                  f"methods {sorted(set(tab['method']))}")
    print(f"second-order cells, classification only: {total:.1f} s CPU serially")


def by_part(T=5, d=9, k=4, reps=50):
    """The most expensive search cell (asymmetric, T = 5, d = 9, k = 4): solver vs classification."""
    truths = th.sample_ground_truth(d, k, T, rng=0, size=reps)
    W = np.stack([t.task_weights[:T] for t in truths])
    A = np.stack([t.A_star for t in truths])
    U = np.stack([t.U_star[:T] for t in truths])
    with threadpool_limits(limits=1, user_api="blas"):
        t0 = time.perf_counter()
        th.landscape.fit_population_batch(W, k, rng=1, symmetric=False, n_starts=3, max_iter=60)
        t1 = time.perf_counter()
        r = th.identifiability_batch(A, U, adapters="asymmetric", rng=2, n_starts=8, max_iter=60)
        t2 = time.perf_counter()
    print(f"cell T = {T}, d = {d}, k = {k}, asymmetric, {reps} instances: solver {t1 - t0:.1f} s, "
          f"classification {t2 - t1:.1f} s ({r.method[0]}; {r.n_zero_loss_starts.mean():.1f} of 8 starts "
          f"reach zero loss on average)")


def phase_diagram(serial=False):
    load = os.getloadavg()[0]
    workers = min(os.cpu_count() or 1, 8)                  # as executor="processes"
    pool = TimedPool(workers)
    try:
        t0 = time.perf_counter()
        table = recovery_phase_table(executor=pool)
        wall = time.perf_counter() - t0
    finally:
        pool.shutdown()
    cpu = pool.cpu
    print(f"phase diagram, {len(table)} instances: {wall:.1f} s on a pool of {workers} processes "
          f"(target ≤ 120 s); worker CPU {cpu:.1f} s, i.e. {cpu / 2:.1f} s on 2 free cores; load average "
          f"before {load:.2f}, after {os.getloadavg()[0]:.2f}")
    if serial:
        t0 = time.perf_counter()
        again = recovery_phase_table(executor="serial")
        print(f"serial: {time.perf_counter() - t0:.1f} s")
        assert again.equals(table), "the table depends on the executor"
    counts = table.groupby(["adapters", "T", "status"]).agg(instances=("rep", "size"), lands_on_A=("recovered", "mean"))
    print(counts.round(3).to_string())
    print("instances settled by the search:", int((table["method"] == "search").sum()))
    und = table[table["status"] == "undetermined"]
    print(f"undetermined: {len(und)} of {len(table)}")
    if len(und):
        print(und[["T", "d", "k", "adapters", "rep", "excess_nullity", "second_order_obstruction",
                   "curve_residual", "growth_exponent"]].to_string(index=False))
    unshown = table[(table["status"] == "continuum") & (table["curve_through"] == "")]
    print("continuum without an exhibited curve:", len(unshown))
    old = np.where(table["excess_nullity"] > 0, "continuum", table["status"])
    changed = table[old != table["status"]].assign(first_order=old[old != table["status"]])
    print("instances whose class differs from the first-order rule:", len(changed))
    if len(changed):
        print(changed.groupby(["adapters", "T", "d", "k", "first_order", "status"]).size().to_string())
    return table


if __name__ == "__main__":
    by_part()
    second_order_cells()
    table = phase_diagram(serial="--serial" in sys.argv)
    if "--save" in sys.argv:
        table.to_pickle(sys.argv[sys.argv.index("--save") + 1])
