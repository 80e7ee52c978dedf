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
"""

from __future__ import annotations

import contextlib
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

__all__ = ["ChunkStore", "read_store", "read_records"]

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


def _atomic_write(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
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


def check_store_root(root, func: str, name: str = "store") -> Path:
    """The store root as a Path, refused (ValueError naming ``name``) where no folder can be made."""
    if not isinstance(root, (str, os.PathLike)) or str(root) == "":
        raise ValueError(f"The {name!r} parameter of {func} must be a folder path. Got {root!r} instead.")
    root = Path(root)
    for parent in (root, *root.parents):
        if parent.exists():
            if not parent.is_dir():
                raise ValueError(f"The {name!r} parameter of {func} must be a folder path, but {str(parent)!r} "
                                 f"is a file. Got {str(root)!r}.")
            if not os.access(parent, os.W_OK | os.X_OK):
                raise ValueError(f"The {name!r} parameter of {func} must be a writable folder; {str(parent)!r} "
                                 f"is not writable. Got {str(root)!r}.")
            break
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

    def chunk_path(self, value_index: int, trials) -> Path:
        return self.folder / f"chunk-v{value_index:03d}-t{trials[0]:04d}-{trials[-1]:04d}.parquet"

    def has(self, value_index: int, trials) -> bool:
        """Whether a file exists for the chunk (not whether it is valid: see :meth:`load`)."""
        return self.chunk_path(value_index, trials).exists()

    def write_config(self) -> None:
        path = self.folder / "config.json"
        text = json.dumps({**self.config.to_dict(), "_kind": self.kind}, indent=2, sort_keys=True, default=list)
        _atomic_write(path, lambda tmp: Path(tmp).write_text(text))

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
        _atomic_write(self.chunk_path(value_index, trials), lambda tmp: pq.write_table(table, tmp))

    def load(self, value_index: int, trials) -> pd.DataFrame | None:
        """The stored chunk, or None when it is missing, unreadable, stale or not this chunk.

        Every reason to refuse a file that exists is logged in one line naming the file."""
        path = self.chunk_path(value_index, trials)
        if not path.exists():
            return None
        frame, record, problem = _read_chunk(path)
        if problem is None:
            expected = {"kind": self.kind, "config_key": self.config.key, "value_index": int(value_index),
                        "trials": [int(t) for t in trials]}
            wrong = sorted(k for k, v in expected.items() if record.get(k) != v)
            if wrong:
                problem = f"its record belongs to another chunk ({', '.join(wrong)} differ)"
            elif record.get("engine_version") != self.engine_version:
                problem = (f"computed by {self.kind} engine version {record.get('engine_version')}, "
                           f"the current one is {self.engine_version} (stale)")
        if problem is not None:
            log.warning("%s: %s; recomputing it", path, problem)
            return None
        return frame

    def read(self, value_index: int, trials) -> pd.DataFrame:
        frame = self.load(value_index, trials)
        if frame is None:
            raise ValueError(f"no valid stored chunk at {str(self.chunk_path(value_index, trials))!r}.")
        return frame


def _read_chunk(path: Path, legacy: bool = False):
    """(frame, record, None) for a sound chunk file, else (None, record or None, what is wrong).
    With ``legacy``, a readable file without a record (an older loraml's) gives (frame, None, None)."""
    try:
        table = pq.read_table(path)
        raw = (table.schema.metadata or {}).get(_RECORD_KEY)
        frame = table.to_pandas()
    except Exception as err:  # noqa: BLE001 - whatever a damaged file makes pyarrow raise, it is damaged
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        return None, None, f"not a readable Parquet file ({type(err).__name__}: {reason})"
    if raw is None:
        if legacy:
            return frame, None, None
        return None, None, "no record (written before records were kept, or not by loraml)"
    try:
        record = json.loads(raw)
    except ValueError:
        return None, None, "its record is not valid JSON"
    if len(frame) != record.get("rows"):
        return None, record, f"{len(frame)} rows where the record says {record.get('rows')}"
    if frame_digest(frame) != record.get("digest"):
        return None, record, "its rows do not match the recorded checksum"
    return frame, record, None


# ------------------------------------------------------------------------------------------------
# Reading a folder


def _chunk_files(folder: Path) -> list[Path]:
    """Chunk files with non-overlapping trial ranges: where two chunkings of one config left files
    covering the same trials, the earliest-starting, widest file of each overlap is kept."""
    parsed = []
    for f in folder.glob("chunk-*.parquet"):
        m = _CHUNK_RE.search(f.name)
        if m:
            parsed.append((int(m[1]), int(m[2]), int(m[3]), f))
    parsed.sort(key=lambda p: (p[0], p[1], -p[2]))
    kept, last = [], {}
    for v, first, end, f in parsed:
        if first > last.get(v, -1):
            kept.append(f)
            last[v] = end
    return kept


def _check_folder(folder, func: str) -> Path:
    if not isinstance(folder, (str, os.PathLike)):
        raise ValueError(f"The 'folder' parameter of {func} must be a results folder path. Got {folder!r} instead.")
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"The 'folder' parameter of {func} must be an existing results folder. Got {str(folder)!r}.")
    return folder


def read_store(folder) -> pd.DataFrame:
    """Every sound chunk in a store folder (``<root>/<kind>-<key>``), concatenated and sorted.

    Each trial's rows appear once even where two chunkings of the config left overlapping files;
    a chunk file that does not parse or whose rows fail their checksum is skipped with a one-line
    warning naming it (rerunning the sweep recomputes it). Files an older loraml wrote, without a
    record, are read as they are (nothing to check them against).

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
    frames = []
    for f in _chunk_files(folder):
        frame, _, problem = _read_chunk(f, legacy=True)
        if problem is not None:
            log.warning("%s: %s; skipped (rerun the sweep to recompute it)", f, problem)
        else:
            frames.append(frame)
    if not frames:
        raise ValueError(f"The 'folder' parameter of read_store must hold sound chunk files; "
                         f"{str(folder)!r} has none.")
    return _sort(pd.concat(frames, ignore_index=True))


def read_records(folder) -> list[dict]:
    """The record of every chunk file in a store folder, in file order (unreadable files give
    ``{"file": name, "problem": ...}``).

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
    >>> len(records), records[0]['engine_version'], records[0]['rows'] == len(table)
    (1, 2, True)
    >>> tmp.cleanup()
    """
    folder = _check_folder(folder, "read_records")
    out = []
    for f in _chunk_files(folder):
        try:
            raw = (pq.read_schema(f).metadata or {}).get(_RECORD_KEY)
            record = json.loads(raw) if raw is not None else None
        except (OSError, pa.ArrowException, ValueError) as err:
            out.append({"file": f.name, "problem": str(err).splitlines()[0] if str(err) else type(err).__name__})
            continue
        out.append({"file": f.name, **(record or {"problem": "no record"})})
    return out


def _sort(frame: pd.DataFrame) -> pd.DataFrame:
    keys = [c for c in ("method", "value", "trial", "step") if c in frame.columns]
    return frame.sort_values(keys, kind="stable").reset_index(drop=True)
