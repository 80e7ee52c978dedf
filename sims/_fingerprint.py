"""Fingerprints of the data files an experiment reads: how the data becomes part of a config's key.

A config that reads files (CIFAR-10 batches, PersonaChat text, persona maps, a RoBERTa checkpoint,
scikit-learn's bundled digits) records a **manifest** when it is made: one entry
``(relative name, size, SHA-256, mtime_ns)`` per file. Its **fingerprint**, a digest of the names,
sizes and hashes (not of where the files are, nor of their modification times), enters the
config's key, so other files give another store folder and the same files in another folder the
same one.

Hashing is done once per process and file: hashes are cached per (absolute path, size, mtime_ns).
Checking a manifest against the files (:func:`check_manifest`, before a chunk runs, in whichever
process runs it) reads a file again only where its size or modification time differs from the
recorded ones (another copy, on another machine, or a changed file), the rule make and rsync use.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import json
import os
from pathlib import Path

#: (absolute path, size, mtime_ns) -> SHA-256 hex digest of the file's bytes, for this process.
_HASHES: dict[tuple[str, int, int], str] = {}


def _stamp(path: Path) -> tuple[int, int]:
    st = os.stat(path)
    return int(st.st_size), int(st.st_mtime_ns)


def file_sha256(path) -> tuple[int, str, int]:
    """(size, SHA-256 hex digest, mtime_ns) of one file, hashed once per process while its size
    and modification time stay the same.

    Raises
    ------
    ValueError
        The file changed while it was being read.

    Examples
    --------
    >>> import tempfile
    >>> tmp = tempfile.TemporaryDirectory()          # removed when the example ends
    >>> path = Path(tmp.name) / "a"
    >>> _ = path.write_bytes(b"abc")
    >>> file_sha256(path)[:2]
    (3, 'ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad')
    """
    path = Path(path).resolve()
    size, mtime = _stamp(path)
    key = (str(path), size, mtime)
    if key not in _HASHES:
        with open(path, "rb") as fh:
            digest = hashlib.file_digest(fh, "sha256").hexdigest()
        if _stamp(path) != (size, mtime):
            raise ValueError(f"{path} changed while it was being read; run again when it is written.")
        _HASHES[key] = digest
    return size, _HASHES[key], mtime


def file_manifest(files) -> tuple[tuple[str, int, str, int], ...]:
    """``((name, size, sha256, mtime_ns), ...)`` of ``files``, a sequence of ``(relative name,
    path)``, in the order given."""
    return tuple((name, *file_sha256(path)) for name, path in files)


def manifest_digest(entries) -> str:
    """Digest of a manifest's names, sizes and hashes ('' for no files): what the key holds.

    Examples
    --------
    >>> a = manifest_digest([("x", 3, "ab", 1)])
    >>> a == manifest_digest([("x", 3, "ab", 2)]), a == manifest_digest([("x", 3, "cd", 1)]), manifest_digest(())
    (True, False, '')
    """
    if not entries:
        return ""
    blob = json.dumps([[str(e[0]), int(e[1]), str(e[2])] for e in entries]).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def check_manifest(files, entries, where: str) -> None:
    """Refuse, naming the file, when ``files`` (``[(relative name, path)]``) are not the ones the
    manifest ``entries`` recorded: a file missing, added, or of another size or content. A file
    whose size and mtime_ns are the recorded ones is not read again.

    ``where`` starts the message (the flag and parameter the files came from).

    Raises
    ------
    ValueError
        One line: the file, what changed, and what to do.
    """
    recorded = {str(e[0]): e for e in entries}
    names = [name for name, _ in files]
    gone = [n for n in recorded if n not in names]
    new = [n for n in names if n not in recorded]
    advice = ("the config's key names the files it was made from: make the config again (realdata_sweep) to "
              "run on the files as they are now")
    if gone or new:
        what = f"{gone[0]} is gone" if gone else f"{new[0]} is new"
        raise ValueError(f"{where}: {what} since the config was made; {advice}.")
    for name, path in files:
        entry = recorded[name]
        try:
            if _stamp(Path(path)) == (int(entry[1]), int(entry[3])):
                continue
            size, sha, _ = file_sha256(path)
        except OSError as err:
            raise ValueError(f"{where}: {name} cannot be read ({err.strerror}); {advice}.") from None
        if (size, sha) != (int(entry[1]), str(entry[2])):
            raise ValueError(f"{where}: {name} changed since the config was made (size {entry[1]} -> {size}, "
                             f"SHA-256 {str(entry[2])[:12]}... -> {sha[:12]}...); {advice}.")


#: Set by :func:`recorded_manifests`: configs keep the manifest they are given instead of hashing.
_RECORDED = contextvars.ContextVar("loraml_recorded_manifests", default=False)


@contextlib.contextmanager
def recorded_manifests():
    """Within the block, a config made with a non-empty ``data_files`` keeps that manifest (and the
    fingerprint it gives) instead of fingerprinting the files where its paths point.

    For the views (``loraml show``, ``loraml plot``, :func:`sims.read_store`), which rebuild a stored
    config from its folder's config.json: the folder's chunks were computed on the files recorded
    there, which need not be on this machine, nor unchanged since. Running such a config still checks
    the files first (``check_data``)."""
    token = _RECORDED.set(True)
    try:
        yield
    finally:
        _RECORDED.reset(token)


def manifest_for(files, given) -> tuple:
    """The manifest a config records: ``given`` (as tuples) inside :func:`recorded_manifests` when it
    is non-empty, else a fresh :func:`file_manifest` of ``files()`` (a callable, so that nothing is
    looked up when the recorded one is kept)."""
    if _RECORDED.get() and given:
        try:
            return tuple((str(n), int(size), str(digest), int(mtime)) for n, size, digest, mtime in given)
        except (TypeError, ValueError):
            raise ValueError(f"The 'data_files' parameter must hold (name, size, SHA-256, mtime_ns) entries. "
                             f"Got {given!r}.") from None
    return file_manifest(files())


def record_manifest(config, files, func: str) -> None:
    """Set a frozen config's ``data_files`` (the manifest of ``files()``, a callable giving
    ``[(relative name, path)]``, or nothing where ``files`` is None) and its ``fingerprint``, in
    ``__post_init__``: the data read becomes part of the key. Both fields are computed, never
    given: a value passed in is replaced (a view keeps a recorded manifest: see
    :func:`recorded_manifests`)."""
    for name, kind in (("fingerprint", str), ("data_files", (tuple, list))):
        if not isinstance(getattr(config, name), kind):
            raise ValueError(f"The {name!r} parameter of {func} is computed from the data files when the config is "
                             f"made (leave it out). Got {getattr(config, name)!r}.")
    entries = manifest_for(files, config.data_files) if files is not None else ()
    object.__setattr__(config, "data_files", entries)
    object.__setattr__(config, "fingerprint", manifest_digest(entries))
