"""theory: the mathematics of low-rank meta-learning on numpy arrays.

Pure functions: no I/O, no plotting, randomness only through an explicit ``rng``. Shapes follow
spec/theory.md §1 (samples as rows; batches of tasks on a leading axis).
"""

from . import landscape as landscape
from . import loraone as loraone
from . import validation as validation
from ._knobs import COVARIANCES as COVARIANCES
from ._knobs import NOISE_LAWS as NOISE_LAWS
from ._knobs import adapter_scales as adapter_scales
from ._knobs import draw_inputs as draw_inputs
from ._knobs import draw_noise as draw_noise
from ._knobs import input_covariance as input_covariance
from ._knobs import rate_prediction_general as rate_prediction_general
from ._lowrank import best_rank_approx as best_rank_approx
from ._lowrank import procrustes_distance as procrustes_distance
from ._lowrank import rate_prediction as rate_prediction
from ._lowrank import reduced_rank_regression as reduced_rank_regression
from ._lowrank import subspace_sin as subspace_sin
from ._lowrank import tail_energy as tail_energy
from ._model import GroundTruth as GroundTruth
from ._model import TaskData as TaskData
from ._model import excess_risk as excess_risk
from ._model import population_risk as population_risk
from ._model import sample_ground_truth as sample_ground_truth
from ._model import sample_tasks as sample_tasks
from .landscape import BatchFit as BatchFit
from .landscape import Classification as Classification
from .landscape import CriticalPoint as CriticalPoint
from .landscape import DescentPath as DescentPath
from .landscape import EscapeDirection as EscapeDirection
from .landscape import Identifiability as Identifiability
from .landscape import IdentifiabilityBatch as IdentifiabilityBatch
from .landscape import LandscapeValue as LandscapeValue
from .landscape import classify_critical_point as classify_critical_point
from .landscape import critical_points_two_tasks as critical_points_two_tasks
from .landscape import find_critical_points as find_critical_points
from .landscape import fit_asymmetric_population as fit_asymmetric_population
from .landscape import fit_population_batch as fit_population_batch
from .landscape import hessian_min_eigenpair as hessian_min_eigenpair
from .landscape import identifiability as identifiability
from .landscape import identifiability_batch as identifiability_batch
from .landscape import landscape_hvp as landscape_hvp
from .landscape import landscape_objective as landscape_objective
from .landscape import loraml_hessian as loraml_hessian
from .landscape import optimal_base as optimal_base
from .landscape import reduced_gradient_descent as reduced_gradient_descent
from .landscape import reduced_hessian as reduced_hessian
from .landscape import reduced_hvp as reduced_hvp
from .landscape import reduced_objective as reduced_objective
from .landscape import sr_saddle as sr_saddle
from .landscape import sr_saddle_min_eigenvalue as sr_saddle_min_eigenvalue
from .landscape import zero_loss_residual as zero_loss_residual
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
from ._retraining import standard_retraining_from_statistics as standard_retraining_from_statistics
from ._retraining import standard_retraining_population as standard_retraining_population
from ._retraining import task_statistics as task_statistics

__all__ = [
    "COVARIANCES",
    "NOISE_LAWS",
    "adapter_scales",
    "draw_inputs",
    "draw_noise",
    "input_covariance",
    "rate_prediction_general",
    "BatchFit",
    "Classification",
    "CriticalPoint",
    "DescentPath",
    "EscapeDirection",
    "GroundTruth",
    "Identifiability",
    "IdentifiabilityBatch",
    "LandscapeValue",
    "LoraMLFit",
    "Objective",
    "PAPER_DEFAULTS",
    "TaskData",
    "best_rank_approx",
    "classify_critical_point",
    "critical_points_two_tasks",
    "excess_risk",
    "find_critical_points",
    "finetune_lora",
    "fit_asymmetric_population",
    "fit_loraml",
    "fit_loraml_from_statistics",
    "fit_loraml_population",
    "fit_population_batch",
    "hessian_min_eigenpair",
    "identifiability",
    "identifiability_batch",
    "landscape",
    "landscape_hvp",
    "landscape_objective",
    "loraml_hessian",
    "loraml_objective",
    "loraone",
    "optimal_base",
    "paper_gd",
    "population_risk",
    "procrustes_distance",
    "rate_prediction",
    "reduced_gradient_descent",
    "reduced_hessian",
    "reduced_hvp",
    "reduced_objective",
    "reduced_rank_regression",
    "sample_ground_truth",
    "sample_tasks",
    "sr_saddle",
    "sr_saddle_min_eigenvalue",
    "standard_retraining",
    "standard_retraining_from_statistics",
    "standard_retraining_population",
    "subspace_sin",
    "tail_energy",
    "task_statistics",
    "validation",
    "zero_loss_residual",
]
