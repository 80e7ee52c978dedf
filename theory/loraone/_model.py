"""The LoRA-One model and loss: ground truths, the one-step full gradient, the LoRA objective and
its gradients, and the subspace-alignment metric (spec/loraone.md §1, §3)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .._lowrank import _sin_orthonormal
from .._results import ArrayFields
from ..validation import MAX_DIM, check_array, check_int, check_real, check_rng
from ._common import _T, _check_data, _check_factors, _check_model, _check_W0, _relu


@dataclass(frozen=True, eq=False)
class LoraObjective(ArrayFields):
    """Value and gradients of the LoRA loss at (A, B).

    Examples
    --------
    >>> import numpy as np
    >>> from theory import loraone as lo
    >>> rng = np.random.default_rng(0)
    >>> X = rng.standard_normal((400, 6))
    >>> dW = lo.sample_low_rank(6, 5, 2, kappa=10.0, rng=1)
    >>> W0 = np.zeros((6, 5))
    >>> Y = X @ dW
    >>> A, B = lo.vanilla_init(6, 5, 2, alpha=0.1, rng=2)
    >>> obj = lo.lora_objective(X, Y, W0, A, B)
    >>> obj.grad_A.shape, obj.grad_B.shape, bool(obj.value > 0)
    ((6, 2), (2, 5), True)
    """

    value: float | np.ndarray
    grad_A: np.ndarray
    grad_B: np.ndarray


# --------------------------------------------------------------------------------------------
# Ground truths with a prescribed spectrum


def sample_low_rank(d, m, r, *, kappa=1.0, top=1.0, rng) -> np.ndarray:
    """A random ΔW = P Λ Qᵀ of rank ``r`` with singular values geometric from ``top`` to ``top/κ``.

    ``P`` (d, r) and ``Q`` (m, r) are Haar-random orthonormal; λ*_i = top · κ^{−(i−1)/(r−1)}.
    This is the instance of spec/loraone.md §3 (λ*_1 = 1, condition number κ).

    Parameters
    ----------
    d, m : int >= 1
        Shape of ΔW (d, m).
    r : int in [1, min(d, m)]
        Rank of ΔW.
    kappa : float >= 1
        Condition number κ = λ*_1/λ*_r.
    top : float > 0
        The largest singular value λ*_1.
    rng : numpy.random.Generator, int or None
        Source of randomness.

    Examples
    --------
    >>> import numpy as np
    >>> dW = sample_low_rank(6, 5, 3, kappa=100.0, rng=0)
    >>> np.round(np.linalg.svd(dW, compute_uv=False), 6).tolist()
    [1.0, 0.1, 0.01, 0.0, 0.0]
    """
    func = "sample_low_rank"
    d = check_int(d, "d", func, low=1, high=MAX_DIM)
    m = check_int(m, "m", func, low=1, high=MAX_DIM)
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
    X : (..., N, d)
        Inputs.
    Y : (..., N, m)
        Labels.
    W0 : (..., d, m)
        The pretrained weight.
    model : {"linear", "relu"}
        The model: y = W♮ᵀx or y = ReLU(W♮ᵀx).

    Returns
    -------
    G : (..., d, m)

    Examples
    --------
    With an isotropic design (Σ̂ = I, the population) one full step of size 1 lands on W♮:
    G♮ = ΔW whatever W0 is.

    >>> import numpy as np
    >>> X = np.sqrt(3.0) * np.eye(3)                  # N = d = 3, XᵀX/N = I
    >>> dW = np.outer([1.0, 0, 0], [0, 2.0]); W0 = np.ones((3, 2))
    >>> one_step_gradient(X, X @ (W0 + dW), W0).tolist()
    [[0.0, 2.0], [0.0, 0.0], [0.0, 0.0]]

    For the ReLU model the same step only goes half-way (⟨G♮, ΔW⟩/‖ΔW‖² ≈ ½):

    >>> rng = np.random.default_rng(0)
    >>> X = rng.standard_normal((20000, 4)); W0 = np.eye(4); dW = 0.1 * np.outer([1.0, 0, 0, 0], [0, 1.0, 0, 0])
    >>> G = one_step_gradient(X, np.maximum(X @ (W0 + dW), 0.0), W0, model="relu")
    >>> round(float(np.sum(G * dW) / np.sum(dW * dW)), 1)
    0.5
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

    Parameters
    ----------
    X : (..., N, d)
        Inputs.
    Y : (..., N, m)
        Labels.
    W0 : (..., d, m)
        The pretrained weight.
    A : (..., d, r)
        The LoRA factor on the input side.
    B : (..., r, m)
        The LoRA factor on the output side.
    model : {"linear", "relu"}
        f = identity or ReLU.

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
# Metrics


def subspace_alignment(A, U) -> np.ndarray:
    """sin θ between the top-k left singular subspace of ``A`` and span(``U``), k = U's columns.

    The metric of spec §3, sin θ(U1, U2) = ‖(I − U2U2ᵀ)U1‖_op, with U1 the top-k left singular
    vectors of A (e.g. the LoRA factor A_t against the top-r* subspace of G♮ or of ΔW).

    Parameters
    ----------
    A : (..., d, r)
        The matrix whose top-k left singular subspace is compared.
    U : (..., d, k), 1 <= k <= r
        A basis of the reference subspace (linearly independent columns).

    Examples
    --------
    ``U`` is orthonormalised first, so any basis of the reference span may be passed.

    >>> import numpy as np
    >>> A = np.array([[1.0, 0.0], [0.0, 1e-3], [0.0, 0.0]])   # top left singular vector e₁
    >>> float(subspace_alignment(A, np.array([[2.0], [0.0], [0.0]])))
    0.0
    >>> round(float(subspace_alignment(A, np.array([[1.0], [1.0], [0.0]]))), 6)   # 45°: sin = 1/√2
    0.707107
    """
    func = "subspace_alignment"
    A = check_array(A, "A", func, ndim=(2, 3, 4))
    U = check_array(U, "U", func, ndim=(2, 3, 4), shape=(A.shape[-2], None))
    k = U.shape[-1]
    if not 1 <= k <= A.shape[-1]:
        raise ValueError(f"The 'U' parameter of {func} must have between 1 and {A.shape[-1]} columns "
                         f"(the columns of A). Got shape {U.shape}.")
    Q, R = np.linalg.qr(U)
    diag = np.abs(np.diagonal(R, axis1=-2, axis2=-1))
    if np.any(diag.min(axis=-1) <= k * np.finfo(float).eps * diag.max(axis=-1)):
        raise ValueError(f"The 'U' parameter of {func} must have linearly independent columns (it spans the "
                         f"reference subspace). Got a rank-deficient U of shape {U.shape}.")
    return _alignment(A, Q)


def _alignment(A, Qref):
    """sin θ(top-k left singular vectors of A, span Qref); Qref must have orthonormal columns (..., d, k)."""
    k = Qref.shape[-1]
    Ua = np.linalg.svd(A, full_matrices=False)[0][..., :, :k]
    return _sin_orthonormal(Ua, Qref)
