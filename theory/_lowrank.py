"""Low-rank linear algebra: Eckart–Young, reduced-rank regression (Lemma 1), subspace metrics."""

from __future__ import annotations

import numpy as np

from .validation import check_array, check_int, check_real

__all__ = [
    "best_rank_approx",
    "tail_energy",
    "reduced_rank_regression",
    "subspace_sin",
    "procrustes_distance",
    "rate_prediction",
]


def best_rank_approx(M, r) -> np.ndarray:
    """Best approximation of ``M`` of rank at most ``r`` in Frobenius (and operator) norm.

    Eckart–Young: keep the top ``r`` singular triplets. Broadcasts over leading axes.

    Parameters
    ----------
    M : array (..., m, n)
        The matrix or a stack of matrices.
    r : int in [0, min(m, n)]
        The rank; 0 gives zeros.

    Examples
    --------
    >>> import numpy as np
    >>> M = np.diag([3.0, 2.0, 1.0])
    >>> np.allclose(best_rank_approx(M, 2), np.diag([3.0, 2.0, 0.0]))
    True
    """
    M = check_array(M, "M", "best_rank_approx", ndim=(2, 3, 4, 5))
    r = check_int(r, "r", "best_rank_approx", low=0, high=min(M.shape[-2:]))
    if r == 0:
        return np.zeros_like(M)
    U, s, Vt = np.linalg.svd(M, full_matrices=False)
    return (U[..., :, :r] * s[..., None, :r]) @ Vt[..., :r, :]


def tail_energy(M, r) -> np.ndarray:
    """Σ_{i>r} σ_i(M)², the squared Frobenius error of the best rank-``r`` approximation.

    Parameters
    ----------
    M : array (..., m, n)
        The matrix or a stack of matrices.
    r : int in [0, min(m, n)]
        The rank of the approximation; 0 gives ‖M‖².

    Examples
    --------
    >>> import numpy as np
    >>> float(tail_energy(np.diag([3.0, 2.0, 1.0]), 1))
    5.0
    """
    M = check_array(M, "M", "tail_energy", ndim=(2, 3, 4, 5))
    r = check_int(r, "r", "tail_energy", low=0, high=min(M.shape[-2:]))
    s = np.linalg.svd(M, compute_uv=False)
    return np.sum(s[..., r:] ** 2, axis=-1)


def reduced_rank_regression(X, Y, rank) -> np.ndarray:
    """Global minimiser of ‖Y − X Bᵀ‖² over matrices B (d_out, d_in) of rank at most ``rank``.

    Lemma 1 (spec §3.3): with ``B_ols`` the (minimum-norm) least-squares solution and
    ``F = X B_olsᵀ`` the fitted values, the optimum is ``V_r V_rᵀ B_ols`` where ``V_r`` holds
    the top-``rank`` right singular vectors of ``F``. Works for any shapes, including
    ``n < d_in`` (then B_ols is the minimum-norm solution and the optimum value is unchanged),
    and broadcasts over leading batch axes: ``X`` (..., n, d_in), ``Y`` (..., n, d_out).

    Parameters
    ----------
    X : array (..., n, d_in)
    Y : array (..., n, d_out)
    rank : int in [1, min(d_in, d_out)]

    Returns
    -------
    B : array (..., d_out, d_in)

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> X = rng.standard_normal((200, 5))
    >>> B_true = np.outer(rng.standard_normal(4), rng.standard_normal(5))
    >>> B = reduced_rank_regression(X, X @ B_true.T, rank=1)
    >>> bool(np.allclose(B, B_true))
    True
    """
    func = "reduced_rank_regression"
    X = check_array(X, "X", func, ndim=(2, 3, 4))
    Y = check_array(Y, "Y", func, ndim=(2, 3, 4))
    if X.shape[:-1] != Y.shape[:-1]:
        raise ValueError(
            f"The 'X' and 'Y' parameters of {func} must have the same leading shape (..., n). "
            f"Got X of shape {X.shape} and Y of shape {Y.shape}."
        )
    rank = check_int(rank, "rank", func, low=1, high=min(X.shape[-1], Y.shape[-1]))
    # Thin SVD of X: the fitted values are P_X Y = Ux Ux^T Y, and B_ols^T = Vx S^+ Ux^T Y.
    Ux, s, Vxt = np.linalg.svd(X, full_matrices=False)
    tol = s[..., :1] * max(X.shape[-2:]) * np.finfo(np.float64).eps
    keep = s > tol
    s_inv = np.where(keep, 1.0 / np.where(keep, s, 1.0), 0.0)
    Z = np.swapaxes(Ux, -1, -2) @ Y * keep[..., :, None]            # (..., m, d_out), F = Ux Z
    B_ols_T = np.swapaxes(Vxt, -1, -2) @ (s_inv[..., :, None] * Z)   # (..., d_in, d_out)
    # Right singular vectors of F = Ux Z are those of Z since Ux has orthonormal columns.
    _, _, Vzt = np.linalg.svd(Z, full_matrices=False)
    Vr = np.swapaxes(Vzt[..., :rank, :], -1, -2)                     # (..., d_out, rank)
    return Vr @ (np.swapaxes(Vr, -1, -2) @ np.swapaxes(B_ols_T, -1, -2))


def subspace_sin(U1, U2) -> np.ndarray:
    """Largest principal-angle sine between the column spans: ‖(I − Q2 Q2ᵀ) Q1‖_op.

    The columns are orthonormalised first, so any bases may be passed.

    Parameters
    ----------
    U1, U2 : arrays (..., d, k1) and (..., d, k2)
        Bases of the two subspaces (any full-rank columns), with broadcastable batch shapes.

    Examples
    --------
    >>> import numpy as np
    >>> import theory as th
    >>> e = np.eye(3)
    >>> float(th.subspace_sin(e[:, :1], e[:, :2]))                # e1 lies in span(e1, e2)
    0.0
    >>> round(float(th.subspace_sin(e[:, :1] + e[:, 2:], e[:, :2])), 4)   # 45 degrees out of the plane
    0.7071
    """
    U1 = check_array(U1, "U1", "subspace_sin", ndim=(2, 3))
    U2 = check_array(U2, "U2", "subspace_sin", ndim=(2, 3))
    if U1.shape[-2] != U2.shape[-2] or min(U1.shape[-2:]) < 1 or min(U2.shape[-2:]) < 1:
        raise ValueError("The 'U1' and 'U2' parameters of subspace_sin must be non-empty bases of the same space "
                         f"(as many rows). Got shapes {U1.shape} and {U2.shape}.")
    try:
        np.broadcast_shapes(U1.shape[:-2], U2.shape[:-2])
    except ValueError:
        raise ValueError(f"The 'U1' and 'U2' parameters of subspace_sin must have broadcastable batch shapes. "
                         f"Got {U1.shape} and {U2.shape}.") from None
    Q1, _ = np.linalg.qr(U1)
    Q2, _ = np.linalg.qr(U2)
    return _sin_orthonormal(Q1, Q2)


def _sin_orthonormal(Q1, Q2):
    """‖(I − Q2 Q2ᵀ) Q1‖_op for orthonormal columns Q1, Q2 (..., d, ·): the sin θ kernel."""
    resid = Q1 - Q2 @ (np.swapaxes(Q2, -1, -2) @ Q1)
    return np.linalg.norm(resid, ord=2, axis=(-2, -1))


def procrustes_distance(U1, U2) -> np.ndarray:
    """min over orthogonal Q of ‖U1 − U2 Q‖: the distance between factors up to rotation.

    This is the natural metric on the quotient U Uᵀ ~ U Q (pymanopt's PSDFixedRank). The
    optimal Q comes from the SVD of U2ᵀ U1 (orthogonal Procrustes).

    Parameters
    ----------
    U1, U2 : arrays (..., d, k) of the same shape
        The two factors.

    Examples
    --------
    >>> import numpy as np
    >>> import theory as th
    >>> rng = np.random.default_rng(0)
    >>> U = rng.standard_normal((5, 2))
    >>> Q, _ = np.linalg.qr(rng.standard_normal((2, 2)))      # an orthogonal 2 x 2 matrix
    >>> bool(th.procrustes_distance(U @ Q, U) < 1e-12)          # the same factor up to rotation
    True
    >>> bool(th.procrustes_distance(2 * U, U) > 1)
    True
    """
    U1 = check_array(U1, "U1", "procrustes_distance", ndim=(2, 3, 4))
    U2 = check_array(U2, "U2", "procrustes_distance", ndim=(2, 3, 4))
    if U1.shape != U2.shape:
        raise ValueError(
            f"The 'U1' and 'U2' parameters of procrustes_distance must have the same shape. "
            f"Got {U1.shape} and {U2.shape}."
        )
    W, _, Vt = np.linalg.svd(np.swapaxes(U2, -1, -2) @ U1)
    Q = W @ Vt
    diff = U1 - U2 @ Q
    return np.sqrt(np.sum(diff * diff, axis=(-2, -1)))


def _top_factors(D, k, symmetric=True):
    """Rank-k factors of the top of a stack of matrices D (..., d, d): the spectral start of the
    LoRA-ML solvers.

    Symmetric: U = V_k diag(√λ_k⁺) from the top-k eigenpairs of sym(D) (negative eigenvalues
    clipped), returned as ``(U, None)``; asymmetric: ``(L_k √S_k, R_k √S_k)`` from the SVD.
    """
    if symmetric:
        lam, vecs = np.linalg.eigh((D + np.swapaxes(D, -1, -2)) / 2)
        lam, vecs = lam[..., ::-1][..., :k], vecs[..., ::-1][..., :k]
        return vecs * np.sqrt(np.clip(lam, 0.0, None))[..., None, :], None
    Ls, s, Rt = np.linalg.svd(D)
    root = np.sqrt(s[..., :k])
    return Ls[..., :k] * root[..., None, :], np.swapaxes(Rt[..., :k, :], -1, -2) * root[..., None, :]


def rate_prediction(d, k, n, sigma) -> np.ndarray:
    """P6: E‖Δ̂ − R‖² for rank-k fine-tuning by Lemma 1 on n Gaussian samples, to first order in σ.

    E‖Δ̂ − R‖² = σ² k [d/(n − d − 1) + (d − k)/(n − k − 1)], which tends to σ² k(2d − k)/n (the
    k(2d − k) degrees of freedom of a rank-k d × d matrix) as n grows.

    Derivation: with M = XᵀX, the least-squares error N = Δ_ols − R has rows N(0, σ² M⁻¹);
    to first order Δ̂ − R is the projection of N onto the tangent space of the rank-k matrices at R
    in the metric ⟨P, Q⟩ = tr(P M Qᵀ) that Lemma 1 minimises in. Its complement is
    (I − P_U) N Q_M with Q_M = I − M V (VᵀMV)⁻¹ Vᵀ, so
    E‖Δ̂ − R‖² = E‖N‖² − (d − k) σ² E[tr M⁻¹ − tr (VᵀMV)⁻¹], and the Wishart means
    E M⁻¹ = I/(n − d − 1), E (VᵀMV)⁻¹ = I_k/(n − k − 1) give the formula. It is exact for k = d
    (least squares). The spec's σ²k(2d − k)/(n − d − 1) overstates it by 4.5 % at (d, k, n) =
    (10, 1, 100) and by 19 % at (6, 1, 16); tests/test_retraining.py measures both.

    Parameters
    ----------
    d : int >= 1
        Dimension.
    k : int in [1, d]
        Rank of the fine-tuning update and of the new task's adapter.
    n : int or array of int, each > d + 1
        Fine-tuning samples; an array gives one prediction per entry.
    sigma : float >= 0
        Noise standard deviation.

    Examples
    --------
    >>> round(float(rate_prediction(10, 1, 100, 0.1)), 8)    # σ²(10/89 + 9/98); the spec's 19σ²/89 = 0.00213
    0.00204196
    >>> float(rate_prediction(4, 4, 20, 1.0)) == 16 / 15    # k = d: least squares, σ² d²/(n − d − 1)
    True
    """
    func = "rate_prediction"
    d = check_int(d, "d", func, low=1)
    k = check_int(k, "k", func, low=1, high=d)
    sigma = check_real(sigma, "sigma", func, low=0.0, high=1e100)      # sigma**2 stays finite
    n = check_array(n, "n", func, ndim=(0, 1, 2))
    if np.any(n <= d + 1):
        raise ValueError(f"The 'n' parameter of {func} must exceed d + 1 = {d + 1} (the mean of M⁻¹ is "
                         f"finite only then). Got {n.min():g}.")
    return sigma**2 * k * (d / (n - d - 1) + (d - k) / (n - k - 1))
