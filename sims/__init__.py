"""loraml.sims: experiments built on ``theory`` — configs in, tidy pandas tables out."""

from ._linear import PRESETS as PRESETS
from ._linear import SWEEPS as SWEEPS
from ._linear import LinearConfig as LinearConfig
from ._linear import linear_sweep as linear_sweep
from ._linear import simulate_chunk as simulate_chunk
from ._run import run as run
from ._shallow import SHALLOW_SWEEPS as SHALLOW_SWEEPS
from ._shallow import ShallowConfig as ShallowConfig
from ._shallow import default_device as default_device
from ._shallow import shallow_sweep as shallow_sweep
from ._shallow import simulate_shallow_chunk as simulate_shallow_chunk
from ._store import read_store as read_store
from ._theory_checks import finetune_rate_table as finetune_rate_table
from ._theory_checks import rate_prediction as rate_prediction
from ._theory_checks import retraining_samples_table as retraining_samples_table

__all__ = [
    "LinearConfig",
    "PRESETS",
    "SHALLOW_SWEEPS",
    "SWEEPS",
    "ShallowConfig",
    "default_device",
    "finetune_rate_table",
    "linear_sweep",
    "rate_prediction",
    "read_store",
    "retraining_samples_table",
    "run",
    "shallow_sweep",
    "simulate_chunk",
    "simulate_shallow_chunk",
]
