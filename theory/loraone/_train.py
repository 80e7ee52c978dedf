"""Fine-tuning (A, B): gradient descent and ScaledGD(λ) on the linear model's sufficient statistics or
on the ReLU model's data, batched (spec/loraone.md §2)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .._results import ArrayFields
from ..validation import check_array, check_choice, check_int, check_real
from ._common import _T, _check_data, _check_factors, _check_model, _check_W0, _relu
from ._model import _alignment

_METHODS = ("gd", "precgd")
_ORDERS = ("simultaneous", "gauss-seidel")


# --------------------------------------------------------------------------------------------
# Results


@dataclass(frozen=True, eq=False)
class FinetuneResult(ArrayFields):
    """Trajectory of a fine-tuning run (:func:`finetune` and friends).

    For a batched call every per-run attribute carries the batch shape ``(...)``.

    Attributes
    ----------
    A : (..., d, r) and B : (..., r, m), the final factors (frozen at the step a run converged).
    n_iter : steps taken until the stopping rule held (or ``max_iter``); int, or an int array.
    converged : whether the stopping rule held; bool, or a bool array. Never silently False:
        ``message`` says why.
    risk : (steps + 1, ...) training loss minus its irreducible part at every step, i.e.
        ½‖H(W0 + A_tB_t) − K‖² (spec notation: (1/2N)‖P_X(X W_t − Y)‖²); in population
        ½‖W0 + A_tB_t − W♮‖². For ``model="relu"`` the training loss itself.
    residual : (steps + 1, ...) the relative training residual ‖H(W0 + A_tB_t) − K‖ / ‖H W0 − K‖
        (``relu``: ‖ReLU(X W_t) − Y‖ / ‖ReLU(X W0) − Y‖).
    rel_error : (steps + 1, ...) ‖A_tB_t − target‖ / ‖target‖, or None without a target.
    alignment : (steps + 1, ...) sin θ between the top-k left singular vectors of A_t and
        ``align_to`` (k its number of columns), or None.
    method, order, model : the options used.
    message : a sentence on how the run stopped.

    Examples
    --------
    >>> import numpy as np
    >>> from theory import loraone as lo
    >>> rng = np.random.default_rng(0)
    >>> X = rng.standard_normal((400, 6))
    >>> dW = lo.sample_low_rank(6, 5, 2, kappa=10.0, rng=1)
    >>> W0 = np.zeros((6, 5))
    >>> Y = X @ dW
    >>> A0, B0 = lo.spectral_init(lo.one_step_gradient(X, Y, W0), 2)
    >>> res = lo.finetune(X, Y, W0, A0, B0, method='precgd', lr=0.5, max_iter=200, target=dW)
    >>> res.A.shape, res.B.shape, bool(res.converged)
    ((6, 2), (2, 5), True)
    >>> bool(res.rel_error[-1] < 1e-6)        # ‖A B − ΔW‖/‖ΔW‖ along the run
    True
    """

    A: np.ndarray
    B: np.ndarray
    n_iter: int | np.ndarray
    converged: bool | np.ndarray
    risk: np.ndarray
    residual: np.ndarray
    rel_error: np.ndarray | None
    alignment: np.ndarray | None
    method: str
    order: str
    model: str
    message: str

    @property
    def delta(self) -> np.ndarray:
        """The learned update A B, (..., d, m)."""
        return self.A @ self.B

    @property
    def metric(self) -> np.ndarray:
        """The history the stopping rule looked at: ``rel_error`` if a target was given, else
        ``residual``."""
        return self.residual if self.rel_error is None else self.rel_error


# --------------------------------------------------------------------------------------------
# Fine-tuning


def finetune(X, Y, W0, A0, B0, *, method: str = "gd", lr, lam: float = 0.0, tol: float = 1e-6,
             max_iter: int, target=None, order: str = "simultaneous", model: str = "linear",
             align_to=None) -> FinetuneResult:
    """Fine-tune (A, B) on the loss (1/2N)‖f(X(W0 + AB)) − Y‖² until a tolerance (the driver).

    Methods (spec §2):

    - ``"gd"``: A ← A − η ∇_A L, B ← B − η ∇_B L.
    - ``"precgd"`` (ScaledGD(λ)): A ← A − η ∇_A L (BBᵀ + λI)⁻¹, B ← B − η (AᵀA + λI)⁻¹ ∇_B L.

    ``order="simultaneous"`` takes both gradients at the current (A, B); ``"gauss-seidel"``
    updates B with the already-updated A (the authors' optimiser).

    Stopping rule: per run, ‖A_tB_t − target‖/‖target‖ < ``tol`` if ``target`` is given, else the
    relative training residual (see :class:`FinetuneResult`) < ``tol``; a run that meets it is
    frozen, the others go on until ``max_iter``. The linear model runs on the sufficient statistics
    (:func:`finetune_moments`), so a step costs the same for any N.

    Parameters
    ----------
    X, Y : (..., N, d), (..., N, m)
        Inputs and labels.
    W0, A0, B0 : (..., d, m), (..., d, r), (..., r, m)
        The pretrained weight and the starting factors; leading (batch) axes broadcast.
    method : {"gd", "precgd"}
        Plain gradient descent or ScaledGD(λ).
    lr : float > 0, or an array of positive step sizes broadcast over the batch
        Step size η.
    lam : float >= 0
        The preconditioner's damping λ ("precgd" only; needed when r > r*).
    tol : float > 0
        The stopping tolerance.
    max_iter : int >= 0
        The most steps per run.
    target : (..., d, m) or None
        The update ΔW that A B should reach; it sets the stopping rule and the recorded error.
    order : {"simultaneous", "gauss-seidel"}
        Both gradients at the current (A, B), or B's after A's update.
    model : {"linear", "relu"}
        f = identity or ReLU.
    align_to : (..., d, k) or None
        Records sin θ(top-k left singular vectors of A_t, span align_to).

    Returns
    -------
    FinetuneResult

    Raises
    ------
    ValueError
        On bad shapes or values, or ``method="precgd"`` with ``lam=0`` from singular factors.

    Examples
    --------
    >>> import numpy as np
    >>> from theory.loraone import one_step_gradient, sample_low_rank, spectral_init
    >>> rng = np.random.default_rng(0)
    >>> X = rng.standard_normal((400, 6)); dW = sample_low_rank(6, 5, 2, kappa=10.0, rng=1)
    >>> W0 = np.zeros((6, 5)); Y = X @ dW
    >>> A0, B0 = spectral_init(one_step_gradient(X, Y, W0), 2)
    >>> res = finetune(X, Y, W0, A0, B0, method="precgd", lr=0.5, max_iter=200, target=dW)
    >>> bool(res.converged), int(res.n_iter) < 40
    (True, True)
    """
    func = "finetune"
    X, Y = _check_data(X, Y, func)
    model = _check_model(model, func)
    if model == "linear":
        N = X.shape[-2]
        S = _T(X) @ X / N
        C = _T(X) @ Y / N
        return _finetune_moments(func, S, C, W0, A0, B0, method=method, lr=lr, lam=lam, tol=tol,
                                 max_iter=max_iter, target=target, order=order, align_to=align_to)
    d, m = X.shape[-1], Y.shape[-1]
    W0 = _check_W0(W0, d, m, func)
    A0, B0 = _check_factors(A0, B0, d, m, func)
    opts = _check_options(func, method, lr, lam, tol, max_iter, order)
    target, align = _check_extras(func, target, align_to, d, m, A0.shape[-1])
    return _run(_ReluProblem(X, Y, W0), A0, B0, target=target, align=align, model=model, **opts)


def finetune_moments(S, C, W0, A0, B0, *, method: str = "gd", lr, lam: float = 0.0, tol: float = 1e-6,
                     max_iter: int, target=None, order: str = "simultaneous", align_to=None) -> FinetuneResult:
    """:func:`finetune` for the linear model, on the statistics S = XᵀX/N (d, d), C = XᵀY/N (d, m).

    The loss is ½ tr(Wᵀ S W) − ⟨W, C⟩ + const at W = W0 + A B; ``S = I``, ``C = W♮`` is the
    population. C must lie in the range of S (true for data). Same options as :func:`finetune`.

    Parameters
    ----------
    S : (..., d, d)
        XᵀX/N.
    C : (..., d, m)
        XᵀY/N, in the range of S.
    W0, A0, B0 : (..., d, m), (..., d, r), (..., r, m)
        The pretrained weight and the starting factors; leading (batch) axes broadcast.
    method : {"gd", "precgd"}
        Plain or preconditioned gradient descent, as in :func:`finetune`.
    lr : float > 0, or an array of positive step sizes broadcast over the batch
        Step size η.
    lam : float >= 0
        The preconditioner's damping λ ("precgd" only; needed when r > r*).
    tol : float > 0
        The stopping tolerance (see :func:`finetune`).
    max_iter : int >= 0
        The most steps per run.
    target : (..., d, m) or None
        The update ΔW that A B should reach; it sets the stopping rule and the recorded error.
    order : {"simultaneous", "gauss-seidel"}
        Both gradients at the current (A, B), or B's after A's update.
    align_to : (..., d, k) or None
        Records sin θ(top-k left singular vectors of A_t, span align_to).

    Examples
    --------
    >>> import numpy as np
    >>> from theory import loraone as lo
    >>> rng = np.random.default_rng(0)
    >>> X = rng.standard_normal((400, 6))
    >>> dW = lo.sample_low_rank(6, 5, 2, kappa=10.0, rng=1)
    >>> W0 = np.zeros((6, 5))
    >>> Y = X @ dW
    >>> S, C = X.T @ X / 400, X.T @ Y / 400
    >>> A0, B0 = lo.spectral_init(lo.one_step_gradient(X, Y, W0), 2)
    >>> res = lo.finetune_moments(S, C, W0, A0, B0, method='precgd', lr=0.5, max_iter=200)
    >>> full = lo.finetune(X, Y, W0, A0, B0, method='precgd', lr=0.5, max_iter=200)   # the same run on the data
    >>> bool(np.allclose(res.A @ res.B, full.A @ full.B)), bool(np.allclose(res.A @ res.B, dW))
    (True, True)
    """
    return _finetune_moments("finetune_moments", S, C, W0, A0, B0, method=method, lr=lr, lam=lam, tol=tol,
                             max_iter=max_iter, target=target, order=order, align_to=align_to)


def finetune_population(W_natural, W0, A0, B0, *, method: str = "gd", lr, lam: float = 0.0,
                        tol: float = 1e-6, max_iter: int, target=None, order: str = "simultaneous",
                        align_to=None) -> FinetuneResult:
    """:func:`finetune` in population (Σ̂ = I): the loss is ½‖W0 + AB − W♮‖².

    Parameters
    ----------
    W_natural : (..., d, m)
        The fine-tuning target W♮.
    W0, A0, B0 : (..., d, m), (..., d, r), (..., r, m)
        The pretrained weight and the starting factors; leading (batch) axes broadcast.
    method : {"gd", "precgd"}
        Plain or preconditioned gradient descent, as in :func:`finetune`.
    lr : float > 0, or an array of positive step sizes broadcast over the batch
        Step size η.
    lam : float >= 0
        The preconditioner's damping λ ("precgd" only; needed when r > r*).
    tol : float > 0
        The stopping tolerance (see :func:`finetune`).
    max_iter : int >= 0
        The most steps per run.
    target : (..., d, m) or None
        The update ΔW that A B should reach; it sets the stopping rule and the recorded error.
    order : {"simultaneous", "gauss-seidel"}
        Both gradients at the current (A, B), or B's after A's update.
    align_to : (..., d, k) or None
        Records sin θ(top-k left singular vectors of A_t, span align_to).

    Examples
    --------
    >>> import numpy as np
    >>> from theory.loraone import sample_low_rank, spectral_init
    >>> dW = sample_low_rank(5, 5, 1, rng=0)
    >>> A0, B0 = spectral_init(dW, 1)          # G♮ = ΔW in population
    >>> res = finetune_population(dW, np.zeros((5, 5)), A0, B0, lr=0.5, max_iter=10, target=dW)
    >>> int(res.n_iter), bool(res.converged)
    (0, True)
    """
    func = "finetune_population"
    Wn = check_array(W_natural, "W_natural", func, ndim=(2, 3, 4))
    d = Wn.shape[-2]
    return _finetune_moments(func, np.eye(d), Wn, W0, A0, B0, method=method, lr=lr, lam=lam, tol=tol,
                             max_iter=max_iter, target=target, order=order, align_to=align_to)


def _check_options(func, method, lr, lam, tol, max_iter, order):
    method = check_choice(method, "method", func, _METHODS)
    order = check_choice(order, "order", func, _ORDERS)
    if np.isscalar(lr) or isinstance(lr, (int, float)):
        lr = check_real(lr, "lr", func, low=0.0, low_open=True)
    else:
        lr = check_array(lr, "lr", func, ndim=(0, 1, 2, 3))
        if np.any(lr <= 0):
            raise ValueError(f"The 'lr' parameter of {func} must hold positive step sizes. Got {lr!r} instead.")
    lam = check_real(lam, "lam", func, low=0.0)
    tol = check_real(tol, "tol", func, low=0.0, low_open=True)
    max_iter = check_int(max_iter, "max_iter", func, low=0)
    return {"method": method, "lr": lr, "lam": lam, "tol": tol, "max_iter": max_iter, "order": order}


def _check_extras(func, target, align_to, d, m, r):
    if target is not None:
        target = check_array(target, "target", func, ndim=(2, 3, 4), shape=(d, m))
        if np.any(np.sum(target * target, axis=(-2, -1)) == 0):
            raise ValueError(f"The 'target' parameter of {func} must be nonzero (the error is relative to it).")
    align = None
    if align_to is not None:
        align_to = check_array(align_to, "align_to", func, ndim=(2, 3, 4), shape=(d, None))
        if not 1 <= align_to.shape[-1] <= r:
            raise ValueError(f"The 'align_to' parameter of {func} must have between 1 and r = {r} columns. "
                             f"Got shape {align_to.shape}.")
        align, _ = np.linalg.qr(align_to)
    return target, align


def _finetune_moments(func, S, C, W0, A0, B0, *, method, lr, lam, tol, max_iter, target, order, align_to):
    S = check_array(S, "S", func, ndim=(2, 3, 4))
    d = S.shape[-1]
    if S.shape[-2] != d:
        raise ValueError(f"The 'S' parameter of {func} must be square (..., d, d). Got shape {S.shape}.")
    C = check_array(C, "C", func, ndim=(2, 3, 4), shape=(d, None))
    m = C.shape[-1]
    W0 = _check_W0(W0, d, m, func)
    A0, B0 = _check_factors(A0, B0, d, m, func)
    opts = _check_options(func, method, lr, lam, tol, max_iter, order)
    target, align = _check_extras(func, target, align_to, d, m, A0.shape[-1])
    return _run(_LinearProblem(S, C, W0), A0, B0, target=target, align=align, model="linear", **opts)


class _LinearProblem:
    """½‖H(W0 + AB) − K‖² with H = S^{1/2}, K = H⁺C; the residual is H A B − M, M = K − H W0."""

    def __init__(self, S, C, W0):
        S = (S + _T(S)) / 2
        lam, Q = np.linalg.eigh(S)
        lam = np.clip(lam, 0.0, None)
        cutoff = lam[..., -1:] * S.shape[-1] * np.finfo(float).eps
        root = np.sqrt(lam)
        root_inv = np.where(lam > cutoff, 1.0 / np.where(lam > cutoff, root, 1.0), 0.0)
        H = (Q * root[..., None, :]) @ _T(Q)
        K = (Q * root_inv[..., None, :]) @ (_T(Q) @ C)
        self.M = K - H @ W0
        self.batch_shape = H.shape[:-2]
        # Population (S = I): skip the multiplications by H.
        self.H = None if np.array_equal(S, np.broadcast_to(np.eye(S.shape[-1]), S.shape)) else H
        self._key = self._cache = None

    def residual(self, A, B):
        # The loop measures the new point and then takes its gradient: compute H A B once.
        if self._key is not None and self._key[0] is A and self._key[1] is B:
            return self._cache
        HA = A if self.H is None else self.H @ A
        self._key, self._cache = (A, B), (HA @ B - self.M, HA)
        return self._cache

    def grads(self, A, B):
        R, HA = self.residual(A, B)
        RB = R @ _T(B)
        return (RB if self.H is None else self.H @ RB), _T(HA) @ R

    def grad_B(self, A, B):
        R, HA = self.residual(A, B)
        return _T(HA) @ R

    def risk_and_norm(self, A, B):
        R, _ = self.residual(A, B)
        r2 = np.sum(R * R, axis=(-2, -1))
        return 0.5 * r2, np.sqrt(r2)


class _ReluProblem:
    """(1/2N)‖ReLU(X(W0 + AB)) − Y‖²."""

    def __init__(self, X, Y, W0):
        self.X, self.Y, self.W0 = X, Y, W0
        self.Xt = np.ascontiguousarray(_T(X))
        self.N = X.shape[-2]
        self._key = self._cache = None

    def _parts(self, A, B):
        # The loop measures the new point and then takes its gradient: compute X W once.
        if self._key is not None and self._key[0] is A and self._key[1] is B:
            return self._cache
        Z = self.X @ (self.W0 + A @ B)
        self._key, self._cache = (A, B), (Z, _relu(Z) - self.Y)
        return self._cache

    def grads(self, A, B):
        Z, R = self._parts(A, B)
        GW = self.Xt @ (R * (Z > 0)) / self.N
        return GW @ _T(B), _T(A) @ GW

    def grad_B(self, A, B):
        return self.grads(A, B)[1]

    def risk_and_norm(self, A, B):
        _, R = self._parts(A, B)
        r2 = np.sum(R * R, axis=(-2, -1))
        return 0.5 * r2 / self.N, np.sqrt(r2)


def _precondition_left(GA, B, lam):
    """GA (BBᵀ + λI)⁻¹."""
    P = B @ _T(B) + lam * np.eye(B.shape[-2])
    return _T(np.linalg.solve(P, _T(GA)))


def _precondition_right(GB, A, lam):
    """(AᵀA + λI)⁻¹ GB."""
    P = _T(A) @ A + lam * np.eye(A.shape[-1])
    return np.linalg.solve(P, GB)


def _run(problem, A0, B0, *, target, align, model, method, lr, lam, tol, max_iter, order) -> FinetuneResult:
    r = A0.shape[-1]
    if method == "precgd" and lam == 0.0:
        for name, F in (("A0", _T(A0) @ A0), ("B0", B0 @ _T(B0))):
            s = np.linalg.svd(F, compute_uv=False)
            if np.any(s[..., -1] <= 1e-12 * np.maximum(s[..., 0], 1e-300)):
                raise ValueError(
                    f"method='precgd' with lam=0 needs {name} of full rank r = {r} (its Gram matrix is singular): "
                    "pass lam > 0 (ScaledGD(λ)), e.g. from a vanilla init with B0 = 0 or when r > r*.")
    # Broadcast everything to one batch shape.
    shapes = [A0.shape[:-2], B0.shape[:-2]]
    if isinstance(problem, _LinearProblem):
        shapes += [problem.batch_shape, problem.M.shape[:-2]]
    else:
        shapes += [problem.X.shape[:-2], problem.W0.shape[:-2]]
    if target is not None:
        shapes.append(target.shape[:-2])
    if align is not None:
        shapes.append(align.shape[:-2])
    lr_arr = np.asarray(lr, dtype=float)
    try:
        batch = np.broadcast_shapes(*shapes, lr_arr.shape)
    except ValueError:
        raise ValueError(f"The leading (batch) axes of the arguments do not broadcast: {shapes} and lr "
                         f"{lr_arr.shape}.") from None
    A = np.broadcast_to(A0, batch + A0.shape[-2:]).copy()
    B = np.broadcast_to(B0, batch + B0.shape[-2:]).copy()
    eta = np.broadcast_to(lr_arr, batch)[..., None, None]
    tnorm = None if target is None else np.sqrt(np.sum(target * target, axis=(-2, -1)))

    def measure(A, B):
        risk, rnorm = problem.risk_and_norm(A, B)
        rel = None
        if target is not None:
            D = A @ B - target
            rel = np.broadcast_to(np.sqrt(np.sum(D * D, axis=(-2, -1))) / tnorm, batch)
        al = None if align is None else np.broadcast_to(_alignment(A, align), batch)
        return np.broadcast_to(risk, batch), np.broadcast_to(rnorm, batch), rel, al

    risk0, rnorm0, rel0, al0 = measure(A, B)
    scale = np.where(rnorm0 > 0, rnorm0, 1.0)
    hist_risk, hist_res = [risk0.copy()], [rnorm0 / scale]
    hist_rel = None if rel0 is None else [rel0.copy()]
    hist_al = None if al0 is None else [al0.copy()]

    def crit(res, rel):
        return res if rel is None else rel

    done = crit(hist_res[0], rel0) < tol
    if target is None:
        done = done | (rnorm0 == 0)
    n_iter = np.zeros(batch, dtype=int)
    diverged = np.zeros(batch, dtype=bool)
    with np.errstate(over="ignore", invalid="ignore"):   # divergence is detected and reported below
        A, B, n_iter, done, diverged = _loop(problem, A, B, eta, method, lam, order, tol, max_iter, measure,
                                             crit, scale, done, n_iter, diverged, hist_risk, hist_res,
                                             hist_rel, hist_al)
    converged = done & ~diverged
    n_conv, total = int(np.sum(converged)), int(np.prod(batch, dtype=int))
    if n_conv == total:
        message = f"converged: {'relative error' if target is not None else 'relative residual'} below tol={tol:g}"
    else:
        parts = []
        if np.any(diverged):
            parts.append(f"{int(np.sum(diverged))} run(s) diverged: reduce lr")
        if total - n_conv - int(np.sum(diverged)):
            parts.append(f"{total - n_conv - int(np.sum(diverged))} run(s) not below tol={tol:g} after "
                         f"max_iter={max_iter} steps: increase max_iter or lr")
        message = "; ".join(parts)
    scalar = batch == ()
    return FinetuneResult(
        A=A, B=B,
        n_iter=int(n_iter) if scalar else n_iter,
        converged=bool(converged) if scalar else converged,
        risk=np.array(hist_risk), residual=np.array(hist_res),
        rel_error=None if hist_rel is None else np.array(hist_rel),
        alignment=None if hist_al is None else np.array(hist_al),
        method=method, order=order, model=model, message=message,
    )


def _loop(problem, A, B, eta, method, lam, order, tol, max_iter, measure, crit, scale, done, n_iter, diverged,
          hist_risk, hist_res, hist_rel, hist_al):
    it = 0
    while it < max_iter and not np.all(done | diverged):
        it += 1
        GA, GB = problem.grads(A, B)
        if method == "precgd":
            stepA = _precondition_left(GA, B, lam)
        else:
            stepA = GA
        A_new = A - eta * stepA
        if order == "gauss-seidel":
            GB = problem.grad_B(A_new, B)
        stepB = _precondition_right(GB, A if order == "simultaneous" else A_new, lam) if method == "precgd" else GB
        B_new = B - eta * stepB
        finite = np.all(np.isfinite(A_new), axis=(-2, -1)) & np.all(np.isfinite(B_new), axis=(-2, -1))
        active = ~(done | diverged)
        diverged = diverged | (active & ~finite)
        upd = (active & finite)[..., None, None]
        A = np.where(upd, A_new, A)
        B = np.where(upd, B_new, B)
        n_iter = n_iter + (active & finite)
        risk, rnorm, rel, al = measure(A, B)
        res = rnorm / scale
        hist_risk.append(risk.copy())
        hist_res.append(res)
        if hist_rel is not None:
            hist_rel.append(rel.copy())
        if hist_al is not None:
            hist_al.append(al.copy())
        done = done | ((active & finite) & (crit(res, rel) < tol))
    return A, B, n_iter, done, diverged
