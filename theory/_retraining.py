"""Retraining (SR and LoRA-ML) and fine-tuning, on the sufficient statistics of spec §3.

Every finite-sample loss is a quadratic in the task parameter W:
L̂_t(W) = ½ tr(W S_t Wᵀ) − ⟨W, C_t⟩ + ½‖Y_t‖²/N with S_t = X_tᵀX_t/N and C_t = Y_tᵀX_t/N,
so all solvers here work on (S_t, C_t) and cost nothing extra as N grows. The population
objective is the same quadratic with S_t = I and C_t = A*_t.

Internally a quadratic is stored in square-root form, L_t(W) = ½‖W H_t − K_t‖² + e_t with
H_t = S_t^{1/2} and K_t = C_t H_t⁺, so that the loss near a zero-residual optimum is computed
without cancellation and the exact solver can certify machine precision.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ._results import ArrayFields
from ._lowrank import _top_factors, reduced_rank_regression
from ._model import GroundTruth
from .landscape import fit_population_batch, landscape_objective
from .validation import check_array, check_choice, check_int, check_real, check_rng

__all__ = [
    "LoraMLFit",
    "Objective",
    "task_statistics",
    "standard_retraining",
    "standard_retraining_from_statistics",
    "standard_retraining_population",
    "loraml_objective",
    "fit_loraml",
    "fit_loraml_population",
    "fit_loraml_from_statistics",
    "finetune_lora",
    "PAPER_DEFAULTS",
]

#: The authors' alternating gradient descent (spec §3.2); override any of these by keyword.
PAPER_DEFAULTS = {
    "outer_steps": 3000,
    "inner_steps": 10,
    "lr_A": 0.03,
    "lr_U": 0.003,
    "init_scale": 0.1,
}
#: Options of the exact (Levenberg–Marquardt / Gauss–Newton) solver.
EXACT_DEFAULTS = {
    "tol": 1e-13,
    "max_iter": 500,
    "n_starts": 3,
}


@dataclass(frozen=True, eq=False)
class LoraMLFit(ArrayFields):
    """Result of LoRA-ML retraining.

    Attributes
    ----------
    A : (d, d) the retrained base Â.
    U : (T, d, k) the retraining adapters; U_t U_tᵀ is task t's update.
    loss : the objective at (A, U): the mean over tasks of (1/2N)‖Y_t − X_t W_tᵀ‖² for data, or
        ½ Σ_t ‖A + U_tU_tᵀ − A*_t‖² in population.
    n_iter : iterations used (Levenberg–Marquardt steps, or outer steps of the paper's method).
    converged : whether the gradient reached the method's tolerance. Never silently False:
        ``message`` says why.
    grad_norm : Frobenius norm of the objective's gradient at (A, U).
    method : "exact" or "paper".
    message : a sentence on how the solver stopped.

    Examples
    --------
    >>> import numpy as np
    >>> import theory as th
    >>> truth = th.sample_ground_truth(6, 1, 3, rng=0)
    >>> fit = th.fit_loraml_population(truth, 1, rng=1)
    >>> fit.converged, fit.A.shape, fit.U.shape
    (True, (6, 6), (3, 6, 1))
    >>> bool(np.allclose(fit.A, truth.A_star))
    True
    """

    A: np.ndarray
    U: np.ndarray
    loss: float
    n_iter: int
    converged: bool
    grad_norm: float
    method: str
    message: str

    @property
    def R(self) -> np.ndarray:
        """U_t U_tᵀ for every task, (T, d, d)."""
        return self.U @ np.swapaxes(self.U, -1, -2)


@dataclass(frozen=True, eq=False)
class Objective(ArrayFields):
    """Value and gradient of the LoRA-ML objective at (A, U).

    Examples
    --------
    >>> import numpy as np
    >>> import theory as th
    >>> truth = th.sample_ground_truth(6, 1, 3, rng=0)
    >>> obj = th.loraml_objective(truth.A_star, truth.U_star[:-1], truth=truth)
    >>> float(obj.value), obj.grad_A.shape, obj.grad_U.shape
    (0.0, (6, 6), (3, 6, 1))
    """

    value: float
    grad_A: np.ndarray
    grad_U: np.ndarray


# --------------------------------------------------------------------------------------------
# Sufficient statistics


def _check_task_arrays(X, Y, func: str):
    X = check_array(X, "X", func, ndim=3)
    Y = check_array(Y, "Y", func, ndim=3)
    if X.shape != Y.shape:
        raise ValueError(
            f"The 'X' and 'Y' parameters of {func} must have the same shape (T, N, d). "
            f"Got X of shape {X.shape} and Y of shape {Y.shape}."
        )
    if min(X.shape) < 1:
        raise ValueError(f"The 'X' parameter of {func} must have T, N, d >= 1. Got shape {X.shape}.")
    return X, Y


def task_statistics(X, Y):
    """Per-task second moments S_t = X_tᵀX_t/N, C_t = Y_tᵀX_t/N and e_t = ‖Y_t‖²/(2N).

    Returns ``(S, C, e)`` with shapes (T, d, d), (T, d, d), (T,).

    Parameters
    ----------
    X, Y : arrays (T, N, d)
        Samples of the T tasks (rows are samples).

    Examples
    --------
    >>> import numpy as np
    >>> import theory as th
    >>> truth = th.sample_ground_truth(6, 1, 3, rng=0)
    >>> data = th.sample_tasks(truth, N=100, n=20, sigma=0.1, rng=1)
    >>> S, C, e = th.task_statistics(data.X, data.Y)
    >>> S.shape, C.shape, e.shape
    ((3, 6, 6), (3, 6, 6), (3,))
    >>> bool(np.allclose(S[0], data.X[0].T @ data.X[0] / 100))
    True
    """
    X, Y = _check_task_arrays(X, Y, "task_statistics")
    N = X.shape[1]
    Xt = np.swapaxes(X, -1, -2)
    S = Xt @ X / N
    C = np.swapaxes(Xt @ Y, -1, -2) / N
    e = 0.5 * np.einsum("tnd,tnd->t", Y, Y) / N
    return S, C, e


class _Quadratic:
    """Σ_t weight · (½‖W_t H_t − K_t‖² + e_t): the objective of a set of tasks.

    ``weight`` is 1/T for the finite-sample mean and 1 for the population sum.
    """

    def __init__(self, S, C, e, weight):
        self.S, self.C, self.weight = S, C, float(weight)
        lam, Q = np.linalg.eigh(S)
        lam = np.clip(lam, 0.0, None)
        cutoff = lam[..., -1:] * S.shape[-1] * np.finfo(float).eps
        root = np.sqrt(lam)
        root_inv = np.where(lam > cutoff, 1.0 / np.where(lam > cutoff, root, 1.0), 0.0)
        Qt = np.swapaxes(Q, -1, -2)
        self.H = (Q * root[..., None, :]) @ Qt
        self.K = C @ ((Q * root_inv[..., None, :]) @ Qt)
        # Irreducible part: e_t − ½‖K_t‖² ≥ 0 up to rounding.
        self.floor = np.maximum(e - 0.5 * np.sum(self.K * self.K, axis=(-2, -1)), 0.0)

    @classmethod
    def from_data(cls, X, Y):
        S, C, e = task_statistics(X, Y)
        return cls(S, C, e, 1.0 / X.shape[0])

    @classmethod
    def from_truth(cls, truth: GroundTruth, T: int | None = None):
        T = truth.T if T is None else T
        W = truth.task_weights[:T]
        d = truth.d
        S = np.broadcast_to(np.eye(d), (T, d, d)).copy()
        return cls(S, W.copy(), 0.5 * np.sum(W * W, axis=(-2, -1)), 1.0)

    @property
    def T(self):
        return self.S.shape[0]

    @property
    def d(self):
        return self.S.shape[-1]

    def task_params(self, A, U):
        return A + U @ np.swapaxes(U, -1, -2)

    def residual_value(self, A, U) -> float:
        """½ Σ_t ‖W_t H_t − K_t‖², unweighted, without the floor (computed without cancellation)."""
        r = self.task_params(A, U) @ self.H - self.K
        return 0.5 * float(np.sum(r * r))

    def value(self, A, U) -> float:
        return self.weight * (self.residual_value(A, U) + float(np.sum(self.floor)))

    def task_gradients(self, A, U):
        """G_t = W_t S_t − C_t, the gradient of L_t at W_t (unweighted)."""
        return self.task_params(A, U) @ self.S - self.C

    def gradient(self, A, U):
        """Unweighted gradient (Σ_t G_t, (G_t + G_tᵀ) U_t)."""
        G = self.task_gradients(A, U)
        return G.sum(axis=0), (G + np.swapaxes(G, -1, -2)) @ U

    def best_base(self, U, damping: float = 0.0):
        """The A minimising the objective for fixed U: A Σ S_t = Σ (C_t − R_t S_t)."""
        R = U @ np.swapaxes(U, -1, -2)
        rhs = (self.C - R @ self.S).sum(axis=0)
        M = self.S.sum(axis=0) + damping * np.eye(self.d)
        return _right_solve(rhs, M)

    def grad_scale(self, A, U) -> float:
        """Size of the terms that make up the gradient: its achievable accuracy is eps × this."""
        W = self.task_params(A, U)
        nS = np.linalg.norm(self.S, axis=(-2, -1))
        nW = np.linalg.norm(W, axis=(-2, -1))
        nC = np.linalg.norm(self.C, axis=(-2, -1))
        nU = max(1.0, float(np.linalg.norm(U)))
        return float(np.sum(nS * nW + nC)) * nU


def _right_solve(B, M):
    """B M⁻¹ for symmetric M (least-squares / pseudo-inverse if M is singular)."""
    try:
        return np.linalg.solve(M, np.swapaxes(B, -1, -2)).swapaxes(-1, -2)
    except np.linalg.LinAlgError:
        return B @ np.linalg.pinv(M, hermitian=True)


# --------------------------------------------------------------------------------------------
# Standard retraining


def _pooled_least_squares(S, C):
    """(Σ_t C_t)(Σ_t S_t)⁺: the minimum-norm pooled least squares, batched over leading axes.

    The pseudo-inverse comes from an eigendecomposition of the (symmetric PSD) pooled S with the
    usual cutoff λ_max·d·ε, so a rank-deficient design (T·N < d) gives the minimum-norm solution.
    """
    S_sum = S.sum(axis=-3)
    S_sum = (S_sum + np.swapaxes(S_sum, -1, -2)) / 2
    lam, Q = np.linalg.eigh(S_sum)
    cutoff = lam[..., -1:] * S_sum.shape[-1] * np.finfo(float).eps
    inv = np.where(lam > cutoff, 1.0 / np.where(lam > cutoff, lam, 1.0), 0.0)
    return (C.sum(axis=-3) @ (Q * inv[..., None, :])) @ np.swapaxes(Q, -1, -2)


def standard_retraining(X, Y) -> np.ndarray:
    """Pooled least squares over the stacked tasks: Â_SR = (Σ_t C_t)(Σ_t S_t)⁻¹ (spec §3.1).

    Parameters
    ----------
    X, Y : arrays (T, N, d)

    Returns
    -------
    A : (d, d); the minimum-norm solution if the pooled design is rank deficient.

    Examples
    --------
    With noiseless tasks Y_t = X_t A*_tᵀ, SR lands on the mean task parameter A* + R̄* (P2), not A*:

    >>> import numpy as np
    >>> from theory import sample_ground_truth, sample_tasks
    >>> truth = sample_ground_truth(4, 1, 3, rng=0)
    >>> data = sample_tasks(truth, 400, 1, 0.0, rng=1)
    >>> A = standard_retraining(data.X, data.Y)
    >>> bool(np.linalg.norm(A - truth.A_star - truth.R_bar) < 0.2 * np.linalg.norm(truth.R_bar))
    True
    """
    X, Y = _check_task_arrays(X, Y, "standard_retraining")
    S, C, _ = task_statistics(X, Y)
    return _pooled_least_squares(S, C)


def standard_retraining_from_statistics(S, C) -> np.ndarray:
    """:func:`standard_retraining` from per-task statistics S_t = X_tᵀX_t/N, C_t = Y_tᵀX_t/N.

    Batched: S, C (..., T, d, d) give Â_SR (..., d, d). The engines keep only S and C.

    Parameters
    ----------
    S, C : arrays (..., T, d, d)
        The per-task statistics of :func:`task_statistics`.

    Examples
    --------
    >>> import numpy as np
    >>> import theory as th
    >>> truth = th.sample_ground_truth(6, 1, 3, rng=0)
    >>> data = th.sample_tasks(truth, N=100, n=20, sigma=0.1, rng=1)
    >>> S, C, _ = th.task_statistics(data.X, data.Y)
    >>> bool(np.allclose(th.standard_retraining_from_statistics(S, C), th.standard_retraining(data.X, data.Y)))
    True
    """
    func = "standard_retraining_from_statistics"
    S = check_array(S, "S", func, ndim=(3, 4, 5))
    C = check_array(C, "C", func, ndim=S.ndim, shape=S.shape[-3:])
    if S.shape[-1] != S.shape[-2]:
        raise ValueError(f"The 'S' parameter of {func} must hold square (d, d) matrices. Got shape {S.shape}.")
    return _pooled_least_squares(S, C)


def standard_retraining_population(truth: GroundTruth) -> np.ndarray:
    """The population SR solution A* + R̄* (P2).

    Parameters
    ----------
    truth : GroundTruth
        The base and the adapters; SR pools its T retraining tasks.

    Examples
    --------
    >>> import numpy as np
    >>> import theory as th
    >>> truth = th.sample_ground_truth(6, 1, 3, rng=0)
    >>> A_sr = th.standard_retraining_population(truth)
    >>> bool(np.allclose(A_sr, truth.A_star + truth.R_bar))
    True
    >>> int(np.linalg.matrix_rank(A_sr - truth.A_star))      # P2: rank min(Tk, d) = 3
    3
    """
    if not isinstance(truth, GroundTruth):
        raise ValueError(
            "The 'truth' parameter of standard_retraining_population must be a GroundTruth. "
            f"Got {type(truth).__name__} instead."
        )
    d, T = truth.d, truth.T
    return _pooled_least_squares(np.broadcast_to(np.eye(d), (T, d, d)), truth.task_weights[:T])


# --------------------------------------------------------------------------------------------
# The LoRA-ML objective


def loraml_objective(A, U, *, X=None, Y=None, truth=None) -> Objective:
    """Value and gradient of the LoRA-ML objective (spec §3.2).

    With data ``X, Y`` (T, N, d): F̂(A, U) = (1/T) Σ_t (1/2N)‖Y_t − X_t (A + U_tU_tᵀ)ᵀ‖².
    With ``truth``: the population F(A, U) = ½ Σ_t ‖A + U_tU_tᵀ − A*_t‖² over the T retraining
    tasks (a sum, as in the spec, so that ∇²_A F = T·I).

    Parameters
    ----------
    A : (d, d)
    U : (T, d, k)
    X, Y : arrays (T, N, d), or
    truth : GroundTruth

    Returns
    -------
    Objective with ``value``, ``grad_A`` (d, d) and ``grad_U`` (T, d, k).

    Examples
    --------
    >>> import numpy as np
    >>> import theory as th
    >>> truth = th.sample_ground_truth(6, 1, 3, rng=0)
    >>> float(th.loraml_objective(truth.A_star, truth.U_star[:-1], truth=truth).value)   # zero at the truth
    0.0
    >>> A_sr = th.standard_retraining_population(truth)
    >>> bool(th.loraml_objective(A_sr, np.zeros((3, 6, 1)), truth=truth).value > 0)
    True
    """
    func = "loraml_objective"
    if truth is not None:
        if X is not None or Y is not None:
            raise ValueError(f"{func} takes either data (X and Y) or truth, not both.")
        if not isinstance(truth, GroundTruth):
            raise ValueError(f"The 'truth' parameter of {func} must be a GroundTruth. Got {type(truth).__name__}.")
        # The population objective has one owner: theory.landscape (F and its gradient).
        A, U = _check_point(A, U, truth.d, truth.T, func)
        out = landscape_objective(truth, A, U)
        return Objective(value=out.value, grad_A=out.grad_A, grad_U=out.grad_U)
    if X is None or Y is None:
        raise ValueError(f"{func} needs either both 'X' and 'Y' (T, N, d) or 'truth'.")
    X, Y = _check_task_arrays(X, Y, func)
    quad = _Quadratic.from_data(X, Y)
    A, U = _check_point(A, U, quad.d, quad.T, func)
    gA, gU = quad.gradient(A, U)
    w = quad.weight
    return Objective(value=quad.value(A, U), grad_A=w * gA, grad_U=w * gU)


def _check_point(A, U, d: int, T: int, func: str):
    A = check_array(A, "A", func, ndim=2, shape=(d, d))
    U = check_array(U, "U", func, ndim=3)
    if U.shape[0] != T or U.shape[1] != d or not 1 <= U.shape[2] <= d:
        raise ValueError(
            f"The 'U' parameter of {func} must have shape (T, d, k) = ({T}, {d}, k) with 1 <= k <= {d}. "
            f"Got shape {U.shape} instead."
        )
    return A, U


# --------------------------------------------------------------------------------------------
# Fitting LoRA-ML


def fit_loraml(X, Y, k, *, rng, method: str = "exact", **options) -> LoraMLFit:
    """LoRA-ML retraining on data: minimise (1/T) Σ_t L̂_t(A + U_tU_tᵀ) over A and U_t (d, k).

    Parameters
    ----------
    X, Y : arrays (T, N, d)
        Samples of the T retraining tasks (rows are samples).
    k : int in [1, d]
        Adapter rank.
    rng : numpy.random.Generator, int or None
        Randomness of the initialisation.
    method : {"exact", "paper"}
        ``"exact"``: Levenberg–Marquardt (damped Gauss–Newton) on (A, U) with A eliminated by a
        Schur complement, started from a spectral guess (top-k eigenpairs of each task's least
        squares minus the pooled one) and ``n_starts - 1`` random points; the best end point is
        returned. It stops when the gradient is at rounding level (quadratic convergence: a few
        to a few tens of iterations). It is a local method: in population (zero residual) it
        stops early once a start reaches zero loss; on tiny, noisy samples (N close to d)
        spurious local minima can exist, and a larger ``n_starts`` is the remedy. Options:
        ``tol`` (relative gradient tolerance, default 1e-13), ``max_iter`` (500),
        ``n_starts`` (3).
        ``"paper"``: the authors' alternating gradient descent (spec §3.2). Options:
        ``outer_steps`` (3000), ``inner_steps`` (10), ``lr_A`` (0.03), ``lr_U`` (0.003),
        ``init_scale`` (0.1), ``tol`` (gradient tolerance that decides ``converged``, 1e-6).
    **options
        The options of ``method`` named above; any other is refused.

    Returns
    -------
    LoraMLFit

    Raises
    ------
    ValueError
        On bad shapes, non-finite data, k outside [1, d], an unknown method or option.

    Examples
    --------
    >>> import numpy as np
    >>> import theory as th
    >>> truth = th.sample_ground_truth(6, 1, 3, rng=0)
    >>> data = th.sample_tasks(truth, N=2000, n=50, sigma=0.1, rng=1)
    >>> fit = th.fit_loraml(data.X, data.Y, 1, rng=2)
    >>> fit.converged, fit.method
    (True, 'exact')
    >>> bool(np.sum((fit.A - truth.A_star) ** 2) < 1e-2)      # close to A*, unlike SR
    True
    >>> bool(np.sum((th.standard_retraining(data.X, data.Y) - truth.A_star) ** 2) > 1)
    True
    """
    func = "fit_loraml"
    X, Y = _check_task_arrays(X, Y, func)
    k = check_int(k, "k", func, low=1, high=X.shape[-1])
    method = check_choice(method, "method", func, ("exact", "paper"))
    opts = _check_options(options, method, func)
    rng = check_rng(rng, func)
    return _fit(_Quadratic.from_data(X, Y), k, rng, method, opts)


def fit_loraml_from_statistics(S, C, k, *, rng, method: str = "exact", **options) -> LoraMLFit:
    """LoRA-ML retraining from per-task sufficient statistics S_t = X_tᵀX_t/N, C_t = Y_tᵀX_t/N.

    The same objective and minimisers as :func:`fit_loraml`; only the constant differs, since
    the statistics do not carry ‖Y_t‖²: ``loss`` is reported as F̂ − (1/T) Σ_t min_W L̂_t(W),
    the excess over separate per-task least squares (≥ 0). Use this when the data themselves
    are not kept (the batched engines keep only S and C).

    Parameters
    ----------
    S, C : arrays (T, d, d)
    k : int in [1, d]
    rng, method, **options : as in :func:`fit_loraml`.

    Examples
    --------
    >>> import numpy as np
    >>> import theory as th
    >>> truth = th.sample_ground_truth(6, 1, 3, rng=0)
    >>> data = th.sample_tasks(truth, N=500, n=50, sigma=0.1, rng=1)
    >>> S, C, _ = th.task_statistics(data.X, data.Y)
    >>> fit = th.fit_loraml_from_statistics(S, C, 1, rng=2)
    >>> bool(np.allclose(fit.A, th.fit_loraml(data.X, data.Y, 1, rng=2).A))
    True
    """
    func = "fit_loraml_from_statistics"
    S = check_array(S, "S", func, ndim=3)
    C = check_array(C, "C", func, ndim=3, shape=S.shape)
    if S.shape[-1] != S.shape[-2] or not np.allclose(S, np.swapaxes(S, -1, -2), rtol=1e-10, atol=1e-12):
        raise ValueError(f"The 'S' parameter of {func} must be a stack of symmetric (T, d, d) matrices. "
                         f"Got shape {S.shape}.")
    k = check_int(k, "k", func, low=1, high=S.shape[-1])
    method = check_choice(method, "method", func, ("exact", "paper"))
    opts = _check_options(options, method, func)
    rng = check_rng(rng, func)
    # Without ‖Y_t‖² the irreducible part is unknown; e_t = 0 makes the floor 0 (clipped), so the
    # reported loss is F̂ − (1/T) Σ_t min_W L̂_t(W): the excess over per-task least squares.
    quad = _Quadratic(S, C, np.zeros(S.shape[0]), 1.0 / S.shape[0])
    return _fit(quad, k, rng, method, opts)


def fit_loraml_population(truth: GroundTruth, k, *, rng, method: str = "exact", **options) -> LoraMLFit:
    """LoRA-ML retraining on the population objective F(A, U) = ½ Σ_t ‖A + U_tU_tᵀ − A*_t‖².

    Same methods and options as :func:`fit_loraml`; ``k`` may differ from the truth's rank.
    ``method="exact"`` is a batch of one of :func:`theory.landscape.fit_population_batch`
    (Levenberg–Marquardt on the reduced objective, spectral start, then random restarts until a
    start reaches zero loss); ``loss`` is F at the fit.

    Parameters
    ----------
    truth : GroundTruth
        The base and the adapters; the objective sums over its T retraining tasks.
    k : int in [1, d]
        Adapter rank of the fit (it may differ from the truth's).
    rng : numpy.random.Generator, int or None
        Randomness of the starts.
    method : {"exact", "paper"}
        As in :func:`fit_loraml`.
    **options
        The options of ``method``, as in :func:`fit_loraml`.

    Examples
    --------
    Three tasks and d ≥ 3k: the population minimiser is unique and is the truth (P5).

    >>> import numpy as np
    >>> from theory import sample_ground_truth
    >>> truth = sample_ground_truth(6, 2, 3, rng=0)
    >>> fit = fit_loraml_population(truth, 2, rng=0)
    >>> bool(fit.converged), bool(np.linalg.norm(fit.A - truth.A_star) < 1e-9 * np.linalg.norm(truth.A_star))
    (True, True)
    """
    func = "fit_loraml_population"
    if not isinstance(truth, GroundTruth):
        raise ValueError(f"The 'truth' parameter of {func} must be a GroundTruth. Got {type(truth).__name__}.")
    k = check_int(k, "k", func, low=1, high=truth.d)
    method = check_choice(method, "method", func, ("exact", "paper"))
    opts = _check_options(options, method, func)
    rng = check_rng(rng, func)
    if method == "paper":
        return _fit(_Quadratic.from_truth(truth), k, rng, method, opts)
    fit = fit_population_batch(truth.task_weights[None, : truth.T], k, rng=rng, symmetric=True,
                               n_starts=opts["n_starts"], max_iter=opts["max_iter"], tol=opts["tol"])
    converged = bool(fit.converged[0])
    message = (f"Levenberg–Marquardt on the reduced objective: F = {fit.loss[0]:.3g} after {fit.n_iter[0]} "
               f"iterations from {fit.n_starts_used[0]} start(s); "
               + ("converged" if converged else "not converged: try a larger max_iter or n_starts"))
    return LoraMLFit(A=fit.A[0], U=fit.U[0], loss=float(fit.loss[0]), n_iter=int(fit.n_iter[0]),
                     converged=converged, grad_norm=float(fit.grad_norm[0]), method="exact", message=message)


def _check_options(options, method, func):
    defaults = dict(EXACT_DEFAULTS) if method == "exact" else dict(PAPER_DEFAULTS, tol=1e-6)
    unknown = sorted(set(options) - set(defaults))
    if unknown:
        raise ValueError(
            f"{func} with method={method!r} does not take option(s) {', '.join(map(repr, unknown))}; "
            f"allowed: {', '.join(sorted(defaults))}."
        )
    out = dict(defaults, **options)
    if method == "exact":
        out["tol"] = check_real(out["tol"], "tol", func, low=0.0, low_open=True)
        out["max_iter"] = check_int(out["max_iter"], "max_iter", func, low=1)
        out["n_starts"] = check_int(out["n_starts"], "n_starts", func, low=1)
    else:
        for name in ("outer_steps", "inner_steps"):
            out[name] = check_int(out[name], name, func, low=0)
        for name in ("lr_A", "lr_U", "init_scale"):
            out[name] = check_real(out[name], name, func, low=0.0)
        out["tol"] = check_real(out["tol"], "tol", func, low=0.0, low_open=True)
    return out


def _fit(quad: _Quadratic, k: int, rng, method: str, opts) -> LoraMLFit:
    if method == "paper":
        return _fit_paper(quad, k, rng, **opts)
    return _fit_exact(quad, k, rng, **opts)


def _result(quad, A, U, n_iter, method, tol_kind, tol, message=None) -> LoraMLFit:
    gA, gU = quad.gradient(A, U)
    gnorm = quad.weight * float(np.sqrt(np.sum(gA * gA) + np.sum(gU * gU)))
    if tol_kind == "relative":
        converged = gnorm <= tol * quad.weight * quad.grad_scale(A, U)
    else:
        converged = gnorm <= tol
    if message is None:
        message = (
            f"gradient norm {gnorm:.3g} is within tolerance" if converged
            else f"gradient norm {gnorm:.3g} is above tolerance after {n_iter} iterations: "
            "try more iterations (max_iter / outer_steps)"
        )
    return LoraMLFit(A=A, U=U, loss=quad.value(A, U), n_iter=int(n_iter), converged=bool(converged),
                     grad_norm=gnorm, method=method, message=message)


# ---- the authors' alternating gradient descent ------------------------------------------------


def paper_gd(S, C, A, U, *, outer_steps, inner_steps, lr_A, lr_U, n_tasks=None):
    """The paper's alternating gradient descent on sufficient statistics (spec §3.2).

    Each outer step takes ``inner_steps`` steps U_t ← U_t − lr_U (G_t + G_tᵀ) U_t for all t
    (G_t = (A + U_tU_tᵀ) S_t − C_t), then one step A ← A − lr_A (1/T) Σ_t G_t.
    Batched: S, C (..., T, d, d), A (..., d, d), U (..., T, d, k); returns the new (A, U).

    ``n_tasks`` (broadcastable to the batch shape) replaces T in the mean: a problem with fewer
    tasks can be padded with tasks whose S_t, C_t and U_t are zero (their gradients stay zero),
    and zero columns of U stay zero, so problems of different T and k can share one batch.

    The inner step is computed in O(T d² k) rather than O(T d³): with P_t = A S_t − C_t fixed
    while A is, (G_t + G_tᵀ) U_t = (P_t + P_tᵀ) U_t + U_t (U_tᵀ S_t U_t) + S_t U_t (U_tᵀ U_t).

    Parameters
    ----------
    S, C : arrays (..., T, d, d)
        Per-task statistics S_t = X_tᵀX_t/N and C_t = Y_tᵀX_t/N (:func:`task_statistics`).
    A : array (..., d, d)
        The starting base.
    U : array (..., T, d, k)
        The starting adapters.
    outer_steps : int >= 0
        Outer steps (each: ``inner_steps`` adapter steps, then one base step).
    inner_steps : int >= 0
        Adapter steps per outer step.
    lr_A, lr_U : float >= 0
        Step sizes of the base and of the adapters.
    n_tasks : int or array of int >= 1, optional
        The number of real tasks per problem, broadcastable to the batch shape (None: T).

    Examples
    --------
    >>> import numpy as np
    >>> import theory as th
    >>> truth = th.sample_ground_truth(6, 1, 3, rng=0)
    >>> data = th.sample_tasks(truth, N=500, n=50, sigma=0.1, rng=1)
    >>> S, C, _ = th.task_statistics(data.X, data.Y)
    >>> U0 = 0.1 * np.random.default_rng(2).standard_normal((3, 6, 1))
    >>> A, U = th.paper_gd(S, C, np.zeros((6, 6)), U0, outer_steps=300, inner_steps=10, lr_A=0.03, lr_U=0.003)
    >>> A.shape, U.shape
    ((6, 6), (3, 6, 1))
    >>> bool(th.loraml_objective(A, U, X=data.X, Y=data.Y).value < th.loraml_objective(np.zeros((6, 6)), U0, X=data.X, Y=data.Y).value)
    True
    """
    func = "paper_gd"
    S = check_array(S, "S", func, ndim=tuple(range(3, 8)))
    T, d = S.shape[-3], S.shape[-1]
    if S.shape[-2] != d or T < 1 or d < 1:
        raise ValueError(f"The 'S' parameter of {func} must have shape (..., T, d, d) with T, d >= 1. "
                         f"Got shape {S.shape} instead.")
    C = check_array(C, "C", func, ndim=tuple(range(3, 8)), shape=(T, d, d))
    A = np.array(check_array(A, "A", func, ndim=tuple(range(2, 7)), shape=(d, d)))
    U = np.array(check_array(U, "U", func, ndim=tuple(range(3, 8)), shape=(T, d, None)))
    if U.shape[-1] < 1:
        raise ValueError(f"The 'U' parameter of {func} must have shape (..., T, d, k) with k >= 1. "
                         f"Got shape {U.shape} instead.")
    try:
        np.broadcast_shapes(S.shape[:-3], C.shape[:-3], A.shape[:-2], U.shape[:-3])
    except ValueError:
        raise ValueError(f"The 'S', 'C', 'A' and 'U' parameters of {func} must have broadcastable batch shapes. "
                         f"Got {S.shape}, {C.shape}, {A.shape} and {U.shape}.") from None
    outer_steps = check_int(outer_steps, "outer_steps", func, low=0)
    inner_steps = check_int(inner_steps, "inner_steps", func, low=0)
    lr_A = check_real(lr_A, "lr_A", func, low=0.0)
    lr_U = check_real(lr_U, "lr_U", func, low=0.0)
    if n_tasks is not None:
        n_tasks = check_array(n_tasks, "n_tasks", func, ndim=tuple(range(0, 5)))
        if np.any(n_tasks < 1):
            raise ValueError(f"The 'n_tasks' parameter of {func} must be >= 1. Got {n_tasks!r:.60} instead.")
    denom = T if n_tasks is None else np.asarray(n_tasks, dtype=float)[..., None, None]
    swap = lambda M: np.swapaxes(M, -1, -2)  # noqa: E731
    d = S.shape[-1]
    k = U.shape[-1]
    for _ in range(outer_steps):
        P = A[..., None, :, :] @ S - C
        # Three small products per task and step (numpy calls BLAS once per matrix, and that
        # per-call cost dominates at these sizes): [S; P + Pᵀ] U, Uᵀ [U, S U], [U, S U] K.
        SP = np.concatenate([S, P + swap(P)], axis=-2)            # (..., 2d, d)
        for _ in range(inner_steps):
            Z = SP @ U                                              # [S U; (P + Pᵀ) U]
            W = np.concatenate([U, Z[..., :d, :]], axis=-1)         # [U, S U]   (..., d, 2k)
            M = swap(U) @ W                                         # [UᵀU, UᵀSU] (..., k, 2k)
            K = np.concatenate([M[..., k:], M[..., :k]], axis=-2)   # [UᵀSU; UᵀU] (..., 2k, k)
            U = U - lr_U * (Z[..., d:, :] + W @ K)
        G = (A[..., None, :, :] + U @ swap(U)) @ S - C
        A = A - lr_A * (G.sum(axis=-3) / denom)
    return A, U


def _fit_paper(quad, k, rng, *, outer_steps, inner_steps, lr_A, lr_U, init_scale, tol) -> LoraMLFit:
    d, T = quad.d, quad.T
    A0 = np.zeros((d, d))
    U0 = init_scale * rng.standard_normal((T, d, k))
    A, U = paper_gd(quad.S, quad.C, A0, U0, outer_steps=outer_steps, inner_steps=inner_steps,
                    lr_A=lr_A, lr_U=lr_U)
    if not (np.all(np.isfinite(A)) and np.all(np.isfinite(U))):
        return LoraMLFit(A=A, U=U, loss=float("nan"), n_iter=outer_steps, converged=False,
                         grad_norm=float("nan"), method="paper",
                         message="gradient descent diverged: reduce lr_A / lr_U")
    return _result(quad, A, U, outer_steps, "paper", "absolute", tol)


# ---- the exact solver ---------------------------------------------------------------------------


def _spectral_start(quad: _Quadratic, k: int):
    """U_t from the top-k eigenpairs of sym(B_t − Â_SR), B_t the per-task least squares."""
    B = _right_solve(quad.C, quad.S)                 # per-task least squares (pinv if singular)
    return _top_factors(B - _pooled_least_squares(quad.S, quad.C), k)[0]


def _gn_system(quad: _Quadratic, A, U, mu):
    """Damped Gauss–Newton system for dU after eliminating dA (Schur complement).

    Normal equations with damping μ:
      dA (ΣS + μI) + Σ_s dR_s S_s = −Σ_s G_s
      sym2(dA S_t + dR_t S_t) U_t + μ dU_t = −sym2(G_t) U_t,   dR_t = dU_t U_tᵀ + U_t dU_tᵀ,
    with sym2(M) = M + Mᵀ. Returns (K, rhs, Minv) with K dU = rhs, dU flattened (T·d·k,).
    """
    S, T, d = quad.S, quad.T, quad.d
    k = U.shape[-1]
    m = d * k
    Minv = np.linalg.inv(S.sum(axis=0) + mu * np.eye(d))
    G = quad.task_gradients(A, U)
    gA = G.sum(axis=0)
    Ut = np.swapaxes(U, -1, -2)
    # Right-hand side: −sym2(G_t − gA Minv S_t) U_t
    Z0 = G - (gA @ Minv) @ S
    rhs = -((Z0 + np.swapaxes(Z0, -1, -2)) @ U).reshape(-1)
    E = np.eye(m).reshape(m, d, k)                    # basis of one task's dU
    K = np.empty((T * m, T * m))
    for s in range(T):
        dR = E @ Ut[s] + U[s] @ np.swapaxes(E, -1, -2)  # (m, d, d)
        P = dR @ S[s]                                    # dR_s S_s
        Q = P @ Minv
        Z = -(Q[:, None] @ S[None])                      # (m, T, d, d)
        Z[:, s] += P
        out = (Z + np.swapaxes(Z, -1, -2)) @ U[None]     # (m, T, d, k)
        K[:, s * m:(s + 1) * m] = out.reshape(m, T * m).T
    K = (K + K.T) / 2
    K[np.diag_indices_from(K)] += mu
    return K, rhs, Minv, gA


def _gn_step(quad, A, U, mu):
    K, rhs, Minv, gA = _gn_system(quad, A, U, mu)
    try:
        L = np.linalg.cholesky(K)
        dU = np.linalg.solve(L.T, np.linalg.solve(L, rhs))
    except np.linalg.LinAlgError:
        dU = np.linalg.lstsq(K, rhs, rcond=None)[0]
    dU = dU.reshape(U.shape)
    dR = dU @ np.swapaxes(U, -1, -2)
    dR = dR + np.swapaxes(dR, -1, -2)
    dA = -(gA + (dR @ quad.S).sum(axis=0)) @ Minv
    return dA, dU


def _levenberg_marquardt(quad, A, U, *, tol, max_iter):
    """Minimise ½ Σ_t ‖(A + U_tU_tᵀ) H_t − K_t‖² by Levenberg–Marquardt (Nielsen's damping)."""
    f = quad.residual_value(A, U)
    gA, gU = quad.gradient(A, U)
    diag_scale = float(np.trace(quad.S.sum(axis=0))) / quad.d
    mu, nu = 1e-3 * diag_scale, 2.0
    it = 0
    for it in range(1, max_iter + 1):
        gnorm = float(np.sqrt(np.sum(gA * gA) + np.sum(gU * gU)))
        if gnorm <= tol * quad.grad_scale(A, U):
            return A, U, it - 1, "gradient at rounding level"
        dA, dU = _gn_step(quad, A, U, mu)
        step2 = float(np.sum(dA * dA) + np.sum(dU * dU))
        # Predicted decrease of the damped Gauss–Newton model: ½ δᵀ(μδ − g).
        pred = 0.5 * (mu * step2 - float(np.sum(dA * gA) + np.sum(dU * gU)))
        A_new, U_new = A + dA, U + dU
        f_new = quad.residual_value(A_new, U_new)
        if f_new <= f and pred > 0:
            rho = (f - f_new) / pred
            A, U, f = A_new, U_new, f_new
            gA, gU = quad.gradient(A, U)
            mu *= max(1.0 / 3.0, 1.0 - (2.0 * rho - 1.0) ** 3)
            mu = max(mu, 1e-15 * diag_scale)
            nu = 2.0
        else:
            mu *= nu
            nu *= 2.0
            if mu > 1e16 * diag_scale:
                return A, U, it, "no further decrease possible (damping exhausted)"
        if step2 <= (np.finfo(float).eps ** 2) * (float(np.sum(A * A) + np.sum(U * U)) + 1e-300) and f_new <= f:
            return A, U, it, "step at rounding level"
    return A, U, it, f"stopped after max_iter={max_iter} iterations"


def _fit_exact(quad, k, rng, *, tol, max_iter, n_starts) -> LoraMLFit:
    T, d = quad.T, quad.d
    starts = [_spectral_start(quad, k)]
    scale = max(float(np.linalg.norm(starts[0])) / np.sqrt(T * d * k), 1e-3)
    for _ in range(n_starts - 1):
        starts.append(scale * rng.standard_normal((T, d, k)))
    best = None
    for U0 in starts:
        U0 = U0 + 1e-3 * scale * rng.standard_normal(U0.shape) if not np.any(U0) else U0
        A0 = quad.best_base(U0)
        A, U, n_iter, why = _levenberg_marquardt(quad, A0, U0, tol=tol, max_iter=max_iter)
        value = quad.residual_value(A, U)
        if best is None or value < best[0]:
            best = (value, A, U, n_iter, why)
        if value <= 1e-24 * max(1.0, float(np.sum(quad.K * quad.K))):
            break  # zero residual: a global minimum, no need for more starts
    _, A, U, n_iter, why = best
    # The solver aims at ``tol``; a point counts as converged when its gradient is within 1e-9 of
    # the size of the terms that form it. Flat valleys of minimisers (T = 2, or k·(k−1)/2 rotation
    # directions per task) can stop Levenberg–Marquardt at a step of rounding size just short of
    # ``tol``; such a point is still stationary to ~9 digits.
    res = _result(quad, A, U, n_iter, "exact", "relative", max(tol, 1e-9))
    return LoraMLFit(A=res.A, U=res.U, loss=res.loss, n_iter=res.n_iter, converged=res.converged,
                     grad_norm=res.grad_norm, method="exact",
                     message=f"{why}; {res.message}")


# --------------------------------------------------------------------------------------------
# Fine-tuning


def finetune_lora(A_hat, X, Y, rank) -> np.ndarray:
    """The optimal rank-``rank`` update Δ for the test task (Lemma 1 on the residual Y − X Âᵀ).

    Parameters
    ----------
    A_hat : (d, d) retrained base (frozen).
    X, Y : (n, d) test-task samples.
    rank : int in [1, d]

    Returns
    -------
    Delta : (d, d) of rank at most ``rank`` minimising ‖Y − X(Â + Δ)ᵀ‖².

    Examples
    --------
    >>> import numpy as np
    >>> import theory as th
    >>> truth = th.sample_ground_truth(6, 1, 3, rng=0)
    >>> data = th.sample_tasks(truth, N=100, n=200, sigma=0.1, rng=1)
    >>> delta = th.finetune_lora(truth.A_star, data.X_test, data.Y_test, 1)   # from the true base
    >>> int(np.linalg.matrix_rank(delta))
    1
    >>> bool(th.excess_risk(truth.A_star + delta, truth.test_weight) < 0.01)
    True
    """
    func = "finetune_lora"
    A_hat = check_array(A_hat, "A_hat", func, ndim=2)
    X = check_array(X, "X", func, ndim=2)
    Y = check_array(Y, "Y", func, ndim=2, shape=(X.shape[0], None))
    # A mismatch names both arrays: the base may be the wrong one as well as the samples.
    if X.shape[1] != A_hat.shape[1]:
        raise ValueError(f"The 'A_hat' and 'X' parameters of {func} must agree: A_hat (m, d) takes the d columns "
                         f"of X. Got A_hat of shape {A_hat.shape} and X of shape {X.shape}.")
    if Y.shape[1] != A_hat.shape[0]:
        raise ValueError(f"The 'A_hat' and 'Y' parameters of {func} must agree: A_hat (m, d) maps the inputs to "
                         f"the m columns of Y. Got A_hat of shape {A_hat.shape} and Y of shape {Y.shape}.")
    rank = check_int(rank, "rank", func, low=1, high=min(A_hat.shape))
    return reduced_rank_regression(X, Y - X @ A_hat.T, rank)
