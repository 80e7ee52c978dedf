"""What every sweep config shares: chunking, content hash, field documentation."""

from __future__ import annotations

import dataclasses
import hashlib
import json


class SweepConfig:
    """Mixin for frozen sweep dataclasses with fields ``values``, ``chunk_trials`` and a trial count
    ``runs``. Each field carries its documentation in ``metadata["doc"]``."""

    @property
    def block(self) -> int:
        """Trials per chunk."""
        return self.chunk_trials or self.runs

    def chunks(self) -> list[tuple[int, tuple[int, ...]]]:
        """(value index, trial indices) of every chunk, in a fixed order."""
        blocks = [tuple(range(s, min(s + self.block, self.runs))) for s in range(0, self.runs, self.block)]
        return [(i, b) for i in range(len(self.values)) for b in blocks]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @property
    def key(self) -> str:
        """Content hash of everything that determines the numbers (the chunking excluded)."""
        d = self.to_dict()
        d.pop("chunk_trials")
        blob = json.dumps(d, sort_keys=True, default=list).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    @classmethod
    def describe(cls) -> str:
        """One line per field: name, default and what it means."""
        lines = []
        for f in dataclasses.fields(cls):
            default = "" if f.default is dataclasses.MISSING else f" (default {f.default!r})"
            lines.append(f"{f.name}{default}: {f.metadata.get('doc', '')}")
        return "\n".join(lines)
