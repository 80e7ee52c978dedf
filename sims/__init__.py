"""loraml.sims: experiments built on ``theory`` — configs in, tidy pandas tables out."""

from ._theory_checks import finetune_rate_table as finetune_rate_table
from ._theory_checks import rate_prediction as rate_prediction
from ._theory_checks import retraining_samples_table as retraining_samples_table

__all__ = ["finetune_rate_table", "rate_prediction", "retraining_samples_table"]
