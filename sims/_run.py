"""Run a config: expand into chunks, compute what the store lacks, return one tidy table."""

from __future__ import annotations

import concurrent.futures as cf
import functools
import os

import pandas as pd
from tqdm.auto import tqdm

from ._linear import LinearConfig, simulate_chunk
from ._realdata import RealDataConfig, simulate_realdata_chunk
from ._shallow import ShallowConfig, simulate_shallow_chunk
from ._store import ChunkStore, _sort

__all__ = ["run"]

#: Config class -> (store prefix, chunk function, engine options the chunk function accepts).
_KINDS = {
    LinearConfig: ("linear", simulate_chunk, ()),
    ShallowConfig: ("shallow", simulate_shallow_chunk, ("device",)),
    RealDataConfig: ("realdata", simulate_realdata_chunk, ("device", "amp")),
}


def _executor(executor, func="run"):
    """(pool or None for serial, whether the caller owns the pool and must shut it down)."""
    if executor == "serial":
        return None, False
    if executor == "processes":
        workers = min(os.cpu_count() or 1, 8)
        return cf.ProcessPoolExecutor(max_workers=workers), True
    if hasattr(executor, "submit"):
        return executor, False       # a concurrent.futures.Executor or a dask.distributed Client
    raise ValueError(f"The 'executor' parameter of {func} must be 'serial', 'processes' or an object with a "
                     f"submit method (a concurrent.futures.Executor or a dask Client). Got {executor!r} instead.")


def run(config, *, executor="serial", store=None, force: bool = False, progress: bool = True,
        on_chunk=None, **engine_options) -> pd.DataFrame:
    """Compute every chunk of ``config`` that is not stored yet and return the whole table.

    Parameters
    ----------
    config : LinearConfig, ShallowConfig or RealDataConfig
        From :func:`linear_sweep`, :func:`shallow_sweep` or :func:`realdata_sweep`.
    executor : "serial", "processes", or an object with ``submit``
        Where chunks run. A chunk's numbers depend only on the config and its trials' seeds,
        never on the executor.
    store : path or None
        Root of the Parquet store. ``None`` keeps results in memory only.
    force : bool
        Recompute and overwrite stored chunks.
    progress : bool
        Show a tqdm bar over chunks.
    on_chunk : callable, optional
        Called as ``on_chunk(value_index, trials)`` after each chunk is stored (a hook for tests
        and progress reporting).
    **engine_options
        Execution options of the engine that do not change the numbers beyond rounding
        (shallow: ``device="cpu" | "cuda"``, default cuda when available; real data: ``device`` and
        ``amp``, bfloat16 autocast, default on for CUDA).

    Returns
    -------
    pandas.DataFrame sorted by method, value, trial, step.
    """
    kind = next((v for k, v in _KINDS.items() if isinstance(config, k)), None)
    if kind is None:
        raise ValueError("The 'config' parameter of run must be a LinearConfig, a ShallowConfig or a RealDataConfig. "
                         f"Got {type(config).__name__}.")
    name, simulate, accepted = kind
    unknown = sorted(set(engine_options) - set(accepted))
    if unknown:
        raise ValueError(f"run got engine option(s) {', '.join(map(repr, unknown))} that a {type(config).__name__} "
                         f"does not take; allowed: {', '.join(accepted) or 'none'}.")
    if engine_options:
        simulate = functools.partial(simulate, **engine_options)
    pool, owned = _executor(executor)
    chunks = config.chunks()
    db = ChunkStore(store, name, config) if store is not None else None
    if db is not None:
        db.write_config()
    results: dict[int, pd.DataFrame] = {}
    todo = []
    for i, (v, trials) in enumerate(chunks):
        if db is not None and not force and db.has(v, trials):
            results[i] = db.read(v, trials)
        else:
            todo.append(i)
    bar = tqdm(total=len(chunks), initial=len(chunks) - len(todo), desc=f"{name} {config.vary}",
               unit="chunk", disable=not progress, leave=False)

    def done(i, frame):
        v, trials = chunks[i]
        if db is not None:
            db.write(v, trials, frame)
        results[i] = frame
        bar.update(1)
        if on_chunk is not None:
            on_chunk(v, trials)

    try:
        if pool is None:
            for i in todo:
                done(i, simulate(config, *chunks[i]))
        else:
            futures = {pool.submit(simulate, config, *chunks[i]): i for i in todo}
            pending = set(futures)
            while pending:
                finished, pending = cf.wait(pending, return_when=cf.FIRST_COMPLETED)
                for fut in finished:
                    done(futures[fut], fut.result())
    finally:
        bar.close()
        if owned:
            pool.shutdown(cancel_futures=True)
    return _sort(pd.concat([results[i] for i in range(len(chunks))], ignore_index=True))
