"""Worker processes: how they start (never by a fork of the driver), and that they end with it.

| test | oracle | rules out |
|------|--------|-----------|
| pools start beside threaded BLAS | a thread's 300×300 products keep completing while pools start and stop | a pool that forks the driver (``fork`` context): OpenBLAS's fork handler stops its thread pool under the product in flight, which then waits forever (0 products, the script times out) |
| the driver never forks | ``os.fork`` replaced by a function that raises, in the driver | any ``fork`` start method (pool, dask) creeping back in |
| a killed driver leaves no process | every descendant of the driver gone within 5 s of SIGKILL / SIGTERM | workers blocked on a job queue that nobody will write to again (they lived on under PID 1) |
| Ctrl-C under dask | stderr of ``loraml sweep --executor dask`` after SIGINT to its process group | the workers' and the nanny's tracebacks and warnings printed beside the driver's one line |
| unguarded scripts | ``check_main_guard`` on a script's own top-level code | multiprocessing's page of traceback from every worker that re-imports an unguarded script; refusing a guarded call |
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
import types
from pathlib import Path

import pytest

import sims
from sims._run import check_main_guard

ROOT = Path(__file__).resolve().parents[1]

# The hazard, as a script: a second thread multiplies 300×300 matrices with two OpenBLAS threads
# while the main thread starts and stops process pools the way `loraml reproduce` does (there, the
# sweeps' thread starts the pool while the main thread computes figures). With a fork-started pool
# the products stop for good at the first fork (measured on a 2-core Xeon: 0 products in 15 s,
# against thousands without the forks or with OPENBLAS_NUM_THREADS=1).
_BLAS_BESIDE_POOLS = textwrap.dedent("""
    import threading, time
    import numpy as np
    from threadpoolctl import threadpool_info
    import sims

    def square(x):
        return x * x

    if __name__ == "__main__":
        assert max(i["num_threads"] for i in threadpool_info() if i["internal_api"] == "openblas") >= 2
        done, stop = [0], threading.Event()
        def products():
            a = np.random.default_rng(0).standard_normal((300, 300))
            while not stop.is_set():
                a @ a
                done[0] += 1
        thread = threading.Thread(target=products, daemon=True)
        thread.start()
        pools, end = 0, time.monotonic() + 2
        while time.monotonic() < end:
            with sims.Pool("processes", workers=1) as pool:
                assert list(pool.map_unordered(square, [(3,)])) == [(0, 9)]
            pools += 1
        before = done[0]
        time.sleep(0.5)
        stop.set()
        thread.join(timeout=20)
        assert not thread.is_alive(), "the BLAS thread is stuck"
        print(pools, before, done[0] - before)
""")


def test_pools_start_while_another_thread_runs_threaded_blas(tmp_path):
    script = tmp_path / "blas_beside_pools.py"
    script.write_text(_BLAS_BESIDE_POOLS)
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "2", "OMP_NUM_THREADS": "2"}   # the suite runs with 1
    try:
        out = subprocess.run([sys.executable, str(script)], env=env, cwd=ROOT, capture_output=True, text=True,
                             timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail("the products stopped while pools started: a fork of the driver under a BLAS call")
    assert out.returncode == 0, out.stderr
    pools, before, after = map(int, out.stdout.split())
    assert pools >= 1 and before >= 1 and after >= 1, out.stdout   # products went on through and after the pools


def _square(x):
    return x * x


def test_the_driver_never_forks(monkeypatch):
    def refuse():
        raise AssertionError("os.fork called in the driver")

    monkeypatch.setattr(os, "fork", refuse)
    with sims.Pool("processes", workers=2) as pool:
        assert sorted(pool.map_unordered(_square, [(2,), (3,)])) == [(0, 4), (1, 9)]
    cfg = sims.linear_sweep("T", (2, 3), runs=1, outer_steps=5, ft_steps=5, N=50)
    assert sims.run(cfg, executor="processes", progress=False).equals(sims.run(cfg, progress=False))


_SLOW_POOL = textwrap.dedent("""
    import os, sys, time
    import sims

    def wait(_):
        os.write(1, f"started {os.getpid()}\\n".encode())     # one write: two workers' lines never interleave
        time.sleep(120)

    if __name__ == "__main__":
        with sims.Pool(sys.argv[1], workers=2) as pool:
            for _ in pool.map_unordered(wait, [(0,), (1,)]):
                pass
""")


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for line in subprocess.run(["ps", "-eo", "pid=,ppid="], capture_output=True, text=True).stdout.splitlines():
        child, parent = map(int, line.split())
        children.setdefault(parent, []).append(child)
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


def _ignores_sigint(pid: int) -> bool:
    status = Path(f"/proc/{pid}/status").read_text()
    mask = int(next(line.split()[1] for line in status.splitlines() if line.startswith("SigIgn:")), 16)
    return bool(mask >> (signal.SIGINT - 1) & 1)


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads /proc")
@pytest.mark.parametrize("executor, how", [("processes", signal.SIGKILL), ("processes", signal.SIGTERM),
                                           ("dask", signal.SIGKILL)])
def test_a_killed_driver_leaves_no_process_behind(tmp_path, executor, how):
    if executor == "dask":
        pytest.importorskip("distributed")
    script = tmp_path / "slow_pool.py"
    script.write_text(_SLOW_POOL)
    proc = subprocess.Popen([sys.executable, str(script), executor], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    try:
        started = [proc.stdout.readline() for _ in range(2)]
        assert all(line.startswith("started") for line in started), started
        workers = _descendants(proc.pid)
        assert len(workers) >= 2, workers                 # both workers and whatever serves them
        proc.send_signal(how)
        proc.wait(timeout=30)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and any(map(_alive, workers)):
            time.sleep(0.05)
        left = [pid for pid in workers if _alive(pid)]
    finally:
        proc.kill()
        proc.wait()
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert not left, f"{len(left)} of {len(workers)} processes outlived the driver by 5 s"


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")      # utime + stime


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads /proc")
def test_ctrl_c_under_dask_prints_one_line_and_leaves_no_process(tmp_path):
    """A sweep of 9·10⁵ outer steps on a local dask cluster; once a worker has spent 2 s of CPU (it
    starts with loraml and dask preloaded, so that is computing, not importing), SIGINT goes to the
    whole process group, as a terminal's Ctrl-C does."""
    pytest.importorskip("distributed")
    store = tmp_path / "store"
    args = [sys.executable, "-m", "loraml.cli", "sweep", "linear", "--vary", "T", "--values", "2", "3",
            "--runs", "1", "--outer-steps", "900000", "--steps", "5", "--executor", "dask", "--quiet",
            "--store", str(store)]
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)

    def computing():
        busy = []
        for pid in _descendants(proc.pid):
            try:
                busy.append(_cpu_seconds(pid) >= 2)
            except (FileNotFoundError, ProcessLookupError):
                pass
        return any(busy)

    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not computing() and proc.poll() is None:
            time.sleep(0.05)
        assert proc.poll() is None, proc.communicate()[1]        # still running: refused input ends it early
        workers = _descendants(proc.pid)
        assert all(map(_ignores_sigint, workers))     # from birth: the forkserver's children inherit it
        os.killpg(proc.pid, signal.SIGINT)
        err = proc.communicate(timeout=60)[1]
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 130, err
    assert err.splitlines() == ["loraml sweep: interrupted; the chunks already stored are kept, rerun to resume"], err
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(map(_alive, workers)):
        time.sleep(0.05)
    assert not [pid for pid in workers if _alive(pid)]


# ------------------------------------------------------------------------------- unguarded scripts


def _as_main_script(monkeypatch, tmp_path, source: str, executor: str):
    """Run ``source`` as the top-level code of a script ``__main__`` (its own frame, its own file), with
    ``START`` bound to a call of check_main_guard for ``executor``."""
    path = tmp_path / "script.py"
    path.write_text(source)
    main = types.ModuleType("__main__")
    main.__file__ = str(path)
    main.__dict__["START"] = lambda: check_main_guard(executor, "run")
    monkeypatch.setitem(sys.modules, "__main__", main)
    exec(compile(source, str(path), "exec"), main.__dict__)


@pytest.mark.parametrize("executor", ["processes", "dask"])
def test_a_script_that_starts_workers_unguarded_is_refused_in_one_line(monkeypatch, tmp_path, executor):
    source = "x = 1\nSTART()\n"
    with pytest.raises(ValueError) as err:
        _as_main_script(monkeypatch, tmp_path, source, executor)
    message = str(err.value)
    assert "\n" not in message and f"'{executor}'" in message and "line 2" in message
    assert 'if __name__ == "__main__":' in message and "executor='serial'" in message
    # through a function called from unguarded top-level code: the same, naming the call's line
    with pytest.raises(ValueError, match="line 3"):
        _as_main_script(monkeypatch, tmp_path, "def go():\n    START()\ngo()\n", executor)


@pytest.mark.parametrize("source", [
    "if __name__ == '__main__':\n    START()\n",
    "def main():\n    START()\n\n\nif '__main__' == __name__:\n    x = 1\n    main()\n",
    "import sys\nif __name__ == \"__main__\":\n    if len(sys.argv) > 0:\n        START()\n",
])
def test_a_guarded_script_passes(monkeypatch, tmp_path, source):
    _as_main_script(monkeypatch, tmp_path, source, "processes")


def test_the_guard_check_leaves_interactive_and_library_code_alone(monkeypatch):
    monkeypatch.setitem(sys.modules, "__main__", types.ModuleType("__main__"))   # no __file__: python -c, a REPL
    check_main_guard("processes", "run")
    check_main_guard("dask", "run")          # this test module's own frame is not __main__'s
