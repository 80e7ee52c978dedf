"""The views of a store (``sims.read_store``, ``sims.read_records``, ``loraml show``, ``loraml plot``)
check each chunk file exactly as a sweep does before they summarise it, never mix two chunkings
into counting a trial twice, and say in one line per file what they left out and why.

| test | checks | rules out |
|------|--------|-----------|
| widest file corrupt | chunk_trials 0 and 1 files in one folder, a wide file unreadable: every value and trial is read from the valid files | choosing among chunkings by file name before checking the files (a whole value hidden) |
| chunkings combined | valid non-overlapping files of two chunkings fill each other's gaps, each trial once | a trial counted twice, or valid trials left out |
| copied file | a valid chunk copied over another's name is left out with a line; its trials are reported missing | a file summarised as the chunk its name says |
| stale engine | a chunk whose record has engine_version - 1 is left out with a line | a stale chunk summarised without a word |
| one check | for each kind of bad file, the sweep refuses it iff the views leave it out, for the same reason | two copies of the check logic drifting apart |
| record-less file | left out with a line (documented) | an unchecked file of unknown engine version shown |
| config.json | missing or unbuildable: one ValueError naming the folder | a traceback, or chunks checked against nothing |
| real-data folders | show and plot of realdata-/convai- folders work; --metric A_error there is one line | KeyError 'vary' / 'step' tracebacks |
| default metric | a table without test_loss: the line does not blame --metric, names what it allows | an error naming a flag the user never gave |
"""

from __future__ import annotations

import json
import logging
import shutil

import matplotlib.image as mpimg
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

import sims
from loraml import cli

TINY = dict(runs=2, d=4, N=50, n=20, outer_steps=5, inner_steps=2, ft_steps=5)


def _linear(chunk_trials=1, **kw):
    return sims.linear_sweep("T", (2, 3), preset="clean", chunk_trials=chunk_trials, **{**TINY, **kw})


def _lines(caplog):
    return [r.getMessage() for r in caplog.records if r.name == "sims"]


def _equal(a, b):
    pd.testing.assert_frame_equal(a.reset_index(drop=True), b.reset_index(drop=True), check_exact=True)


def _rewrite_record(path, **changes):
    """Rewrite a chunk file's record (the rows, hence their checksum, untouched)."""
    table = pq.read_table(path)
    meta = dict(table.schema.metadata)
    record = json.loads(meta[b"loraml"])
    record.update(changes)
    meta[b"loraml"] = json.dumps(record).encode()
    pq.write_table(table.replace_schema_metadata(meta), path)


# ------------------------------------------------------------------------------- chunkings


def test_two_chunkings_with_the_widest_file_corrupt_show_every_value(tmp_path, caplog, capsys):
    """chunk_trials 0 (one file per value) and 1 (one per trial) in one folder, the one-file chunk of
    T = 3 unreadable: T = 3 is still read, from its per-trial files, and equals the sweep's table.
    Rules out choosing files by name (the widest) before checking them, which hid the value."""
    wide, narrow = _linear(chunk_trials=0), _linear(chunk_trials=1)
    reference = sims.run(wide, store=tmp_path, progress=False)
    sims.run(narrow, store=tmp_path, progress=False)
    folder = tmp_path / f"linear-{wide.key}"
    corrupt = folder / "chunk-v001-t0000-0001.parquet"
    corrupt.write_bytes(corrupt.read_bytes()[:100])
    with caplog.at_level(logging.WARNING, logger="sims"):
        _equal(sims.read_store(folder), reference)
    lines = _lines(caplog)
    # One line per file left out: the corrupt file, and the one-file chunk of T = 2 that the
    # current (per-trial) chunking overlaps.
    assert len(lines) == 2, lines
    assert sum(str(corrupt) in line and "not a readable Parquet file" in line for line in lines) == 1
    assert sum("chunk-v000-t0000-0001.parquet: overlaps chunk-v000-t0000-0000.parquet" in line
               for line in lines) == 1
    assert cli.main(["show", str(folder)]) == 0
    out, err = capsys.readouterr()
    assert {"2 ", "3 "} <= {line[:2] for line in out.splitlines()}          # both values summarised
    assert "left out: 2 chunk files" in out
    err_lines = err.splitlines()
    assert len(err_lines) == 2 and all(line.startswith("loraml show: ") for line in err_lines), err


def test_valid_files_of_two_chunkings_fill_each_others_gaps_and_count_each_trial_once(tmp_path, caplog):
    """runs = 4 in blocks of 2 and of 1; the block t0-1 and the single t2 of T = 2 unreadable: the
    views read t0, t1 (singles) and t2-3 (block), each trial once, equal to the sweep's table.
    Rules out double counting where chunkings overlap, and leaving valid trials out."""
    blocks, singles = _linear(chunk_trials=2, runs=4), _linear(chunk_trials=1, runs=4)
    reference = sims.run(blocks, store=tmp_path, progress=False)
    sims.run(singles, store=tmp_path, progress=False)
    folder = tmp_path / f"linear-{blocks.key}"
    for name in ("chunk-v000-t0000-0001.parquet", "chunk-v000-t0002-0002.parquet"):
        (folder / name).write_bytes(b"")
    with caplog.at_level(logging.WARNING, logger="sims"):
        _equal(sims.read_store(folder), reference)
    records = {r["file"]: r for r in sims.read_records(folder)}
    used = sorted(name for name, r in records.items() if "problem" not in r and r["value_index"] == 0)
    assert used == ["chunk-v000-t0000-0000.parquet", "chunk-v000-t0001-0001.parquet",
                    "chunk-v000-t0002-0003.parquet"]
    assert "overlaps" in records["chunk-v000-t0003-0003.parquet"]["problem"]
    assert len(_lines(caplog)) == sum("problem" in r for r in records.values()) == 2 + 1 + 2   # T = 3: blocks


# ------------------------------------------------------------------------------- checked files


@pytest.mark.parametrize(("source", "target", "field"), [
    ("chunk-v000-t0000-0000.parquet", "chunk-v000-t0001-0001.parquet", "trials [0], not [1]"),
    ("chunk-v001-t0001-0001.parquet", "chunk-v000-t0001-0001.parquet", "value_index 1, not 0"),
])
def test_a_valid_chunk_copied_over_another_name_is_left_out_with_a_line(tmp_path, caplog, source, target, field):
    """A sound file of one chunk under another chunk's name is left out (its record names the other
    chunk) and the trials it claimed are reported missing. Rules out summarising it as the chunk
    its name says (trial 0's rows counted twice, or T = 3's rows shown as T = 2)."""
    cfg = _linear()
    reference = sims.run(cfg, store=tmp_path, progress=False)
    folder = tmp_path / f"linear-{cfg.key}"
    shutil.copy(folder / source, folder / target)
    with caplog.at_level(logging.WARNING, logger="sims"):
        table = sims.read_store(folder)
    _equal(table, reference[~((reference["value"] == 2) & (reference["trial"] == 1))])
    lines = _lines(caplog)
    assert len(lines) == 2, lines
    assert str(folder / target) in lines[0] and field in lines[0] and "rerun the sweep" in lines[0]
    assert "no valid chunk holds T = 2 (trials 1)" in lines[1]


def test_a_stale_engine_chunk_is_left_out_with_a_line(tmp_path, caplog, capsys):
    """A chunk whose record says engine_version - 1 (its rows sound) is left out by read_store, show
    and plot, with a line naming the file and both versions. Rules out a stale chunk summarised
    without a word."""
    cfg = _linear()
    reference = sims.run(cfg, store=tmp_path, progress=False)
    folder = tmp_path / f"linear-{cfg.key}"
    stale = folder / "chunk-v001-t0000-0000.parquet"
    _rewrite_record(stale, engine_version=cfg.engine_version - 1)
    with caplog.at_level(logging.WARNING, logger="sims"):
        table = sims.read_store(folder)
    _equal(table, reference[~((reference["value"] == 3) & (reference["trial"] == 0))])
    line = _lines(caplog)[0]
    assert str(stale) in line and f"version {cfg.engine_version - 1}, the current one is {cfg.engine_version}" in line
    for command in (["show", str(folder)], ["plot", str(folder), "-o", str(tmp_path / "p.png")]):
        assert cli.main(command) == 0
        err = capsys.readouterr().err
        assert sum(str(stale) in line and "stale" in line for line in err.splitlines()) == 1, err


def _break(path, how, other):
    if how == "truncated":
        path.write_bytes(path.read_bytes()[:200])
    elif how == "another chunk's file":
        path.write_bytes(other.read_bytes())
    elif how == "stale":
        _rewrite_record(path, engine_version=0)
    elif how == "another config":
        _rewrite_record(path, config_key="0" * 16)
    elif how == "no record":
        table = pq.read_table(path)
        pq.write_table(table.replace_schema_metadata({}), path)
    elif how == "rows changed":
        frame = pq.read_table(path).to_pandas()
        frame.loc[0, "test_loss"] += 1.0
        table = pq.read_table(path)
        import pyarrow as pa

        pq.write_table(pa.Table.from_pandas(frame, preserve_index=False).replace_schema_metadata(
            table.schema.metadata), path)


@pytest.mark.parametrize("how", ["truncated", "another chunk's file", "stale", "another config", "no record",
                                 "rows changed"])
def test_the_sweep_and_the_views_refuse_the_same_files_for_the_same_reason(tmp_path, caplog, how):
    """For each kind of bad file: ChunkStore.load (the sweep) refuses it, read_records gives it a
    problem and read_store leaves it out, all with the same reason; the good files pass all three.
    Rules out two check paths that drift apart (a view serving what a sweep would recompute)."""
    cfg = _linear()
    sims.run(cfg, store=tmp_path, progress=False)
    store = sims.ChunkStore(tmp_path, "linear", cfg)
    victim = store.chunk_path(0, (1,))
    _break(victim, how, store.chunk_path(1, (1,)))
    with caplog.at_level(logging.WARNING, logger="sims"):
        loaded = {(v, t): store.load(v, t) for v, t in cfg.chunks()}
    sweep_line = _lines(caplog)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="sims"):
        sims.read_store(store.folder)
    view_lines = [line for line in _lines(caplog) if str(victim) in line]
    records = {r["file"]: r for r in sims.read_records(store.folder)}
    assert [k for k, frame in loaded.items() if frame is None] == [(0, (1,))]
    assert [name for name, r in records.items() if "problem" in r] == [victim.name]
    reason = records[victim.name]["problem"]
    assert sweep_line == [f"{victim}: {reason}; recomputing it"]
    assert view_lines == [f"{victim}: {reason}; left out (rerun the sweep to recompute it)"]
    if how == "no record":
        assert reason.startswith("no record")             # record-less (older) files: left out, documented


@pytest.mark.parametrize(("content", "message"), [
    (None, "has no config.json"),
    ("{not json", "does not parse"),
    (json.dumps({"_kind": "quadratic"}), "names no known kind"),
    (json.dumps({"_kind": "linear", "vary": "T", "values": [2], "colour": "red"}), "can rebuild"),
])
def test_a_folder_without_a_usable_config_json_is_one_line_naming_the_folder(tmp_path, capsys, content, message):
    """Without the config the chunks cannot be checked: read_store refuses the folder in one
    ValueError naming it; show exits 2 with one line. Rules out a traceback, or chunks summarised
    unchecked."""
    cfg = _linear()
    sims.run(cfg, store=tmp_path, progress=False)
    folder = tmp_path / f"linear-{cfg.key}"
    (folder / "config.json").unlink()
    if content is not None:
        (folder / "config.json").write_text(content)
    with pytest.raises(ValueError, match=f"'folder' parameter of read_store.*{message}"):
        sims.read_store(folder)
    assert cli.main(["show", str(folder)]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and message in err and "Traceback" not in err


# ------------------------------------------------------------------------------- real-data folders


def _realdata_table(cfg, value_index, trials):
    """A chunk table shaped as simulate_realdata_chunk's (columns, dtypes, categories), with made-up
    accuracies: writing it through ChunkStore.write gives a real-data folder in milliseconds."""
    method, rows = cfg.values[value_index], []
    for t in trials:
        rng = np.random.default_rng([value_index, t])
        base = dict(dataset=cfg.dataset, preset=cfg.preset, retraining=method, seed=cfg.seeds[t])
        rows += [dict(base, phase="retrain", finetuning="none", n_finetune=0, epoch=e, split="val",
                      accuracy=rng.uniform()) for e in range(cfg.retrain_epochs + 1)]
        rows += [dict(base, phase="finetune", finetuning=s, n_finetune=n, epoch=e, split=split, accuracy=rng.uniform())
                 for s in cfg.finetuning for n in cfg.n_finetune for e in range(cfg.ft_epochs + 1)
                 for split in ("val", "test")]
    frame = pd.DataFrame(rows).astype({"seed": np.int64, "n_finetune": np.int64, "epoch": np.int64})
    frame["retraining"] = pd.Categorical(frame["retraining"], categories=list(sims.RETRAINING_METHODS))
    frame["finetuning"] = pd.Categorical(frame["finetuning"], categories=["none", *sims.FINETUNING_SCHEMES])
    return frame


def _convai_table(cfg, value_index, trials):
    """A chunk table shaped as simulate_convai_chunk's, with made-up hits@1."""
    method, scheme, rank = cfg.value_spec(value_index)
    rows = []
    for t in trials:
        seed, persona = cfg.trial(t)
        rng = np.random.default_rng([value_index, t])
        base = dict(dataset="convai", preset=cfg.preset, retraining=method, finetuning=scheme, rank=rank, seed=seed)
        if persona == 0:
            rows += [dict(base, phase="retrain", persona=-1, cluster=-1, epoch=e, split="val", accuracy=rng.uniform())
                     for e in range(cfg.retrain_epochs + 1)]
        rows += [dict(base, phase="finetune", persona=persona, cluster=persona + 7, epoch=e, split=split,
                      accuracy=rng.uniform()) for e in range(cfg.ft_epochs + 1) for split in ("val", "test")]
    frame = pd.DataFrame(rows).astype({c: np.int64 for c in ("rank", "seed", "persona", "cluster", "epoch")})
    frame["retraining"] = pd.Categorical(frame["retraining"], categories=list(sims.RETRAINING_METHODS))
    frame["finetuning"] = pd.Categorical(frame["finetuning"], categories=list(sims.FINETUNING_SCHEMES))
    return frame


def _real_folder(tmp_path, kind):
    if kind == "realdata":
        cfg = sims.realdata_sweep("digits", seeds=(0, 1), values=("SR", "LoRA-ML"), n_finetune=(10, 20),
                                  retrain_epochs=1, ft_epochs=2, chunk_trials=2)
        make = _realdata_table
    else:
        cfg = sims.ConvAIConfig(seeds=(0, 1), n_test_personas=2, methods=("SR", "LoRA-ML"), ranks=(1, 2),
                                retrain_epochs=1, ft_epochs=2, fingerprint="test", chunk_trials=4)
        make = _convai_table
    store = sims.ChunkStore(tmp_path, kind, cfg)
    store.write_config()
    for v, trials in cfg.chunks():
        store.write(v, trials, make(cfg, v, trials))
    return cfg, store.folder


@pytest.mark.parametrize("kind", ["realdata", "convai"])
def test_show_and_plot_of_a_real_data_folder(tmp_path, capsys, kind):
    """loraml show prints the real-data summary (every method and scheme; csv and json too) and
    loraml plot draws the accuracy figure; --metric A_error is one line. Rules out the KeyError
    'vary' / 'step' tracebacks of a view that assumed a linear sweep."""
    cfg, folder = _real_folder(tmp_path, kind)
    table = sims.read_store(folder)
    summary = sims.convai_summary(table) if kind == "convai" else sims.realdata_summary(table)
    assert cli.main(["show", str(folder)]) == 0
    out, err = capsys.readouterr()
    assert err == "" and out.startswith(f"{folder}: {table['dataset'].iloc[0]} real data, preset clean, 2 seed(s)")
    assert {"SR", "LoRA-ML", "lora"} <= set(out.split()) and f"record ({len(cfg.chunks())} chunks)" in out
    assert cli.main(["show", str(folder), "--format", "csv"]) == 0
    shown = pd.read_csv(pd.io.common.StringIO(capsys.readouterr().out))
    assert len(shown) == len(summary)
    np.testing.assert_allclose(np.sort(shown["last_mean"]), np.sort(summary["last_mean"]), rtol=1e-12)
    assert cli.main(["plot", str(folder)]) == 0
    assert capsys.readouterr().out.strip() == str(folder / "plot-accuracy.png")
    image = mpimg.imread(folder / "plot-accuracy.png")
    assert image.shape[0] > 100 and np.ptp(image[..., :3]) > 0.5           # drawn, not blank
    if kind == "realdata":        # one route for both kinds: a PDF alone, nothing else written beside it
        assert cli.main(["plot", str(folder), "-o", str(tmp_path / "f.pdf")]) == 0
        assert (tmp_path / "f.pdf").read_bytes().startswith(b"%PDF")
        assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == ["f.pdf"]
    assert cli.main(["plot", str(folder), "--metric", "A_error", "-o", str(tmp_path / "a.png")]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "--metric A_error" in err and "accuracy" in err


# ------------------------------------------------------------------------------- plot's metric


@pytest.mark.parametrize(("drop", "argv", "says", "allows"), [
    ("test_loss", [], "the default metric, test_loss", "--metric can be A_error"),
    ("A_error", ["--metric", "A_error"], "--metric A_error", "--metric can be test_loss"),
])
def test_plot_of_a_table_without_the_metric_says_what_it_allows(tmp_path, capsys, drop, argv, says, allows):
    """A stored sweep without the metric's column: one line saying what the table holds and which
    --metric values it allows, naming --metric only when the user gave it. Rules out an error
    that blames '--metric test_loss' although none was given."""
    cfg = _linear(runs=1)
    store = sims.ChunkStore(tmp_path, "linear", cfg)
    store.write_config()
    for v, trials in cfg.chunks():
        store.write(v, trials, sims.simulate_chunk(cfg, v, trials).drop(columns=[drop]))
    assert cli.main(["plot", str(store.folder), *argv]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and says in err and allows in err and "columns:" in err, err
    if not argv:
        assert "--metric test_loss" not in err


def test_a_vision_folder_is_shown_where_its_data_is_not(tmp_path, capsys):
    """A vision folder copied to a machine without CIFAR-10, or whose data changed since: the views
    rebuild its config with the data manifest recorded in config.json and show its chunks (they were
    computed on those files). Rules out a view that fingerprints the data again, which refuses the
    folder (no data) or every chunk (another key) although nothing stored is wrong."""
    import pickle

    root = tmp_path / "cifar"
    root.mkdir()
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(root / name, "wb") as fh:
            pickle.dump({b"data": rng.integers(0, 256, (20, 3072), dtype=np.uint8),
                         b"labels": list(rng.integers(0, 10, 20))}, fh)
    cfg = sims.realdata_sweep("vision", data_root=str(root), seeds=(0,), values=("SR",), retrain_epochs=1,
                              ft_epochs=1, n_finetune=(10,))
    store = sims.ChunkStore(tmp_path / "store", "realdata", cfg)
    store.write_config()
    for v, trials in cfg.chunks():
        store.write(v, trials, _realdata_table(cfg, v, trials))
    shown = sims.read_store(store.folder)
    (root / "data_batch_1").write_bytes(b"changed")                     # the data changed since
    assert sims.read_store(store.folder).equals(shown)
    shutil.rmtree(root)                                                 # and then it is gone
    assert sims.read_store(store.folder).equals(shown)
    assert cli.main(["show", str(store.folder)]) == 0
    assert capsys.readouterr().err == ""


def test_show_reads_each_chunk_file_once_and_a_changed_folder_is_read_again(tmp_path, capsys, monkeypatch):
    """``loraml show`` asks for the table and then the records of one folder: each chunk file is
    read (and checksummed) once, not twice. The views' last survey is reused only while the
    folder's files are unchanged: a record rewritten in between is seen by the next read. Rules
    out the double read, and a cache that serves a folder after its files changed."""
    from sims import _store

    cfg = _linear()
    sims.run(cfg, store=tmp_path, progress=False)
    folder = sims.ChunkStore(tmp_path, "linear", cfg).folder
    reads = []
    real = _store._read_chunk
    monkeypatch.setattr(_store, "_read_chunk", lambda path: reads.append(path.name) or real(path))
    monkeypatch.setattr(_store, "_LAST_SURVEY", [None, None])
    assert cli.main(["show", str(folder)]) == 0
    capsys.readouterr()
    files = sorted(p.name for p in folder.glob("chunk-*.parquet"))
    assert sorted(reads) == files                                 # once each
    _rewrite_record(folder / files[0], engine_version=cfg.engine_version - 1)
    records = {r["file"]: r for r in sims.read_records(folder)}
    assert "stale" in records[files[0]]["problem"] and "problem" not in records[files[1]]
