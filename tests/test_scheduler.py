"""One scheduler for every sweep (sims.run_many), its executors, and the store's guarantees.

| test                                   | oracle                                        | rules out                                                        |
|----------------------------------------|-----------------------------------------------|------------------------------------------------------------------|
| run_many = each config alone           | sims.run per config, exact frame equality     | a relabelling slip (vary/value), a chunk key too coarse (two different chunks merged: frames differ), results sent to the wrong config |
| shared chunks computed once            | count of submitted chunks                     | a chunk key too fine (d = 10 and T = 3 computed twice)           |
| presets share SR / last-layer-ML retraining | each preset's sweep alone; retraining count | a shared retraining leaking into fine-tuning; a share key merging different retrainings (LoRA-ML, Reptile) or sharing nothing |
| largest first                          | the configs' own cost estimates               | submitting in config order (a long chunk starting last)          |
| dask = serial; killed worker           | the serial table; chunk files on disk         | executor-dependent numbers; a lost or duplicated chunk after a worker dies mid-sweep |
| corrupt / stale chunk                  | an untouched run; the logged line             | serving a truncated, bit-flipped, misplaced or stale-engine chunk; recomputing sound chunks |
| concurrent writers, Ctrl-C             | the serial table; every chunk file loads      | half-written files, rows stored twice, a resume that recomputes stored chunks |
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

import sims
from loraml.cli import main as cli

LINEAR = dict(outer_steps=40, ft_steps=60, N=300)
SHALLOW = dict(retrain_steps=30, ft_steps=20, N=40, n=20, record_every=10)


def _configs():
    return [sims.linear_sweep("T", (2, 3), runs=2, chunk_trials=1, **LINEAR),
            sims.linear_sweep("k", (1, 2), preset="clean", runs=2, **LINEAR),
            sims.shallow_sweep("d", (5, 10), trials=2, chunk_trials=1, **SHALLOW),
            sims.shallow_sweep("T", (2, 3), trials=2, chunk_trials=1, **SHALLOW)]


class CountingExecutor(cf.ThreadPoolExecutor):
    """A thread pool that records what it was asked to compute, in order."""

    def __init__(self):
        super().__init__(max_workers=1)     # one worker: completion order = submission order
        self.submitted = []

    def submit(self, fn, *args, **kwargs):
        self.submitted.append(args)         # (chunk function, batch function, [(config, value_index, trials)])
        return super().submit(fn, *args, **kwargs)

    @property
    def chunks(self):
        return [chunk for _simulate, _batch, pack in self.submitted for chunk in pack]


def _equal(a, b):
    pd.testing.assert_frame_equal(a, b, check_exact=True)


# ------------------------------------------------------------------------------- one plan, many configs


def test_run_many_equals_each_config_alone_and_computes_shared_chunks_once():
    configs = _configs()
    alone = [sims.run(c, progress=False, **({} if isinstance(c, sims.LinearConfig) else {"device": "cpu"}))
             for c in configs]
    with CountingExecutor() as ex:
        many = sims.run_many(configs, executor=ex, progress=False, device="cpu")
    for a, m in zip(alone, many):
        _equal(a, m)
    # shallow d = 10 (value index 1) and T = 3 (value index 1) are one setting with one seed stream:
    # its 2 one-trial chunks are computed once for both sweeps.
    assert len(ex.chunks) == sum(len(c.chunks()) for c in configs) - 2
    assert len(set((c.key, v, t) for c, v, t in ex.chunks)) == len(ex.chunks)     # none twice
    d10, t3 = configs[2], configs[3]
    assert d10.chunk_key(1, (0,)) == t3.chunk_key(1, (0,))


def test_chunk_keys_differ_wherever_the_numbers_can():
    """A shared key must mean equal numbers: another seed, value position (seed stream), step count or
    trial gives another key (each of these changes the chunk's table)."""
    d = sims.shallow_sweep("d", (5, 10), trials=2, **SHALLOW)
    keys = {d.chunk_key(1, (0,)),
            sims.shallow_sweep("T", (3, 5), trials=2, **SHALLOW).chunk_key(0, (0,)),      # T = 3 at index 0
            sims.shallow_sweep("T", (2, 3), trials=2, seed=1, **SHALLOW).chunk_key(1, (0,)),
            sims.shallow_sweep("T", (2, 3), trials=2, **{**SHALLOW, "ft_steps": 21}).chunk_key(1, (0,)),
            d.chunk_key(1, (1,)), d.chunk_key(0, (0,))}
    assert len(keys) == 6


def test_chunks_are_submitted_largest_expected_cost_first():
    configs = _configs()
    with CountingExecutor() as ex:
        sims.run_many(configs, executor=ex, progress=False, device="cpu")
    costs = [sum(c.chunk_cost(v, t) for c, v, t in pack) for _simulate, _batch, pack in ex.submitted]
    assert costs == sorted(costs, reverse=True)
    assert len(set(costs)) > 2          # the estimates tell the tasks apart, so the order means something


def test_linear_chunks_travel_in_packs_that_keep_shared_retraining_together():
    """The linear engine batches chunks whose retraining shapes agree (batch_key): the scheduler sends
    about PACKS_PER_WORKER packs per worker, never splits a pack's chunks across kinds, and keeps the
    chunks of one batch key adjacent (so they meet in one pack unless the pack is full)."""
    configs = [sims.linear_sweep(v, runs=2, chunk_trials=1, **LINEAR) for v in ("T", "n", "N", "d", "k")]
    with CountingExecutor() as ex:
        sims.run_many(configs, executor=ex, progress=False)
    packs = [pack for _simulate, _batch, pack in ex.submitted]
    assert len(ex.chunks) == sum(len(c.chunks()) for c in configs)
    assert 2 <= len(packs) <= sims.PACKS_PER_WORKER + 1        # one worker: about 4 packs, not one per chunk
    # A key-sorted sequence cut into P contiguous packs splits at most P - 1 keys: (pack, key) pairs
    # number at most keys + P - 1. Packing by cost alone, ignoring keys, gives far more here
    # (7 keys, 30 chunks).
    pairs = {(i, c.batch_key(v)) for i, pack in enumerate(packs) for c, v, _t in pack}
    n_keys = len({c.batch_key(v) for c, v, _t in ex.chunks})
    assert n_keys == 7 and len(pairs) <= n_keys + len(packs) - 1


DIGITS = dict(seeds=(0, 1), retrain_epochs=2, ft_epochs=2, n_finetune=(10, 20))


def test_realdata_presets_share_sr_and_last_layer_retraining_and_give_each_sweep_alone(monkeypatch):
    """SR and last-layer-ML retrain the same way under both presets (V1-V3 touch adapters, fine-tuning
    starts and Reptile only): run_many sends the two presets' chunks of such a method and seed as one
    task and retrains once. Oracle: each sweep run alone, frame for frame (a shared retraining that
    leaked state into fine-tuning, or a share key that merged different retrainings, changes
    accuracies); and the number of retrainings: 4 methods x 2 seeds x 2 presets = 16 alone, 16 - 4 =
    12 shared (a key that includes the preset shares nothing: 16; one that ignores it for LoRA-ML or
    Reptile: 8). SR's last-layer fine-tunings are computed once for both presets as well."""
    import sims._realdata as R

    configs = [sims.realdata_sweep("digits", preset=p, **DIGITS) for p in ("paper", "clean")]
    alone = [sims.run(c, progress=False, device="cpu") for c in configs]
    calls, tunings = [], []
    original, original_ft = R.retrain, R.finetune
    monkeypatch.setattr(R, "retrain", lambda *a, **k: calls.append(k["method"]) or original(*a, **k))
    monkeypatch.setattr(R, "finetune", lambda *a, **k: tunings.append(k["scheme"]) or original_ft(*a, **k))
    with CountingExecutor() as ex:
        many = sims.run_many(configs, executor=ex, progress=False, device="cpu")
    for a, m in zip(alone, many):
        _equal(a, m)
    assert len(calls) == 12 and sorted(set(calls)) == sorted(sims.RETRAINING_METHODS)
    # SR's last-layer fine-tunings (no option, no quirk) are shared too: 4 methods x 2 seeds x
    # 2 presets x 2 schemes x 2 sizes = 64 alone, 64 - 2 seeds x 2 sizes = 60 (last-layer-ML's
    # differ: V2 starts the paper preset's head from the first task's).
    assert len(tunings) == 60 and tunings.count("last-layer") == 28
    tasks = [pack for _simulate, _batch, pack in ex.submitted]
    assert sorted(len(t) for t in tasks) == [1] * 8 + [2] * 4       # SR, last-layer-ML x 2 seeds in pairs
    for pack in tasks:
        assert len({(c.values[v], c.seeds[t[0]]) for c, v, t in pack}) == 1
    # Every field the retraining reads is in the key; the fine-tuning's are not.
    paper, clean = configs
    assert paper.share_key(0, (0,)) == clean.share_key(0, (0,)) != paper.share_key(0, (1,))
    assert paper.share_key(1, (0,)) is None and paper.share_key(3, (0,)) is None     # LoRA-ML, Reptile
    other = sims.realdata_sweep("digits", preset="clean", **{**DIGITS, "retrain_lr": 1e-3})
    assert other.share_key(0, (0,)) != clean.share_key(0, (0,))
    fine = sims.realdata_sweep("digits", preset="clean", **{**DIGITS, "ft_lr": 1e-3})
    assert fine.share_key(0, (0,)) == clean.share_key(0, (0,))


def test_run_many_refuses_bad_input_before_any_work(tmp_path):
    cfg = _configs()[0]
    for kwargs, name in (({"configs": []}, "configs"), ({"configs": "linear"}, "configs"),
                         ({"configs": [cfg], "executor": "threads"}, "executor"),
                         ({"configs": [cfg], "device": "cpu"}, "device"),
                         ({"configs": [cfg], "store": tmp_path / "file" / "below"}, "store"),
                         ({"configs": [cfg], "on_chunk": 3}, "on_chunk")):
        (tmp_path / "file").write_text("a file, not a folder")
        with pytest.raises(ValueError, match=name):
            sims.run_many(**{"progress": False, **kwargs})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]     # nothing written


# ------------------------------------------------------------------------------- dask


@pytest.fixture(scope="module")
def dask_client():
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                  host="127.0.0.1") as cluster, distributed.Client(cluster) as client:
        yield client


def test_dask_cluster_gives_the_serial_tables(dask_client):
    configs = _configs()
    serial = sims.run_many(configs, progress=False, device="cpu")
    for a, b in zip(serial, sims.run_many(configs, executor=dask_client, progress=False, device="cpu")):
        _equal(a, b)
    small = dict(Ts=(2, 3), ds=(3, 4), ks=(1,), reps=3, search_starts=2, search_iter=10)
    _equal(sims.recovery_phase_table(**small), sims.recovery_phase_table(**small, executor=dask_client))


def test_dask_worker_killed_mid_sweep_loses_and_duplicates_no_rows(dask_client, tmp_path):
    cfg = sims.linear_sweep("N", (100, 200, 400), runs=6, chunk_trials=1, outer_steps=300, ft_steps=300, n=50)
    reference = sims.run(cfg, progress=False)
    pids = list(dask_client.run(os.getpid).values())
    done_at_kill = []

    def kill_one_worker(v, trials):
        if not done_at_kill:
            done_at_kill.append(len(list((tmp_path / f"linear-{cfg.key}").glob("chunk-*.parquet"))))
            os.kill(pids[0], signal.SIGKILL)

    table = sims.run(cfg, executor=dask_client, store=tmp_path, progress=False, on_chunk=kill_one_worker)
    assert 1 <= done_at_kill[0] < len(cfg.chunks())                  # the kill happened mid-sweep
    _equal(table, reference)                                          # no row lost, none twice
    assert len(list((tmp_path / f"linear-{cfg.key}").glob("chunk-*.parquet"))) == len(cfg.chunks())
    _equal(sims.read_store(tmp_path / f"linear-{cfg.key}"), reference)
    dask_client.wait_for_workers(2, timeout=60)                       # the nanny restarted it


def test_executor_dask_starts_and_stops_its_own_cluster():
    pytest.importorskip("distributed")
    cfg = sims.linear_sweep("T", (2, 3), runs=1, **LINEAR)
    _equal(sims.run(cfg, executor="dask", progress=False), sims.run(cfg, progress=False))


# ------------------------------------------------------------------------------- a store you can trust


def _linear(**kw):
    return sims.linear_sweep("T", (2, 3), **{**LINEAR, "runs": 3, "chunk_trials": 1, **kw})


def _corrupt(path: Path, how: str, other: Path):
    data = path.read_bytes()
    if how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "bit flipped":
        # A silent corruption: the first bit flip past the header after which the file still parses
        # but holds other numbers (Parquet itself would serve it; only the rows' checksum can tell).
        original = pq.read_table(path)
        for pos in range(8, len(data)):
            flipped = data[:pos] + bytes([data[pos] ^ 0x04]) + data[pos + 1:]
            path.write_bytes(flipped)
            try:
                if not pq.read_table(path).equals(original):
                    return
            except Exception:       # noqa: BLE001 - a flip Parquet detects is not the case tested here
                pass
        raise AssertionError("no silent bit flip found")
    elif how == "another chunk's file":
        path.write_bytes(other.read_bytes())


@pytest.mark.parametrize("how", ["truncated", "empty", "bit flipped", "another chunk's file"])
def test_a_corrupt_chunk_is_reported_in_one_line_and_recomputed(tmp_path, caplog, how):
    cfg = _linear()
    reference = sims.run(cfg, store=tmp_path, progress=False)
    folder = tmp_path / f"linear-{cfg.key}"
    victim, other = sorted(folder.glob("chunk-*.parquet"))[2:4]
    _corrupt(victim, how, other)
    computed = []
    with caplog.at_level(logging.WARNING, logger="sims"):
        table = sims.run(cfg, store=tmp_path, progress=False, on_chunk=lambda v, t: computed.append((v, t)))
    _equal(table, reference)
    assert len(computed) == 1                                   # that chunk only
    lines = [r.getMessage() for r in caplog.records if r.name == "sims"]
    assert len(lines) == 1 and str(victim) in lines[0] and "\n" not in lines[0], lines
    assert sims.run(cfg, store=tmp_path, progress=False, on_chunk=lambda v, t: computed.append(v)) is not None
    assert len(computed) == 1                                   # repaired: served from now on


def test_a_chunk_from_another_engine_version_is_recomputed_not_served(tmp_path, caplog, monkeypatch):
    cfg = _linear()
    reference = sims.run(cfg, store=tmp_path, progress=False)
    monkeypatch.setattr(sims.LinearConfig, "engine_version", sims.LinearConfig.engine_version + 1)
    computed = []
    with caplog.at_level(logging.WARNING, logger="sims"):
        table = sims.run(cfg, store=tmp_path, progress=False, on_chunk=lambda v, t: computed.append(v))
    _equal(table, reference)
    assert len(computed) == len(cfg.chunks())
    assert sum("stale" in r.getMessage() for r in caplog.records) == len(cfg.chunks())
    assert {r["engine_version"] for r in sims.read_records(tmp_path / f"linear-{cfg.key}")} == \
        {sims.LinearConfig.engine_version}


def test_each_chunk_records_what_computed_it(tmp_path):
    import numpy as np
    import scipy

    cfg = _linear()
    sims.run(cfg, store=tmp_path, progress=False)
    records = sims.read_records(tmp_path / f"linear-{cfg.key}")
    assert [(r["value_index"], r["trials"]) for r in records] == [(v, list(t)) for v, t in cfg.chunks()]
    for r in records:
        assert r["config"] == json.loads(json.dumps(cfg.to_dict(), default=list))
        assert r["engine_version"] == cfg.engine_version and r["kind"] == "linear" and r["seed"] == cfg.seed
        assert r["versions"]["numpy"] == np.__version__ and r["versions"]["scipy"] == scipy.__version__
        assert r["loraml_version"] and r["rows"] > 0
    repo = Path(sims.__file__).resolve().parent.parent
    if (repo / ".git").exists():
        head = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True)
        assert records[0]["git_commit"] == head.stdout.strip()


def test_show_prints_the_record(tmp_path, capsys):
    cfg = _linear()
    sims.run(cfg, store=tmp_path, progress=False)
    assert cli(["show", str(tmp_path / f"linear-{cfg.key}")]) == 0
    out = capsys.readouterr().out
    import numpy as np

    assert f"engine version {cfg.engine_version}" in out and f"numpy {np.__version__}" in out and "seed 0" in out


def test_two_chunkings_in_one_store_read_each_row_once(tmp_path):
    a = _linear(chunk_trials=2, runs=4)
    reference = sims.run(a, store=tmp_path, progress=False)
    sims.run(_linear(chunk_trials=1, runs=4), store=tmp_path, progress=False)   # same key, other files
    folder = tmp_path / f"linear-{a.key}"
    assert len(list(folder.glob("chunk-*.parquet"))) == 2 * 2 + 2 * 4       # both chunkings, overlapping
    _equal(sims.read_store(folder), reference)


_WORKER = """
import sys, sims
cfg = sims.linear_sweep("N", (100, 200, 400), runs=4, chunk_trials=1, outer_steps=200, ft_steps=200, n=50)
sims.run(cfg, store=sys.argv[1], progress=False).to_parquet(sys.argv[2])
"""


def test_a_store_folder_made_by_another_process_meanwhile_is_accepted(tmp_path, monkeypatch):
    """Two sweeps started on one new store: the other process makes the folder between this one's
    look and its mkdir. The check must accept the folder it finds (and probe it) rather than
    refuse the store with 'File exists' (what it did), and must not remove the other's folder."""
    target = tmp_path / "store"
    real = Path.mkdir

    def racing(self, *args, **kwargs):
        if self == target:
            real(self)                        # the other process wins the race
            raise FileExistsError(17, "File exists", str(self))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", racing)
    assert sims.folder_problem(target) is None
    assert target.is_dir() and not any(target.iterdir())       # kept, and the probe removed


def test_two_processes_running_one_sweep_on_one_store_store_every_row_once(tmp_path):
    cfg = sims.linear_sweep("N", (100, 200, 400), runs=4, chunk_trials=1, outer_steps=200, ft_steps=200, n=50)
    procs = [subprocess.Popen([sys.executable, "-c", _WORKER, str(tmp_path / "store"), str(tmp_path / f"{i}.parquet")],
                              stderr=subprocess.PIPE) for i in range(2)]
    for p in procs:
        assert p.wait(timeout=300) == 0, p.stderr.read().decode()
    reference = sims.run(cfg, progress=False)
    for i in range(2):
        _equal(pd.read_parquet(tmp_path / f"{i}.parquet"), reference)
    folder = tmp_path / "store" / f"linear-{cfg.key}"
    assert len(list(folder.glob("chunk-*.parquet"))) == len(cfg.chunks())
    assert not list(folder.glob(".*"))                          # no temporary file left behind
    _equal(sims.read_store(folder), reference)


def test_ctrl_c_mid_sweep_leaves_whole_chunks_and_the_rerun_resumes(tmp_path):
    """SIGINT (what Ctrl-C sends) to a CLI sweep on a process pool after its first stored chunk: it exits
    non-zero within seconds (the workers are stopped, not awaited), every chunk file left is whole
    and sound, and the rerun computes only the rest, to the uninterrupted table.

    On a loaded machine the driver can be descheduled while the workers finish every pack and then
    write all chunks at once, before the signal lands: such an attempt (exit 0, every chunk stored)
    did not test an interruption, so it is repeated in a fresh store, up to three times."""
    cfg = sims.linear_sweep("N", (100, 200, 400), runs=8, chunk_trials=1, outer_steps=300, ft_steps=300, n=50)
    for attempt in range(3):
        store = tmp_path / f"a{attempt}"
        args = [sys.executable, "-m", "loraml.cli", "sweep", "linear", "--vary", "N", "--values", "100", "200", "400",
                "--runs", "8", "--chunk-trials", "1", "--outer-steps", "300", "--steps", "300", "--set", "n=50",
                "--executor", "processes", "--quiet", "--store", str(store)]
        folder = store / f"linear-{cfg.key}"
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        for _ in range(6000):
            if list(folder.glob("chunk-*.parquet")) or proc.poll() is not None:
                break
            time.sleep(0.01)
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=60)
        err = proc.stderr.read().decode()
        if not (code == 0 and len(list(folder.glob("chunk-*.parquet"))) == len(cfg.chunks())):
            break
    assert code != 0, f"the sweep finished before the interrupt in 3 attempts: {err}"
    assert "interrupted" in err and "Traceback" not in err, err
    left = sorted(folder.glob("chunk-*.parquet"))
    assert 1 <= len(left) < len(cfg.chunks())                  # mid-sweep
    assert not list(folder.glob(".*"))                         # no half-written file
    db = sims.ChunkStore(store, "linear", cfg)                  # the config's engine version
    stored = [(v, t) for v, t in cfg.chunks() if db.has(v, t)]
    assert all(db.load(v, t) is not None for v, t in stored)   # every file left is whole and sound
    computed = []
    table = sims.run(cfg, store=store, progress=False, on_chunk=lambda v, t: computed.append((v, t)))
    assert sorted(computed) == sorted(set(cfg.chunks()) - set(stored))
    _equal(table, sims.run(cfg, progress=False))
