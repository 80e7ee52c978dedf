"""loraml.theory: the mathematics of low-rank meta-learning on numpy arrays.

Pure functions: no I/O, no plotting, randomness only through an explicit ``rng``. Shapes follow
spec/theory.md §1 (samples as rows; batches of tasks on a leading axis).
"""

from . import loraone as loraone
from ._lowrank import best_rank_approx as best_rank_approx
from ._lowrank import procrustes_distance as procrustes_distance
from ._lowrank import reduced_rank_regression as reduced_rank_regression
from ._lowrank import subspace_sin as subspace_sin
from ._lowrank import tail_energy as tail_energy
from ._model import GroundTruth as GroundTruth
from ._model import TaskData as TaskData
from ._model import excess_risk as excess_risk
from ._model import population_risk as population_risk
from ._model import sample_ground_truth as sample_ground_truth
from ._model import sample_tasks as sample_tasks
from ._retraining import PAPER_DEFAULTS as PAPER_DEFAULTS
from ._retraining import LoraMLFit as LoraMLFit
from ._retraining import Objective as Objective
from ._retraining import finetune_lora as finetune_lora
from ._retraining import fit_loraml as fit_loraml
from ._retraining import fit_loraml_from_statistics as fit_loraml_from_statistics
from ._retraining import fit_loraml_population as fit_loraml_population
from ._retraining import loraml_objective as loraml_objective
from ._retraining import paper_gd as paper_gd
from ._retraining import standard_retraining as standard_retraining
from ._retraining import standard_retraining_population as standard_retraining_population
from ._retraining import task_statistics as task_statistics

__all__ = [
    "GroundTruth",
    "LoraMLFit",
    "Objective",
    "PAPER_DEFAULTS",
    "TaskData",
    "best_rank_approx",
    "excess_risk",
    "finetune_lora",
    "fit_loraml",
    "fit_loraml_from_statistics",
    "fit_loraml_population",
    "loraml_objective",
    "loraone",
    "paper_gd",
    "population_risk",
    "procrustes_distance",
    "reduced_rank_regression",
    "sample_ground_truth",
    "sample_tasks",
    "standard_retraining",
    "standard_retraining_population",
    "subspace_sin",
    "tail_energy",
    "task_statistics",
]
