"""Landscape of the population LoRA-ML objective (spec P5, P7–P9).

Two objectives over the T retraining tasks of a :class:`~theory.GroundTruth`:

- the population objective F(A, U) = ½ Σ_t ‖A + U_tU_tᵀ − A*_t‖² (a sum, as in
  :func:`theory.loraml_objective`), or with asymmetric adapters F(A, U, V) = ½ Σ_t ‖A + U_tV_tᵀ − A*_t‖²;
- the reduced objective G(U) = min_A F(A, U) = ½ Σ_t ‖D_t − D̄‖², D_t = U_tU_tᵀ − R*_t (or
  U_tV_tᵀ − R*_t), attained at A(U) = A* + (1/T) Σ_s (R*_s − U_sU_sᵀ) (:func:`optimal_base`).

For each: value and gradient, Hessian-vector products and dense Hessians (small sizes only: the
Hessian is built column by column from exact Hessian-vector products). Dense Hessians order the
variables as A flattened row-major, then U (T, d, k) flattened, then V (asymmetric only).

On top of these: the SR saddle (P8), the critical points of the two-task, rank-one landscape (P9),
a critical-point finder, the smallest Hessian eigenpair (an escape direction), a classifier, plain
gradient descent on G, a batched exact (Levenberg–Marquardt) population solver for symmetric
and asymmetric adapters, and the identifiability of A* (is it the only zero-loss base?), used
by the recovery phase diagram.

Everything is numpy; randomness comes only from an ``rng`` argument. The package is split along
its seams: ``_objective`` (F, G, their derivatives and the optimal base), ``_critical`` (critical
points and curvature), ``_solver`` (the batched exact solver) and ``_identify``
(identifiability); every public name is importable
from ``theory.landscape`` (and from ``theory``).
"""

from ._objective import LandscapeValue as LandscapeValue
from ._objective import landscape_objective as landscape_objective
from ._objective import landscape_hvp as landscape_hvp
from ._objective import loraml_hessian as loraml_hessian
from ._objective import optimal_base as optimal_base
from ._objective import reduced_objective as reduced_objective
from ._objective import reduced_hvp as reduced_hvp
from ._objective import reduced_hessian as reduced_hessian
from ._critical import CriticalPoint as CriticalPoint
from ._critical import EscapeDirection as EscapeDirection
from ._critical import Classification as Classification
from ._critical import DescentPath as DescentPath
from ._critical import sr_saddle as sr_saddle
from ._critical import sr_saddle_min_eigenvalue as sr_saddle_min_eigenvalue
from ._critical import critical_points_two_tasks as critical_points_two_tasks
from ._critical import find_critical_points as find_critical_points
from ._critical import hessian_min_eigenpair as hessian_min_eigenpair
from ._critical import classify_critical_point as classify_critical_point
from ._critical import reduced_gradient_descent as reduced_gradient_descent
from ._solver import BatchFit as BatchFit
from ._solver import fit_population_batch as fit_population_batch
from ._solver import fit_asymmetric_population as fit_asymmetric_population
from ._identify import Identifiability as Identifiability
from ._identify import IdentifiabilityBatch as IdentifiabilityBatch
from ._identify import identifiability as identifiability
from ._identify import identifiability_batch as identifiability_batch
from ._identify import zero_loss_residual as zero_loss_residual

__all__ = [
    "BatchFit",
    "Classification",
    "CriticalPoint",
    "DescentPath",
    "EscapeDirection",
    "Identifiability",
    "IdentifiabilityBatch",
    "LandscapeValue",
    "classify_critical_point",
    "critical_points_two_tasks",
    "find_critical_points",
    "fit_asymmetric_population",
    "fit_population_batch",
    "hessian_min_eigenpair",
    "identifiability",
    "identifiability_batch",
    "landscape_hvp",
    "landscape_objective",
    "loraml_hessian",
    "optimal_base",
    "reduced_gradient_descent",
    "reduced_hessian",
    "reduced_hvp",
    "reduced_objective",
    "sr_saddle",
    "sr_saddle_min_eigenvalue",
    "zero_loss_residual",
]
