"""loraml.sims: experiments built on ``theory`` — configs in, tidy pandas tables out."""

from ._linear import PRESETS as PRESETS
from ._linear import SWEEPS as SWEEPS
from ._linear import LinearConfig as LinearConfig
from ._linear import linear_sweep as linear_sweep
from ._linear import simulate_chunk as simulate_chunk
from ._run import run as run
from ._store import read_store as read_store
from ._theory_checks import finetune_rate_table as finetune_rate_table
from ._theory_checks import rate_prediction as rate_prediction
from ._theory_checks import retraining_samples_table as retraining_samples_table

__all__ = [
    "LinearConfig",
    "PRESETS",
    "SWEEPS",
    "finetune_rate_table",
    "linear_sweep",
    "rate_prediction",
    "read_store",
    "retraining_samples_table",
    "run",
    "simulate_chunk",
]
