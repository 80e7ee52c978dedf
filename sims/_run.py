"""Run configs: expand into chunks, compute what the store lacks in one pool, return tidy tables.

One scheduler serves every sweep. :func:`run_many` expands all its configs into chunks, serves
the sound stored ones, and sends the rest to one executor, the most expensive first (a chunk's
cost is its config's estimate, :meth:`SweepConfig.chunk_cost`), so that no long chunk starts last
while the other workers idle. Chunks that two configs share (the same numbers: equal
:meth:`SweepConfig.chunk_key`, e.g. shallow d = 10 and T = 3) are computed once and relabelled for
each. The driver writes each chunk to the store as it arrives, so no worker needs the store's
file system.

Executors: ``"serial"`` (this process), ``"processes"`` (a process pool on this machine, one
BLAS/torch thread per worker), ``"dask"`` (a ``dask.distributed.LocalCluster`` started for the
call), a ``dask.distributed.Client`` (an existing cluster, e.g. ``Client("tcp://host:8786")``),
or any ``concurrent.futures.Executor``. A chunk's numbers depend only on its config and trials,
never on the executor.

No process is ever forked from the driver. A ``fork()`` made in one thread while another thread
is inside a multi-threaded OpenBLAS call can leave that call waiting forever: OpenBLAS's
``pthread_atfork`` handler shuts its thread pool down in the parent before the fork, under the
feet of the call in flight. ``loraml reproduce`` does exactly that mix (this process computes
figures with BLAS while a second thread feeds the pool), and a fork-started pool forks its
workers from whichever thread submits first. So the pool's workers come from a ``forkserver``
(a clean server process, started by fork+exec, that forks them), and a dask cluster's from
``spawn``; both start a new program with ``exec``, which runs no fork handlers in the driver.
The cost is that workers import the script that started them again (as ``__mp_main__``), so a
script must start pools under ``if __name__ == "__main__":`` (checked before any work: see
:func:`check_main_guard`).

Workers never outlive the driver: each watches its parent's end of a pipe and exits as soon as
it closes, which the kernel does when the driver dies in any way (SIGKILL included).
"""

from __future__ import annotations

import ast
import concurrent.futures as cf
import contextlib
import functools
import logging
import multiprocessing as mp
import os
import signal
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from threadpoolctl import threadpool_limits
from tqdm.auto import tqdm

from ._linear import LinearConfig, simulate_chunk, simulate_chunks
from ._convai import ConvAIConfig, simulate_convai_chunk
from ._realdata import RealDataConfig, simulate_realdata_chunk, simulate_realdata_chunks
from ._shallow import ShallowConfig, simulate_shallow_chunk
from theory.validation import check_bool, check_int

from ._store import ChunkStore, _sort, check_store_root

__all__ = ["run", "run_many", "EXECUTORS", "check_main_guard", "process_context"]

#: Config class -> (store prefix, chunk function, engine options the chunk and batch functions
#: accept, batch function or None). A batch function computes several chunks ``[(config,
#: value_index, trials), ...]`` at once, bit-identical to the chunk function on each, sharing
#: work between chunks: linear, those with equal ``LinearConfig.batch_key`` (the scheduler sends
#: packs of them); any kind, those with equal :meth:`SweepConfig.share_key` (sent together).
_KINDS = {
    LinearConfig: ("linear", simulate_chunk, (), simulate_chunks),
    ShallowConfig: ("shallow", simulate_shallow_chunk, ("device",), None),
    RealDataConfig: ("realdata", simulate_realdata_chunk, ("device", "amp"), simulate_realdata_chunks),
    ConvAIConfig: ("convai", simulate_convai_chunk, ("device", "amp"), None),
}

#: Packs per worker for a batchable kind: enough that the packs balance over the workers and an
#: interrupted sweep keeps most of its work, few enough that chunks sharing a batch key meet.
PACKS_PER_WORKER = 4

#: The executors named by a string.
EXECUTORS = ("serial", "processes", "dask")


#: Modules the forkserver imports once, so that each worker it forks starts with them loaded.
FORKSERVER_PRELOAD = ("sims",)


def _exit_with_parent() -> None:
    """In a worker: exit as soon as the process that started it dies (SIGKILL and SIGTERM
    included), instead of waiting on a job queue nobody will ever write to again.

    ``multiprocessing.parent_process()`` holds the read end of a pipe whose write end only the
    parent holds; the kernel closes it when the parent dies, and the wait returns."""
    parent = mp.parent_process()
    if parent is None:
        return

    def watch():
        parent.join()
        os._exit(1)

    threading.Thread(target=watch, name="loraml-exit-with-parent", daemon=True).start()


def _single_threaded_worker():
    """Pool initializer: one BLAS and one torch thread per worker (the pool supplies the parallelism),
    Ctrl-C left to the driver, which stops the workers itself (see :meth:`Pool.close`), and an exit
    as soon as the driver dies."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threadpool_limits(1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if "torch" in sys.modules:        # the engines set their own threads too
        sys.modules["torch"].set_num_threads(1)
    _exit_with_parent()


def process_context(preload=FORKSERVER_PRELOAD):
    """The multiprocessing context of every process pool: ``forkserver``, never ``fork`` (see the
    module docstring: a fork from one thread while another runs a multi-threaded OpenBLAS call can
    hang that call forever).

    The first call starts the server with ``preload`` imported there once (so that each worker it
    forks starts with them loaded) and with Ctrl-C ignored, which every process it forks inherits:
    the terminal's SIGINT goes to the whole process group, and the driver alone handles it (it stops
    the workers itself). An ignored signal stays ignored across ``exec``, so the server is started
    while this process ignores SIGINT, for the instant that takes (main thread only).

    Examples
    --------
    >>> from sims._run import process_context
    >>> process_context().get_start_method()
    'forkserver'
    """
    from multiprocessing import forkserver

    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(list(preload))          # takes effect only if the server is not running yet
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            forkserver.ensure_running()
        finally:
            signal.signal(signal.SIGINT, previous)
    else:
        forkserver.ensure_running()
    return ctx


def _main_guard_lines(path: str) -> list[tuple[int, int]] | None:
    """The line ranges of the ``if __name__ == "__main__":`` blocks of a script, or None when it
    cannot be read or parsed (then nothing is claimed about it)."""
    try:
        tree = ast.parse(Path(path).read_text(), filename=path)
    except (OSError, SyntaxError, ValueError, UnicodeDecodeError):
        return None

    def is_guard(test):
        if not (isinstance(test, ast.Compare) and len(test.ops) == 1 and isinstance(test.ops[0], ast.Eq)):
            return False
        sides = [test.left, test.comparators[0]]
        return (any(isinstance(x, ast.Name) and x.id == "__name__" for x in sides)
                and any(isinstance(x, ast.Constant) and x.value == "__main__" for x in sides))

    return [(node.body[0].lineno, node.end_lineno) for node in ast.walk(tree)
            if isinstance(node, ast.If) and is_guard(node.test)]


def check_main_guard(executor, func: str) -> None:
    """Refuse to start worker processes from a script's unguarded top-level code.

    Workers started by ``forkserver`` or ``spawn`` (the ``"processes"`` and ``"dask"`` executors)
    import the script that started them again, as ``__mp_main__``; a pool started by the script's
    top-level code outside ``if __name__ == "__main__":`` would run again in every worker, and
    multiprocessing stops that with a page of traceback from each. This says so in one line before
    anything starts. Interactive sessions, notebooks, ``python -c`` and console scripts pass."""
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if main is None or not path or not os.path.exists(path):
        return
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_globals is main.__dict__ and frame.f_code.co_name == "<module>":
            break
        frame = frame.f_back
    if frame is None:
        return
    guards = _main_guard_lines(path)
    if guards is None or any(first <= frame.f_lineno <= last for first, last in guards):
        return
    raise ValueError(f"The 'executor' parameter of {func} is {executor!r}, which starts worker processes that "
                     f"import the script {path} again; its line {frame.f_lineno} would then run in every worker. "
                     f"Put the code that starts the work under 'if __name__ == \"__main__\":' "
                     f"(or use executor='serial').")


def _is_dask_client(obj) -> bool:
    return type(obj).__module__.startswith("distributed") and hasattr(obj, "scheduler_info")


def check_executor(executor, func: str):
    """Refuse an executor that is neither a known name nor an object with ``submit``."""
    if isinstance(executor, str) and executor == "dask":
        try:
            import distributed  # noqa: F401
        except ImportError:
            raise ValueError(f"The 'executor' parameter of {func} is 'dask', which needs dask.distributed: "
                             f"pip install 'loraml[dask]'.") from None
    if executor in EXECUTORS if isinstance(executor, str) else callable(getattr(executor, "submit", None)):
        return executor
    raise ValueError(f"The 'executor' parameter of {func} must be one of {', '.join(map(repr, EXECUTORS))} "
                     f"or an object with a submit method (a concurrent.futures.Executor or a dask Client). "
                     f"Got {executor!r} instead.")


class Pool:
    """One interface over serial, a process pool, dask and any ``submit``-able executor.

    ``Pool(executor).map_unordered(fn, jobs)`` yields ``(index, result)`` as jobs finish, the jobs
    submitted in the order given (dask: that order as priority). Pools the call started are shut
    down on exit; on an exception or Ctrl-C their workers are stopped at once, not awaited.

    Examples
    --------
    >>> with Pool("serial") as pool:
    ...     sorted(pool.map_unordered(pow, [(2, 3), (3, 2)]))      # (job index, result)
    [(0, 8), (1, 9)]
    """

    def __init__(self, executor, func: str = "run", *, workers: int | None = None):
        executor = check_executor(executor, func)
        if workers is not None:
            workers = check_int(workers, "workers", func, low=1, high=1024)
        self.workers = 1 if executor == "serial" else (workers or min(os.cpu_count() or 1, 8))
        self.owned = isinstance(executor, str) and executor != "serial"
        self.kind = executor if isinstance(executor, str) else ("dask" if _is_dask_client(executor) else "futures")
        self._cluster = None
        if executor in ("processes", "dask"):
            check_main_guard(executor, func)
        if executor == "processes":
            self.executor = cf.ProcessPoolExecutor(max_workers=self.workers, mp_context=process_context(),
                                                   initializer=_single_threaded_worker)
        elif executor == "dask":
            import dask
            from distributed import Client, LocalCluster

            # The nannies start their workers from the same forkserver as a process pool (never by
            # fork; dask's workers exit with the driver by themselves), so they too leave Ctrl-C to
            # the driver. The setting holds while the pool lives: a restarted worker starts the same way.
            process_context((*FORKSERVER_PRELOAD, "distributed"))
            self._dask_config = dask.config.set({"distributed.worker.multiprocessing-method": "forkserver"})
            try:
                self._cluster = LocalCluster(n_workers=self.workers, threads_per_worker=1, processes=True,
                                             dashboard_address=None, worker_dashboard_address=None,
                                             host="127.0.0.1")
                self.executor = Client(self._cluster)
            except BaseException:
                if self._cluster is not None:
                    self._cluster.close()
                self._dask_config.__exit__(None, None, None)
                raise
        else:
            self.executor = executor
            if self.kind == "dask":      # the cluster's threads, however many machines they are on
                threads = sum(w.get("nthreads", 1) for w in executor.scheduler_info()["workers"].values())
                self.workers = workers or max(threads, 1)
            else:
                self.workers = workers or getattr(executor, "_max_workers", None) or self.workers

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        self.close(abort=exc_type is not None)
        return False

    def close(self, abort: bool = False) -> None:
        if not self.owned:
            return
        if self.kind == "processes":
            if not abort:
                self.executor.shutdown(wait=True)
                return
            # On an exception or Ctrl-C, stop the chunks in flight now rather than wait for them
            # (their results would be dropped; the stored chunks are whole and a rerun resumes).
            # concurrent.futures (3.11) has no public way to, so: kill the workers, then close this
            # process's end of the result pipe, so that the pool's manager thread, which may be
            # reading a result a killed worker had half written, sees EOF, finds the pool broken,
            # fails the pending futures and exits; then shut down as usual.
            ex = self.executor
            workers = list((getattr(ex, "_processes", None) or {}).values())
            for proc in workers:
                proc.kill()
            for proc in workers:
                proc.join()
            writer = getattr(getattr(ex, "_result_queue", None), "_writer", None)
            if writer is not None:
                writer.close()
            ex.shutdown(wait=True)
        else:
            try:
                self._close_cluster(abort)
            finally:
                self._dask_config.__exit__(None, None, None)

    def _close_cluster(self, abort: bool) -> None:
        if not abort:
            self.executor.close()
            self._cluster.close()
        else:
            # On an exception or Ctrl-C, kill the cluster's worker processes first: asked to close
            # while computing, each would log its cancelled chunk, and each nanny would wait 4 s
            # for it and log that too. dask's log in this process stays quiet meanwhile (a nanny
            # that notices its worker's death says so, and may start another before the cluster
            # closes): the user gets the driver's one line.
            quiet = logging.getLogger("distributed")
            level = quiet.level
            quiet.setLevel(logging.CRITICAL + 1)
            try:
                for nanny in list(getattr(self._cluster, "workers", {}).values()):
                    pid = getattr(getattr(getattr(nanny, "process", None), "process", None), "pid", None)
                    if pid:
                        with contextlib.suppress(OSError):
                            os.kill(pid, signal.SIGKILL)
                self.executor.close()
                self._cluster.close()
            finally:
                quiet.setLevel(level)

    def map_unordered(self, fn, jobs):
        jobs = list(jobs)
        if self.kind == "serial":
            for i, args in enumerate(jobs):
                yield i, fn(*args)
        elif self.kind == "dask":
            from distributed import as_completed

            futures = {self.executor.submit(fn, *args, pure=False, priority=len(jobs) - i): i
                       for i, args in enumerate(jobs)}
            try:
                for fut in as_completed(list(futures)):
                    i = futures.pop(fut)      # release it: a lost worker must not recompute a delivered chunk
                    result = fut.result()
                    fut.release()
                    yield i, result
            finally:
                if futures:
                    self.executor.cancel(list(futures))
        else:
            futures = {self.executor.submit(fn, *args): i for i, args in enumerate(jobs)}
            pending = set(futures)
            try:
                while pending:
                    finished, pending = cf.wait(pending, return_when=cf.FIRST_COMPLETED)
                    for fut in finished:
                        yield futures[fut], fut.result()
            finally:
                if not self.owned:      # a pool this call started is stopped as a whole by close()
                    for fut in pending:
                        fut.cancel()


def _kind_of(config, func, name="config"):
    kind = next((v for k, v in _KINDS.items() if isinstance(config, k)), None)
    if kind is None:
        what = "hold LinearConfig, ShallowConfig, RealDataConfig or ConvAIConfig objects" if name == "configs" \
            else "be a LinearConfig, a ShallowConfig, a RealDataConfig or a ConvAIConfig"
        raise ValueError(f"The {name!r} parameter of {func} must {what}. Got {type(config).__name__}.")
    return kind


@dataclass
class _Job:
    """One chunk computation and the (config, chunk) slots its table fills."""

    config: object
    value_index: int
    trials: tuple
    cost: float
    targets: list = field(default_factory=list)


def run_many(configs, *, executor="serial", store=None, force: bool = False, progress: bool = True,
             on_chunk=None, **engine_options) -> list[pd.DataFrame]:
    """Compute every chunk of every config that is not stored yet, in one pool; one table per config.

    Parameters
    ----------
    configs : sequence of LinearConfig, ShallowConfig or RealDataConfig
        Any mix. A chunk two configs share (equal :meth:`chunk_key`) is computed once.
    executor : "serial", "processes", "dask", a dask ``Client`` or a ``concurrent.futures.Executor``
        Where chunks run (see the module docstring). The tables never depend on it.
    store : path or None
        Root of the Parquet store (see :mod:`sims._store`); ``None`` keeps results in memory only.
        A stored chunk is served only when its file is sound and its engine version current;
        otherwise it is recomputed (one logged line names the file).
    force : bool
        Recompute and overwrite stored chunks.
    progress : bool
        Show a tqdm bar over chunks.
    on_chunk : callable, optional
        Called as ``on_chunk(config, value_index, trials)`` after each computed chunk of a config
        is stored (once per config for a shared chunk).
    **engine_options
        Execution options that do not change the numbers beyond rounding (shallow: ``device``;
        real data: ``device`` and ``amp``); each goes to the configs whose engine takes it.

    Returns
    -------
    list of pandas.DataFrame, one per config in order, each sorted by method, value, trial, step —
    bit-identical to ``run(config)`` alone.

    Examples
    --------
    >>> import sims
    >>> a = sims.linear_sweep("T", (2, 3), runs=1, outer_steps=5, ft_steps=5, N=50)
    >>> b = sims.linear_sweep("k", (1,), runs=1, outer_steps=5, ft_steps=5, N=50)
    >>> [len(t) for t in sims.run_many([a, b], progress=False)]
    [24, 12]
    """
    func = "run_many"
    if isinstance(configs, (str, bytes, dict)) or not hasattr(configs, "__iter__"):
        raise ValueError(f"The 'configs' parameter of {func} must be a sequence of sweep configs. Got {configs!r}.")
    configs = list(configs)
    if not configs:
        raise ValueError(f"The 'configs' parameter of {func} must hold at least one config. Got an empty sequence.")
    kinds = [_kind_of(c, func, "configs") for c in configs]
    accepted = set().union(*(set(k[2]) for k in kinds))
    unknown = sorted(set(engine_options) - accepted)
    if unknown:
        kinds_named = sorted({type(c).__name__ for c in configs})
        raise ValueError(f"{func} got engine option(s) {', '.join(map(repr, unknown))} that no config here takes "
                         f"({', '.join(kinds_named)}); allowed: {', '.join(sorted(accepted)) or 'none'}.")
    force = check_bool(force, "force", func)
    progress = check_bool(progress, "progress", func)
    if on_chunk is not None and not callable(on_chunk):
        raise ValueError(f"The 'on_chunk' parameter of {func} must be callable or None. Got {on_chunk!r} instead.")
    check_executor(executor, func)
    root = check_store_root(store, func) if store is not None else None
    for config in configs:       # the data files are those the keys name, before anything is served
        config.check_data()

    chunks = [c.chunks() for c in configs]
    results: list[dict[int, pd.DataFrame]] = [{} for _ in configs]
    dbs = []
    jobs: dict[str, _Job] = {}
    for ci, (config, (name, *_)) in enumerate(zip(configs, kinds)):
        db = ChunkStore(root, name, config) if root is not None else None
        if db is not None:
            db.write_config()
        dbs.append(db)
        for j, (v, trials) in enumerate(chunks[ci]):
            frame = None if (db is None or force) else db.load(v, trials)
            if frame is not None:
                results[ci][j] = frame
                continue
            key = f"{name}:{config.engine_version}:{config.chunk_key(v, trials)}"
            if key not in jobs:
                jobs[key] = _Job(config, v, tuple(trials), float(config.chunk_cost(v, trials)))
            jobs[key].targets.append((ci, j))
    todo = list(jobs.values())
    total = sum(len(c) for c in chunks)
    label = configs[0].vary if len(configs) == 1 else f"{len(configs)} configs"
    bar = tqdm(total=total, initial=total - sum(len(job.targets) for job in todo), unit="chunk",
               desc=f"{kinds[0][0] if len(configs) == 1 else 'sweeps'} {label}", disable=not progress, leave=False)

    def call(task):
        _, simulate, takes, batch = _kind_of(task[0].config, func)
        options = {k: v for k, v in engine_options.items() if k in takes}
        if options:
            simulate = functools.partial(simulate, **options)
            batch = None if batch is None else functools.partial(batch, **options)
        return (simulate, batch, [(job.config, job.value_index, job.trials) for job in task])

    def deliver(job, frame):
        """Store a computed chunk (relabelled for every config that shares it) as it arrives."""
        for ci, j in job.targets:
            config = configs[ci]
            v, trials = chunks[ci][j]
            out = frame if config is job.config else config.relabel_chunk(frame, v)   # the target's own value
            if dbs[ci] is not None:
                dbs[ci].write(v, trials, out, **({} if config is job.config else {"computed_for": job.config.key}))
            results[ci][j] = out
            bar.update(1)
            if on_chunk is not None:
                on_chunk(config, v, trials)

    try:
        with Pool(executor, func) as pool:
            tasks = _plan(todo, pool.workers * PACKS_PER_WORKER)    # largest expected cost first
            for t, frames in pool.map_unordered(_run_pack, [call(task) for task in tasks]):
                for job, frame in zip(tasks[t], frames):
                    deliver(job, frame)
    finally:
        bar.close()
    return [_sort(pd.concat([results[ci][j] for j in range(len(chunks[ci]))], ignore_index=True))
            for ci in range(len(configs))]


def _run_pack(simulate, batch, chunks):
    """Worker side: the tables of a pack of chunks, computed by the batch function where there is
    one and the pack holds several chunks."""
    if batch is not None and len(chunks) > 1:
        return batch(chunks)
    return [simulate(*chunk) for chunk in chunks]


def _plan(jobs: list, parts: int) -> list[list]:
    """The tasks sent to the pool, largest expected cost first. Jobs with an equal share key (of
    one kind) form one task; the jobs of a kind with batch keys are cut into about ``parts`` packs
    of equal expected cost, ordered so that jobs with equal batch keys fall in one pack; every
    other job is a task of its own."""
    tasks, batchable, shared = [], {}, {}
    for job in jobs:
        name, _, _, batch = _kind_of(job.config, "run_many")
        share = job.config.share_key(job.value_index, job.trials) if batch is not None else None
        if share is not None:
            shared.setdefault((name, share), []).append(job)
        elif batch is not None and hasattr(job.config, "batch_key"):
            batchable.setdefault(name, []).append(job)
        else:
            tasks.append([job])
    tasks += shared.values()
    for group in batchable.values():
        group.sort(key=lambda j: (repr(j.config.batch_key(j.value_index)), j.config.key, j.value_index, j.trials))
        tasks += _cut(group, parts)
    return sorted(tasks, key=lambda task: -sum(j.cost for j in task))


def _cut(group: list, parts: int) -> list[list]:
    """``group`` (in order) cut into at most ``parts`` contiguous packs of about equal cost."""
    target = sum(j.cost for j in group) / parts
    packs, pack, spent = [], [], 0.0
    for job in group:
        pack.append(job)
        spent += job.cost
        if spent >= target * (len(packs) + 1) * (1 - 1e-9):
            packs.append(pack)
            pack = []
    return packs + ([pack] if pack else [])


def run(config, *, executor="serial", store=None, force: bool = False, progress: bool = True,
        on_chunk=None, **engine_options) -> pd.DataFrame:
    """Compute every chunk of ``config`` that is not stored yet and return the whole table.

    Parameters
    ----------
    config : LinearConfig, ShallowConfig or RealDataConfig
        From :func:`linear_sweep`, :func:`shallow_sweep` or :func:`realdata_sweep`.
    executor : "serial", "processes", "dask", a dask ``Client`` or a ``concurrent.futures.Executor``
        Where chunks run (see :func:`run_many`). A chunk's numbers depend only on the config and
        its trials' seeds, never on the executor.
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
        ``amp``, float16 autocast with a GradScaler, default on for CUDA).

    Returns
    -------
    pandas.DataFrame sorted by method, value, trial, step.

    Examples
    --------
    >>> import sims
    >>> cfg = sims.linear_sweep("k", (1, 2), runs=2, d=6, N=200, n=30, outer_steps=20, ft_steps=20)
    >>> table = sims.run(cfg, progress=False)                  # in memory (store=None), this process
    >>> table.groupby("value")["trial"].nunique().to_dict()    # every value, every trial
    {1: 2, 2: 2}
    """
    name, _, accepted, _ = _kind_of(config, "run")
    force = check_bool(force, "force", "run")
    progress = check_bool(progress, "progress", "run")
    unknown = sorted(set(engine_options) - set(accepted))
    if unknown:
        raise ValueError(f"run got engine option(s) {', '.join(map(repr, unknown))} that a {type(config).__name__} "
                         f"does not take; allowed: {', '.join(accepted) or 'none'}.")
    if on_chunk is not None and not callable(on_chunk):
        raise ValueError(f"The 'on_chunk' parameter of run must be callable or None. Got {on_chunk!r} instead.")
    hook = None if on_chunk is None else (lambda _config, v, trials: on_chunk(v, trials))
    return run_many([config], executor=executor, store=store, force=force, progress=progress, on_chunk=hook,
                    **engine_options)[0]
