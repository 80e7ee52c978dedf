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
gradient descent on G, and a batched exact (Levenberg–Marquardt) population solver for symmetric
and asymmetric adapters, used by the recovery phase diagram.

Everything is numpy; randomness comes only from an ``rng`` argument.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.linalg import lapack

from ._results import ArrayFields
from ._model import GroundTruth
from .validation import check_array, check_int, check_real, check_rng

__all__ = [
    "LandscapeValue",
    "CriticalPoint",
    "EscapeDirection",
    "Classification",
    "DescentPath",
    "BatchFit",
    "landscape_objective",
    "landscape_hvp",
    "loraml_hessian",
    "reduced_objective",
    "reduced_hvp",
    "reduced_hessian",
    "optimal_base",
    "sr_saddle",
    "sr_saddle_min_eigenvalue",
    "critical_points_two_tasks",
    "find_critical_points",
    "hessian_min_eigenpair",
    "classify_critical_point",
    "reduced_gradient_descent",
    "fit_population_batch",
    "fit_asymmetric_population",
]


# --------------------------------------------------------------------------------------------
# Results


@dataclass(frozen=True, eq=False)
class LandscapeValue(ArrayFields):
    """Value and gradient of F (or of G, where ``grad_A`` is None).

    ``grad_V`` is None for symmetric adapters.
    """

    value: float
    grad_A: np.ndarray | None
    grad_U: np.ndarray
    grad_V: np.ndarray | None

    @property
    def grad_norm(self) -> float:
        """Frobenius norm of the whole gradient."""
        parts = [g for g in (self.grad_A, self.grad_U, self.grad_V) if g is not None]
        return float(np.sqrt(sum(float(np.sum(g * g)) for g in parts)))


@dataclass(frozen=True, eq=False)
class CriticalPoint(ArrayFields):
    """A point (A, U) of the population objective, with what is known about it.

    Attributes
    ----------
    A : (d, d) base; U : (T, d, k) adapters; V : (T, d, k) or None (symmetric).
    family : short name of the class of critical points ("global minimum", "U = 0",
        "v+ family", "v- family", "kernel family", or "found" for the finder's output).
    label : a readable description with parameters.
    predicted : "global minimum" or "strict saddle", the classification the math predicts
        (None for the finder's output).
    a, b : the scalars of u1 = a v, u2 = b v (NaN where not applicable).
    """

    A: np.ndarray
    U: np.ndarray
    family: str
    label: str
    predicted: str | None = None
    V: np.ndarray | None = None
    a: float = float("nan")
    b: float = float("nan")


@dataclass(frozen=True, eq=False)
class EscapeDirection(ArrayFields):
    """Smallest eigenvalue of a Hessian and its unit eigenvector, split into blocks.

    ``dA`` is None for the reduced objective; ``dV`` is None for symmetric adapters.
    """

    eigenvalue: float
    dA: np.ndarray | None
    dU: np.ndarray
    dV: np.ndarray | None
    eigenvalues: np.ndarray


@dataclass(frozen=True, eq=False)
class Classification(ArrayFields):
    """Outcome of :func:`classify_critical_point`.

    kind : "global minimum" (critical, value within tolerance of the global minimum value),
        "strict saddle" (critical, smallest Hessian eigenvalue below −tol·scale), or "other"
        (not critical, or a critical point whose Hessian is PSD within tolerance but whose
        value is above the minimum: a degenerate or spurious point).
    """

    kind: str
    critical: bool
    value: float
    grad_norm: float
    lambda_min: float
    n_negative: int
    tol: float
    scale: float


@dataclass(frozen=True, eq=False)
class DescentPath(ArrayFields):
    """Gradient descent on G: the end point, the values along the way, the recorded path.

    U : (..., T, d, k) end points; values : (n_record, ...) values of G at the recorded steps;
    steps : (n_record,) the step numbers recorded; path : (n_record, ..., T, d, k) or None.
    """

    U: np.ndarray
    values: np.ndarray
    steps: np.ndarray
    path: np.ndarray | None


@dataclass(frozen=True, eq=False)
class BatchFit(ArrayFields):
    """Result of the batched exact population solver (:func:`fit_population_batch`).

    A : (B, d, d); U, V : (B, T, d, k) (V is U for symmetric adapters); loss : (B,) the value of
    F at (A, U, V) (zero-residual fits reach ~1e-28 relative); grad_norm : (B,);
    n_iter : (B,) Levenberg–Marquardt iterations summed over starts; n_starts_used : (B,);
    converged : (B,) whether the gradient (or the loss) reached tolerance.
    """

    A: np.ndarray
    U: np.ndarray
    V: np.ndarray
    loss: np.ndarray
    grad_norm: np.ndarray
    n_iter: np.ndarray
    n_starts_used: np.ndarray
    converged: np.ndarray
    symmetric: bool


# --------------------------------------------------------------------------------------------
# Validation


def _check_truth(truth, func) -> GroundTruth:
    if not isinstance(truth, GroundTruth):
        raise ValueError(f"The 'truth' parameter of {func} must be a GroundTruth. Got {type(truth).__name__} instead.")
    return truth


def _check_adapters(truth, U, V, func, *, name="U"):
    T, d = truth.T, truth.d
    U = check_array(U, name, func, ndim=3)
    if U.shape[0] != T or U.shape[1] != d or not 1 <= U.shape[2] <= d:
        raise ValueError(
            f"The {name!r} parameter of {func} must have shape (T, d, k) = ({T}, {d}, k) with 1 <= k <= {d}. "
            f"Got shape {U.shape} instead."
        )
    if V is not None:
        vname = "V" if name == "U" else "dV"
        V = check_array(V, vname, func, ndim=3)
        if V.shape != U.shape:
            raise ValueError(
                f"The {vname!r} parameter of {func} must have the shape of {name!r}, {U.shape}. "
                f"Got shape {V.shape} instead."
            )
    return U, V


def _check_base(truth, A, func, name="A"):
    return check_array(A, name, func, ndim=2, shape=(truth.d, truth.d))


def _targets(truth: GroundTruth) -> np.ndarray:
    """A*_t for the T retraining tasks, (T, d, d)."""
    return np.asarray(truth.task_weights[: truth.T])


# --------------------------------------------------------------------------------------------
# Array kernels (broadcast over leading axes)


def _tr(M):
    return np.swapaxes(M, -1, -2)


def _prod(U, V):
    return U @ _tr(U if V is None else V)


def _dprod(U, V, dU, dV):
    """Derivative of U_tV_tᵀ (or U_tU_tᵀ if V is None) along (dU, dV)."""
    if V is None:
        P = dU @ _tr(U)
        return P + _tr(P)
    return dU @ _tr(V) + U @ _tr(dV)


def _pullback(E, U, V):
    """Adjoint of _dprod at (U, V) applied to the residuals E: the gradient blocks."""
    if V is None:
        return (E + _tr(E)) @ U, None
    return E @ V, _tr(E) @ U


def _f_residual(W, A, U, V):
    return A[..., None, :, :] + _prod(U, V) - W


def _f_value_grad(W, A, U, V):
    E = _f_residual(W, A, U, V)
    gU, gV = _pullback(E, U, V)
    return 0.5 * np.sum(E * E, axis=(-3, -2, -1)), E.sum(axis=-3), gU, gV


def _f_hvp(W, A, U, V, dA, dU, dV):
    E = _f_residual(W, A, U, V)
    dE = dA[..., None, :, :] + _dprod(U, V, dU, dV)
    hA = dE.sum(axis=-3)
    hU, hV = _add_curvature(*_pullback(dE, U, V), E, dU, dV, V)
    return hA, hU, hV


def _add_curvature(hU, hV, R, dU, dV, V):
    """Add the second-order term of the adapter product against the residual R to a pulled-back
    HVP: (R + Rᵀ) dU for U Uᵀ; R dV and Rᵀ dU for U Vᵀ."""
    if V is None:
        return hU + (R + _tr(R)) @ dU, hV
    return hU + R @ dV, hV + _tr(R) @ dU


def _center(E):
    return E - E.mean(axis=-3, keepdims=True)


def _g_residual(W, U, V):
    return _center(_prod(U, V) - W)


def _g_value_grad(W, U, V):
    r = _g_residual(W, U, V)
    gU, gV = _pullback(r, U, V)
    return 0.5 * np.sum(r * r, axis=(-3, -2, -1)), gU, gV


def _g_hvp(W, U, V, dU, dV):
    r = _g_residual(W, U, V)
    dr = _center(_dprod(U, V, dU, dV))
    return _add_curvature(*_pullback(dr, U, V), r, dU, dV, V)


def _dense(hvp, shapes):
    """Dense symmetric matrix of the linear map ``hvp`` on blocks of the given shapes."""
    sizes = [int(np.prod(s)) for s in shapes]
    n = sum(sizes)
    basis = np.eye(n)
    blocks, start = [], 0
    for s, m in zip(shapes, sizes):
        blocks.append(basis[:, start:start + m].reshape((n,) + tuple(s)))
        start += m
    cols = hvp(*blocks)
    H = np.concatenate([c.reshape(n, -1) for c in cols if c is not None], axis=1)
    return (H + H.T) / 2


# --------------------------------------------------------------------------------------------
# Public objective functions


def landscape_objective(truth, A, U, *, V=None) -> LandscapeValue:
    """Value and gradient of F(A, U) = ½ Σ_t ‖A + U_tU_tᵀ − A*_t‖² (or with U_tV_tᵀ).

    Parameters
    ----------
    truth : GroundTruth
        Supplies the targets A*_t = A* + R*_t of the T retraining tasks.
    A : (d, d)
    U : (T, d, k)
    V : (T, d, k), optional
        Right factors of asymmetric adapters U_tV_tᵀ; None for symmetric adapters U_tU_tᵀ.

    Returns
    -------
    LandscapeValue
        ``grad_A = Σ_t E_t``, ``grad_U = (E_t + E_tᵀ)U_t`` (symmetric) or ``E_t V_t`` with
        ``grad_V = E_tᵀU_t`` (asymmetric), E_t the residual of task t.

    Examples
    --------
    >>> import numpy as np
    >>> from theory import sample_ground_truth
    >>> truth = sample_ground_truth(3, 1, 2, rng=0)
    >>> out = landscape_objective(truth, truth.A_star, truth.U_star[:2])
    >>> out.value, out.grad_norm
    (0.0, 0.0)
    """
    func = "landscape_objective"
    truth = _check_truth(truth, func)
    A = _check_base(truth, A, func)
    U, V = _check_adapters(truth, U, V, func)
    value, gA, gU, gV = _f_value_grad(_targets(truth), A, U, V)
    return LandscapeValue(value=float(value), grad_A=gA, grad_U=gU, grad_V=gV)


def landscape_hvp(truth, A, U, dA, dU, *, V=None, dV=None):
    """Hessian of F at (A, U[, V]) applied to the direction (dA, dU[, dV]).

    Returns
    -------
    (hA, hU, hV) : arrays shaped like (A, U, V); ``hV`` is None for symmetric adapters.
    """
    func = "landscape_hvp"
    truth = _check_truth(truth, func)
    A = _check_base(truth, A, func)
    U, V = _check_adapters(truth, U, V, func)
    dA = _check_base(truth, dA, func, "dA")
    dU, dV = _check_adapters(truth, dU, dV, func, name="dU")
    if dU.shape != U.shape or (V is None) != (dV is None):
        raise ValueError(f"The 'dU' (and 'dV') parameters of {func} must match 'U' (and 'V'): "
                         f"got dU {dU.shape} for U {U.shape}, dV given: {dV is not None}, V given: {V is not None}.")
    return _f_hvp(_targets(truth), A, U, V, dA, dU, dV)


def loraml_hessian(truth, A, U, *, V=None) -> np.ndarray:
    """Dense Hessian of the population F at (A, U[, V]).

    Variables are ordered as A flattened row-major, then U (T, d, k) flattened, then V for
    asymmetric adapters: the matrix has side d² + T·d·k (or d² + 2·T·d·k). Built from exact
    Hessian-vector products on the standard basis, so meant for small sizes.

    Examples
    --------
    >>> import numpy as np
    >>> from theory import sample_ground_truth
    >>> truth = sample_ground_truth(3, 1, 2, rng=0)
    >>> H = loraml_hessian(truth, truth.A_star, truth.U_star[:2])
    >>> H.shape, bool(np.allclose(H, H.T))
    ((15, 15), True)
    """
    func = "loraml_hessian"
    truth = _check_truth(truth, func)
    A = _check_base(truth, A, func)
    U, V = _check_adapters(truth, U, V, func)
    W = _targets(truth)
    shapes = [A.shape, U.shape] + ([V.shape] if V is not None else [])
    if V is None:
        return _dense(lambda dA, dU: _f_hvp(W, A, U, None, dA, dU, None), shapes)
    return _dense(lambda dA, dU, dV: _f_hvp(W, A, U, V, dA, dU, dV), shapes)


def optimal_base(truth, U, *, V=None) -> np.ndarray:
    """A(U) = A* + (1/T) Σ_s (R*_s − U_sU_sᵀ), the minimiser of F over A for fixed adapters."""
    func = "optimal_base"
    truth = _check_truth(truth, func)
    U, V = _check_adapters(truth, U, V, func)
    return (_targets(truth) - _prod(U, V)).mean(axis=0)


def reduced_objective(truth, U, *, V=None) -> LandscapeValue:
    """Value and gradient of G(U) = ½ Σ_t ‖D_t − D̄‖², D_t = U_tU_tᵀ − R*_t (or U_tV_tᵀ − R*_t).

    G(U) = F(A(U), U) with A(U) from :func:`optimal_base`, and ∇_{U_t} G = 2 (D_t − D̄) U_t
    for symmetric adapters (the centering contributes nothing since Σ_t (D_t − D̄) = 0).
    ``grad_A`` of the result is None.

    Examples
    --------
    >>> import numpy as np
    >>> from theory import sample_ground_truth
    >>> truth = sample_ground_truth(4, 1, 2, rng=1)
    >>> U = np.zeros((2, 4, 1))
    >>> M = truth.R_star[0] - truth.R_star[1]
    >>> bool(np.isclose(reduced_objective(truth, U).value, 0.25 * np.sum(M * M)))
    True
    """
    func = "reduced_objective"
    truth = _check_truth(truth, func)
    U, V = _check_adapters(truth, U, V, func)
    value, gU, gV = _g_value_grad(_targets(truth), U, V)
    return LandscapeValue(value=float(value), grad_A=None, grad_U=gU, grad_V=gV)


def reduced_hvp(truth, U, dU, *, V=None, dV=None):
    """Hessian of G at U[, V] applied to (dU[, dV]); returns (hU, hV), hV None if symmetric."""
    func = "reduced_hvp"
    truth = _check_truth(truth, func)
    U, V = _check_adapters(truth, U, V, func)
    dU, dV = _check_adapters(truth, dU, dV, func, name="dU")
    if dU.shape != U.shape or (V is None) != (dV is None):
        raise ValueError(f"The 'dU' (and 'dV') parameters of {func} must match 'U' (and 'V').")
    return _g_hvp(_targets(truth), U, V, dU, dV)


def reduced_hessian(truth, U, *, V=None) -> np.ndarray:
    """Dense Hessian of G at U[, V]; variables U flattened, then V (asymmetric)."""
    func = "reduced_hessian"
    truth = _check_truth(truth, func)
    U, V = _check_adapters(truth, U, V, func)
    W = _targets(truth)
    if V is None:
        return _dense(lambda dU: _g_hvp(W, U, None, dU, None)[:1], [U.shape])
    return _dense(lambda dU, dV: _g_hvp(W, U, V, dU, dV), [U.shape, V.shape])


# --------------------------------------------------------------------------------------------
# Critical points


def sr_saddle(truth, k=None) -> CriticalPoint:
    """The critical point (A_SR, U = 0) of F, A_SR = A* + R̄* (P8).

    Parameters
    ----------
    truth : GroundTruth
    k : int in [1, d], optional
        Adapter rank of U (zeros); defaults to the truth's rank.

    Examples
    --------
    >>> from theory import sample_ground_truth
    >>> truth = sample_ground_truth(4, 1, 3, rng=0)
    >>> point = sr_saddle(truth)
    >>> landscape_objective(truth, point.A, point.U).grad_norm < 1e-12
    True
    """
    func = "sr_saddle"
    truth = _check_truth(truth, func)
    k = truth.k if k is None else check_int(k, "k", func, low=1, high=truth.d)
    U = np.zeros((truth.T, truth.d, k))
    return CriticalPoint(A=truth.A_star + truth.R_bar, U=U, family="U = 0",
                         label="SR saddle (A* + R̄*, U = 0)", predicted="strict saddle", a=0.0, b=0.0)


def sr_saddle_min_eigenvalue(truth) -> float:
    """P8's prediction of λ_min(∇²F) at the SR saddle: min(T, 2 min_t λ_min(R̄* − R*_t)).

    At U = 0 the Hessian is block diagonal: T·I on A, and 2(R̄* − R*_t) acting on each column of
    U_t (the residual of task t at A_SR is R̄* − R*_t and the A–U coupling vanishes).
    """
    truth = _check_truth(truth, "sr_saddle_min_eigenvalue")
    R = truth.R_star[: truth.T]
    lam = np.linalg.eigvalsh(truth.R_bar[None] - R)[:, 0]
    return float(min(truth.T, 2.0 * lam.min()))


def _two_task_spectrum(truth):
    M = truth.R_star[0] - truth.R_star[1]
    lam, vecs = np.linalg.eigh(M)
    return M, lam, vecs


def critical_points_two_tasks(truth, *, scales=(0.5, 2.0)) -> list[CriticalPoint]:
    """A representative of every class of critical points of F for T = 2, k = 1 (P9).

    With M = R*_1 − R*_2 = μ₊ v₊v₊ᵀ + μ₋ v₋v₋ᵀ (μ₊ > 0 > μ₋), the reduced objective is
    G = ¼‖u₁u₁ᵀ − u₂u₂ᵀ − M‖² and its critical points are exactly (derivation in the module's
    tests and in notebooks/01):

    - global minima, u₁u₁ᵀ − u₂u₂ᵀ = M: (u*₁, u*₂); its image under a hyperbolic rotation
      [u₁ u₂] → [u₁ u₂] Q, Q ∈ O(1, 1); and the spectral one (√μ₊ v₊, √(−μ₋) v₋);
    - u₁ = a v, u₂ = b v with M v = (a² − b²) v:
      v = v₊ with a² − b² = μ₊ (the "v+ family", a hyperbola, unbounded);
      v = v₋ with a² − b² = μ₋ ("v- family", unbounded);
      v ∈ ker M with a = b ("kernel family", including U = 0; unbounded, needs d ≥ 3).

    Linearly independent (u₁, u₂) are critical only if span(u₁, u₂) is M-invariant with M
    indefinite on it, i.e. span(v₊, v₋), which forces a global minimum; so the list is complete
    up to the continuous parameters. Each point's base is A(U) from :func:`optimal_base`.

    Parameters
    ----------
    truth : GroundTruth with T = 2 retraining tasks and rank k = 1.
    scales : positive floats
        Values of the hyperbolic parameter s (a = √μ cosh s, b = √μ sinh s) for the v± families
        and of a for the kernel family, beyond the base points s = 0 and a = 0.

    Returns
    -------
    list of CriticalPoint, with ``family``, ``predicted`` and the scalars ``a``, ``b``.
    """
    func = "critical_points_two_tasks"
    truth = _check_truth(truth, func)
    if truth.T != 2 or truth.k != 1:
        raise ValueError(f"The 'truth' parameter of {func} must have T = 2 retraining tasks and rank k = 1. "
                         f"Got T = {truth.T}, k = {truth.k}.")
    scales = [check_real(s, "scales", func, low=0.0, low_open=True) for s in np.atleast_1d(scales)]
    d = truth.d
    M, lam, vecs = _two_task_spectrum(truth)
    mu_p, v_p = lam[-1], vecs[:, -1]
    mu_m, v_m = lam[0], vecs[:, 0]
    points = []

    def add(u1, u2, family, label, predicted, a=float("nan"), b=float("nan")):
        U = np.stack([np.asarray(u1, float), np.asarray(u2, float)])[..., None]
        points.append(CriticalPoint(A=optimal_base(truth, U), U=U, family=family, label=label,
                                    predicted=predicted, a=float(a), b=float(b)))

    u1s, u2s = truth.U_star[0, :, 0], truth.U_star[1, :, 0]
    add(u1s, u2s, "global minimum", "global minimum: (u*₁, u*₂)", "global minimum")
    s = scales[0]
    Q = np.array([[np.cosh(s), np.sinh(s)], [np.sinh(s), np.cosh(s)]])
    Wq = np.stack([u1s, u2s], axis=1) @ Q
    add(Wq[:, 0], Wq[:, 1], "global minimum", f"global minimum: [u*₁ u*₂]·Q, Q ∈ O(1,1), s = {s:g}",
        "global minimum")
    add(np.sqrt(mu_p) * v_p, np.sqrt(-mu_m) * v_m, "global minimum", "global minimum: (√μ₊ v₊, √(−μ₋) v₋)",
        "global minimum")
    add(np.zeros(d), np.zeros(d), "U = 0", "SR saddle: U = 0", "strict saddle", 0.0, 0.0)
    for s in [0.0] + scales:
        a, b = np.sqrt(mu_p) * np.cosh(s), np.sqrt(mu_p) * np.sinh(s)
        add(a * v_p, b * v_p, "v+ family", f"u₁ = a v₊, u₂ = b v₊, a² − b² = μ₊ (s = {s:g})", "strict saddle", a, b)
    for s in [0.0] + scales:
        a, b = np.sqrt(-mu_m) * np.sinh(s), np.sqrt(-mu_m) * np.cosh(s)
        add(a * v_m, b * v_m, "v- family", f"u₁ = a v₋, u₂ = b v₋, a² − b² = μ₋ (s = {s:g})", "strict saddle", a, b)
    if d >= 3:
        v0 = vecs[:, 1]  # a unit vector of ker M (eigenvalue 0 up to rounding)
        for a in scales:
            add(a * v0, a * v0, "kernel family", f"u₁ = u₂ = a v, v ∈ ker M (a = {a:g})", "strict saddle", a, a)
    return points


def hessian_min_eigenpair(truth, A, U, *, V=None, reduced=False) -> EscapeDirection:
    """Smallest eigenvalue of the Hessian of F (or of G if ``reduced``) and its eigenvector.

    At a strict saddle the eigenvector is an escape direction: moving along it lowers the
    objective to second order by ½ λ_min t². ``A`` is ignored when ``reduced``.
    """
    func = "hessian_min_eigenpair"
    truth = _check_truth(truth, func)
    U, V = _check_adapters(truth, U, V, func)
    if reduced:
        H = reduced_hessian(truth, U, V=V)
    else:
        A = _check_base(truth, A, func)
        H = loraml_hessian(truth, A, U, V=V)
    lam, vecs = np.linalg.eigh(H)
    x = vecs[:, 0]
    blocks = []
    start = 0
    shapes = ([] if reduced else [(truth.d, truth.d)]) + [U.shape] + ([V.shape] if V is not None else [])
    for s in shapes:
        m = int(np.prod(s))
        blocks.append(x[start:start + m].reshape(s))
        start += m
    if reduced:
        blocks = [None] + blocks
    if V is None:
        blocks.append(None)
    return EscapeDirection(eigenvalue=float(lam[0]), dA=blocks[0], dU=blocks[1], dV=blocks[2], eigenvalues=lam)


def _scale(truth):
    """Size of the problem: Σ_t ‖A*_t‖ (Frobenius), used to make tolerances relative."""
    return float(np.sum(np.linalg.norm(_targets(truth), axis=(-2, -1))))


def classify_critical_point(truth, A, U, *, V=None, tol=1e-8, min_value=0.0) -> Classification:
    """Classify (A, U[, V]) as "global minimum", "strict saddle" or "other".

    With s = Σ_t ‖A*_t‖ + ‖U‖‖V‖ (‖V‖ = ‖U‖ for symmetric adapters), the size of the residuals
    and of the Hessian's entries, and the gradient's size s·(1 + ‖U‖ + ‖V‖):

    - critical if ‖∇F‖ ≤ tol · s · (1 + ‖U‖ + ‖V‖);
    - "global minimum" if critical and F − ``min_value`` ≤ tol · s²  (``min_value`` = 0 is the
      global minimum of the population objective when the adapter rank is at least the truth's);
    - "strict saddle" if critical and λ_min(∇²F) < −tol · s;
    - "other" otherwise (not critical, or critical with a Hessian that is PSD to tolerance at a
      value above the minimum).

    Parameters
    ----------
    tol : float in (0, 1)
        Relative tolerance.
    min_value : float
        The global minimum value of F.
    """
    func = "classify_critical_point"
    truth = _check_truth(truth, func)
    A = _check_base(truth, A, func)
    U, V = _check_adapters(truth, U, V, func)
    tol = check_real(tol, "tol", func, low=0.0, high=1.0, low_open=True)
    min_value = check_real(min_value, "min_value", func, low=0.0)
    out = landscape_objective(truth, A, U, V=V)
    nU = float(np.linalg.norm(U))
    nV = nU if V is None else float(np.linalg.norm(V))
    s = _scale(truth) + nU * nV
    size = 1.0 + nU + (nV if V is not None else 0.0)
    critical = out.grad_norm <= tol * s * size
    lam = np.linalg.eigvalsh(loraml_hessian(truth, A, U, V=V))
    n_neg = int(np.sum(lam < -tol * s))
    if critical and out.value - min_value <= tol * s * s:
        kind = "global minimum"
    elif critical and lam[0] < -tol * s:
        kind = "strict saddle"
    else:
        kind = "other"
    return Classification(kind=kind, critical=bool(critical), value=out.value, grad_norm=out.grad_norm,
                          lambda_min=float(lam[0]), n_negative=n_neg, tol=tol, scale=s)


def find_critical_points(truth, k=None, *, rng, n_starts=20, init_scale=1.0, tol=1e-11,
                         max_iter=200) -> list[CriticalPoint]:
    """Critical points of G (hence of F, with A = A(U)) by minimising ½‖∇G(U)‖² from random starts.

    Levenberg–Marquardt on the square system ∇G(U) = 0 with Jacobian ∇²G (dense, so small sizes):
    a step solves (H² + μI) δ = −H ∇G. Unlike descent on G it converges to saddles as readily as to
    minima. Starts have iid N(0, init_scale² · ‖R̄*‖_op / k) entries.

    Parameters
    ----------
    truth : GroundTruth
    k : int in [1, d], optional
        Adapter rank (default: the truth's).
    rng : numpy.random.Generator, int or None
    n_starts : int >= 1
    init_scale : float > 0
    tol : float > 0
        A start counts as converged when ‖∇G‖ ≤ tol · Σ_t‖A*_t‖ · (1 + ‖U‖).
    max_iter : int >= 1

    Returns
    -------
    list of CriticalPoint (family "found"), one per converged start; starts that stall at a
    non-critical local minimum of ‖∇G‖² are dropped.
    """
    func = "find_critical_points"
    truth = _check_truth(truth, func)
    k = truth.k if k is None else check_int(k, "k", func, low=1, high=truth.d)
    rng = check_rng(rng, func)
    n_starts = check_int(n_starts, "n_starts", func, low=1)
    init_scale = check_real(init_scale, "init_scale", func, low=0.0, low_open=True)
    tol = check_real(tol, "tol", func, low=0.0, low_open=True)
    max_iter = check_int(max_iter, "max_iter", func, low=1)
    W = _targets(truth)
    T, d = truth.T, truth.d
    s = _scale(truth)
    sd = init_scale * np.sqrt(max(np.linalg.eigvalsh(truth.R_bar)[-1], 1e-12) / k)
    out = []
    n = T * d * k
    for _ in range(n_starts):
        U = sd * rng.standard_normal((T, d, k))
        mu = 1e-3 * s
        g = _g_value_grad(W, U, None)[1]
        gn = float(np.linalg.norm(g))
        for _ in range(max_iter):
            if gn <= tol * s * (1.0 + float(np.linalg.norm(U))):
                break
            H = _dense(lambda dU: _g_hvp(W, U, None, dU, None)[:1], [U.shape])
            gv = g.reshape(-1)
            step = np.linalg.solve(H @ H + mu * mu * np.eye(n), -H @ gv).reshape(U.shape)
            U_new = U + step
            g_new = _g_value_grad(W, U_new, None)[1]
            gn_new = float(np.linalg.norm(g_new))
            if gn_new < gn:
                U, g, gn = U_new, g_new, gn_new
                mu = max(mu / 3.0, 1e-12 * s)
            else:
                mu *= 4.0
                if mu > 1e12 * s:
                    break
        if gn <= tol * s * (1.0 + float(np.linalg.norm(U))):
            out.append(CriticalPoint(A=optimal_base(truth, U), U=U, family="found",
                                     label="found by minimising ‖∇G‖²"))
    return out


def reduced_gradient_descent(truth, U0, *, step, n_steps, V0=None, record_every=0) -> DescentPath:
    """Plain gradient descent U ← U − step · ∇G(U) on the reduced objective, batched.

    Parameters
    ----------
    truth : GroundTruth
    U0 : (..., T, d, k)
        Starting points; leading axes are independent runs advanced together.
    step : float > 0
    n_steps : int >= 0
    V0 : (..., T, d, k), optional
        Right factors (asymmetric adapters), descended jointly with U.
    record_every : int >= 0
        Record the iterate every this many steps (0: record only the values at start and end).

    Returns
    -------
    DescentPath
    """
    func = "reduced_gradient_descent"
    truth = _check_truth(truth, func)
    U = check_array(U0, "U0", func, ndim=(3, 4, 5), shape=(truth.T, truth.d, None)).copy()
    V = None if V0 is None else check_array(V0, "V0", func, ndim=U.ndim, shape=U.shape[-3:]).copy()
    step = check_real(step, "step", func, low=0.0, low_open=True)
    n_steps = check_int(n_steps, "n_steps", func, low=0)
    record_every = check_int(record_every, "record_every", func, low=0)
    W = _targets(truth)
    vals, steps, path = [], [], []
    every = record_every if record_every else max(n_steps, 1)
    for i in range(n_steps + 1):
        val, gU, gV = _g_value_grad(W, U, V)
        if i % every == 0 or i == n_steps:
            vals.append(val)
            steps.append(i)
            if record_every:
                path.append(U.copy())
        if i == n_steps:
            break
        U = U - step * gU
        if V is not None:
            V = V - step * gV
    return DescentPath(U=U, values=np.array(vals), steps=np.array(steps),
                       path=np.array(path) if record_every else None)


# --------------------------------------------------------------------------------------------
# Batched exact population solver (symmetric or asymmetric adapters)


def _gram(U, V, T):
    """Gauss–Newton matrix JᵀJ of the centred residuals r_t = C(U_tV_tᵀ − W_t), batched (B, m, m).

    With L_t(a, b) = a V_tᵀ + U_t bᵀ, the blocks ⟨L_s(a, b), L_t(c, e)⟩ are
    δ_ij (V_sᵀV_t)_pq (a–c), U_t[i,q] V_s[j,p] (a–e), U_s[j,p] V_t[i,q] (b–c) and δ_ij (U_sᵀU_t)_pq
    (b–e), for a, b indexed (i, p) and c, e indexed (j, q); symmetric adapters (V = U, a = b,
    c = e) add all four. JᵀJ = Σ_st (δ_st − 1/T) L_sᵀL_t. Written block by block into one array
    (the δ_ij blocks on their diagonal only), O(B T² d² k²).
    """
    B, _, d, k = U.shape
    nb = 1 if V is None else 2                      # factor blocks per task: U, or (U, V)
    m1 = nb * d * k
    G = np.zeros((B, T, nb, d, k, T, nb, d, k))

    def outer(X, Y, out):      # out[b,s,i,p,t,j,q] = X[b,t,i,q] · Y[b,s,j,p]
        np.multiply(np.swapaxes(X, 1, 2)[:, None, :, None, :, None, :],
                    np.transpose(Y, (0, 1, 3, 2))[:, :, None, :, None, :, None], out=out)

    def add_kron_eye(X, Y, out):   # out[b,s,i,p,t,j,q] += δ_ij (X_sᵀY_t)_pq
        diagonal = np.einsum("bsiptiq->bsptqi", out)          # writeable view of the i = j entries
        diagonal += np.einsum("bsip,btiq->bsptq", X, Y)[..., None]

    if V is None:
        block = G[:, :, 0, :, :, :, 0]
        outer(U, U, block)
        add_kron_eye(U, U, block)
        G *= 2.0
    else:
        outer(U, V, G[:, :, 0, :, :, :, 1])
        outer(V, U, G[:, :, 1, :, :, :, 0])
        add_kron_eye(V, V, G[:, :, 0, :, :, :, 0])
        add_kron_eye(U, U, G[:, :, 1, :, :, :, 1])
    K = G.reshape(B, T, m1, T, m1)                   # K_st = (δ_st − 1/T) G_st, in place
    K *= -1.0 / T
    idx = np.arange(T)
    K[:, idx, :, idx, :] *= 1.0 - T
    return K.reshape(B, T * m1, T * m1)


def _grad_packed(W, U, V):
    val, gU, gV = _g_value_grad(W, U, V)
    if V is None:
        return val, gU.reshape(U.shape[0], -1)
    return val, np.stack([gU, gV], axis=2).reshape(U.shape[0], -1)


def _unpack(x, shape, symmetric):
    B, T, d, k = shape
    if symmetric:
        return x.reshape(shape), None
    y = x.reshape(B, T, 2, d, k)
    return y[:, :, 0], y[:, :, 1]


def _spectral_starts(W, k, symmetric):
    """Top-k eigen (or singular) pairs of the centred targets W_t − W̄ = R*_t − R̄*."""
    D = _center(W)
    if symmetric:
        lam, vecs = np.linalg.eigh((D + _tr(D)) / 2)
        lam, vecs = lam[..., ::-1][..., :k], vecs[..., ::-1][..., :k]
        return vecs * np.sqrt(np.clip(lam, 0.0, None))[..., None, :], None
    Ls, s, Rt = np.linalg.svd(D)
    root = np.sqrt(s[..., :k])
    return Ls[..., :k] * root[..., None, :], _tr(Rt[..., :k, :]) * root[..., None, :]


def _balance(U, V):
    """Balanced factors with the same products: U'V'ᵀ = UVᵀ and U'ᵀU' = V'ᵀV' (diagonal)."""
    Qu, Ru = np.linalg.qr(U)
    Qv, Rv = np.linalg.qr(V)
    X, sv, Yt = np.linalg.svd(Ru @ _tr(Rv))
    root = np.sqrt(sv)[..., None, :]
    return (Qu @ X) * root, (Qv @ _tr(Yt)) * root


def _spd_solve(K, b):
    """Solve K_i x_i = b_i for a batch of symmetric positive definite matrices K (B, n, n).

    Cholesky (LAPACK potrf/potrs) matrix by matrix: numpy has no batched Cholesky solve, and its
    batched LU costs twice the flops (2.2x slower at n = 320, B = 20, measured). Each matrix is
    O(n³) work, so the loop over the batch adds nothing measurable. A matrix that is not
    numerically positive definite falls back to a pseudo-inverse. K is not modified.
    """
    x = np.empty_like(b)
    for i in range(K.shape[0]):
        c, info = lapack.dpotrf(K[i].T, lower=1, clean=0)   # K[i].T: Fortran order, same matrix
        if info == 0:
            x[i], info = lapack.dpotrs(c, b[i], lower=1)
        if info != 0:
            x[i] = np.linalg.pinv(K[i], hermitian=True) @ b[i]
    return x


def _lm_batch(W, U, V, *, max_iter, ftol, gtol):
    """Levenberg–Marquardt on G for a batch; W (B, T, d, d), U/V (B, T, d, k)."""
    symmetric = V is None
    B, T, d, k = U.shape
    shape = U.shape
    x = U.reshape(B, -1) if symmetric else np.stack([U, V], axis=2).reshape(B, -1)
    n = x.shape[1]
    f, g = _grad_packed(W, *_unpack(x, shape, symmetric))
    # Damping μ = θ‖r‖ (Fan and Yuan's rule): quadratic convergence to zero-residual sets even
    # when the minimisers are not isolated (gauge directions, continua of minima); θ follows the
    # ratio of actual to predicted decrease.
    theta = np.full(B, 1e-2)
    mu_floor = 1e-14 * np.sqrt(np.sum(W * W, axis=(-3, -2, -1)) / T) + np.finfo(float).tiny
    x_limit = 1e2 * (np.linalg.norm(x, axis=1) + np.sqrt(np.sum(W * W, axis=(-3, -2, -1))))
    done = np.zeros(B, bool)
    n_iter = np.zeros(B, int)
    # Gauss–Newton matrices, kept while x does not move: a rejected step only changes μ, so
    # about a third of the assemblies are saved on hard instances.
    gram = np.empty((B, n, n))
    stale = np.ones(B, bool)
    diag = np.arange(n)
    for _ in range(max_iter):
        gnorm = np.linalg.norm(g, axis=1)
        xnorm = 1.0 + np.linalg.norm(x, axis=1)
        done |= (f <= ftol) | (gnorm <= gtol * xnorm)
        act = np.flatnonzero(~done)
        if act.size == 0:
            break
        xa = x[act]
        new = act[stale[act]]
        if new.size:
            gram[new] = _gram(*_unpack(x[new], (new.size, T, d, k), symmetric), T)
            stale[new] = False
        K = gram[act]
        mu = theta[act] * np.sqrt(2 * f[act]) + mu_floor[act]
        K[:, diag, diag] += mu[:, None]
        dx = -_spd_solve(K, g[act])
        x_new = xa + dx
        f_new, g_new = _grad_packed(W[act], *_unpack(x_new, (act.size, T, d, k), symmetric))
        pred = 0.5 * (mu * np.sum(dx * dx, axis=1) - np.sum(dx * g[act], axis=1))
        ok = (f_new <= f[act]) & (pred > 0) & np.isfinite(f_new)
        rho = np.where(ok, (f[act] - f_new) / np.where(pred > 0, pred, 1.0), 0.0)
        acc = act[ok]
        if not symmetric and acc.size:
            # Gauge fixing: U_tV_tᵀ is invariant under (U, V) → (U C, V C⁻ᵀ); keep the factors
            # balanced (UᵀU = VᵀV) so that the Gauss–Newton matrix stays well conditioned.
            Ub, Vb = _balance(*_unpack(x_new[ok], (acc.size, T, d, k), False))
            x_new_ok = np.stack([Ub, Vb], axis=2).reshape(acc.size, -1)
            f_new_ok, g_new_ok = _grad_packed(W[acc], Ub, Vb)
        else:
            x_new_ok, f_new_ok, g_new_ok = x_new[ok], f_new[ok], g_new[ok]
        x[acc], f[acc], g[acc] = x_new_ok, f_new_ok, g_new_ok
        stale[acc] = True
        th = theta[act]
        th = np.where(rho < 0.25, 4.0 * th, np.where(rho > 0.75, np.maximum(th / 4.0, 1e-8), th))
        theta[act] = th
        n_iter[act] += 1
        tiny = np.sum(dx * dx, axis=1) <= (np.finfo(float).eps ** 2) * (np.sum(xa * xa, axis=1) + 1e-300)
        # A start whose factors run off to infinity (F has valleys at infinity: products of
        # diverging factors can converge) is abandoned; the caller restarts it.
        runaway = np.linalg.norm(x[act], axis=1) > x_limit[act]
        done[act[(tiny & ok) | (th > 1e16) | runaway]] = True
    U, V = _unpack(x, shape, symmetric)
    return U.copy(), (None if V is None else V.copy()), f, np.linalg.norm(g, axis=1), n_iter


def fit_population_batch(task_weights, k, *, rng, symmetric=True, n_starts=3, max_iter=300) -> BatchFit:
    """Exact minimisation of the population F for a batch of instances, symmetric or asymmetric.

    A is eliminated (A = mean_t(A*_t − U_tV_tᵀ)) and the reduced objective G is minimised by
    Levenberg–Marquardt with the Gauss–Newton matrix assembled in closed form (its blocks are
    δ_ij (V_sᵀV_t), U_t[i,q]V_s[j,p], …, so assembling it costs O(B T² d² k²)) and all instances
    advanced in one batched linear solve per iteration. For symmetric adapters the first start is
    spectral (top-k eigenpairs of A*_t − mean_s A*_s, as in :func:`theory.fit_loraml_population`);
    asymmetric adapters start from random points of the same scale (from the spectral point,
    whose factors are badly balanced, Levenberg–Marquardt needs several times more iterations).
    Instances that have not reached zero loss restart from new random points, up to ``n_starts``
    starts. Asymmetric factors are rebalanced (UᵀU = VᵀV) after every step. Zero loss
    means F ≤ 1e-26 · mean_t ‖A*_t − Ā*‖², i.e. a residual at rounding level.

    Parameters
    ----------
    task_weights : (B, T, d, d)
        Targets A*_t of the T retraining tasks of each instance.
    k : int in [1, d]
        Adapter rank.
    rng : numpy.random.Generator, int or None
    symmetric : bool
        U_tU_tᵀ adapters (True) or U_tV_tᵀ (False).
    n_starts : int >= 1
    max_iter : int >= 1
        Iterations per start.

    Returns
    -------
    BatchFit

    Examples
    --------
    >>> import numpy as np
    >>> from theory import sample_ground_truth
    >>> truths = [sample_ground_truth(6, 1, 3, rng=s) for s in range(4)]
    >>> W = np.stack([t.task_weights[:3] for t in truths])
    >>> fit = fit_population_batch(W, 1, rng=0, symmetric=False)
    >>> A_star = np.stack([t.A_star for t in truths])
    >>> bool(np.all(np.linalg.norm(fit.A - A_star, axis=(1, 2)) < 1e-8))
    True
    """
    func = "fit_population_batch"
    W = check_array(task_weights, "task_weights", func, ndim=4)
    B, T, d, d2 = W.shape
    if d != d2 or B < 1 or T < 1:
        raise ValueError(f"The 'task_weights' parameter of {func} must have shape (B, T, d, d) with B, T >= 1. "
                         f"Got shape {W.shape}.")
    k = check_int(k, "k", func, low=1, high=d)
    rng = check_rng(rng, func)
    if not isinstance(symmetric, (bool, np.bool_)):
        raise ValueError(f"The 'symmetric' parameter of {func} must be a bool. Got {symmetric!r} instead.")
    n_starts = check_int(n_starts, "n_starts", func, low=1)
    max_iter = check_int(max_iter, "max_iter", func, low=1)
    scale2 = np.sum(_center(W) ** 2, axis=(-3, -2, -1)) / T + np.finfo(float).tiny
    ftol = 1e-26 * scale2
    gtol = 1e-14 * np.sqrt(np.sum(W * W, axis=(-3, -2, -1)))
    U0, V0 = _spectral_starts(W, k, symmetric)
    sd = np.sqrt(np.sum(U0 * U0, axis=(1, 2, 3)) / (T * d * k))
    sd = np.maximum(sd, 1e-3 * np.sqrt(scale2 / d))
    U = np.empty((B, T, d, k))
    V = None if symmetric else np.empty((B, T, d, k))
    loss = np.full(B, np.inf)
    gnorm = np.full(B, np.inf)
    n_iter = np.zeros(B, int)
    used = np.zeros(B, int)
    todo = np.arange(B)
    for start in range(n_starts):
        if todo.size == 0:
            break
        if start == 0 and symmetric:
            Us, Vs = U0, V0
        else:
            Us = sd[todo, None, None, None] * rng.standard_normal((todo.size, T, d, k))
            Vs = None if symmetric else sd[todo, None, None, None] * rng.standard_normal((todo.size, T, d, k))
        Ue, Ve, fe, ge, ie = _lm_batch(W[todo], Us, Vs, max_iter=max_iter, ftol=ftol[todo], gtol=gtol[todo])
        n_iter[todo] += ie
        used[todo] += 1
        better = fe < loss[todo]
        sel = todo[better]
        U[sel], loss[sel], gnorm[sel] = Ue[better], fe[better], ge[better]
        if not symmetric:
            V[sel] = Ve[better]
        todo = todo[loss[todo] > ftol[todo]]
    A = (W - _prod(U, V)).mean(axis=1)
    Vout = U if symmetric else V
    E = A[:, None] + _prod(U, V) - W
    F = 0.5 * np.sum(E * E, axis=(-3, -2, -1))
    converged = (loss <= ftol) | (gnorm <= 1e-9 * np.sqrt(np.sum(W * W, axis=(-3, -2, -1))) * (1 + np.linalg.norm(
        U.reshape(B, -1), axis=1)))
    return BatchFit(A=A, U=U, V=Vout, loss=F, grad_norm=gnorm, n_iter=n_iter, n_starts_used=used,
                    converged=converged, symmetric=bool(symmetric))


def fit_asymmetric_population(truth, k, *, rng, n_starts=3, max_iter=300) -> BatchFit:
    """Exact population LoRA-ML with asymmetric adapters U_tV_tᵀ for one ground truth.

    A batch of one for :func:`fit_population_batch`; the fields of the result keep their
    leading batch axis of length 1.
    """
    func = "fit_asymmetric_population"
    truth = _check_truth(truth, func)
    k = check_int(k, "k", func, low=1, high=truth.d)
    return fit_population_batch(_targets(truth)[None], k, rng=rng, symmetric=False, n_starts=n_starts,
                                max_iter=max_iter)

