"""A Parquet results store: one file per chunk under a folder named by the config's hash.

Layout::

    <root>/<kind>-<config key>/config.json
    <root>/<kind>-<config key>/chunk-v<value index>-t<first>-<last>.parquet

Every write goes to a temporary file in the same folder and is renamed into place, so a reader
never sees a half-written chunk and an interrupted sweep leaves only whole chunks behind.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import pandas as pd

__all__ = ["ChunkStore", "read_store"]


def _atomic_write(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


class ChunkStore:
    """The folder of one config's results."""

    def __init__(self, root, kind: str, config):
        self.config = config
        self.folder = Path(root) / f"{kind}-{config.key}"

    def chunk_path(self, value_index: int, trials) -> Path:
        return self.folder / f"chunk-v{value_index:03d}-t{trials[0]:04d}-{trials[-1]:04d}.parquet"

    def has(self, value_index: int, trials) -> bool:
        return self.chunk_path(value_index, trials).exists()

    def write_config(self) -> None:
        path = self.folder / "config.json"
        text = json.dumps(self.config.to_dict(), indent=2, sort_keys=True, default=list)
        _atomic_write(path, lambda tmp: Path(tmp).write_text(text))

    def write(self, value_index: int, trials, frame: pd.DataFrame) -> None:
        _atomic_write(self.chunk_path(value_index, trials), lambda tmp: frame.to_parquet(tmp, index=False))

    def read(self, value_index: int, trials) -> pd.DataFrame:
        return pd.read_parquet(self.chunk_path(value_index, trials))


def read_store(folder) -> pd.DataFrame:
    """Every chunk in a store folder (``<root>/<kind>-<key>``), concatenated and sorted."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"The 'folder' parameter of read_store must be an existing results folder. Got {str(folder)!r}.")
    files = sorted(folder.glob("chunk-*.parquet"))
    if not files:
        raise ValueError(f"read_store: no chunk files in {str(folder)!r}.")
    frame = pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)
    return _sort(frame)


def _sort(frame: pd.DataFrame) -> pd.DataFrame:
    keys = [c for c in ("method", "value", "trial", "step") if c in frame.columns]
    return frame.sort_values(keys, kind="stable").reset_index(drop=True)
