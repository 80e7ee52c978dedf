"""A Parquet results store: one file per chunk under a folder named by the config's hash.

Layout::

    <root>/<kind>-<config key>/config.json
    <root>/<kind>-<config key>/chunk-v<value index>-t<first>-<last>.parquet

Every write goes to a temporary file in the same folder and is renamed into place, so a reader
never sees a half-written chunk, an interrupted sweep (Ctrl-C, a kill) leaves only whole chunks
behind, and two processes writing the same chunk leave one whole copy (the last rename wins; a
chunk's numbers depend only on the config and its trials, so both copies are the same).

Each chunk file carries its **record** in the Parquet key-value metadata (key ``loraml``): the
config, the chunk's value index and trials, the engine and its version, the toolkit's version and
git commit, the versions of Python, numpy, scipy, pandas, pyarrow and torch, the seed, the row
count and a SHA-256 digest of the rows. :meth:`ChunkStore.load` serves a chunk only when the file
parses, the record matches the config and chunk, the engine version is the current one and the
rows hash to the recorded digest; anything else is reported in one line naming the file (logger
``sims``) and the chunk is recomputed.

The views (:func:`read_store`, :func:`read_records`, and through them ``loraml show`` and ``loraml
plot``) rebuild the config from ``config.json`` and check every chunk file with the same function
(:meth:`ChunkStore._check`); files of another chunking of the config (other trial blocks) are
checked the same way and used only where they do not overlap the chunks used (see
:func:`_survey`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import functools
import hashlib
import importlib.metadata
import json
import logging
import os
import platform
import re
import signal
import subprocess
import tempfile
import threading
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from theory.validation import check_int

__all__ = ["ChunkStore", "atomic_write", "folder_problem", "read_store", "read_records"]

log = logging.getLogger("sims")

_RECORD_KEY = b"loraml"
_CHUNK_RE = re.compile(r"chunk-v(\d+)-t(\d+)-(\d+)\.parquet$")


@contextlib.contextmanager
def _deferred_interrupts():
    """Hold Ctrl-C (SIGINT) and SIGTERM back until the block ends, then deliver them, so that an
    interrupt during a write lands after it: the file is whole and no temporary file is left.
    (Only the main thread can set signal handlers; elsewhere this is a no-op.)"""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received = []
    previous = {sig: signal.signal(sig, lambda signum, frame: received.append(signum))
                for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for sig in dict.fromkeys(received):
            signal.raise_signal(sig)


def atomic_write(path, write) -> Path:
    """Write a file atomically: ``write(tmp)`` fills a temporary file beside ``path`` (its folder made
    where missing), which is then renamed into place, so a reader never sees a half-written file
    and an interrupted write leaves the old file (or none) and no temporary file. Ctrl-C and
    SIGTERM arriving meanwhile are delivered after the rename (main thread). The file gets mode 644.

    Parameters
    ----------
    path : str or pathlib.Path
        The file to write.
    write : callable
        Called once with the temporary file's path (a str whose name ends in ``.tmp``: a writer
        that infers the format from the name needs it given).

    Returns
    -------
    pathlib.Path
        ``path``.

    Examples
    --------
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     path = atomic_write(Path(tmp) / "a" / "x.txt", lambda t: Path(t).write_text("hello"))
    ...     path.read_text(), sorted(p.name for p in path.parent.iterdir())
    ('hello', ['x.txt'])
    """
    if not isinstance(path, (str, os.PathLike)) or str(path) == "":
        raise ValueError(f"The 'path' parameter of atomic_write must be a file path. Got {path!r} instead.")
    if not callable(write):
        raise ValueError(f"The 'write' parameter of atomic_write must be callable (it fills the temporary file). "
                         f"Got {write!r} instead.")
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"The 'path' parameter of atomic_write must be a file path; {str(path)!r} is a folder.")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ValueError(f"The 'path' parameter of atomic_write must be a file in a folder that exists or can be "
                         f"made; {str(path)!r}: {err.strerror or err}.") from None
    with _deferred_interrupts():
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        try:
            write(tmp)
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    return path


def folder_problem(path) -> str | None:
    """Why no file could be written into the folder ``path`` (made where missing), or None.

    The check does what a writer will do: it creates the missing folders of the path (or, where
    the folder exists, a probe folder inside it) and removes them again. ``os.access`` is no
    test: it answers yes to root everywhere and knows nothing of read-only or virtual file
    systems (``/proc``).

    Parameters
    ----------
    path : str or pathlib.Path
        The folder that would be written into; it need not exist.

    Returns
    -------
    str or None
        What stops a writer (one clause, for a message), or None when nothing does.

    Examples
    --------
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     folder_problem(Path(tmp) / "a" / "b"), (Path(tmp) / "a").exists()   # made, then removed
    (None, False)
    >>> folder_problem("/proc/loraml/x")
    'cannot create or write a folder there (No such file or directory)'
    """
    if not isinstance(path, (str, os.PathLike)) or str(path) == "":
        raise ValueError(f"The 'path' parameter of folder_problem must be a folder path. Got {path!r} instead.")
    path = Path(path)
    created = []
    try:
        missing, existing = [], path
        while not existing.exists() and existing.parent != existing:
            missing.append(existing)
            existing = existing.parent
        if not existing.is_dir():
            return f"{existing} is a file, not a folder"
        for folder in reversed(missing):
            try:
                folder.mkdir()
                created.append(folder)
            except FileExistsError:      # another process made it meanwhile (two sweeps, one store)
                if not folder.is_dir():
                    raise
        if not created:                  # the folder exists: write a probe into it
            created.append(Path(tempfile.mkdtemp(prefix=".loraml-probe-", dir=path)))
    except OSError as err:
        return f"cannot create or write a folder there ({err.strerror or err})"
    finally:
        for folder in reversed(created):
            with contextlib.suppress(OSError):
                folder.rmdir()
    return None


def check_store_root(root, func: str, name: str = "store") -> Path:
    """The store root as a Path, refused (ValueError naming ``name``) where no folder can be made
    or written (see :func:`folder_problem`)."""
    if not isinstance(root, (str, os.PathLike)) or str(root) == "":
        raise ValueError(f"The {name!r} parameter of {func} must be a folder path. Got {root!r} instead.")
    root = Path(root)
    problem = folder_problem(root)
    if problem is not None:
        raise ValueError(f"The {name!r} parameter of {func} must be a writable folder; {str(root)!r}: {problem}.")
    return root


# ------------------------------------------------------------------------------------------------
# The record: what computed a chunk


@functools.lru_cache(maxsize=1)
def _git_commit() -> tuple[str | None, bool | None]:
    """(commit, dirty) of the checkout this package runs from, or (None, None) outside git."""
    here = Path(__file__).resolve().parent.parent
    if not (here / ".git").exists():
        return None, None
    try:
        head = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10)
        dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None, None
    if head.returncode != 0:
        return None, None
    return head.stdout.strip(), (bool(dirty.stdout.strip()) if dirty.returncode == 0 else None)


def _version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


@functools.lru_cache(maxsize=1)
def environment() -> dict:
    """The toolkit's version and git commit and the versions of the libraries behind the numbers."""
    commit, dirty = _git_commit()
    return {
        "loraml_version": _version("loraml"),
        "git_commit": commit,
        "git_dirty": dirty,
        "versions": {"python": platform.python_version(),
                     **{name: _version(name) for name in ("numpy", "scipy", "pandas", "pyarrow", "torch")}},
    }


def frame_digest(frame: pd.DataFrame) -> str:
    """SHA-256 of a table's column names, dtypes and row values (order-sensitive)."""
    h = hashlib.sha256()
    h.update(json.dumps([[str(c), str(t)] for c, t in frame.dtypes.items()]).encode())
    h.update(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes())
    return h.hexdigest()


def _seed(config):
    """The config's root seed (``seed``), or its list of seeds (``seeds``, real data)."""
    if hasattr(config, "seed"):
        return config.seed
    return [int(s) for s in getattr(config, "seeds", ())]


# ------------------------------------------------------------------------------------------------
# One config's folder


class ChunkStore:
    """The folder of one config's results.

    ``kind`` names the engine (the folder prefix) and ``engine_version`` (default: the config's) its
    current version: a chunk computed by another version is stale and is recomputed, never served.

    Examples
    --------
    >>> import numpy as np
    >>> import sims
    >>> import tempfile
    >>> cfg = sims.linear_sweep('T', values=(3,), runs=1, preset='clean', outer_steps=20, ft_steps=20, N=200, n=40, d=4)
    >>> tmp = tempfile.TemporaryDirectory()
    >>> root = tmp.name
    >>> table = sims.run(cfg, executor='serial', store=root, progress=False)
    >>> store = sims.ChunkStore(root, 'linear', cfg)
    >>> store.has(0, (0,)), store.folder.name == f'linear-{cfg.key}'
    (True, True)
    >>> bool(store.read(0, (0,)).equals(table))
    True
    >>> tmp.cleanup()
    """

    def __init__(self, root, kind: str, config, engine_version: int | None = None):
        func = "ChunkStore"
        root = check_store_root(root, func, "root")
        if not isinstance(kind, str) or not re.fullmatch(r"[a-z][a-z0-9_]*", kind):
            raise ValueError(f"The 'kind' parameter of {func} must be a lowercase engine name such as 'linear'. "
                             f"Got {kind!r} instead.")
        if not (isinstance(getattr(config, "key", None), str) and callable(getattr(config, "to_dict", None))
                and callable(getattr(config, "chunks", None))):
            raise ValueError(f"The 'config' parameter of {func} must be a sweep config (LinearConfig, ShallowConfig, "
                             f"RealDataConfig). Got {type(config).__name__}.")
        self.config = config
        self.kind = kind
        self.engine_version = check_int(config.engine_version if engine_version is None else engine_version,
                                        "engine_version", func, low=0)
        self.folder = root / f"{kind}-{config.key}"

    @classmethod
    def _at(cls, folder: Path, kind: str, config) -> ChunkStore:
        """The store of an existing folder, for reading: the folder where it is (renamed or not)
        and no check that its root is writable (a view may read a read-only store)."""
        store = cls.__new__(cls)
        store.config, store.kind, store.folder = config, kind, Path(folder)
        store.engine_version = config.engine_version
        return store

    def chunk_path(self, value_index: int, trials) -> Path:
        return self.folder / f"chunk-v{value_index:03d}-t{trials[0]:04d}-{trials[-1]:04d}.parquet"

    def has(self, value_index: int, trials) -> bool:
        """Whether a file exists for the chunk (not whether it is valid: see :meth:`load`)."""
        return self.chunk_path(value_index, trials).exists()

    def write_config(self) -> None:
        path = self.folder / "config.json"
        text = json.dumps({**self.config.to_dict(), "_kind": self.kind}, indent=2, sort_keys=True, default=list)
        atomic_write(path, lambda tmp: Path(tmp).write_text(text))

    def record(self, value_index: int, trials, frame: pd.DataFrame, **extra) -> dict:
        """The record stored with a chunk."""
        return {
            "kind": self.kind,
            "engine_version": self.engine_version,
            "config_key": self.config.key,
            "config": json.loads(json.dumps(self.config.to_dict(), default=list)),
            "value_index": int(value_index),
            "trials": [int(t) for t in trials],
            "seed": _seed(self.config),
            "rows": int(len(frame)),
            "digest": frame_digest(frame),
            "written": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            **environment(),
            **extra,
        }

    def write(self, value_index: int, trials, frame: pd.DataFrame, **extra) -> None:
        """Store one chunk atomically, with its record."""
        table = pa.Table.from_pandas(frame, preserve_index=False)
        meta = dict(table.schema.metadata or {})
        meta[_RECORD_KEY] = json.dumps(self.record(value_index, trials, frame, **extra), sort_keys=True).encode()
        table = table.replace_schema_metadata(meta)
        atomic_write(self.chunk_path(value_index, trials), lambda tmp: pq.write_table(table, tmp))

    def load(self, value_index: int, trials) -> pd.DataFrame | None:
        """The stored chunk, or None when it is missing, unreadable, stale or not this chunk.

        Every reason to refuse a file that exists is logged in one line naming the file."""
        path = self.chunk_path(value_index, trials)
        if not path.exists():
            return None
        frame, _, problem = self._check(path, value_index, trials)
        if problem is not None:
            log.warning("%s: %s; recomputing it", path, problem)
            return None
        return frame

    def _check(self, path: Path, value_index: int, trials):
        """The file at ``path`` as chunk (value_index, trials) of this store: ``(frame, record, None)``
        when it parses, its rows match their count and checksum, its record names this kind, config
        key, value index and trials, and its engine version is the current one; otherwise ``(None,
        record or None, what is wrong)``. The one check behind the sweep and the views."""
        frame, record, problem = _read_chunk(path)
        if problem is not None:
            return None, record, problem
        expected = {"config_key": self.config.key, "kind": self.kind, "trials": [int(t) for t in trials],
                    "value_index": int(value_index)}
        wrong = [f"{k} {record.get(k)!r}, not {v!r}" for k, v in expected.items() if record.get(k) != v]
        if wrong:
            return None, record, f"its record belongs to another chunk ({'; '.join(wrong)})"
        if record.get("engine_version") != self.engine_version:
            return None, record, (f"computed by {self.kind} engine version {record.get('engine_version')}, "
                                  f"the current one is {self.engine_version} (stale)")
        return frame, record, None

    def read(self, value_index: int, trials) -> pd.DataFrame:
        frame = self.load(value_index, trials)
        if frame is None:
            raise ValueError(f"no valid stored chunk at {str(self.chunk_path(value_index, trials))!r}.")
        return frame


def _read_chunk(path: Path):
    """(frame, record, None) for a file that parses, carries a record and whose rows match the
    record's count and checksum; else (None, record or None, what is wrong). A file without a
    record (an older loraml's, or not loraml's) is refused: nothing tells which engine version or
    chunk computed it."""
    try:
        table = pq.read_table(path)
        raw = (table.schema.metadata or {}).get(_RECORD_KEY)
        frame = table.to_pandas()
    except Exception as err:  # noqa: BLE001 - whatever a damaged file makes pyarrow raise, it is damaged
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        return None, None, f"not a readable Parquet file ({type(err).__name__}: {reason})"
    if raw is None:
        return None, None, "no record (written before records were kept, or not by loraml)"
    try:
        record = json.loads(raw)
    except ValueError:
        return None, None, "its record is not valid JSON"
    if not isinstance(record, dict):
        return None, None, "its record is not a JSON object"
    if len(frame) != record.get("rows"):
        return None, record, f"{len(frame)} rows where the record says {record.get('rows')}"
    if frame_digest(frame) != record.get("digest"):
        return None, record, "its rows do not match the recorded checksum"
    return frame, record, None


# ------------------------------------------------------------------------------------------------
# Reading a folder


def _check_folder(folder, func: str) -> Path:
    if not isinstance(folder, (str, os.PathLike)):
        raise ValueError(f"The 'folder' parameter of {func} must be a results folder path. Got {folder!r} instead.")
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"The 'folder' parameter of {func} must be an existing results folder. Got {str(folder)!r}.")
    return folder


def _folder_store(folder: Path, func: str) -> ChunkStore:
    """The store of a results folder, its config rebuilt from the folder's config.json (the
    config's fields and ``_kind``): the views check each chunk against what a sweep of that
    config would serve. A real-data config keeps the data manifest recorded there (the files its
    chunks were computed on need not be on this machine)."""
    from ._fingerprint import recorded_manifests
    from ._run import _KINDS          # the config class of each kind (_run imports this module)

    classes = {name: cls for cls, (name, *_) in _KINDS.items()}
    path = folder / "config.json"
    what = f"The 'folder' parameter of {func} must be a results folder written by loraml sweeps"
    if not path.is_file():
        raise ValueError(f"{what} (a config.json beside the chunk files); {str(folder)!r} has no config.json.")
    try:
        fields = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ValueError(f"{what}; {str(path)!r} does not parse ({reason}).") from None
    kind = fields.pop("_kind", None) if isinstance(fields, dict) else None
    if kind not in classes:
        raise ValueError(f"{what}; {str(path)!r} names no known kind ({', '.join(classes)}). Got {kind!r}.")
    try:
        with recorded_manifests():
            config = classes[kind](**fields)
    except (TypeError, ValueError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ValueError(f"{what}; {str(path)!r} is not a {classes[kind].__name__} this loraml can rebuild "
                         f"({reason}).") from None
    return ChunkStore._at(folder, kind, config)


@dataclasses.dataclass
class _Survey:
    """A results folder as the views see it: the chunk files used (path, frame, record; in chunk
    order), those left out (path, record or None, why, whether a sweep recomputes it; in name
    order) and the trials no used file covers (value index, trials)."""

    store: ChunkStore
    used: list
    left_out: list
    missing: list


#: The last survey, under the state of the files it read: ``loraml show`` asks for the table
#: (:func:`read_store`) and then the records (:func:`read_records`) of one folder, which would
#: otherwise read and checksum every chunk file twice.
_LAST_SURVEY: list = [None, None]


def _folder_state(folder: Path) -> tuple:
    """(name, size, mtime_ns) of a folder's config.json and chunk files: what a survey read."""
    out = []
    for path in sorted([folder / "config.json", *folder.glob("chunk-*.parquet")]):
        with contextlib.suppress(OSError):
            st = path.stat()
            out.append((path.name, st.st_size, st.st_mtime_ns))
    return (str(folder.resolve()), tuple(out))


def _survey(folder: Path, func: str) -> _Survey:
    """:func:`_check_survey` of ``folder``, or the last one where the folder's files have not
    changed since (same names, sizes and modification times)."""
    state = _folder_state(folder)
    if _LAST_SURVEY[0] != state:
        _LAST_SURVEY[:] = [None, None]                 # a survey that raises leaves no stale entry
        _LAST_SURVEY[:] = [state, _check_survey(folder, func)]
    return _LAST_SURVEY[1]


def _check_survey(folder: Path, func: str) -> _Survey:
    """Check every chunk file of a results folder as a sweep would, and choose, per swept value,
    the files the views show.

    A file is a candidate when its name is one of the config's chunks, of any chunking (a value
    index and a block of trials within the config's, named as :meth:`ChunkStore.chunk_path` names
    it) and it passes :meth:`ChunkStore._check` for that chunk. Per value, the candidates used do
    not overlap and cover the most trials; among equal covers, the most trials in files of the
    config's current chunking (:meth:`chunks`). Each trial's rows depend only on the config and
    the trial, not on the block it was computed in, so non-overlapping files of two chunkings
    make the table one chunking makes; overlapping ones would count trials twice, and a file that
    fails its check would hide the trials that valid files of another chunking hold."""
    store = _folder_store(folder, func)
    config = store.config
    n_values, runs = len(config.values), config.runs
    current = {(v, t[0], t[-1]) for v, t in config.chunks()}
    candidates: dict[int, list] = {v: [] for v in range(n_values)}
    left_out = []
    for path in sorted(folder.glob("chunk-*.parquet")):
        m = _CHUNK_RE.fullmatch(path.name)
        v, first, last = map(int, m.groups()) if m else (0, 0, -1)
        trials = tuple(range(first, last + 1))
        if not trials or store.chunk_path(v, trials).name != path.name:
            left_out.append((path, None, "not named like a chunk file (chunk-vVVV-tFFFF-LLLL.parquet)", False))
        elif v >= n_values or last >= runs:
            left_out.append((path, None, f"its name says value index {v}, trials {first}-{last}: outside the "
                                         f"config's {n_values} value(s) and {runs} trial(s)", False))
        else:
            frame, record, problem = store._check(path, v, trials)
            if problem is None:
                candidates[v].append((first, last, path, frame, record))
            else:
                left_out.append((path, record, problem, (v, first, last) in current))
    used, missing = [], []
    for v, items in candidates.items():
        chosen = _cover(items, runs, {(first, last) for w, first, last in current if w == v})
        used += [(path, frame, record) for _, _, path, frame, record in chosen]
        for item in items:
            if not any(item is c for c in chosen):
                other = next((c[2].name for c in chosen if c[0] <= item[1] and item[0] <= c[1]), "a file")
                left_out.append((item[2], item[4], f"overlaps {other}, another chunking's file of the same "
                                                   f"trials, which is used", False))
        covered = {t for first, last, *_ in chosen for t in range(first, last + 1)}
        if len(covered) < runs:
            missing.append((v, [t for t in range(runs) if t not in covered]))
    left_out.sort(key=lambda item: item[0].name)
    return _Survey(store, used, left_out, missing)


def _cover(items: list, runs: int, preferred: set) -> list:
    """The non-overlapping ``items`` (first trial, last trial, ...) that cover the most of trials
    0..runs-1 and, among those, the most trials in items whose (first, last) is ``preferred``: a
    dynamic programme over the trials (best[i]: the best choice among items that end before
    trial i).

    >>> _cover([(0, 1, "a"), (0, 0, "b"), (1, 1, "c"), (2, 2, "d")], 3, {(0, 1)})
    [(0, 1, 'a'), (2, 2, 'd')]
    >>> _cover([(0, 0, "b"), (1, 1, "c"), (0, 2, "e")], 3, {(0, 0), (1, 1)})      # the most trials first
    [(0, 2, 'e')]
    """
    ending: dict[int, list] = {}
    for item in items:
        ending.setdefault(item[1], []).append(item)
    best = [((0, 0), ())]
    for i in range(1, runs + 1):
        score, chosen = best[i - 1]
        for item in ending.get(i - 1, ()):
            (covered, kept), before = best[item[0]]
            n = item[1] - item[0] + 1
            option = (covered + n, kept + n * ((item[0], item[1]) in preferred))
            if option > score:
                score, chosen = option, before + (item,)
        best.append((score, chosen))
    return list(best[runs][1])


def _ranges(trials: list[int]) -> str:
    """Trials as ranges: [0, 1, 2, 5] -> '0-2, 5'."""
    out, start = [], None
    for i, t in enumerate(trials):
        if start is None:
            start = t
        if i + 1 == len(trials) or trials[i + 1] != t + 1:
            out.append(f"{start}" if start == t else f"{start}-{t}")
            start = None
    return ", ".join(out)


def read_store(folder) -> pd.DataFrame:
    """Every valid chunk in a store folder (``<root>/<kind>-<key>``), concatenated and sorted.

    Each chunk file is checked exactly as a sweep checks it before serving it (it parses, its rows
    match their recorded count and checksum, its record names this config, kind, value and
    trials, and its engine version is the current one); the config is rebuilt from the folder's
    ``config.json``. Files that several chunkings of the config left are combined without
    counting a trial twice: per swept value the valid, non-overlapping files that cover the most
    trials, the config's current chunking first. Each file left out gets one warning line
    (logger ``sims``) naming it and why, and one line lists the trials no valid file covers. A file
    without a record (written by an older loraml) is left out like any file a sweep would not
    serve: nothing tells which engine version computed it; rerunning the sweep recomputes it.

    Raises
    ------
    ValueError
        The folder is missing, has no readable config.json, or holds no valid chunk.

    Parameters
    ----------
    folder : str or pathlib.Path
        A store folder ``<root>/<kind>-<key>`` (``ChunkStore(root, kind, config).folder``).

    Examples
    --------
    >>> import numpy as np
    >>> import sims
    >>> import tempfile
    >>> cfg = sims.linear_sweep('T', values=(3,), runs=1, preset='clean', outer_steps=20, ft_steps=20, N=200, n=40, d=4)
    >>> tmp = tempfile.TemporaryDirectory()
    >>> root = tmp.name
    >>> table = sims.run(cfg, executor='serial', store=root, progress=False)
    >>> folder = sims.ChunkStore(root, 'linear', cfg).folder
    >>> bool(sims.read_store(folder).equals(table))
    True
    >>> tmp.cleanup()
    """
    folder = _check_folder(folder, "read_store")
    survey = _survey(folder, "read_store")
    for path, _, why, recompute in survey.left_out:
        log.warning("%s: %s; left out%s", path, why, " (rerun the sweep to recompute it)" if recompute else "")
    if survey.missing:
        config = survey.store.config
        vary = getattr(config, "vary_label", config.vary)
        gaps = "; ".join(f"{vary} = {config.values[v]} " + ("(every trial)" if len(trials) == config.runs
                                                             else f"(trials {_ranges(trials)})")
                         for v, trials in survey.missing)
        log.warning("%s: no valid chunk holds %s; shown without them", folder, gaps)
    if not survey.used:
        raise ValueError(f"The 'folder' parameter of read_store must hold valid chunk files; {str(folder)!r} has "
                         f"none{' (each file is named above with the reason)' if survey.left_out else ''}.")
    return _sort(pd.concat([frame for _, frame, _ in survey.used], ignore_index=True))


def read_records(folder) -> list[dict]:
    """The record of every chunk file in a store folder, in file-name order, checked as
    :func:`read_store` checks them (nothing is logged): ``{"file": name, **record}``, with
    ``"problem"`` saying why the views leave the file out where they do (a file without a readable
    record gives ``{"file": name, "problem": ...}``).

    Parameters
    ----------
    folder : str or pathlib.Path
        A store folder ``<root>/<kind>-<key>`` (``ChunkStore(root, kind, config).folder``).

    Examples
    --------
    >>> import numpy as np
    >>> import sims
    >>> import tempfile
    >>> cfg = sims.linear_sweep('T', values=(3,), runs=1, preset='clean', outer_steps=20, ft_steps=20, N=200, n=40, d=4)
    >>> tmp = tempfile.TemporaryDirectory()
    >>> root = tmp.name
    >>> table = sims.run(cfg, executor='serial', store=root, progress=False)
    >>> folder = sims.ChunkStore(root, 'linear', cfg).folder
    >>> records = sims.read_records(folder)
    >>> len(records), records[0]['engine_version'], records[0]['rows'] == len(table), 'problem' in records[0]
    (1, 2, True, False)
    >>> tmp.cleanup()
    """
    folder = _check_folder(folder, "read_records")
    survey = _survey(folder, "read_records")
    out = [(path, {"file": path.name, **record}) for path, _, record in survey.used]
    out += [(path, {"file": path.name, **(record or {}), "problem": why}) for path, record, why, _ in survey.left_out]
    return [r for _, r in sorted(out, key=lambda item: item[0].name)]


def _sort(frame: pd.DataFrame) -> pd.DataFrame:
    keys = [c for c in ("method", "value", "trial", "step") if c in frame.columns]
    return frame.sort_values(keys, kind="stable").reset_index(drop=True)
