"""The paper's assumptions as knobs (issue 17): input covariance, noise law, unequal adapter norms.

Each knob has the paper's setting as its default, and at the default the draws are exactly the
paper's (the same calls on the generator, in the same order), so a default run is bit-identical
to one without knobs. Off the default:

- **input covariance** ``x ~ N(0, Σ)``: ``"isotropic"`` (Σ = I, the paper), ``"spiked"``
  (Σ = I + (κ − 1) e₁e₁ᵀ: one direction κ times the others' variance, condition number κ) or
  ``"toeplitz"`` (Σ_ij = ρ^|i−j|, an AR(1) design). x = L z with L the Cholesky factor of Σ and z
  the paper's standard normal draw.
- **noise law** ``ε`` with per-coordinate variance σ²: ``"gaussian"`` (the paper), ``"student_t"``
  (σ √((ν − 2)/ν) t_ν: heavy tails, the same variance; ν > 2) or ``"heteroscedastic"``
  (σ (x₁/√Σ₁₁) z: the noise scale follows the first input coordinate; E ε² = σ² still).
- **unequal adapter norms** ``norm_ratio``: retraining task t (t = 0..T−1) has its adapter U*_t
  scaled by norm_ratio^(t/(T−1)), from 1 to ``norm_ratio``; the test task keeps scale 1.
"""

from __future__ import annotations

import numpy as np

from .validation import check_array, check_choice, check_entries, check_int, check_real, check_rng, check_values

__all__ = [
    "COVARIANCES",
    "NOISE_LAWS",
    "input_covariance",
    "draw_inputs",
    "draw_noise",
    "adapter_scales",
    "rate_prediction_general",
]

COVARIANCES = ("isotropic", "spiked", "toeplitz")
NOISE_LAWS = ("gaussian", "student_t", "heteroscedastic")


def input_covariance(d, covariance="isotropic", *, condition=10.0, rho=0.5) -> np.ndarray:
    """The input covariance Σ (d, d) of a covariance knob.

    Parameters
    ----------
    d : int
        Dimension.
    covariance : {"isotropic", "spiked", "toeplitz"}
        I; I + (κ − 1) e₁e₁ᵀ with κ = ``condition``; ρ^|i−j| with ρ = ``rho``.
    condition : float >= 1
        The spiked covariance's condition number κ.
    rho : float in [0, 1)
        The Toeplitz correlation ρ.

    Examples
    --------
    >>> input_covariance(3, "spiked", condition=4.0).diagonal().tolist()
    [4.0, 1.0, 1.0]
    >>> input_covariance(3, "toeplitz", rho=0.5)[0].tolist()
    [1.0, 0.5, 0.25]
    """
    func = "input_covariance"
    d = check_int(d, "d", func, low=1)
    covariance = check_choice(covariance, "covariance", func, COVARIANCES)
    condition = check_real(condition, "condition", func, low=1.0, high=1e12)
    rho = check_real(rho, "rho", func, low=0.0, high=0.999)
    check_entries(d * d, "'d'", func)
    if covariance == "isotropic":
        return np.eye(d)
    if covariance == "spiked":
        S = np.eye(d)
        S[0, 0] = condition
        return S
    idx = np.arange(d)
    return rho ** np.abs(idx[:, None] - idx[None, :])


def _check_shape(shape, func):
    shape = check_values(shape, "shape", func, lambda v: check_int(v, "shape", func, low=0))
    check_entries(int(np.prod(shape, dtype=np.int64)), "'shape'", func)
    return shape


def _check_covariance(covariance, d, func):
    """Σ (d, d), symmetric positive definite; returns its Cholesky factor."""
    S = check_array(covariance, "covariance", func, ndim=2, shape=(d, d))
    if not np.allclose(S, S.T, rtol=1e-12, atol=1e-12):
        raise ValueError(f"The 'covariance' parameter of {func} must be symmetric positive definite; it is not "
                         f"symmetric.")
    try:
        return np.linalg.cholesky(S)
    except np.linalg.LinAlgError:
        raise ValueError(f"The 'covariance' parameter of {func} must be symmetric positive definite; it has a "
                         f"non-positive eigenvalue.") from None


def draw_inputs(rng, shape, covariance=None) -> np.ndarray:
    """``shape`` (…, d) inputs x ~ N(0, Σ): the paper's ``rng.standard_normal(shape)`` when
    ``covariance`` is None (bit for bit), else that draw times the Cholesky factor L of Σ (x = L z).

    Parameters
    ----------
    rng : numpy.random.Generator, int or None
        Source of randomness.
    shape : tuple of int
        Shape of the draw, ending with the dimension d.
    covariance : (d, d) array or None
        Σ, symmetric positive definite; None: I (the paper's draw).

    Examples
    --------
    >>> draw_inputs(0, (2, 3)).shape
    (2, 3)
    """
    func = "draw_inputs"
    rng = check_rng(rng, func)
    shape = _check_shape(shape, func)
    if not shape:
        raise ValueError(f"The 'shape' parameter of {func} must end with the dimension d. Got {shape!r}.")
    L = None if covariance is None else _check_covariance(covariance, shape[-1], func)
    Z = rng.standard_normal(shape)
    if L is None:
        return Z
    return Z @ L.T


def draw_noise(rng, shape, sigma, law="gaussian", *, X=None, covariance=None, nu=5.0) -> np.ndarray:
    """Noise of per-coordinate variance σ² under one noise law (see the module docstring).

    ``"gaussian"`` is the paper's ``sigma * rng.standard_normal(shape)`` bit for bit;
    ``"heteroscedastic"`` needs the inputs ``X`` (…, m, d_in) the noise rows (…, m, d) belong to,
    and the input covariance (None: I) to normalise x₁ by √Σ₁₁.

    Parameters
    ----------
    rng : numpy.random.Generator, int or None
        Source of randomness.
    shape : tuple of int
        Shape of the draw, (…, m, d) for the noise of m samples.
    sigma : float >= 0
        Standard deviation of each coordinate.
    law : {"gaussian", "student_t", "heteroscedastic"}
        The noise law (see the module docstring).
    X : array (…, m, d_in), optional
        The inputs the noise rows belong to; required for ``"heteroscedastic"``.
    covariance : (d_in, d_in) array or None
        The inputs' covariance Σ, whose Σ₁₁ normalises x₁ for ``"heteroscedastic"``; None: I.
    nu : float > 2
        Degrees of freedom of ``"student_t"``.

    Examples
    --------
    >>> draw_noise(0, (4, 2), 0.1, "student_t", nu=5.0).shape
    (4, 2)
    """
    func = "draw_noise"
    rng = check_rng(rng, func)
    shape = _check_shape(shape, func)
    sigma = check_real(sigma, "sigma", func, low=0.0, high=1e100)
    law = check_choice(law, "law", func, NOISE_LAWS)
    nu = check_real(nu, "nu", func, low=2.0, low_open=True, high=1e6)
    if law == "gaussian":
        return sigma * rng.standard_normal(shape)
    if law == "student_t":
        return sigma * np.sqrt((nu - 2.0) / nu) * rng.standard_t(nu, shape)
    if X is None:
        raise ValueError(f"The 'X' parameter of {func} is required for law='heteroscedastic' (the inputs whose "
                         f"first coordinate scales the noise).")
    X = check_array(X, "X", func, ndim=len(shape))
    if X.shape[:-1] != shape[:-1] or X.shape[-1] < 1:
        raise ValueError(f"The 'X' parameter of {func} must have shape {shape[:-1]} + (d_in,) to match 'shape'. "
                         f"Got {X.shape}.")
    s11 = 1.0
    if covariance is not None:
        _check_covariance(covariance, X.shape[-1], func)
        s11 = float(np.asarray(covariance)[0, 0])
    return (sigma / np.sqrt(s11)) * X[..., :1] * rng.standard_normal(shape)


def adapter_scales(T, norm_ratio=1.0) -> np.ndarray:
    """Scales (T + 1,) of the adapters U*_t: norm_ratio^(t/(T−1)) for the T retraining tasks (from
    1 to ``norm_ratio``), 1 for the test task (index T). All ones at ``norm_ratio`` = 1.

    Parameters
    ----------
    T : int >= 1
        Number of retraining tasks.
    norm_ratio : float > 0
        Scale of the last retraining adapter relative to the first (1: the paper's equal norms).

    Examples
    --------
    >>> adapter_scales(3, 4.0).tolist()
    [1.0, 2.0, 4.0, 1.0]
    """
    func = "adapter_scales"
    T = check_int(T, "T", func, low=1)
    norm_ratio = check_real(norm_ratio, "norm_ratio", func, low=0.0, low_open=True, high=1e6)
    check_entries(T + 1, "'T'", func)
    t = np.arange(T) / max(T - 1, 1)
    return np.concatenate([norm_ratio**t, [1.0]])


def rate_prediction_general(n, sigma, basis, *, covariance=None, noise="gaussian", metric="parameter") -> np.ndarray:
    """P6 off the paper's assumptions: E‖error‖² of rank-k fine-tuning by Lemma 1 from Â = A*.

    With R = V Vᵀ-spanned target (``basis`` V: (…, d, k), the column span of the test adapter),
    M = XᵀX, N = Δ_ols − R (rows of covariance C given X) and Π = M V (VᵀMV)⁻¹ Vᵀ, the first-order
    error is P_U N + (I − P_U) N Π, two parts orthogonal from the left, so for a weight W
    (``metric``: "parameter" → W = I, the error ‖Δ̂ − R‖²; "risk" → W = Σ, the excess risk
    tr(E Σ Eᵀ) under x ~ N(0, Σ)):

        E tr(err W errᵀ) = k tr(W E C) + (d − k) E tr(Πᵀ C Π W).

    Gaussian or Student-t noise of variance σ² (only second moments enter): C = σ² M⁻¹ and
    Πᵀ M⁻¹ Π = V (VᵀMV)⁻¹ Vᵀ; the Wishart means E M⁻¹ = Σ⁻¹/(n − d − 1),
    E (VᵀMV)⁻¹ = (VᵀΣV)⁻¹/(n − k − 1) give

        σ² [k tr(W Σ⁻¹)/(n − d − 1) + (d − k) tr(VᵀWV (VᵀΣV)⁻¹)/(n − k − 1)],

    which is :func:`theory.rate_prediction` at Σ = I for both metrics, stays exactly that for the
    risk metric under any Σ (tr(ΣΣ⁻¹) = d, tr(I_k) = k: the rate survives whitening), and for the
    parameter metric replaces d by tr Σ⁻¹ and d − k … by tr (VᵀΣV)⁻¹ (the spec's P6 constant needs
    this correction when Σ ≠ I). Heteroscedastic noise σ (x₁/√Σ₁₁) z adds, by Isserlis
    (E[x₁² x xᵀ] = Σ₁₁Σ + 2Σe₁e₁ᵀΣ), C ≈ σ²(Σ⁻¹ + 2 e₁e₁ᵀ/Σ₁₁)/n to first order in 1/n, i.e. the
    extra term 2σ²/Σ₁₁ [k W₁₁/(n − d − 1) + (d − k) (Πᵀe₁)ᵀ W (Πᵀe₁)/(n − k − 1)] with
    Π = ΣV(VᵀΣV)⁻¹Vᵀ (its large-n limit; the denominators are chosen like the Gaussian ones, a
    first-order-in-1/n approximation).

    Parameters
    ----------
    n : int
        Fine-tuning samples (n > d + 1).
    sigma : float
        Noise standard deviation.
    basis : array (…, d, k)
        Orthonormal (or any full-rank) basis of the test adapter's column span; leading axes batch.
    covariance : array (d, d), optional
        Σ (default I).
    noise : {"gaussian", "student_t", "heteroscedastic"}
    metric : {"parameter", "risk"}

    Examples
    --------
    >>> import numpy as np
    >>> V = np.eye(10)[:, :1]
    >>> bool(np.isclose(rate_prediction_general(100, 0.1, V), 0.1**2 * (10 / 89 + 9 / 98)))
    True
    """
    func = "rate_prediction_general"
    sigma = check_real(sigma, "sigma", func, low=0.0, high=1e100)
    V = check_array(basis, "basis", func, ndim=(2, 3))
    d, k = V.shape[-2], V.shape[-1]
    if k < 1 or k > d:
        raise ValueError(f"The 'basis' parameter of {func} must have shape (..., d, k) with 1 <= k <= d. "
                         f"Got {V.shape}.")
    n = check_int(n, "n", func, low=d + 2)
    noise = check_choice(noise, "noise", func, NOISE_LAWS)
    metric = check_choice(metric, "metric", func, ("parameter", "risk"))
    Sigma = np.eye(d)
    if covariance is not None:
        _check_covariance(covariance, d, func)
        Sigma = np.asarray(covariance, dtype=float)
    Q, _ = np.linalg.qr(V)                                     # orthonormal basis of the span
    W = np.eye(d) if metric == "parameter" else Sigma
    Sinv = np.linalg.inv(Sigma)
    QT = np.swapaxes(Q, -1, -2)
    K = np.linalg.inv(QT @ Sigma @ Q)                          # (VᵀΣV)⁻¹
    out = k * np.trace(W @ Sinv) / (n - d - 1) + (d - k) * np.trace(QT @ W @ Q @ K, axis1=-2, axis2=-1) / (n - k - 1)
    if noise == "heteroscedastic":
        Pi_t_e1 = (Q @ K @ QT @ Sigma)[..., :, 0]              # Πᵀe₁ = V (VᵀΣV)⁻¹ VᵀΣ e₁
        quad = np.einsum("...i,ij,...j->...", Pi_t_e1, W, Pi_t_e1)
        out = out + 2.0 / Sigma[0, 0] * (k * W[0, 0] / (n - d - 1) + (d - k) * quad / (n - k - 1))
    return sigma**2 * out
