"""The population LoRA-ML objective F, its reduced form G, their derivatives (spec P7–P9).

F(A, U) = ½ Σ_t ‖A + U_tU_tᵀ − A*_t‖² over the T retraining tasks of a :class:`theory.GroundTruth`
(or with asymmetric adapters U_tV_tᵀ), and G(U) = min_A F(A, U) = ½ Σ_t ‖D_t − D̄‖² with
D_t = U_tU_tᵀ − R*_t, attained at the optimal base A(U) = mean_t(A*_t − U_tU_tᵀ) (:func:`optimal_base`).
Values, gradients, Hessian-vector products and dense Hessians (built column by column from exact
Hessian-vector products, so small sizes only). Dense Hessians order the variables as A flattened
row-major, then U (T, d, k) flattened, then V (asymmetric only).

The array kernels here (``_f_value_grad``, ``_g_value_grad``, ``_base``, …) are the one
implementation of F, G and A(U): :func:`theory.loraml_objective` (population), the critical-point
tools and the batched solver all call them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .._model import GroundTruth
from .._results import ArrayFields
from ..validation import check_array

__all__ = [
    "LandscapeValue",
    "landscape_objective",
    "landscape_hvp",
    "loraml_hessian",
    "optimal_base",
    "reduced_objective",
    "reduced_hvp",
    "reduced_hessian",
]


@dataclass(frozen=True, eq=False)
class LandscapeValue(ArrayFields):
    """Value and gradient of F (or of G, where ``grad_A`` is None).

    ``grad_V`` is None for symmetric adapters.

    Examples
    --------
    >>> import numpy as np
    >>> import theory as th
    >>> truth = th.sample_ground_truth(6, 1, 3, rng=0)
    >>> out = th.landscape_objective(truth, truth.A_star, truth.U_star[:-1])
    >>> float(out.value), out.grad_A.shape, out.grad_U.shape, out.grad_V is None
    (0.0, (6, 6), (3, 6, 1), True)
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


def _base(W, P):
    """The optimal base A = mean_t(W_t − P_t) for adapter products P_t (the minimiser of F over A)."""
    return (W - P).mean(axis=-3)


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

    Parameters
    ----------
    truth : GroundTruth
        Supplies the targets A*_t of the T retraining tasks.
    A : (d, d)
        The base.
    U : (T, d, k)
        The adapters (left factors of U_tV_tᵀ when ``V`` is given).
    dA : (d, d)
        The direction's base part.
    dU : (T, d, k)
        The direction's adapter part.
    V, dV : (T, d, k), optional
        Right factors of asymmetric adapters and their direction; both None for symmetric adapters.

    Returns
    -------
    (hA, hU, hV) : arrays shaped like (A, U, V); ``hV`` is None for symmetric adapters.

    Examples
    --------
    >>> import numpy as np
    >>> import theory as th
    >>> truth = th.sample_ground_truth(6, 1, 3, rng=0)
    >>> rng = np.random.default_rng(1)
    >>> A, U = rng.standard_normal((6, 6)), rng.standard_normal((3, 6, 1))
    >>> dA, dU = rng.standard_normal((6, 6)), rng.standard_normal((3, 6, 1))
    >>> hA, hU = th.landscape_hvp(truth, A, U, dA, dU)[:2]
    >>> H = th.loraml_hessian(truth, A, U)
    >>> bool(np.allclose(np.concatenate([hA.ravel(), hU.ravel()]), H @ np.concatenate([dA.ravel(), dU.ravel()])))
    True
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

    Parameters
    ----------
    truth : GroundTruth
        Supplies the targets A*_t of the T retraining tasks.
    A : (d, d)
        The base.
    U : (T, d, k)
        The adapters (left factors of U_tV_tᵀ when ``V`` is given).
    V : (T, d, k), optional
        Right factors of asymmetric adapters; None for symmetric adapters U_tU_tᵀ.

    Examples
    --------
    At the truth (a zero-loss minimum) the Hessian is JᵀJ: positive semidefinite, and flat only along
    the rotations U_t → U_t Q_t, k(k−1)/2 directions per task, when A* is identified (P5: T = 3,
    d ≥ 3k). Below d = 3k a further flat direction appears, the tangent of a continuum of minima:

    >>> import numpy as np
    >>> from theory import sample_ground_truth
    >>> def flat_directions(d, k, T):
    ...     truth = sample_ground_truth(d, k, T, rng=0)
    ...     lam = np.linalg.eigvalsh(loraml_hessian(truth, truth.A_star, truth.U_star[:T]))
    ...     return lam.size, int(np.sum(lam < 1e-9 * lam[-1])), bool(lam[0] > -1e-9 * lam[-1])
    >>> flat_directions(6, 2, 3)      # side d² + Tdk = 72; 3 flat directions = 3 tasks × 1 rotation
    (72, 3, True)
    >>> flat_directions(4, 2, 3)      # d = 4 < 3k: one more, the curve of zero-loss bases Â ≠ A*
    (40, 4, True)
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
    """A(U) = A* + (1/T) Σ_s (R*_s − U_sU_sᵀ), the minimiser of F over A for fixed adapters.

    Parameters
    ----------
    truth : GroundTruth
        Supplies A* and R*_t of the T retraining tasks.
    U : (T, d, k)
        The adapters (left factors of U_tV_tᵀ when ``V`` is given).
    V : (T, d, k), optional
        Right factors of asymmetric adapters; None for symmetric adapters U_tU_tᵀ.

    Examples
    --------
    >>> import numpy as np
    >>> import theory as th
    >>> truth = th.sample_ground_truth(6, 1, 3, rng=0)
    >>> bool(np.allclose(th.optimal_base(truth, truth.U_star[:-1]), truth.A_star))
    True
    >>> bool(np.allclose(th.optimal_base(truth, np.zeros((3, 6, 1))), th.standard_retraining_population(truth)))
    True
    """
    func = "optimal_base"
    truth = _check_truth(truth, func)
    U, V = _check_adapters(truth, U, V, func)
    return _base(_targets(truth), _prod(U, V))


def reduced_objective(truth, U, *, V=None) -> LandscapeValue:
    """Value and gradient of G(U) = ½ Σ_t ‖D_t − D̄‖², D_t = U_tU_tᵀ − R*_t (or U_tV_tᵀ − R*_t).

    G(U) = F(A(U), U) with A(U) from :func:`optimal_base`, and ∇_{U_t} G = 2 (D_t − D̄) U_t
    for symmetric adapters (the centering contributes nothing since Σ_t (D_t − D̄) = 0).
    ``grad_A`` of the result is None.

    Parameters
    ----------
    truth : GroundTruth
        Supplies R*_t of the T retraining tasks.
    U : (T, d, k)
        The adapters (left factors of U_tV_tᵀ when ``V`` is given).
    V : (T, d, k), optional
        Right factors of asymmetric adapters; None for symmetric adapters U_tU_tᵀ.

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
    """Hessian of G at U[, V] applied to (dU[, dV]); returns (hU, hV), hV None if symmetric.

    Parameters
    ----------
    truth : GroundTruth
        Supplies R*_t of the T retraining tasks.
    U : (T, d, k)
        The adapters (left factors of U_tV_tᵀ when ``V`` is given).
    dU : (T, d, k)
        The direction.
    V, dV : (T, d, k), optional
        Right factors of asymmetric adapters and their direction; both None for symmetric adapters.

    Examples
    --------
    >>> import numpy as np
    >>> import theory as th
    >>> truth = th.sample_ground_truth(4, 1, 2, rng=1)      # T = 2 tasks, k = 1
    >>> rng = np.random.default_rng(1)
    >>> U, dU = rng.standard_normal((2, 4, 1)), rng.standard_normal((2, 4, 1))
    >>> hU, hV = th.reduced_hvp(truth, U, dU)
    >>> hV is None, bool(np.allclose(hU.ravel(), th.reduced_hessian(truth, U) @ dU.ravel()))
    (True, True)
    """
    func = "reduced_hvp"
    truth = _check_truth(truth, func)
    U, V = _check_adapters(truth, U, V, func)
    dU, dV = _check_adapters(truth, dU, dV, func, name="dU")
    if dU.shape != U.shape or (V is None) != (dV is None):
        raise ValueError(f"The 'dU' (and 'dV') parameters of {func} must match 'U' (and 'V').")
    return _g_hvp(_targets(truth), U, V, dU, dV)


def reduced_hessian(truth, U, *, V=None) -> np.ndarray:
    """Dense Hessian of G at U[, V]; variables U flattened, then V (asymmetric).

    Parameters
    ----------
    truth : GroundTruth
        Supplies R*_t of the T retraining tasks.
    U : (T, d, k)
        The adapters (left factors of U_tV_tᵀ when ``V`` is given).
    V : (T, d, k), optional
        Right factors of asymmetric adapters; None for symmetric adapters U_tU_tᵀ.

    Examples
    --------
    >>> import numpy as np
    >>> import theory as th
    >>> truth = th.sample_ground_truth(4, 1, 2, rng=1)      # T = 2 tasks, k = 1
    >>> H = th.reduced_hessian(truth, np.zeros((2, 4, 1)))
    >>> H.shape
    (8, 8)
    >>> M = truth.R_star[0] - truth.R_star[1]
    >>> bool(np.isclose(np.linalg.eigvalsh(H)[0], -np.linalg.norm(M, 2)))   # P9 at U = 0
    True
    """
    func = "reduced_hessian"
    truth = _check_truth(truth, func)
    U, V = _check_adapters(truth, U, V, func)
    W = _targets(truth)
    if V is None:
        return _dense(lambda dU: _g_hvp(W, U, None, dU, None)[:1], [U.shape])
    return _dense(lambda dU, dV: _g_hvp(W, U, V, dU, dV), [U.shape, V.shape])
