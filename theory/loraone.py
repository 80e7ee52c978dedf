"""LoRA-One: the one-step full gradient, spectral initialisation and preconditioned fine-tuning.

Implements spec/loraone.md §1–§2 on numpy arrays (no I/O, randomness only through ``rng``).

Orientation (the paper's)
-------------------------
Rows are samples: ``X`` (N, d) inputs, ``Y`` (N, m) outputs, and ``Y ≈ X W`` with W (d, m). LoRA
adds ``A B`` with ``A`` (d, r) on the input side and ``B`` (r, m) on the output side:
``W = W0 + A B`` and the loss is ``L(A, B) = (1/2N)‖X(W0 + AB) − Y‖²``. Then
``∇_W L = Σ̂ (W − W♮)`` with ``Σ̂ = XᵀX/N``, ``∇_A L = ∇_W L Bᵀ`` and ``∇_B L = Aᵀ ∇_W L``.

Mapping to torch / PEFT: a ``torch.nn.Linear`` stores ``weight`` as out × in, i.e. ``W0ᵀ``, and PEFT
adds ``scaling · lora_B @ lora_A`` (out × in). Hence ``A = lora_Aᵀ`` (in × r) and ``B = lora_Bᵀ``
(r × out), with PEFT's ``scaling`` (``lora_alpha/r``, or ``lora_alpha/√r`` with rsLoRA) folded into
the factors here: the theory uses no scaling. To export: ``lora_A = A.T``, ``lora_B = B.T / scaling``.

In LoRA-ML's orientation (spec/theory.md, ``y = W x``, W out × in) a parameter ``Â`` corresponds to
``W0 = Âᵀ`` here, and a LoRA-One update ``A B`` to ``Δ = (A B)ᵀ``.

Sufficient statistics
---------------------
The linear loss depends on the data only through ``Σ̂ = XᵀX/N`` and ``XᵀY/N``, so
:func:`finetune_moments` (which :func:`finetune` and :func:`finetune_population` call) costs
O(d r (d + m)) per step whatever N is. Population mode is ``Σ̂ = I``, ``XᵀY/N = W♮``: the loss is
then ``½‖W0 + AB − W♮‖²``. Internally the quadratic is kept in square-root form
``½‖H(W0 + AB) − K‖²`` (``H = Σ̂^{1/2}``, ``K = H⁺ XᵀY/N``) so that residuals near an exact fit are
computed without cancellation (relative errors of 1e-15 are measurable).

All engines are batched: any leading axes of the statistics, ``W0`` and the factors broadcast, so
several κ or α (or runs) advance in one array operation per step.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ._results import ArrayFields
from ._lowrank import subspace_sin
from .validation import check_array, check_choice, check_int, check_real, check_rng

__all__ = [
    "FinetuneResult",
    "LoraObjective",
    "finetune",
    "finetune_moments",
    "finetune_population",
    "lora_objective",
    "loraga_init",
    "one_step_gradient",
    "sample_low_rank",
    "spectral_init",
    "spectral_init_code",
    "subspace_alignment",
    "subspace_sin",
    "vanilla_init",
]

_MODELS = ("linear", "relu")
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


@dataclass(frozen=True, eq=False)
class LoraObjective(ArrayFields):
    """Value and gradients of the LoRA loss at (A, B)."""

    value: float | np.ndarray
    grad_A: np.ndarray
    grad_B: np.ndarray


# --------------------------------------------------------------------------------------------
# Checks


def _check_data(X, Y, func):
    X = check_array(X, "X", func, ndim=(2, 3, 4))
    Y = check_array(Y, "Y", func, ndim=(2, 3, 4))
    try:
        ok = X.shape[-2] == Y.shape[-2] and np.broadcast_shapes(X.shape[:-2], Y.shape[:-2]) is not None
    except ValueError:
        ok = False
    if not ok:
        raise ValueError(
            f"The 'X' and 'Y' parameters of {func} must have the same number of rows N and "
            f"broadcastable batch axes (..., N, ·). Got X of shape {X.shape} and Y of shape {Y.shape}."
        )
    if X.shape[-2] < 1 or X.shape[-1] < 1 or Y.shape[-1] < 1:
        raise ValueError(f"The 'X' and 'Y' parameters of {func} must have N, d, m >= 1. "
                         f"Got X of shape {X.shape} and Y of shape {Y.shape}.")
    return X, Y


def _check_W0(W0, d, m, func, name="W0"):
    return check_array(W0, name, func, ndim=(2, 3, 4), shape=(d, m))


def _check_factors(A, B, d, m, func, names=("A0", "B0")):
    A = check_array(A, names[0], func, ndim=(2, 3, 4), shape=(d, None))
    r = A.shape[-1]
    if not 1 <= r <= min(d, m):
        raise ValueError(f"The {names[0]!r} parameter of {func} must have shape (..., {d}, r) with "
                         f"1 <= r <= {min(d, m)}. Got shape {A.shape}.")
    B = check_array(B, names[1], func, ndim=(2, 3, 4), shape=(r, m))
    return A, B


def _check_model(model, func):
    return check_choice(model, "model", func, _MODELS)


def _relu(Z):
    return np.maximum(Z, 0.0)


def _T(M):
    return np.swapaxes(M, -1, -2)


# --------------------------------------------------------------------------------------------
# Ground truths with a prescribed spectrum


def sample_low_rank(d, m, r, *, kappa=1.0, top=1.0, rng) -> np.ndarray:
    """A random ΔW = P Λ Qᵀ of rank ``r`` with singular values geometric from ``top`` to ``top/κ``.

    ``P`` (d, r) and ``Q`` (m, r) are Haar-random orthonormal; λ*_i = top · κ^{−(i−1)/(r−1)}.
    This is the instance of spec/loraone.md §3 (λ*_1 = 1, condition number κ).

    Examples
    --------
    >>> import numpy as np
    >>> dW = sample_low_rank(6, 5, 3, kappa=100.0, rng=0)
    >>> np.round(np.linalg.svd(dW, compute_uv=False), 6).tolist()
    [1.0, 0.1, 0.01, 0.0, 0.0]
    """
    func = "sample_low_rank"
    d = check_int(d, "d", func, low=1)
    m = check_int(m, "m", func, low=1)
    r = check_int(r, "r", func, low=1, high=min(d, m))
    kappa = check_real(kappa, "kappa", func, low=1.0)
    top = check_real(top, "top", func, low=0.0, low_open=True)
    rng = check_rng(rng, func)
    P, _ = np.linalg.qr(rng.standard_normal((d, r)))
    Q, _ = np.linalg.qr(rng.standard_normal((m, r)))
    lam = top * kappa ** (-np.arange(r) / max(r - 1, 1))
    return (P * lam) @ Q.T


# --------------------------------------------------------------------------------------------
# The loss, its gradients and the one-step full gradient


def one_step_gradient(X, Y, W0, *, model: str = "linear") -> np.ndarray:
    """The negative full gradient at the pretrained weight, G♮ = −∇_W L(W0).

    Linear model: G♮ = (1/N) Xᵀ(Y − X W0) = Σ̂ ΔW for noise-free labels (= ΔW in population).
    ReLU model (``model="relu"``, y = ReLU(W♮ᵀx)): G♮ = (1/N) Xᵀ[(Y − ReLU(X W0)) ⊙ 1{X W0 > 0}],
    whose expectation is ½ΔW to first order (spec §1), so the spectral step that recovers ΔW is 2.

    Parameters
    ----------
    X : (..., N, d) inputs; Y : (..., N, m) labels; W0 : (..., d, m) pretrained weight.
    model : {"linear", "relu"}

    Returns
    -------
    G : (..., d, m)

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> X = rng.standard_normal((50, 3)); dW = np.outer([1.0, 0, 0], [0, 2.0])
    >>> G = one_step_gradient(X, X @ dW, np.zeros((3, 2)))
    >>> bool(np.allclose(G, X.T @ X @ dW / 50))
    True
    """
    func = "one_step_gradient"
    X, Y = _check_data(X, Y, func)
    W0 = _check_W0(W0, X.shape[-1], Y.shape[-1], func)
    model = _check_model(model, func)
    N = X.shape[-2]
    Z = X @ W0
    if model == "linear":
        return _T(X) @ (Y - Z) / N
    return _T(X) @ ((Y - _relu(Z)) * (Z > 0)) / N


def lora_objective(X, Y, W0, A, B, *, model: str = "linear") -> LoraObjective:
    """Value and gradients of L(A, B) = (1/2N)‖f(X(W0 + AB)) − Y‖², f = identity or ReLU.

    ∇_A L = ∇_W L Bᵀ and ∇_B L = Aᵀ ∇_W L with ∇_W L = (1/N) Xᵀ[(f(XW) − Y) ⊙ f′(XW)]
    (f′ = 1{XW > 0} for ReLU, the subgradient 0 at the kink).

    Examples
    --------
    >>> import numpy as np
    >>> X = np.eye(2); Y = np.array([[1.0], [0.0]])
    >>> obj = lora_objective(X, Y, np.zeros((2, 1)), np.ones((2, 1)), np.zeros((1, 1)))
    >>> float(obj.value), obj.grad_B.tolist()
    (0.25, [[-0.5]])
    """
    func = "lora_objective"
    X, Y = _check_data(X, Y, func)
    d, m = X.shape[-1], Y.shape[-1]
    W0 = _check_W0(W0, d, m, func)
    A, B = _check_factors(A, B, d, m, func, names=("A", "B"))
    model = _check_model(model, func)
    N = X.shape[-2]
    Z = X @ (W0 + A @ B)
    if model == "linear":
        R = Z - Y
        D = R
    else:
        R = _relu(Z) - Y
        D = R * (Z > 0)
    value = 0.5 * np.sum(R * R, axis=(-2, -1)) / N
    GW = _T(X) @ D / N
    value = float(value) if np.ndim(value) == 0 else value
    return LoraObjective(value=value, grad_A=GW @ _T(B), grad_B=_T(A) @ GW)


# --------------------------------------------------------------------------------------------
# Initialisations


def vanilla_init(d, m, r, *, alpha, rng, batch=()) -> tuple[np.ndarray, np.ndarray]:
    """Vanilla LoRA: A0 with iid N(0, α²) entries (d, r), B0 = 0 (r, m) [code].

    ``alpha`` may be an array (one init size per batch element, broadcast against ``batch``).
    From B0 = 0 the row space of B_t stays inside the row space of G♮ for every t (spec §2).

    Examples
    --------
    >>> A0, B0 = vanilla_init(4, 3, 2, alpha=0.1, rng=0)
    >>> A0.shape, B0.shape, float(abs(B0).sum())
    ((4, 2), (2, 3), 0.0)
    """
    func = "vanilla_init"
    d = check_int(d, "d", func, low=1)
    m = check_int(m, "m", func, low=1)
    r = check_int(r, "r", func, low=1, high=min(d, m))
    alpha_arr = np.asarray(alpha, dtype=float) if not np.isscalar(alpha) else None
    if alpha_arr is None:
        alpha = check_real(alpha, "alpha", func, low=0.0)
    else:
        alpha_arr = check_array(alpha, "alpha", func, ndim=(0, 1, 2, 3))
        if np.any(alpha_arr < 0):
            raise ValueError(f"The 'alpha' parameter of {func} must be >= 0. Got {alpha!r} instead.")
    batch = tuple(int(b) for b in np.atleast_1d(batch)) if np.size(batch) else ()
    rng = check_rng(rng, func)
    if alpha_arr is not None:
        batch = np.broadcast_shapes(batch, alpha_arr.shape)
        scale = np.broadcast_to(alpha_arr, batch)[..., None, None]
    else:
        scale = alpha
    A0 = scale * rng.standard_normal(batch + (d, r))
    return A0, np.zeros(batch + (r, m))


def _top_svd(G, r):
    U, s, Vt = np.linalg.svd(G, full_matrices=False)
    return U[..., :, :r], s[..., :r], Vt[..., :r, :], s


def spectral_init(G, r, *, gamma: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """LoRA-One's spectral initialisation, theory form [paper].

    With G = U S Vᵀ (the one-step negative gradient, :func:`one_step_gradient`):
    A0 = √γ U_r diag(√S_r), B0 = √γ diag(√S_r) V_rᵀ, so A0ᵀA0 = B0B0ᵀ (balanced) and
    A0 B0 = γ · SVD_r(G): one full fine-tuning step of size γ truncated to rank r. W0 is unchanged.

    Parameters
    ----------
    G : (..., d, m)
    r : int in [1, min(d, m)]
    gamma : float > 0, the step (1 for the linear model, 2 for the ReLU model of spec §1).

    Returns
    -------
    (A0, B0) : (..., d, r), (..., r, m)

    Examples
    --------
    >>> import numpy as np
    >>> G = np.diag([3.0, 2.0, 1.0])
    >>> A0, B0 = spectral_init(G, 2)
    >>> bool(np.allclose(A0 @ B0, np.diag([3.0, 2.0, 0.0]))), bool(np.allclose(A0.T @ A0, B0 @ B0.T))
    (True, True)
    """
    func = "spectral_init"
    G = check_array(G, "G", func, ndim=(2, 3, 4))
    r = check_int(r, "r", func, low=1, high=min(G.shape[-2:]))
    gamma = check_real(gamma, "gamma", func, low=0.0, low_open=True)
    U, s, Vt, _ = _top_svd(G, r)
    root = np.sqrt(gamma * s)
    return U * root[..., None, :], root[..., :, None] * Vt


def spectral_init_code(G, r, *, alpha: float = 16.0, gamma: float = 128.0) -> tuple[np.ndarray, np.ndarray]:
    """LoRA-One's spectral initialisation as the authors' current code does it [code].

    Normalised by the top singular value and scaled like rsLoRA:
    A0 B0 = (α / (γ √r)) · SVD_r(G) / σ_1(G), with balanced factors. The code's forward pass
    multiplies lora_B @ lora_A by the rsLoRA scaling α/√r; here that scaling is folded into the
    factors so that the theory's W = W0 + A B holds. (The code estimates G from a few mini-batches
    with a randomised SVD; pass such a G if wanted — the SVD here is exact.)

    Parameters
    ----------
    G : (..., d, m); r : int in [1, min(d, m)]; alpha : float > 0 (16); gamma : float > 0 (128).

    Examples
    --------
    >>> import numpy as np
    >>> A0, B0 = spectral_init_code(np.diag([4.0, 2.0]), 1, alpha=16.0, gamma=128.0)
    >>> round(float((A0 @ B0)[0, 0]), 12)   # 16 / (128 · 1) · 4 / 4
    0.125
    """
    func = "spectral_init_code"
    G = check_array(G, "G", func, ndim=(2, 3, 4))
    r = check_int(r, "r", func, low=1, high=min(G.shape[-2:]))
    alpha = check_real(alpha, "alpha", func, low=0.0, low_open=True)
    gamma = check_real(gamma, "gamma", func, low=0.0, low_open=True)
    U, s, Vt, _ = _top_svd(G, r)
    s1 = np.where(s[..., :1] > 0, s[..., :1], 1.0)
    root = np.sqrt(alpha / (gamma * np.sqrt(r)) * s / s1)
    return U * root[..., None, :], root[..., :, None] * Vt


def loraga_init(G, W0, r, *, gamma: float = 16.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """LoRA-GA initialisation with its offset [code] (the baseline LoRA-One criticises).

    SVD of the gradient ∇L(W0) = −G = U S Vᵀ: A0 = c · U[:, :r] (left singular vectors 1..r),
    B0 = c · V[:, r:2r]ᵀ (right singular vectors r+1..2r), c = m^{1/4}/√γ (``stable`` scaling);
    then W0 ← W0 − A0 B0 so that the initial output is unchanged. The effective target of A B
    becomes ΔW + A0 B0, of rank up to r* + r (spec L5).

    Parameters
    ----------
    G : (..., d, m) the one-step negative gradient; W0 : (..., d, m);
    r : int with 2r <= min(d, m); gamma : float > 0 (LoRA-GA's ``stable_gamma``, 16).

    Returns
    -------
    (A0, B0, W0_new) with W0_new + A0 B0 = W0.

    Examples
    --------
    >>> import numpy as np
    >>> G = np.diag([4.0, 3.0, 2.0, 1.0]); W0 = np.eye(4)
    >>> A0, B0, W0n = loraga_init(G, W0, 2)
    >>> bool(np.allclose(W0n + A0 @ B0, W0))
    True
    """
    func = "loraga_init"
    G = check_array(G, "G", func, ndim=(2, 3, 4))
    d, m = G.shape[-2:]
    W0 = _check_W0(W0, d, m, func)
    r = check_int(r, "r", func, low=1, high=min(d, m) // 2)
    gamma = check_real(gamma, "gamma", func, low=0.0, low_open=True)
    U, _, Vt = np.linalg.svd(-G, full_matrices=False)
    c = m ** 0.25 / np.sqrt(gamma)
    A0 = c * U[..., :, :r]
    B0 = c * Vt[..., r:2 * r, :]
    return A0, B0, W0 - A0 @ B0


# --------------------------------------------------------------------------------------------
# Metrics


def subspace_alignment(A, U) -> np.ndarray:
    """sin θ between the top-k left singular subspace of ``A`` and span(``U``), k = U's columns.

    The metric of spec §3, sin θ(U1, U2) = ‖(I − U2U2ᵀ)U1‖_op, with U1 the top-k left singular
    vectors of A (e.g. the LoRA factor A_t against the top-r* subspace of G♮ or of ΔW).

    Examples
    --------
    >>> import numpy as np
    >>> A = np.array([[1.0, 0.0], [0.0, 1e-3], [0.0, 0.0]])
    >>> float(subspace_alignment(A, np.array([[1.0], [0.0], [0.0]])))
    0.0
    """
    func = "subspace_alignment"
    A = check_array(A, "A", func, ndim=(2, 3, 4))
    U = check_array(U, "U", func, ndim=(2, 3, 4), shape=(A.shape[-2], None))
    k = U.shape[-1]
    if not 1 <= k <= A.shape[-1]:
        raise ValueError(f"The 'U' parameter of {func} must have between 1 and {A.shape[-1]} columns "
                         f"(the columns of A). Got shape {U.shape}.")
    return _alignment(A, U)


def _alignment(A, Qref):
    """Qref orthonormal (..., d, k)."""
    k = Qref.shape[-1]
    Ua = np.linalg.svd(A, full_matrices=False)[0][..., :, :k]
    resid = Ua - Qref @ (_T(Qref) @ Ua)
    return np.linalg.norm(resid, ord=2, axis=(-2, -1))


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
    X : (..., N, d); Y : (..., N, m); W0 : (..., d, m); A0 : (..., d, r); B0 : (..., r, m)
        Leading (batch) axes broadcast.
    method : {"gd", "precgd"}
    lr : float > 0, or an array of positive step sizes broadcast over the batch.
    lam : float >= 0, the preconditioner's damping λ (needed when r > r*; "precgd" only).
    tol : float > 0
    max_iter : int >= 0
    target : (..., d, m) or None, the update ΔW that A B should reach.
    order : {"simultaneous", "gauss-seidel"}
    model : {"linear", "relu"}
    align_to : (..., d, k) or None; records sin θ(top-k left singular vectors of A_t, span align_to).

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
    """
    return _finetune_moments("finetune_moments", S, C, W0, A0, B0, method=method, lr=lr, lam=lam, tol=tol,
                             max_iter=max_iter, target=target, order=order, align_to=align_to)


def finetune_population(W_natural, W0, A0, B0, *, method: str = "gd", lr, lam: float = 0.0,
                        tol: float = 1e-6, max_iter: int, target=None, order: str = "simultaneous",
                        align_to=None) -> FinetuneResult:
    """:func:`finetune` in population (Σ̂ = I): the loss is ½‖W0 + AB − W♮‖².

    Examples
    --------
    >>> import numpy as np
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
    return dict(method=method, lr=lr, lam=lam, tol=tol, max_iter=max_iter, order=order)


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
