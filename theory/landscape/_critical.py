"""Critical points of the population objective: the SR saddle (P8), the two-task rank-one
enumeration (P9), a critical-point finder, escape directions, a classifier and plain gradient
descent on G."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .._results import ArrayFields
from ..validation import MAX_COUNT, check_values, check_array, check_int, check_real, check_rng
from ._objective import (
    _check_adapters,
    _check_base,
    _check_truth,
    _dense,
    _g_hvp,
    _g_value_grad,
    _targets,
    landscape_objective,
    loraml_hessian,
    optimal_base,
    reduced_hessian,
)

__all__ = [
    "CriticalPoint",
    "EscapeDirection",
    "Classification",
    "DescentPath",
    "sr_saddle",
    "sr_saddle_min_eigenvalue",
    "critical_points_two_tasks",
    "find_critical_points",
    "hessian_min_eigenpair",
    "classify_critical_point",
    "reduced_gradient_descent",
]


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

    Examples
    --------
    >>> import numpy as np
    >>> import theory as th
    >>> truth = th.sample_ground_truth(4, 1, 2, rng=1)      # T = 2 tasks, k = 1
    >>> points = th.critical_points_two_tasks(truth)
    >>> sorted({p.family for p in points})[:3]
    ['U = 0', 'global minimum', 'kernel family']
    >>> points[0].A.shape, points[0].U.shape
    ((4, 4), (2, 4, 1))
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

    Examples
    --------
    >>> import numpy as np
    >>> import theory as th
    >>> truth = th.sample_ground_truth(4, 1, 2, rng=1)      # T = 2 tasks, k = 1
    >>> point = th.sr_saddle(truth)
    >>> esc = th.hessian_min_eigenpair(truth, point.A, point.U)
    >>> bool(np.isclose(esc.eigenvalue, th.sr_saddle_min_eigenvalue(truth)))
    True
    >>> esc.dA.shape, esc.dU.shape
    ((4, 4), (2, 4, 1))
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

    Examples
    --------
    >>> import numpy as np
    >>> import theory as th
    >>> truth = th.sample_ground_truth(4, 1, 2, rng=1)      # T = 2 tasks, k = 1
    >>> point = th.sr_saddle(truth)
    >>> c = th.classify_critical_point(truth, point.A, point.U)
    >>> c.kind, c.critical, c.n_negative >= 1
    ('strict saddle', True, True)
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

    Examples
    --------
    >>> import numpy as np
    >>> import theory as th
    >>> truth = th.sample_ground_truth(4, 1, 2, rng=1)      # T = 2 tasks, k = 1
    >>> U0 = 0.05 * np.random.default_rng(0).standard_normal((2, 4, 1))
    >>> path = th.reduced_gradient_descent(truth, U0, step=0.05, n_steps=4000, record_every=1000)
    >>> path.steps.tolist(), bool(path.values[-1] < 1e-10)
    ([0, 1000, 2000, 3000, 4000], True)
    """

    U: np.ndarray
    values: np.ndarray
    steps: np.ndarray
    path: np.ndarray | None


# --------------------------------------------------------------------------------------------
# Critical points


def sr_saddle(truth, k=None) -> CriticalPoint:
    """The critical point (A_SR, U = 0) of F, A_SR = A(0) = A* + R̄* (P8): the optimal base at zero
    adapters, which is the population SR solution (P2).

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
    return CriticalPoint(A=optimal_base(truth, U), U=U, family="U = 0",
                         label="SR saddle (A* + R̄*, U = 0)", predicted="strict saddle", a=0.0, b=0.0)


def sr_saddle_min_eigenvalue(truth) -> float:
    """P8's prediction of λ_min(∇²F) at the SR saddle: min(T, 2 min_t λ_min(R̄* − R*_t)).

    At U = 0 the Hessian is block diagonal: T·I on A, and 2(R̄* − R*_t) acting on each column of
    U_t (the residual of task t at A_SR is R̄* − R*_t and the A–U coupling vanishes).

    Parameters
    ----------
    truth : GroundTruth
        Supplies R*_t of the T retraining tasks.

    Examples
    --------
    >>> import numpy as np
    >>> import theory as th
    >>> truth = th.sample_ground_truth(6, 1, 3, rng=0)
    >>> point = th.sr_saddle(truth)
    >>> lam = th.sr_saddle_min_eigenvalue(truth)
    >>> bool(lam < 0), bool(np.isclose(lam, th.hessian_min_eigenpair(truth, point.A, point.U).eigenvalue))
    (True, True)
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

    Examples
    --------
    >>> import numpy as np
    >>> import theory as th
    >>> truth = th.sample_ground_truth(4, 1, 2, rng=1)      # T = 2 tasks, k = 1
    >>> kinds = {p.family: th.classify_critical_point(truth, p.A, p.U).kind for p in th.critical_points_two_tasks(truth)}
    >>> all(kind in ('global minimum', 'strict saddle') for kind in kinds.values())
    True
    """
    func = "critical_points_two_tasks"
    truth = _check_truth(truth, func)
    if truth.T != 2 or truth.k != 1:
        raise ValueError(f"The 'truth' parameter of {func} must have T = 2 retraining tasks and rank k = 1. "
                         f"Got T = {truth.T}, k = {truth.k}.")
    scales = list(check_values(np.atleast_1d(scales) if np.ndim(scales) == 0 else scales, "scales", func,
                               lambda s: check_real(s, "scales", func, low=0.0, low_open=True, high=700.0)))
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

    Parameters
    ----------
    truth : GroundTruth
        Supplies the targets A*_t of the T retraining tasks.
    A : (d, d)
        The base; ignored when ``reduced``.
    U : (T, d, k)
        The adapters (left factors of U_tV_tᵀ when ``V`` is given).
    V : (T, d, k), optional
        Right factors of asymmetric adapters; None for symmetric adapters U_tU_tᵀ.
    reduced : bool
        Use the Hessian of the reduced objective G(U) = F(A(U), U) instead of that of F.

    Examples
    --------
    >>> import numpy as np
    >>> import theory as th
    >>> truth = th.sample_ground_truth(4, 1, 2, rng=1)      # T = 2 tasks, k = 1
    >>> point = th.sr_saddle(truth)
    >>> esc = th.hessian_min_eigenpair(truth, point.A, point.U)
    >>> M = truth.R_star[0] - truth.R_star[1]
    >>> bool(np.isclose(esc.eigenvalue, -np.linalg.norm(M, 2)))      # P8 at T = 2: -||M||_op
    True
    """
    func = "hessian_min_eigenpair"
    if not isinstance(reduced, (bool, np.bool_)):
        raise ValueError(f"The 'reduced' parameter of {func} must be a bool. Got {reduced!r} instead.")
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
    - "strict saddle" if critical and λ_min(∇²F) < −tol · s (checked first: a saddle of a nearly
      degenerate instance can have F below tol · s², e.g. on the v₊ family when |μ₋| ≪ μ₊);
    - "global minimum" if critical, not a strict saddle, and F − ``min_value`` ≤ tol · s²
      (``min_value`` = 0 is the global minimum of the population objective when the adapter rank is
      at least the truth's);
    - "other" otherwise (not critical, or critical with a Hessian that is PSD to tolerance at a
      value above the minimum).

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
    tol : float in (0, 1)
        Relative tolerance.
    min_value : float
        The global minimum value of F.

    Examples
    --------
    >>> import numpy as np
    >>> import theory as th
    >>> truth = th.sample_ground_truth(4, 1, 2, rng=1)      # T = 2 tasks, k = 1
    >>> th.classify_critical_point(truth, truth.A_star, truth.U_star[:2]).kind
    'global minimum'
    >>> point = th.sr_saddle(truth)
    >>> th.classify_critical_point(truth, point.A, point.U).kind
    'strict saddle'
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
    if critical and lam[0] < -tol * s:
        kind = "strict saddle"          # negative curvature: not a minimum, however small F is
    elif critical and out.value - min_value <= tol * s * s:
        kind = "global minimum"
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

    Examples
    --------
    >>> import numpy as np
    >>> import theory as th
    >>> truth = th.sample_ground_truth(4, 1, 2, rng=1)      # T = 2 tasks, k = 1
    >>> points = th.find_critical_points(truth, rng=0, n_starts=4)
    >>> all(th.landscape_objective(truth, p.A, p.U).grad_norm < 1e-8 for p in points)
    True
    >>> all(th.classify_critical_point(truth, p.A, p.U).kind != 'other' for p in points)
    True
    """
    func = "find_critical_points"
    truth = _check_truth(truth, func)
    k = truth.k if k is None else check_int(k, "k", func, low=1, high=truth.d)
    rng = check_rng(rng, func)
    n_starts = check_int(n_starts, "n_starts", func, low=1, high=MAX_COUNT)
    init_scale = check_real(init_scale, "init_scale", func, low=0.0, low_open=True, high=1e100)
    tol = check_real(tol, "tol", func, low=0.0, low_open=True)
    max_iter = check_int(max_iter, "max_iter", func, low=1)
    W = _targets(truth)
    T, d = truth.T, truth.d
    s = _scale(truth)
    sd = init_scale * np.sqrt(max(np.linalg.eigvalsh(truth.R_bar)[-1], 1e-12) / k)
    out = []
    for _ in range(n_starts):
        U = sd * rng.standard_normal((T, d, k))
        mu = 1e-3 * s
        g = _g_value_grad(W, U, None)[1]
        gn = float(np.linalg.norm(g))
        for _ in range(max_iter):
            if gn <= tol * s * (1.0 + float(np.linalg.norm(U))):
                break
            H = _dense(lambda dU: _g_hvp(W, U, None, dU, None)[:1], [U.shape])
            # (H² + μ²I)⁻¹H g through H's eigenpairs: stable where H is singular (flat directions of a
            # continuum of critical points, where H² + μ²I is singular to working precision once μ is small).
            lam, vecs = np.linalg.eigh(H)
            step = -(vecs @ (lam / (lam * lam + mu * mu) * (vecs.T @ g.reshape(-1)))).reshape(U.shape)
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

    Examples
    --------
    >>> import numpy as np
    >>> import theory as th
    >>> truth = th.sample_ground_truth(4, 1, 2, rng=1)      # T = 2 tasks, k = 1
    >>> U0 = 0.05 * np.random.default_rng(0).standard_normal((2, 4, 1))
    >>> path = th.reduced_gradient_descent(truth, U0, step=0.05, n_steps=4000)
    >>> bool(path.values[-1] < 1e-10)                     # P9: no spurious local minimum
    True
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
