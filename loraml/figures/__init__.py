"""Figures: how the plots look and where they land. They read tables from ``sims``."""

from __future__ import annotations

import concurrent.futures as cf
import inspect
import time
from pathlib import Path

import sims

from ._style import COLORS as COLORS
from .landscape import make_landscape_figures as make_landscape_figures
from .landscape import start_landscape_figures as start_landscape_figures
from .linear import linear_configs as linear_configs
from .linear import make_linear_figures as make_linear_figures
from .loraone import make_loraone_figures as make_loraone_figures
from .offpaper import make_offpaper_figures as make_offpaper_figures
from .offpaper import offpaper_configs as offpaper_configs
from .realdata import make_realdata_figures as make_realdata_figures
from .realdata import realdata_configs as realdata_configs
from .shallow import make_shallow_figures as make_shallow_figures
from .shallow import shallow_configs as shallow_configs
from .theory_checks import make_theory_figures as make_theory_figures

#: Every figure group `loraml reproduce` knows, in order. Each is called as
#: ``make(out, fast=..., **options)`` and returns the paths it wrote.
GROUPS = {
    "theory": make_theory_figures,
    "linear": make_linear_figures,
    "landscape": make_landscape_figures,
    "loraone": make_loraone_figures,
    "shallow": make_shallow_figures,
    "realdata": make_realdata_figures,
    "offpaper": make_offpaper_figures,
}

#: Groups that `reproduce` may start early and finish last: ``start(out, fast=..., executor=...,
#: background=<thread executor>)`` does what needs no pool now, submits its pool work to
#: ``background`` and returns ``finish()`` -> the paths (as the group's ``make`` would).
STARTERS = {"landscape": start_landscape_figures}

#: The groups whose figures are stored sweeps, and their configs (``fast``, ``preset`` -> list).
SWEEP_CONFIGS = {
    "linear": lambda fast, preset: linear_configs(preset=preset, fast=fast),
    "shallow": lambda fast, preset: shallow_configs(fast=fast),
    "realdata": lambda fast, preset: realdata_configs(fast=fast, preset=preset),
    "offpaper": lambda fast, preset: offpaper_configs(fast=fast),
}


def reproduce(out, *, only=None, fast: bool = False, preset: str = "both", store="results", executor="processes",
              progress: bool = True, device: str | None = None, report=print) -> list[Path]:
    """Regenerate the figure groups ``only`` (default: all) under ``out``; returns the paths written.

    One executor serves everything: the sweeps of every selected group (linear, shallow, real
    data) go to :func:`sims.run_many` together, their chunks largest first and a chunk two sweeps
    share computed once. While they run (in a background thread feeding the pool), this process
    computes and plots the groups that are not stored sweeps (theory, LoRA-One, landscape); their
    own pool work (the landscape phase diagram) queues behind the sweeps' chunks, so it fills the
    workers as the sweeps wind down. Then the sweep groups plot, reading the store. ``report``
    receives one line per group with its time (``None``: silent); the paths come back in group
    order.
    """
    names = list(GROUPS) if only is None else list(only)
    unknown = [n for n in names if n not in GROUPS]
    if unknown:
        raise ValueError(f"The 'only' parameter of reproduce must name figure groups among {', '.join(GROUPS)}. "
                         f"Got {unknown[0]!r}.")
    if preset not in ("paper", "clean", "both"):
        raise ValueError(f"The 'preset' parameter of reproduce must be 'paper', 'clean' or 'both'. Got {preset!r}.")
    written: dict[str, list[Path]] = {}
    # The thread pool is left last: on an error or Ctrl-C the process pool is stopped first, so the
    # sweeps' thread sees its pool broken and ends instead of being awaited.
    # Two threads: the sweeps, and the pool work of a started group (the phase diagram).
    with cf.ThreadPoolExecutor(2, thread_name_prefix="sweeps") as background, \
            sims.Pool(executor, "reproduce") as pool:
        shared = "serial" if pool.kind == "serial" else pool.executor
        # The sweeps that run on the CPU go to one pool together (a CUDA sweep stays in its group).
        devices = {"linear": "cpu", "offpaper": "cpu", "shallow": device or sims.default_device(),
                   "realdata": device or "cpu"}
        configs = [c for n in names if n in SWEEP_CONFIGS and devices[n] == "cpu"
                   for c in SWEEP_CONFIGS[n](fast, preset)]
        t0 = time.perf_counter()

        def sweeps():
            sims.run_many(configs, executor=shared, store=store, progress=progress,
                          **({"device": "cpu"} if any(not isinstance(c, sims.LinearConfig) for c in configs) else {}))
            return time.perf_counter() - t0

        # A serial pool has no workers to feed: the sweeps run here, first.
        pending = background.submit(sweeps) if configs and pool.kind != "serial" else None
        if configs and pending is None:
            seconds = sweeps()
            if report:
                report(f"sweeps: {len(configs)} configs in {seconds:.1f} s")

        def make(name, executor=None):
            options = {"preset": preset, "store": store, "executor": shared if executor is None else executor,
                       "progress": progress, "device": device}
            accepted = inspect.signature(GROUPS[name]).parameters
            t1 = time.perf_counter()
            done(name, GROUPS[name](out, fast=fast, **{k: v for k, v in options.items() if k in accepted}), t1)

        def done(name, paths, t1):
            written[name] = paths
            if report:
                report(f"{name}: {len(paths)} files in {time.perf_counter() - t1:.1f} s")
                for path in paths:
                    report(f"  {path}")

        # Groups that are not stored sweeps first, those that use the pool last among them. A
        # group that can be started (its pool work submitted from a thread, the rest done now) is
        # finished after the sweep groups have plotted: this process plots them while the pool
        # still runs that group's cells, rather than leaving a core idle afterwards.
        free = [n for n in names if n not in SWEEP_CONFIGS]
        started = {}
        for name in sorted(free, key=lambda n: "executor" in inspect.signature(GROUPS[n]).parameters):
            if name in STARTERS and pending is not None:
                t1 = time.perf_counter()
                started[name] = t1, STARTERS[name](out, fast=fast, executor=shared, background=background)
            else:
                make(name)
        if pending is not None:
            seconds = pending.result()
            if report:
                report(f"sweeps: {len(configs)} configs in {seconds:.1f} s")
        for name in names:
            if name in SWEEP_CONFIGS:
                # While a started group's cells hold the pool, plot here: pool jobs (the linear
                # group plots on the workers) would queue behind them (measured: 93 s instead of 4).
                make(name, executor="serial" if started else None)
        for name, (t1, finish) in started.items():
            done(name, finish(), t1)
    return [path for name in names for path in written[name]]


__all__ = ["COLORS", "GROUPS", "SWEEP_CONFIGS", "linear_configs", "make_landscape_figures", "make_linear_figures",
           "make_loraone_figures", "make_offpaper_figures", "make_realdata_figures", "make_shallow_figures",
           "make_theory_figures", "offpaper_configs", "realdata_configs", "reproduce", "shallow_configs"]
