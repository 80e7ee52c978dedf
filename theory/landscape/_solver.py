"""The batched exact population solver: Levenberg–Marquardt on the reduced objective G for a batch
of instances, symmetric or asymmetric adapters. :func:`theory.fit_loraml_population` is a batch of
one of :func:`fit_population_batch`."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.linalg import lapack

from .._lowrank import _top_factors
from .._results import ArrayFields
from ..validation import MAX_COUNT, check_entries, check_array, check_int, check_real, check_rng
from ._objective import _base, _center, _check_truth, _dprod, _g_value_grad, _prod, _targets, _tr

__all__ = [
    "BatchFit",
    "fit_population_batch",
    "fit_asymmetric_population",
]


@dataclass(frozen=True, eq=False)
class BatchFit(ArrayFields):
    """Result of the batched exact population solver (:func:`fit_population_batch`).

    A : (B, d, d); U, V : (B, T, d, k) (V is U for symmetric adapters); loss : (B,) the value of
    F at (A, U, V) (zero-residual fits reach ~1e-28 relative); grad_norm : (B,);
    n_iter : (B,) Levenberg–Marquardt iterations summed over starts; n_starts_used : (B,);
    converged : (B,) whether the gradient (or the loss) reached tolerance.

    Examples
    --------
    >>> import numpy as np
    >>> import theory as th
    >>> truths = th.sample_ground_truth(6, 1, 3, rng=0, size=2)
    >>> W = np.stack([t.task_weights[:3] for t in truths])     # (B, T, d, d) retraining tasks' weights
    >>> fit = th.fit_population_batch(W, 1, rng=1)
    >>> fit.A.shape, fit.U.shape, fit.converged.tolist()
    ((2, 6, 6), (2, 3, 6, 1), [True, True])
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
# Batched exact population solver (symmetric or asymmetric adapters)


def _gram(U, V, T, upper=False, out=None):
    """Gauss–Newton matrix JᵀJ of the centred residuals r_t = C(U_tV_tᵀ − W_t), batched (B, m, m).

    With L_t(a, b) = a V_tᵀ + U_t bᵀ, the blocks ⟨L_s(a, b), L_t(c, e)⟩ are
    δ_ij (V_sᵀV_t)_pq (a–c), U_t[i,q] V_s[j,p] (a–e), U_s[j,p] V_t[i,q] (b–c) and δ_ij (U_sᵀU_t)_pq
    (b–e), for a, b indexed (i, p) and c, e indexed (j, q); symmetric adapters (V = U, a = b,
    c = e) add all four. JᵀJ = Σ_st (δ_st − 1/T) L_sᵀL_t. Written block by block into one array
    (the δ_ij blocks on their diagonal only), O(B T² d² k²).

    The matrix is exactly symmetric (every entry and its mirror are the same products, summed in
    the same order). With ``upper`` only the task blocks s ≤ t are written (they hold the upper
    triangle, all that the Cholesky factorisation of :func:`_spd_solve` reads); the others are
    left uninitialised. The entries written are bit for bit those of the full assembly. ``out``
    (B, m, m), C-contiguous, receives the matrix instead of a new array.
    """
    B, _, d, k = U.shape
    nb = 1 if V is None else 2                      # factor blocks per task: U, or (U, V)
    m1 = nb * d * k
    # Every entry is written below (the outer products fill the symmetric G and the asymmetric
    # cross blocks; only the asymmetric (U, U) and (V, V) blocks need zeros off their diagonal),
    # so no full pass of zeros; the scalings are the same floating-point operations in the same
    # order as a zero-filled assembly.
    shape = (B, T, nb, d, k, T, nb, d, k)
    G = np.empty(shape) if out is None else out.reshape(shape)
    pairs = [(0, 0, U, U)] if V is None else [(0, 1, U, V), (1, 0, V, U)]
    kron = [(0, 0, U, U)] if V is None else [(0, 0, V, V), (1, 1, U, U)]
    gram_kron = [np.einsum("bsip,btiq->bsptq", X, Y) for _, _, X, Y in kron]     # δ_ij (X_sᵀY_t)_pq
    # rep[id(X)] = (X[b,t,i,q] over (b, t, i, (j, q)), X[b,s,j,p] over (b, s, p, (j, q)))
    rep = {id(X): (np.repeat(X[:, :, :, None, :], d, axis=3).reshape(B, T, d, d * k),
                   np.repeat(np.swapaxes(X, 2, 3)[..., None], k, axis=4).reshape(B, T, k, d * k))
           for X in ((U,) if V is None else (U, V))}
    rows = range(T) if upper else [None]
    for s in rows:
        first = 0 if s is None else s           # block row s (or all rows), block columns t ≥ first
        sl = slice(None) if s is None else s
        for a, b, X, Y in pairs:                # out[b,s,i,p,t,j,q] = X[b,t,i,q] · Y[b,s,j,p]
            # with (j, q) as one contiguous axis of both factors (X repeated over j, Y over q):
            # long inner loops, the same products
            Xr, Yr = rep[id(X)][0], rep[id(Y)][1]
            o = G[:, sl, a, :, :, first:, b].reshape((B,) + ((T,) if s is None else ()) + (d, k, T - first, d * k))
            if s is None:
                np.multiply(np.swapaxes(Xr, 1, 2)[:, None, :, None], Yr[:, :, None, :, None], out=o)
            else:
                np.multiply(np.swapaxes(Xr[:, first:], 1, 2)[:, :, None], Yr[:, s, None, :, None], out=o)
        if V is not None:
            G[:, sl, 0, :, :, first:, 0] = 0.0
            G[:, sl, 1, :, :, first:, 1] = 0.0
        for (a, b, _, _), Kr in zip(kron, gram_kron):
            blk = G[:, sl, a, :, :, first:, b]
            if s is None:
                diagonal = np.einsum("bsiptiq->bsptqi", blk)      # writeable view of the i = j entries
                diagonal += Kr[..., None]
            else:
                diagonal = np.einsum("biptiq->bptqi", blk)
                diagonal += Kr[:, s, :, first:][..., None]
        Gs = G[:, sl, :, :, :, first:]
        if V is None:
            Gs *= 2.0
        Gs *= -1.0 / T                           # K_st = (δ_st − 1/T) G_st, in place
        if s is not None:
            G[:, s, :, :, :, s] *= 1.0 - T
    if not upper:
        for t in range(T):                       # diagonal blocks, as views (no gather/scatter)
            G[:, t, :, :, :, t] *= 1.0 - T
    return G.reshape(B, T * m1, T * m1)


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
    """The spectral start: top-k factors of the centred targets W_t − W̄ = R*_t − R̄* (the population
    case of the data solver's per-task least squares minus the pooled one)."""
    return _top_factors(_center(W), k, symmetric)


def _balance(U, V):
    """Balanced factors with the same products: U'V'ᵀ = UVᵀ and U'ᵀU' = V'ᵀV' (diagonal)."""
    Qu, Ru = np.linalg.qr(U)
    Qv, Rv = np.linalg.qr(V)
    X, sv, Yt = np.linalg.svd(Ru @ _tr(Rv))
    root = np.sqrt(sv)[..., None, :]
    return (Qu @ X) * root, (Qv @ _tr(Yt)) * root


def _spd_solve(K, b, rows=None, mu=None, upper=False):
    """Solve (K_r + μ I) x = b for a batch of symmetric positive definite matrices K (B, n, n).

    K may also be a sequence of (n, n) matrices. Row i of ``b`` (n_rows, n) is solved with
    K[rows[i]] (``rows`` defaults to every matrix in order) plus mu[i] on the diagonal (``mu``
    defaults to no shift). Cholesky (LAPACK potrf/potrs) matrix by matrix: numpy has no batched
    Cholesky solve, and its batched LU costs twice the flops (2.2x slower at n = 320, B = 20,
    measured). Each matrix is O(n³) work, so the loop over the batch adds nothing measurable;
    each shifted matrix is built in one reused buffer and factored in place (no stacked copy of
    the shifted matrices, no copy inside the LAPACK wrapper). A matrix that is not numerically
    positive definite falls back to a pseudo-inverse. K is not modified. With ``upper`` only the
    upper triangle of each K is set (:func:`_gram` with ``upper``): the factorisation reads no
    more, and the pseudo-inverse mirrors it.
    """
    n = b.shape[-1]
    if rows is None:
        rows = range(len(K))
    x = np.empty_like(b)
    buf = np.empty((n, n))
    flat_diag = buf.reshape(-1)[:: n + 1]
    for i, r in enumerate(rows):
        np.copyto(buf, K[r])
        if mu is not None:
            flat_diag += mu[i]
        # buf.T: Fortran order, same matrix; factored in place
        c, info = lapack.dpotrf(buf.T, lower=1, clean=0, overwrite_a=1)
        if info == 0:
            x[i], info = lapack.dpotrs(c, b[i], lower=1)
        if info != 0:
            Ki = K[r].copy()
            if upper:
                Ki = np.triu(Ki) + np.triu(Ki, 1).T
            if mu is not None:
                Ki.reshape(-1)[:: n + 1] += mu[i]
            x[i] = np.linalg.pinv(Ki, hermitian=True) @ b[i]
    return x


#: Normwise backward error, ‖g − (K + μI) x‖ / (‖g‖ + ‖K + μI‖ ‖x‖), at which a residual-space
#: solve stops refining: a small multiple of ε, the level of a backward-stable solve (the dense
#: Cholesky one).
_RS_TOL = 64 * np.finfo(float).eps
#: Refinement steps after the first residual-space solve; an instance still above `_RS_TOL`
#: after them (μ within a few orders of ε‖K‖) is solved densely.
_RS_MAX_REFINE = 4


def _residual_space_pays(T, d, k, symmetric) -> bool:
    """Whether a Levenberg–Marquardt step is cheaper through the d² residual space
    (:func:`_residual_space_solve`: about 2Td⁵ + d⁶/3 flops, but some forty numpy calls per
    step) than through the n = T·d·k (twice that asymmetric) unknowns (:func:`_gram` and
    :func:`_spd_solve`: about n³/3 flops and n² entries written). Measured on whole cells of
    :func:`sims.recovery_phase_table` (50 instances): 3.7–3.8× faster at (T, d, k) = (5, 7, 4)
    and (4, 8, 4) asymmetric, 2.1–2.3× at (3, 10–11, 4) and (5, 6, 3) asymmetric, 1.2× at
    (5, 8–9, 4) symmetric; slower below n ≈ 144 ((5, 6, 3) and (5, 5, 3) symmetric: 0.64–0.69×)
    or where d² > n/2."""
    n = T * d * k * (1 if symmetric else 2)
    return n >= 144 and n >= 2 * d * d


def _frames(X):
    """The SVD of X (…, d, k), k ≤ d, for the residual-space solve: the full left basis Q (…, d, d),
    the squared singular values a padded with zeros to d (XXᵀ = Q diag(a) Qᵀ, the null directions
    orthogonal to X's columns to rounding; an eigendecomposition of XXᵀ leaves them at √ε), the
    right basis R (…, k, k) and the singular values s (…, k) (XᵀX = R diag(s²) Rᵀ). Singular
    values below 8ε times the largest are set to zero (a column of zeros, as the spectral start
    has where a task has fewer than k positive eigenvalues, is rank lost exactly)."""
    Q, s, Rt = np.linalg.svd(X, full_matrices=True)
    s = np.where(s <= 8 * np.finfo(float).eps * s[..., :1], 0.0, s)
    a = np.zeros(X.shape[:-1])
    a[..., : s.shape[-1]] = s * s
    return Q, a, _tr(Rt), s


def _residual_space_solve(U, V, g, mu):
    """Solve (K + μI) x = g for a batch, K = JᵀJ the Gauss–Newton matrix of :func:`_gram`, through
    the residual space: one d² × d² factorisation instead of one of side n = T·d·k (2T·d·k
    asymmetric).

    K is the Schur complement of an arrow matrix: with L_t the tangent map of task t's product
    (L_t(a, b) = a V_tᵀ + U_t bᵀ; a U_tᵀ + U_t aᵀ symmetric) and the base restored as an unknown
    a, (K + μI) x = ρ is [[T·I, L_1 … L_T], [L_tᵀ, L_tᵀL_t + μI]] [a; x] = [0; ρ]. Eliminating x,
    with E_t = L_t L_tᵀ + μI and the push-through identities L_t(L_tᵀL_t + μ)⁻¹ = E_t⁻¹ L_t and
    (L_tᵀL_t + μ)⁻¹ = (I − L_tᵀ E_t⁻¹ L_t)/μ:

        (Σ_t μ E_t⁻¹) a = −Σ_t E_t⁻¹ L_t ρ_t,   x_t = (ρ_t − L_tᵀ E_t⁻¹ L_t ρ_t)/μ − L_tᵀ E_t⁻¹ a.

    E_t is a Sylvester operator, E_t(R) = U_tU_tᵀ R + R V_tV_tᵀ + μR (2(PR + RP) + μR with
    P = U_tU_tᵀ, symmetric), diagonal in the singular bases of U_t and V_t: each E_t⁻¹ costs four
    d × d products, and H = Σ_t μ E_t⁻¹ (eigenvalues in (0, T]) is assembled as a (d², d²) matrix
    in O(T d⁵) and factored once (Cholesky).

    Its condition grows like ‖K‖/μ, and so does the backward error of one solve; iterative
    refinement (the linear residual g − (K + μI) x computed matrix-free, Kx = Jᵀ(Jx), and solved
    for again with the same factors) brings it to the dense solver's level, `_RS_TOL` times the
    size of the terms it is computed from, within one to three steps for μ ≳ 1e-12 ‖K‖. Returns
    x (B, n) and ok (B,): False where H could not be factored or the refinement did not reach
    `_RS_TOL` (the caller solves those instances densely).
    """
    B, T, d, k = U.shape
    sym = V is None
    q = d * d
    shape = U.shape
    mu4 = mu[:, None, None, None]
    ok = np.ones(B, bool)
    try:
        QU, aU, RU, sU = _frames(U)
        if not sym:
            QV, aV, RV, sV = _frames(V)
    except np.linalg.LinAlgError:          # factors that are not finite: the dense path decides
        return np.zeros_like(g), ~ok
    if sym:
        QV, lam = QU, 2.0 * (aU[..., :, None] + aU[..., None, :])
    else:
        lam = aU[..., :, None] + aV[..., None, :]
        kappa = sU[..., :, None] ** 2 + sV[..., None, :] ** 2    # UᵀU C + C VᵀV, in the right bases
        ok &= np.all(kappa > 0, axis=(1, 2, 3))        # else more gauge than (UC, −VCᵀ): solved densely
        kappa = np.where(kappa > 0, kappa, 1.0)
    w = 1.0 / (lam + mu4)
    # (L_t L_tᵀ)⁺ E_t⁻¹ in the frames: 1/(λ(λ + μ)) where λ > 0, 0 on the directions no adapter
    # of task t reaches (λ = 0 exactly: the padded singular values)
    w_range = np.divide(w, lam, out=np.zeros_like(w), where=lam > 0)
    QUt, QVt = _tr(QU), _tr(QV)

    def e_inv(X, weights=w):               # E_t⁻¹ X_t for every task (or another frame-diagonal map)
        return QU @ ((QUt @ X @ QV) * weights) @ QVt

    def forward(x):                        # (L_t x_t)_t, (B, T, d, d)
        return _dprod(U, V, *_unpack(x, shape, sym))

    def adjoint(Y):                        # (L_tᵀ Y_t)_t, packed like x
        if sym:
            return ((Y + _tr(Y)) @ U).reshape(B, -1)
        return np.stack([Y @ V, _tr(Y) @ U], axis=2).reshape(B, -1)

    def null_part(rho):
        """The orthogonal projection of rho onto the null space of each L_t, computed directly so
        that its rounding stays in that null space (it is divided by μ). Asymmetric: the gauge
        directions (U_t C, −V_t Cᵀ), C ∈ R^{k×k}. Symmetric, in the frame coordinates
        â = Qᵀ a R of a = Q â Rᵀ (U = Q [diag(s); 0] Rᵀ): for each pair i ≠ j < k the direction
        (â_ij, â_ji) ∝ (s_i, −s_j) (U S, S skew, where U has full rank), and every column j with
        s_j = 0 whole."""
        ra, rb = _unpack(rho, shape, sym)
        if not sym:
            M = _tr(RU) @ (_tr(U) @ ra - _tr(rb) @ V) @ RV
            C = RU @ (M / kappa) @ _tr(RV)
            return np.stack([U @ C, -(V @ _tr(C))], axis=2).reshape(B, -1)
        h = QUt @ ra @ RU                                # (B, T, d, k)
        top = h[..., :k, :]
        si, sj = sU[..., :, None], sU[..., None, :]
        den = si * si + sj * sj
        c = np.divide(si * top - sj * _tr(top), den, out=np.zeros_like(top), where=den > 0)
        out = np.zeros_like(h)
        out[..., :k, :] = si * c
        free = (sU == 0)[..., None, :]                   # columns of zero singular value
        out = np.where(free, h, out)
        return (QU @ out @ _tr(RU)).reshape(B, -1)

    # H[(i, j), (i', j')] = Σ_t Σ_ab QU[i,a] QU[i',a] μ w[a,b] QV[j,b] QV[j',b]
    XX = np.einsum("ntia,ntja->ntaij", QU, QU).reshape(B, T * d, q)
    YY = np.einsum("ntic,ntjc->ntcij", QV, QV).reshape(B, T, d, q)
    H = (_tr(XX) @ ((mu4 * w) @ YY).reshape(B, T * d, q)).reshape(B, d, d, d, d)
    H = H.transpose(0, 1, 3, 2, 4).reshape(B, q, q)
    factors = []
    for i in range(B):
        c, info = lapack.dpotrf(H[i].T, lower=1, clean=0, overwrite_a=1)    # H[i] is a fresh copy
        factors.append(c)
        ok[i] &= info == 0

    def solve(rho):
        """(K + μI)⁻¹ rho, one pass."""
        Lrho = forward(rho)
        b = -e_inv(Lrho)
        a = np.zeros((B, q))
        rhs = b.sum(axis=1)
        if sym:
            rhs = 0.5 * (rhs + _tr(rhs))
        for i in np.flatnonzero(ok):
            a[i], _ = lapack.dpotrs(factors[i], rhs[i].reshape(q), lower=1)
        # x_t = (L_tᵀL_t + μ)⁻¹ ρ_t − L_tᵀ E_t⁻¹ a, the first term split into the null space of
        # L_t (divided by μ) and its orthogonal complement, L_tᵀ (L_tL_tᵀ)⁺ E_t⁻¹ L_t ρ_t
        x = null_part(rho) / mu[:, None] + adjoint(e_inv(Lrho, w_range))
        return x - adjoint(e_inv(a.reshape(B, 1, d, d)))

    x = solve(g)
    gnorm = np.linalg.norm(g, axis=1)
    # ‖K‖ ≤ max_t ‖L_t‖² (the centring is a projection): the normwise backward error of a
    # solve is measured against ‖g‖ + ‖K + μI‖ ‖x‖, as for the dense Cholesky solve
    k_norm = lam.max(axis=(1, 2, 3))
    for step in range(_RS_MAX_REFINE + 1):
        Kx = adjoint(_center(forward(x)))                 # J x centred is J x; Jᵀ(Jx)
        rho = g - Kx - mu[:, None] * x
        size = gnorm + (k_norm + mu) * np.linalg.norm(x, axis=1)
        accurate = np.linalg.norm(rho, axis=1) <= _RS_TOL * size
        if step == _RS_MAX_REFINE or np.all(accurate | ~ok):
            break
        rho[accurate] = 0.0                               # keep what is already accurate
        x = x + solve(rho)
    return x, ok & accurate


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
    # Assembled in place into ``gram`` (or, for some of the instances, into one reused scratch
    # array): no fresh pages per iteration. Above 64 unknowns only the upper triangle is
    # assembled (what the Cholesky factorisation reads; the same bits), below it the full matrix
    # (fewer numpy calls).
    # Or, where it is cheaper, no Gauss–Newton matrix at all: the step is solved through the d²
    # residual space (the same linear system; instances it cannot solve to the dense solver's
    # accuracy are solved densely).
    residual_space = _residual_space_pays(T, d, k, symmetric)
    gram = None if residual_space else np.empty((B, n, n))
    scratch = None
    upper = n >= 64
    stale = np.ones(B, bool)
    for _ in range(max_iter):
        gnorm = np.linalg.norm(g, axis=1)
        xnorm = 1.0 + np.linalg.norm(x, axis=1)
        done |= (f <= ftol) | (gnorm <= gtol * xnorm)
        act = np.flatnonzero(~done)
        if act.size == 0:
            break
        xa = x[act]
        mu = theta[act] * np.sqrt(2 * f[act]) + mu_floor[act]
        part = None
        if residual_space:
            Ua, Va = _unpack(xa, (act.size, T, d, k), symmetric)
            dx, solved = _residual_space_solve(Ua, Va, g[act], mu)
            if not solved.all():
                bad = np.flatnonzero(~solved)
                Ub, Vb = _unpack(xa[bad], (bad.size, T, d, k), symmetric)
                dx[bad] = _spd_solve(_gram(Ub, Vb, T, upper=upper), g[act[bad]], mu=mu[bad], upper=upper)
            dx = -dx
        else:
            fresh = stale[act]
            new = act[fresh]
            if new.size == B:                            # every instance (new is sorted): in place
                _gram(*_unpack(x, shape, symmetric), T, upper=upper, out=gram)
                mats = gram
            elif new.size:
                # the new matrices go to a reused scratch array and are read from there; only those
                # of rejected steps are kept in ``gram`` (below), the others are stale at once
                if scratch is None:
                    scratch = np.empty((B - 1, n, n))
                part = scratch[:new.size]
                _gram(*_unpack(x[new], (new.size, T, d, k), symmetric), T, upper=upper, out=part)
                pos = np.cumsum(fresh) - 1
                mats = [part[pos[i]] if fresh[i] else gram[a] for i, a in enumerate(act)]
            else:
                mats = [gram[a] for a in act]
            stale[new] = False
            dx = -_spd_solve(mats, g[act], mu=mu, upper=upper)
        x_new = xa + dx
        f_new, g_new = _grad_packed(W[act], *_unpack(x_new, (act.size, T, d, k), symmetric))
        pred = 0.5 * (mu * np.sum(dx * dx, axis=1) - np.sum(dx * g[act], axis=1))
        ok = (f_new <= f[act]) & (pred > 0) & np.isfinite(f_new)
        rho = np.where(ok, (f[act] - f_new) / np.where(pred > 0, pred, 1.0), 0.0)
        acc = act[ok]
        if part is not None:
            keep = fresh & ~ok
            if keep.any():
                gram[act[keep]] = part[pos[keep]]
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


def fit_population_batch(task_weights, k, *, rng, symmetric=True, n_starts=3, max_iter=300,
                         tol=1e-14) -> BatchFit:
    """Exact minimisation of the population F for a batch of instances, symmetric or asymmetric.

    A is eliminated (A = mean_t(A*_t − U_tV_tᵀ)) and the reduced objective G is minimised by
    Levenberg–Marquardt with the Gauss–Newton matrix assembled in closed form (its blocks are
    δ_ij (V_sᵀV_t), U_t[i,q]V_s[j,p], …, so assembling it costs O(B T² d² k²)) and all instances
    advanced in one batched linear solve per iteration; where the T·d·k (2T·d·k) unknowns
    outnumber the d² entries of a residual well enough, the same linear system is solved through
    the residual space instead (a Sylvester-diagonal Schur complement of side d², refined to the
    dense solve's backward error), 2–4× faster on the large cells of the recovery phase
    diagram. For symmetric adapters the first start is
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
    tol : float > 0
        A start stops when ‖∇G‖ ≤ tol · ‖W‖ · (1 + ‖U‖) (or at zero loss).

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
    n_starts = check_int(n_starts, "n_starts", func, low=1, high=MAX_COUNT)
    max_iter = check_int(max_iter, "max_iter", func, low=1)
    tol = check_real(tol, "tol", func, low=0.0, low_open=True)
    # every start of every instance is one row of the batched solver: refuse before allocating it
    check_entries(n_starts * B * T * d * max(d, 2 * k), "'n_starts' and 'task_weights'", func)
    scale2 = np.sum(_center(W) ** 2, axis=(-3, -2, -1)) / T + np.finfo(float).tiny
    ftol = 1e-26 * scale2
    gtol = tol * np.sqrt(np.sum(W * W, axis=(-3, -2, -1)))
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
    A = _base(W, _prod(U, V))
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

    Parameters
    ----------
    truth : GroundTruth
        Supplies the targets A*_t of the T retraining tasks.
    k : int in [1, d]
        Adapter rank of the fit.
    rng : numpy.random.Generator, int or None
        Randomness of the random restarts.
    n_starts : int >= 1
        Starts at most: the spectral start, then random ones until one reaches zero loss.
    max_iter : int >= 1
        Levenberg–Marquardt iterations per start.

    Examples
    --------
    >>> import numpy as np
    >>> import theory as th
    >>> truth = th.sample_ground_truth(6, 1, 3, rng=0)
    >>> fit = th.fit_asymmetric_population(truth, 1, rng=1)       # adapters U_t V_tᵀ
    >>> fit.symmetric, fit.U.shape, fit.V.shape
    (False, (1, 3, 6, 1), (1, 3, 6, 1))
    >>> bool(np.allclose(fit.A, truth.A_star, atol=1e-6))
    True
    """
    func = "fit_asymmetric_population"
    truth = _check_truth(truth, func)
    k = check_int(k, "k", func, low=1, high=truth.d)
    return fit_population_batch(_targets(truth)[None], k, rng=rng, symmetric=False, n_starts=n_starts,
                                max_iter=max_iter)
