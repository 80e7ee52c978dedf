"""The wide identifiability diagram (issue 12; spec P5): d up to 30, k up to 10, T up to 6.

Run:  .venv/bin/python benchmarks/landscape_wide.py [--reps R] [--starts S] [--max-unknowns M] [--serial]

Classifies ``reps`` instances per cell (default 4) over T ∈ {3, 4, 5, 6}, d ∈ {2, 4, …, 30},
k ∈ {1, …, 10} (k ≤ d), symmetric and asymmetric adapters, with ``sims.recovery_phase_table``
and its options for a wide grid:

- ``landing=False``: the exact solver's landing rate is not measured (one Levenberg–Marquardt
  step there solves a system of side T·d·k, 1800 at (6, 30, 10), 3600 asymmetric);
- the local check is the tangent-space SVD of ``theory.identifiability_batch`` (< 0.1 s per
  instance at (6, 30, 10)); the rank argument ((T − 1)(d − 2k) ≥ d − k) and the plane
  construction (T = 3, d = 3k − 1, symmetric) settle the globally identified cells exactly;
- what none of them settles — T ≥ 4 from about d = 2k to below the rank argument's bound, and a
  few cells with d < 2k — goes to the multi-start search, ``starts`` starts (default 4) of 60
  Levenberg–Marquardt steps per instance, only in cells with at most ``max_unknowns`` unknowns
  (default 1200, i.e. T·d·k ≤ 1200 symmetric, ≤ 600 asymmetric); above that the instances are
  reported "identified" by the Jacobian alone (method "jacobian", search_starts 0).

Runs through the executor convention of ``sims.run`` ("processes" here; ``--serial`` also
runs it serially and checks the tables are equal). Prints wall time, worker CPU time, load
average, the class fractions per adapter kind and T, what settled them, and the cells left
open (locally identified, not searched).
"""

from __future__ import annotations

import argparse
import os
import resource
import time

import pandas as pd

from sims import recovery_phase_table

GRID = dict(Ts=(3, 4, 5, 6), ds=range(2, 31, 2), ks=range(1, 11))


def _children_cpu():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def wide_table(reps=4, starts=4, max_unknowns=1200, executor="processes") -> pd.DataFrame:
    """The wide diagram's table (one row per instance): ``sims.recovery_phase_table`` on GRID."""
    return recovery_phase_table(**GRID, reps=reps, landing=False, search_starts=starts, search_iter=60,
                                search_max_unknowns=max_unknowns, executor=executor)


def _evidence(table):
    """One label per instance: the class and what settled it."""
    local_only = (table["method"] == "jacobian") & (table["status"] == "identified")
    label = table["status"] + " (" + table["method"] + ")"
    return label.where(~local_only, "locally identified, not searched")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=4)
    p.add_argument("--starts", type=int, default=4)
    p.add_argument("--max-unknowns", type=int, default=1200)
    p.add_argument("--serial", action="store_true")
    a = p.parse_args()
    load = os.getloadavg()[0]
    cpu0 = _children_cpu()
    t0 = time.perf_counter()
    table = wide_table(a.reps, a.starts, a.max_unknowns)
    wall = time.perf_counter() - t0
    cpu = _children_cpu() - cpu0
    print(f"wide diagram, {len(table)} instances in {table.groupby(['T', 'd', 'k', 'adapters']).ngroups} cells: "
          f"{wall:.1f} s on a pool of {os.cpu_count()} processes; worker CPU {cpu:.1f} s "
          f"({cpu / 2:.1f} s on 2 free cores); load average before {load:.2f}, after {os.getloadavg()[0]:.2f}")
    if a.serial:
        t0 = time.perf_counter()
        again = wide_table(a.reps, a.starts, a.max_unknowns, executor="serial")
        print(f"serial: {time.perf_counter() - t0:.1f} s")
        assert again.equals(table), "the table depends on the executor"
    table = table.assign(evidence=_evidence(table))
    frac = pd.crosstab([table["adapters"], table["T"]], table["status"], normalize="index")
    print("\nclass fractions (instances; 'identified' includes the locally identified cells not searched):")
    print(frac.round(3).to_string())
    print("\nwhat settled them (instances):")
    print(pd.crosstab([table["adapters"], table["T"]], table["evidence"]).to_string())
    searched = table[table["search_starts"] > 0]
    print(f"\nsearched: {len(searched)} instances in {searched.groupby(['T', 'd', 'k', 'adapters']).ngroups} cells, "
          f"{a.starts} starts each; found alternatives in {int((searched['status'] == 'isolated').sum())}; "
          f"{searched['search_zero_loss_starts'].sum() / max(1, searched['search_starts'].sum()):.0%} of the starts "
          f"reached zero loss, and {(searched['search_zero_loss_starts'] == 0).mean():.0%} of the instances "
          "had no start that did")
    open_ = table[table["evidence"] == "locally identified, not searched"]
    cells = open_.groupby(["adapters", "T"])[["d", "k"]].apply(lambda g: sorted(set(zip(g["d"], g["k"]))))
    print(f"locally identified, not searched (over {a.max_unknowns} unknowns): {len(open_)} instances")
    for (kind, T), dk in cells.items():
        print(f"  {kind}, T = {T}: (d, k) in {dk}")
    print(f"min spectrum gap (tangent map): {table['spectrum_gap'].min():.1e}")


if __name__ == "__main__":
    main()
