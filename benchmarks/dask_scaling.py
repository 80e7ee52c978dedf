"""Dask scale-out of the recovery phase diagram: a LocalCluster of 1 worker against 2 workers,
measured in one run, and the tables compared with each other.

Run:  .venv/bin/python benchmarks/dask_scaling.py [--reps 50] [--workers 1 2]

Each worker is one process with one thread (BLAS single-threaded), so on a 2-core machine the
ideal speed-up 1 -> 2 is 2x; what is lost is the largest cell (one Levenberg–Marquardt batch)
finishing last. The clusters listen on the loopback interface and start before the clock starts.
The same script measures a real cluster: pass --address tcp://HOST:PORT (the speed-up is then
against the first --workers count run locally).
"""

from __future__ import annotations

import argparse
import time

import pandas as pd


def _time(executor, reps):
    import sims

    t0 = time.perf_counter()
    table = sims.recovery_phase_table(reps=reps, executor=executor)
    return time.perf_counter() - t0, table


def main(argv=None):
    from distributed import Client, LocalCluster

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reps", type=int, default=50, help="instances per cell (default 50: the standard diagram)")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="cluster sizes (default 1 2)")
    p.add_argument("--address", help="also time an existing cluster at this scheduler address")
    args = p.parse_args(argv)
    walls, tables = {}, {}
    for n in args.workers:
        with LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None,
                          host="127.0.0.1") as cluster, Client(cluster) as client:
            client.wait_for_workers(n)
            walls[n], tables[n] = _time(client, args.reps)
        print(f"LocalCluster, {n} worker(s): {walls[n]:.1f} s", flush=True)
    if args.address:
        with Client(args.address) as client:
            walls["remote"], tables["remote"] = _time(client, args.reps)
        print(f"cluster at {args.address}: {walls['remote']:.1f} s", flush=True)
    first = args.workers[0]
    for key in walls:
        if key != first:
            print(f"speed-up {first} -> {key}: {walls[first] / walls[key]:.2f}x")
        pd.testing.assert_frame_equal(tables[first], tables[key], check_exact=True)
    print(f"tables identical across {len(tables)} runs ({len(tables[first])} rows)")


if __name__ == "__main__":
    main()
