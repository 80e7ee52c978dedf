"""What every sweep config shares: chunking, content hash, field documentation."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import ClassVar

import numpy as np

from theory.validation import MAX_COUNT, check_int, check_values

#: The most optimisation steps (or epochs) one trial may take, all phases together: 10**7, like the
#: most trials (``theory.validation.MAX_COUNT``), far above every experiment here (43,000 per linear
#: trial, 55,000 per shallow one). A step count beyond it is refused, not run for months.
MAX_STEPS = MAX_COUNT
#: The most trial-steps one sweep may imply (values × trials × steps of one trial): 10**12, about
#: a month of one core at the linear engine's microsecond per trial-step; more would not finish.
MAX_WORK = 10**12


class SweepConfig:
    """Mixin for frozen sweep dataclasses with fields ``values``, ``chunk_trials`` and a trial count
    ``runs``. Each field carries its documentation in ``metadata["doc"]``.

    Before it serves or computes anything, the scheduler asks a config to check that the data
    files it read are still the ones its key names (:meth:`check_data`). Then it asks five things
    about its chunks: the engine's version (``engine_version``, bumped whenever the engine's
    numbers change, so stored chunks of another version are recomputed), a key naming the chunk's
    numbers (:meth:`chunk_key`: equal keys are computed once), an expected cost
    (:meth:`chunk_cost`, for largest-first scheduling), how to relabel a shared chunk
    (:meth:`relabel_chunk`) and which chunks have part of their work in common (:meth:`share_key`)."""

    #: Version of the engine that computes this kind of config; bump it when its numbers change.
    engine_version: ClassVar[int] = 1

    @property
    def block(self) -> int:
        """Trials per chunk."""
        return self.chunk_trials or self.runs

    def chunks(self) -> list[tuple[int, tuple[int, ...]]]:
        """(value index, trial indices) of every chunk, in a fixed order."""
        blocks = [tuple(range(s, min(s + self.block, self.runs))) for s in range(0, self.runs, self.block)]
        return [(i, b) for i in range(len(self.values)) for b in blocks]

    @classmethod
    def check_chunk(cls, config, value_index, trials, func: str) -> tuple[int, tuple[int, ...]]:
        """Refuse a chunk request that is not one of ``config``'s: a config of another class, a
        value index outside ``values`` (negative ones included), or trials that are not a
        non-empty sequence of distinct indices below the trial count. Returns the normalised
        (value index, trials)."""
        if not isinstance(config, cls):
            raise ValueError(f"The 'config' parameter of {func} must be a {cls.__name__}. "
                             f"Got {type(config).__name__} instead.")
        value_index = check_int(value_index, "value_index", func, low=0, high=len(config.values) - 1)
        trials = check_values(trials, "trials", func,
                              lambda t: check_int(t, "trials", func, low=0, high=config.runs - 1))
        if len(set(trials)) != len(trials):
            raise ValueError(f"The 'trials' parameter of {func} must not repeat a trial. Got {trials!r}.")
        return value_index, trials

    @classmethod
    def check_chunks(cls, items, name: str, func: str) -> list[tuple]:
        """Refuse anything but a sequence of ``(config, value_index, trials)`` triples of this class
        (each checked by :meth:`check_chunk`); returns them normalised."""
        if isinstance(items, (str, bytes)) or not hasattr(items, "__iter__"):
            raise ValueError(f"The {name!r} parameter of {func} must be a sequence of (config, value_index, "
                             f"trials). Got {items!r}.")
        checked = []
        for item in items:
            if not (isinstance(item, tuple) and len(item) == 3):
                raise ValueError(f"The {name!r} parameter of {func} must hold (config, value_index, trials) "
                                 f"triples. Got {item!r}.")
            checked.append((item[0], *cls.check_chunk(*item, func)))
        return checked

    def check_data(self) -> None:
        """Raise a ``ValueError`` naming the file when a data file the config fingerprinted when it was
        made has changed since (its key, and so its stored results, name the old contents). By
        default nothing: a config that reads no files."""

    @staticmethod
    def check_steps(steps: int, names: str, formula: str, func: str) -> int:
        """Refuse more than :data:`MAX_STEPS` steps per trial; ``names`` lists the fields that set
        them (e.g. "'retrain_steps' and 'ft_steps'") and ``formula`` how they add up."""
        if steps > MAX_STEPS:
            raise ValueError(f"The {names} parameters of {func} imply {steps:,} steps per trial ({formula}); at "
                             f"most {MAX_STEPS:,} are allowed. Use fewer steps.")
        return steps

    def check_work(self, steps_per_value, names: str, func: str) -> int:
        """Refuse a sweep that implies more than :data:`MAX_WORK` trial-steps: the trials
        (``runs``) times the steps of one trial, summed over the values; ``names`` lists the
        fields that set them."""
        work = self.runs * sum(int(s) for s in steps_per_value)
        if work > MAX_WORK:
            raise ValueError(f"The {names} parameters of {func} imply {work:,} trial-steps ({self.runs:,} trial(s) "
                             f"per value x up to {max(steps_per_value):,} steps per trial, "
                             f"{len(steps_per_value)} value(s)); at most {MAX_WORK:,} are allowed. Use fewer "
                             f"trials, values or steps.")
        return work

    def chunk_key(self, value_index: int, trials) -> str:
        """Content hash of what determines one chunk's numbers. By default the config and the
        chunk, so no two configs share a chunk; an engine whose chunks depend only on the swept
        value's parameters and the trials' streams overrides this to let sweeps share them."""
        blob = json.dumps([self.key, int(value_index), [int(t) for t in trials]]).encode()
        return hashlib.sha256(blob).hexdigest()[:24]

    def chunk_cost(self, value_index: int, trials) -> float:
        """Expected cost of one chunk in rough CPU seconds (only the order matters within a kind;
        across kinds, the estimates should be comparable). By default, one per trial."""
        return float(len(trials))

    def share_key(self, value_index: int, trials) -> str | None:
        """Chunks with equal share keys (not ``None``), of this config or others, have work in
        common that their kind's batch function computes once (e.g. a retraining that two presets
        share): the scheduler sends them to one worker together. By default ``None``: nothing shared."""
        return None

    def relabel_chunk(self, frame, value_index: int):
        """A chunk computed for another config with the same :meth:`chunk_key`, labelled as this
        config's chunk ``value_index`` (the ``vary`` and ``value`` columns)."""
        frame = frame.copy()
        if "vary" in frame.columns:
            frame["vary"] = self.vary
        if "value" in frame.columns:
            frame["value"] = np.asarray(self.values[value_index]).astype(frame["value"].dtype)
        return frame

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
