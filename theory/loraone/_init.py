"""LoRA-One's initialisations: vanilla LoRA, the spectral init (theory and code forms) and LoRA-GA
(spec/loraone.md §2)."""

from __future__ import annotations

import numbers

import numpy as np

from ..validation import MAX_COUNT, MAX_DIM, check_entries, check_values, check_array, check_int, check_real, check_rng
from ._common import _check_W0


def vanilla_init(d, m, r, *, alpha, rng, batch=()) -> tuple[np.ndarray, np.ndarray]:
    """Vanilla LoRA: A0 with iid N(0, α²) entries (d, r), B0 = 0 (r, m) [code].

    ``alpha`` may be an array (one init size per batch element, broadcast against ``batch``).
    From B0 = 0 the row space of B_t stays inside the row space of G♮ for every t (spec §2).

    Parameters
    ----------
    d, m : int >= 1
        Shape of the adapted weight (d, m).
    r : int in [1, min(d, m)]
        LoRA rank.
    alpha : float >= 0 or array of float >= 0
        Standard deviation α of A0's entries; an array gives one per batch element.
    rng : numpy.random.Generator, int or None
        Source of randomness.
    batch : int or tuple of int
        Leading batch shape of A0 and B0 (empty: one pair).

    Examples
    --------
    >>> A0, B0 = vanilla_init(4, 3, 2, alpha=0.1, rng=0)
    >>> A0.shape, B0.shape, float(abs(B0).sum())
    ((4, 2), (2, 3), 0.0)
    """
    func = "vanilla_init"
    d = check_int(d, "d", func, low=1, high=MAX_DIM)
    m = check_int(m, "m", func, low=1, high=MAX_DIM)
    r = check_int(r, "r", func, low=1, high=min(d, m))
    alpha_arr = None if np.isscalar(alpha) or alpha is None else check_array(alpha, "alpha", func, ndim=(0, 1, 2, 3))
    if alpha_arr is None:
        alpha = check_real(alpha, "alpha", func, low=0.0)
    else:
        alpha_arr = check_array(alpha, "alpha", func, ndim=(0, 1, 2, 3))
        if np.any(alpha_arr < 0):
            raise ValueError(f"The 'alpha' parameter of {func} must be >= 0. Got {alpha!r} instead.")
    batch = () if isinstance(batch, tuple) and not batch else batch
    if isinstance(batch, (numbers.Integral, np.integer)):
        batch = (batch,)
    batch = check_values(batch, "batch", func, lambda b: check_int(b, "batch", func, low=1, high=MAX_COUNT),
                         least=0)
    check_entries(int(np.prod(batch, dtype=np.int64)) * r * max(d, m), "'batch', 'd', 'm' and 'r'", func)
    rng = check_rng(rng, func)
    if alpha_arr is not None:
        try:
            batch = np.broadcast_shapes(batch, alpha_arr.shape)
        except ValueError:
            raise ValueError(f"The 'alpha' parameter of {func} must broadcast against 'batch' {batch}. "
                             f"Got an array of shape {alpha_arr.shape}.") from None
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
        The one-step negative gradient G♮.
    r : int in [1, min(d, m)]
        LoRA rank.
    gamma : float > 0
        The step (1 for the linear model, 2 for the ReLU model of spec §1).

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

    From N = 16d noise-free samples the init is already within √((d + 1)/N) ≈ 0.25 of ΔW
    (spec L1: A0 B0 − ΔW = (Σ̂ − I)ΔW):

    >>> from theory.loraone import one_step_gradient, sample_low_rank
    >>> rng = np.random.default_rng(0)
    >>> dW = sample_low_rank(100, 100, 4, rng=rng); X = rng.standard_normal((1600, 100))
    >>> A0, B0 = spectral_init(one_step_gradient(X, X @ dW, np.zeros((100, 100))), 4)
    >>> round(float(np.linalg.norm(A0 @ B0 - dW) / np.linalg.norm(dW)), 2)
    0.26
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
    G : (..., d, m)
        The one-step negative gradient G♮.
    r : int in [1, min(d, m)]
        LoRA rank.
    alpha : float > 0
        The code's LoRA α (16).
    gamma : float > 0
        The code's scale γ (128).

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
    G : (..., d, m)
        The one-step negative gradient.
    W0 : (..., d, m)
        The pretrained weight, which the offset shifts.
    r : int with 2r <= min(d, m)
        LoRA rank.
    gamma : float > 0
        LoRA-GA's ``stable_gamma`` (16).

    Returns
    -------
    (A0, B0, W0_new) with W0_new + A0 B0 = W0.

    Examples
    --------
    The offset A0 B0 pairs left singular vector i with right singular vector r + i, so its norm is
    c²√r = √(r m)/γ, and with a sample gradient (Σ̂ ≠ I) the effective target ΔW + A0 B0 has rank
    r* + r, more than the adapter's rank r: here r* = r = 1 and the target has two nonzero singular
    values.

    >>> import numpy as np
    >>> from theory.loraone import one_step_gradient
    >>> rng = np.random.default_rng(0)
    >>> X = rng.standard_normal((50, 4)); dW = np.outer([1.0, 0, 0, 0], [0, 1.0, 0, 0]); W0 = np.zeros((4, 4))
    >>> A0, B0, W0n = loraga_init(one_step_gradient(X, X @ dW, W0), W0, 1, gamma=16.0)
    >>> round(float(np.linalg.norm(A0 @ B0)), 12)        # √(1 · 4) / 16
    0.125
    >>> np.round(np.linalg.svd(dW + A0 @ B0, compute_uv=False), 3).tolist()
    [1.007, 0.029, 0.0, 0.0]
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
