"""The linear LoRA-ML model of spec/theory.md §2: ground truth, data, population risk."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ._knobs import COVARIANCES, NOISE_LAWS, adapter_scales, draw_inputs, draw_noise, input_covariance
from ._results import ArrayFields
from .validation import check_array, check_choice, check_entries, check_int, check_real, check_rng

__all__ = [
    "GroundTruth",
    "TaskData",
    "sample_ground_truth",
    "sample_tasks",
    "excess_risk",
    "population_risk",
]


@dataclass(frozen=True, eq=False)
class GroundTruth(ArrayFields):
    """Base ``A_star`` (d, d) and adapters ``U_star`` (T+1, d, k); index T is the test task.

    Task t's parameter is ``A_star + U_star[t] U_star[t]ᵀ`` (the property ``task_weights``).

    Examples
    --------
    >>> truth = sample_ground_truth(d=4, k=1, T=3, rng=0)
    >>> truth.A_star.shape, truth.U_star.shape, (truth.d, truth.k, truth.T)
    ((4, 4), (4, 4, 1), (4, 1, 3))
    """

    A_star: np.ndarray
    U_star: np.ndarray

    def __post_init__(self):
        A = check_array(self.A_star, "A_star", "GroundTruth", ndim=2)
        U = check_array(self.U_star, "U_star", "GroundTruth", ndim=3)
        if A.shape[0] != A.shape[1]:
            raise ValueError(f"The 'A_star' parameter of GroundTruth must be square. Got shape {A.shape}.")
        if U.shape[0] < 2 or U.shape[1] != A.shape[0] or U.shape[2] > U.shape[1]:
            raise ValueError(
                "The 'U_star' parameter of GroundTruth must have shape (T+1, d, k) with T >= 1, "
                f"d = {A.shape[0]} and 1 <= k <= d. Got shape {U.shape}."
            )
        A.setflags(write=False)
        U.setflags(write=False)
        object.__setattr__(self, "A_star", A)
        object.__setattr__(self, "U_star", U)

    @property
    def d(self) -> int:
        return self.A_star.shape[0]

    @property
    def k(self) -> int:
        return self.U_star.shape[2]

    @property
    def T(self) -> int:
        """Number of retraining tasks (the test task is extra)."""
        return self.U_star.shape[0] - 1

    @property
    def R_star(self) -> np.ndarray:
        """R*_t = U*_t U*_tᵀ for t = 1..T+1, shape (T+1, d, d)."""
        return self.U_star @ np.swapaxes(self.U_star, -1, -2)

    @property
    def task_weights(self) -> np.ndarray:
        """A*_t = A* + R*_t for every task, shape (T+1, d, d); index T is the test task."""
        return self.A_star + self.R_star

    @property
    def R_bar(self) -> np.ndarray:
        """R̄* = (1/T) Σ_{t≤T} R*_t over the retraining tasks."""
        return self.R_star[:-1].mean(axis=0)

    @property
    def test_weight(self) -> np.ndarray:
        """A*_{T+1}, the test task's parameter."""
        return self.A_star + self.R_star[-1]


@dataclass(frozen=True, eq=False)
class TaskData(ArrayFields):
    """Samples of the retraining tasks ``X``, ``Y`` (T, N, d) and of the test task (n, d).

    Examples
    --------
    >>> data = sample_tasks(sample_ground_truth(d=4, k=1, T=3, rng=0), N=50, n=20, sigma=0.1, rng=1)
    >>> data.X.shape, data.Y.shape, data.X_test.shape, data.T
    ((3, 50, 4), (3, 50, 4), (20, 4), 3)
    """

    X: np.ndarray
    Y: np.ndarray
    X_test: np.ndarray
    Y_test: np.ndarray

    @property
    def T(self) -> int:
        return self.X.shape[0]

    @property
    def N(self) -> int:
        return self.X.shape[1]

    @property
    def n(self) -> int:
        return self.X_test.shape[0]

    @property
    def d(self) -> int:
        return self.X.shape[2]


def sample_ground_truth(d, k, T, *, rng, symmetric_base: bool = True, scale: float = 1.0,
                        size: int | None = None, norm_ratio: float = 1.0) -> GroundTruth | list[GroundTruth]:
    """Draw a ground truth as the paper's code does (spec §2).

    ``A* = (G + Gᵀ)/2`` with ``G`` iid N(0, 1) when ``symmetric_base`` (else ``A* = G``), and
    ``U*_t`` with iid N(0, scale²) entries for the T retraining tasks and the test task.

    Parameters
    ----------
    d, k, T : int
        Dimension, adapter rank (1 <= k <= d) and number of retraining tasks (T >= 1).
    rng : numpy.random.Generator, int or None
        Source of randomness.
    symmetric_base : bool
        Symmetrise the base, as the paper's code does.
    scale : float
        Standard deviation of the adapter entries.
    size : int >= 1, optional
        Draw ``size`` independent ground truths in one batch (every base first, then every set of
        adapters) and return them as a list; the default draws one and returns it.
    norm_ratio : float > 0
        Task heterogeneity (a knob off the paper's assumptions): retraining adapter t is scaled by
        ``norm_ratio ** (t / (T - 1))`` (from 1 to ``norm_ratio``), the test task's by 1
        (:func:`theory.adapter_scales`). The default 1 is the paper's model and draws the same numbers.

    Returns
    -------
    GroundTruth, or a list of ``size`` of them

    Examples
    --------
    >>> truth = sample_ground_truth(5, 1, 3, rng=0)
    >>> truth.A_star.shape, truth.U_star.shape
    ((5, 5), (4, 5, 1))

    The base is symmetric, and with T = 3 tasks of rank 1 the mean adapter R̄* has rank 3 (P2):

    >>> import numpy as np
    >>> bool(np.allclose(truth.A_star, truth.A_star.T)), int(np.linalg.matrix_rank(truth.R_bar))
    (True, 3)
    """
    func = "sample_ground_truth"
    d = check_int(d, "d", func, low=1)
    k = check_int(k, "k", func, low=1, high=d)
    T = check_int(T, "T", func, low=1)
    scale = check_real(scale, "scale", func, low=0.0, low_open=True)
    norm_ratio = check_real(norm_ratio, "norm_ratio", func, low=0.0, low_open=True, high=1e6)
    scales = adapter_scales(T, norm_ratio) if norm_ratio != 1.0 else None
    if not isinstance(symmetric_base, (bool, np.bool_)):
        raise ValueError(f"The 'symmetric_base' parameter of {func} must be a bool. Got {symmetric_base!r} instead.")
    batch = () if size is None else (check_int(size, "size", func, low=1),)
    rng = check_rng(rng, func)
    check_entries(int(np.prod(batch, dtype=np.int64)) * max(d * d, (T + 1) * d * k), "'size', 'T', 'd' and 'k'", func)
    G = rng.standard_normal(batch + (d, d))
    A = (G + np.swapaxes(G, -1, -2)) / 2 if symmetric_base else G
    U = scale * rng.standard_normal(batch + (T + 1, d, k))
    if scales is not None:
        U = U * scales[:, None, None]
    if size is None:
        return GroundTruth(A_star=A, U_star=U)
    return [GroundTruth(A_star=a, U_star=u) for a, u in zip(A, U)]


def sample_tasks(truth: GroundTruth, N, n, sigma, *, rng, covariance: str = "isotropic", condition: float = 10.0,
                 rho: float = 0.5, noise: str = "gaussian", nu: float = 5.0) -> TaskData:
    """Draw N samples for each retraining task and n for the test task.

    ``x ~ N(0, I_d)`` and ``y = A*_t x + ε`` with ``ε ~ N(0, σ² I_d)``; in arrays
    ``Y = X @ A*_tᵀ + noise`` (samples as rows).

    The knobs off the paper's assumptions (``theory/_knobs.py``; defaults: the paper's model, the
    same draws bit for bit): ``covariance`` ("isotropic", "spiked" with condition number
    ``condition``, "toeplitz" with correlation ``rho``: x ~ N(0, Σ), :func:`theory.input_covariance`)
    and ``noise`` ("gaussian", "student_t" with ``nu`` > 2 degrees of freedom, "heteroscedastic"),
    every law with per-coordinate variance σ².

    Parameters
    ----------
    truth : GroundTruth
        The base and the adapters of the T retraining tasks and of the test task.
    N : int >= 1
        Samples per retraining task.
    n : int >= 1
        Samples of the test task.
    sigma : float >= 0
        Noise standard deviation.
    rng : numpy.random.Generator, int or None
        Source of randomness.
    covariance : {"isotropic", "spiked", "toeplitz"}
        The input covariance Σ (:func:`theory.input_covariance`).
    condition : float >= 1
        Condition number κ of the spiked covariance.
    rho : float in [0, 0.999]
        Correlation ρ of the Toeplitz covariance.
    noise : {"gaussian", "student_t", "heteroscedastic"}
        The noise law (:func:`theory.draw_noise`).
    nu : float > 2
        Degrees of freedom of the Student-t noise.

    Examples
    --------
    >>> truth = sample_ground_truth(4, 1, 2, rng=0)
    >>> data = sample_tasks(truth, N=50, n=20, sigma=0.1, rng=1)
    >>> data.X.shape, data.Y_test.shape
    ((2, 50, 4), (20, 4))
    """
    func = "sample_tasks"
    if not isinstance(truth, GroundTruth):
        raise ValueError(f"The 'truth' parameter of {func} must be a GroundTruth. Got {type(truth).__name__} instead.")
    N = check_int(N, "N", func, low=1)
    n = check_int(n, "n", func, low=1)
    sigma = check_real(sigma, "sigma", func, low=0.0)
    covariance = check_choice(covariance, "covariance", func, COVARIANCES)
    condition = check_real(condition, "condition", func, low=1.0, high=1e12)
    rho = check_real(rho, "rho", func, low=0.0, high=0.999)
    Sigma = input_covariance(truth.d, covariance, condition=condition, rho=rho)
    Sigma = None if covariance == "isotropic" else Sigma
    noise = check_choice(noise, "noise", func, NOISE_LAWS)
    nu = check_real(nu, "nu", func, low=2.0, low_open=True, high=1e6)
    rng = check_rng(rng, func)
    d, T = truth.d, truth.T
    check_entries(max(T * N, n) * d, "'N' and 'n'", func)
    W = truth.task_weights
    X = draw_inputs(rng, (T, N, d), Sigma)
    Y = X @ np.swapaxes(W[:T], -1, -2) + draw_noise(rng, (T, N, d), sigma, noise, X=X, covariance=Sigma, nu=nu)
    X_test = draw_inputs(rng, (n, d), Sigma)
    Y_test = X_test @ W[T].T + draw_noise(rng, (n, d), sigma, noise, X=X_test, covariance=Sigma, nu=nu)
    return TaskData(X=X, Y=Y, X_test=X_test, Y_test=Y_test)


def excess_risk(W, target) -> np.ndarray:
    """‖W − target‖², the excess population risk of W on a task with parameter ``target`` (P1).

    Broadcasts over leading axes.

    Parameters
    ----------
    W : array (..., d, d)
        The weight(s) to score.
    target : array (..., d, d)
        The task's weight A*_t, broadcastable against ``W``.

    Examples
    --------
    >>> float(excess_risk(np.zeros((4, 4)), np.eye(4)))   # ‖I‖² = d
    4.0
    >>> excess_risk(np.zeros((2, 4, 4)), np.eye(4))       # one value per leading index
    array([4., 4.])
    """
    W = check_array(W, "W", "excess_risk", ndim=(2, 3, 4))
    target = check_array(target, "target", "excess_risk", ndim=(2, 3, 4))
    try:
        np.broadcast_shapes(W.shape, target.shape)
    except ValueError:
        raise ValueError(f"The 'W' and 'target' parameters of excess_risk must have broadcastable shapes. "
                         f"Got {W.shape} and {target.shape}.") from None
    diff = W - target
    return np.sum(diff * diff, axis=(-2, -1))


def population_risk(W, target, sigma) -> np.ndarray:
    """E‖y − W x‖² = ‖W − target‖² + d σ² for x ~ N(0, I), y = target·x + N(0, σ² I) (P1).

    Parameters
    ----------
    W : array (..., d, d)
        The weight(s) to score.
    target : array (..., d, d)
        The task's weight A*_t, broadcastable against ``W``.
    sigma : float >= 0
        Noise standard deviation.

    Examples
    --------
    >>> float(population_risk(np.zeros((4, 4)), np.eye(4), sigma=0.1))    # 4 + 4 · 0.01
    4.04
    """
    sigma = check_real(sigma, "sigma", "population_risk", low=0.0, high=1e100)   # sigma**2 stays finite
    W = check_array(W, "W", "population_risk", ndim=(2, 3, 4))
    return excess_risk(W, target) + W.shape[-2] * sigma**2
