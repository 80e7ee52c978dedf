"""Eckart–Young and Lemma 1 (P3), each against an independent oracle.

Oracles, tolerances and what each rules out, in one table. "Rounding" is a derived bound:
accumulating N terms costs N eps relative, and a backward-stable SVD / eigh / lstsq on a p-column
matrix perturbs the result by p eps κ ‖·‖ (κ the condition number of X on its row space), which moves a
constrained optimum's loss at first order; see ``_loss_tol`` and ``_svd_tol``.

| oracle                                   | what it certifies                              | tolerance                          | rules out (margin on the test's instances)                                   |
|------------------------------------------|------------------------------------------------|------------------------------------|------------------------------------------------------------------------------|
| eigh of MᵀM, M = rank-r₀ + 0.1·noise     | tail_energy = Σ_{i>r} λ_i(MᵀM); best_rank_approx attains it; rank-r matrices near the optimum on the rank-r manifold (perturbed factors, rotated subspace) do not beat it | rounding: 4 max(m,p)² eps ‖M‖² | a tail from index r ± 1 (off by σ_r² or σ_{r+1}²: ≥ 1e5× the tolerance in 5000 draws, median 1e13×), a best_rank_approx keeping the wrong triplets |
| multi-start L-BFGS over (U, V)           | no factorisation beats the closed form, and the best one found equals it | rounding: (nq + 2p²κ) eps (‖Y‖ + ‖X‖‖B‖)² | top-r singular vectors of Y instead of F (loses ≥ 6e-6 ‖Y‖² when n > p, median 1e-4) and of B_ols instead of F (≥ 7e-5 ‖Y‖², median 4e-3): ≥ 1e5× the tolerance (40 random instances); L-BFGS reaches the optimum to 2e-16 relative |
| cvxpy Fantope SDP (Clarabel)             | optimum value and projection of Lemma 1         | per instance: Clarabel's point is projected onto the Fantope (distance ρ ≤ 6e-9 measured); tr(G P) of that feasible P ≤ the closed form's + rounding; ‖P − V_rV_rᵀ‖ ≤ ρ + √(2·gap/δ) (curvature of the Fantope, δ = λ_r − λ_{r+1} of G = FᵀF) | any V_r with explained energy below the optimum by more than Clarabel's suboptimality (≤ 5e-9 relative measured): the Y- and B_ols-variants above by ≥ 1e3× |
| exhaustive rank-1 search (q = 2)          | the closed form is the best rank-1 matrix: every rank-1 B is v wᵀ, v on the half circle (a 20 000-point grid), w by least squares | closed ≤ grid min + rounding; grid min ≤ closed + δ h²/2 (h = π/20000, δ = (λ₁ − λ₂)/2 of FᵀF: the grid's worst distance to the best angle) | a wrong V_1 losing more than δ·1.2e-8, e.g. the Y- and B_ols-variants (≥ 6e-6 ‖Y‖²) |
"""

import cvxpy as cp
import numpy as np
import pytest
from helpers import examples, frob2, seeds
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from scipy.optimize import minimize

import theory as th

EPS = np.finfo(float).eps


def _svd_tol(M):
    """Rounding of Σ σ_i² over ≤ p values: |σ̂_i − σ_i| ≤ p eps ‖M‖₂ each, two computations compared."""
    return 4 * max(M.shape) ** 2 * EPS * frob2(M)


def _loss_tol(X, Y, B):
    """Rounding of ‖Y − XBᵀ‖² at a computed optimum B: the sum of n q squares costs n q eps relative;
    B's backward error (p eps κ(X) ‖B‖, κ on X's row space) moves a constrained optimum's loss at
    first order by ≤ 2‖residual‖‖X‖‖δB‖ ≤ 2 p² κ eps (‖Y‖ + ‖X‖‖B‖)²."""
    n, p = X.shape
    s = np.linalg.svd(X, compute_uv=False)
    s = s[s > s[0] * max(X.shape) * EPS]
    kappa = s[0] / s[-1]
    scale = np.linalg.norm(Y) + np.linalg.norm(X, 2) * np.linalg.norm(B)
    return (n * Y.shape[1] + 2 * p * p * kappa) * EPS * scale**2


def _eig_oracle(M, r):
    """Σ_{i>r} σ_i²(M) and the right singular vectors (descending) from eigh of MᵀM: independent of
    theory's SVD."""
    lam, V = np.linalg.eigh(M.T @ M)
    return float(np.sum(np.clip(lam[: M.shape[1] - r], 0, None))), V[:, ::-1]


def _low_rank_plus_noise(m, p, r0, rng, noise=0.1):
    return rng.standard_normal((m, r0)) @ rng.standard_normal((r0, p)) + noise * rng.standard_normal((m, p))


@given(m=st.integers(1, 7), p=st.integers(1, 7), seed=seeds, data=st.data())
def test_eckart_young_identities(m, p, seed, data):
    """best_rank_approx / tail_energy on M = rank-r₀ + 0.1·noise (spectral gaps of every size).

    Oracle: eigh of MᵀM gives the tail and the optimum M V_r V_rᵀ. Competitors that a wrong formula
    would lose to: the optimum's factors perturbed along the rank-r manifold, (M V_r + εE)(V_r + εF)ᵀ,
    and V_r rotated by ε toward the next singular vector, for ε = 1e-4…1e-2 (excess O(ε²)): a tail
    too high by σ_r² is beaten by them, one too low by σ_{r+1}² fails the oracle equality.
    """
    r = data.draw(st.integers(0, min(m, p)))
    r0 = data.draw(st.integers(0, min(m, p)))
    rng = np.random.default_rng(seed)
    M = _low_rank_plus_noise(m, p, r0, rng)
    B = th.best_rank_approx(M, r)
    tail = float(th.tail_energy(M, r))
    tol = _svd_tol(M)
    oracle, V = _eig_oracle(M, r)
    assert np.linalg.matrix_rank(B, tol=1e-9 * max(1.0, np.linalg.norm(M))) <= r
    assert abs(tail - oracle) <= tol
    assert abs(frob2(M - B) - tail) <= tol                       # best_rank_approx attains the tail
    assert abs(frob2(M - M @ V[:, :r] @ V[:, :r].T) - tail) <= tol
    if r == 0:
        return
    P = M @ V[:, :r]
    for eps in (1e-4, 1e-3, 1e-2):
        C = (P + eps * np.linalg.norm(P) * rng.standard_normal(P.shape)) @ (V[:, :r] + eps * rng.standard_normal((p, r))).T
        assert frob2(M - C) >= tail - tol
        if r < p:
            Q = V.copy()
            Q[:, r - 1], Q[:, r] = np.cos(eps) * V[:, r - 1] + np.sin(eps) * V[:, r], -np.sin(eps) * V[:, r - 1] + np.cos(eps) * V[:, r]
            assert frob2(M - M @ Q[:, :r] @ Q[:, :r].T) >= tail - tol


def _rrr_value(X, Y, B):
    return frob2(Y - X @ B.T)


def _multistart_factorised(X, Y, r, rng, starts=6):
    """Minimise ‖Y − X (U Vᵀ)ᵀ‖² over U (q, r), V (p, r) by L-BFGS from random starts."""
    p, q = X.shape[1], Y.shape[1]

    def fun(z):
        U, V = z[: q * r].reshape(q, r), z[q * r:].reshape(p, r)
        B = U @ V.T
        R = Y - X @ B.T
        G = -2 * (X.T @ R).T                 # gradient wrt B (q, p)
        return float(np.sum(R * R)), np.concatenate([(G @ V).ravel(), (G.T @ U).ravel()])

    best = np.inf
    for _ in range(starts):
        z0 = rng.standard_normal(r * (p + q))
        res = minimize(fun, z0, jac=True, method="L-BFGS-B", options={"maxiter": 5000, "gtol": 1e-12,
                                                                       "ftol": 1e-15})
        best = min(best, res.fun)
    return best


@settings(max_examples=examples(12))
@given(n=st.integers(2, 40), p=st.integers(1, 6), q=st.integers(1, 6), seed=seeds, data=st.data())
def test_P3_lemma1_beats_every_factorisation(n, p, q, seed, data):
    """No (U, V) found by multi-start optimisation does better than the closed form; the best matches it
    to rounding (L-BFGS reaches the global optimum to ~1e-16 relative on these sizes).

    Includes n < p (rank-deficient X), where the closed form uses the minimum-norm solution. Rules
    out V_r from Y (≠ F when n > p) or from B_ols: they lose by ≥ 6e-6 ‖Y‖², ≥ 1e5× the tolerance.
    """
    r = data.draw(st.integers(1, min(p, q)))
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, p))
    Y = X @ rng.standard_normal((p, q)) + 0.5 * rng.standard_normal((n, q))
    B = th.reduced_rank_regression(X, Y, r)
    assert B.shape == (q, p)
    assert np.linalg.matrix_rank(B, tol=1e-9 * max(1.0, np.linalg.norm(B))) <= r
    closed = _rrr_value(X, Y, B)
    found = _multistart_factorised(X, Y, r, rng)
    assert abs(found - closed) <= _loss_tol(X, Y, B)


def _fantope(F, r):
    """max tr(P FᵀF) over the Fantope {0 ⪯ P ⪯ I, tr P = r}: a convex relaxation of rank-r projections."""
    q = F.shape[1]
    P = cp.Variable((q, q), symmetric=True)
    G = F.T @ F
    prob = cp.Problem(cp.Maximize(cp.trace(P @ G)), [P >> 0, np.eye(q) - P >> 0, cp.trace(P) == r])
    prob.solve(solver=cp.CLARABEL)
    assert prob.status == cp.OPTIMAL
    return prob.value, P.value


def _onto_fantope(P, r):
    """Euclidean projection onto the Fantope: clip the eigenvalues to [0, 1] after the shift θ that
    makes them sum to r (bisection; the sum is monotone in θ)."""
    lam, Q = np.linalg.eigh((P + P.T) / 2)
    lo, hi = lam.min() - 1.0, lam.max()
    for _ in range(200):
        theta = (lo + hi) / 2
        lo, hi = (theta, hi) if np.clip(lam - theta, 0, 1).sum() > r else (lo, theta)
    return (Q * np.clip(lam - theta, 0, 1)) @ Q.T


@settings(max_examples=examples(10))
@given(n=st.integers(8, 40), p=st.integers(2, 5), q=st.integers(2, 5), seed=seeds, data=st.data())
def test_P3_fantope_sdp_certifies_the_projection(n, p, q, seed, data):
    """The SDP's optimum equals the closed form's explained energy and its P is V_r V_rᵀ.

    Tolerances from the solver's own point, per instance: Clarabel's P is projected onto the Fantope
    (P_f, at distance ρ); P_f is feasible, so tr(G P_f) ≤ OPT, and the closed form (explained energy
    tr(V_rᵀ G V_r) = OPT if right) must be ≥ tr(G P_f) up to rounding. Curvature of the Fantope
    (Vu et al. 2013, Lemma 3.1): tr(G(P* − P)) ≥ (δ/2)‖P* − P‖² for feasible P, δ = λ_r − λ_{r+1}(G),
    so ‖P − V_rV_rᵀ‖ ≤ ρ + √(2 (explained − tr(G P_f))₊ / δ). A wrong V_r explains less than OPT by
    more than Clarabel's suboptimality (≤ 5e-9 relative) and fails the first check.
    """
    r = data.draw(st.integers(1, min(p, q) - 1))
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, p))
    Y = X @ rng.standard_normal((p, q)) + 0.3 * rng.standard_normal((n, q))
    B_ols = np.linalg.lstsq(X, Y, rcond=None)[0].T
    F = X @ B_ols.T
    G = F.T @ F
    lam = np.linalg.eigvalsh(G)[::-1]
    delta = lam[r - 1] - lam[r]
    assume(delta >= 1e-6 * lam[0])  # else the optimal projection is (nearly) not unique
    _, P = _fantope(F, r)
    P_f = _onto_fantope(P, r)
    rho = np.linalg.norm(P - P_f)
    B = th.reduced_rank_regression(X, Y, r)
    Q = np.linalg.svd(B)[0][:, :r]                   # the closed form's projection: B's column space
    closed_P = Q @ Q.T
    explained = float(np.trace(closed_P @ G))
    tol_tr = 4 * q * q * EPS * np.linalg.norm(G) * np.sqrt(q)
    assert explained >= float(np.trace(G @ P_f)) - tol_tr
    gap = max(explained - float(np.trace(G @ P_f)), 0.0) + tol_tr
    assert np.linalg.norm(P - closed_P) <= rho + np.sqrt(2 * gap / delta)
    # The Lemma 1 loss is at most the loss the SDP's feasible point certifies:
    # min over rank r of ‖Y − XBᵀ‖² = ‖Y − F‖² + ‖F‖² − OPT ≤ ‖Y − F‖² + ‖F‖² − tr(G P_f).
    assert _rrr_value(X, Y, B) <= frob2(Y - F) + frob2(F) - float(np.trace(G @ P_f)) + _loss_tol(X, Y, B) + tol_tr


@settings(max_examples=examples(15))
@given(n=st.integers(3, 40), p=st.integers(1, 6), seed=seeds)
def test_P3_rank_one_closed_form_is_the_best_of_an_exhaustive_search(n, p, seed):
    """q = 2, r = 1: every rank-1 B (2 × p) is v wᵀ with v = (cos θ, sin θ), θ ∈ [0, π), and for fixed v the
    best w is the least-squares fit of Y v on X. A 20 000-point grid in θ, each with its exact w,
    covers all rank-1 matrices to a derived resolution: the profile loss is
    c − δ cos 2(θ − θ*) with δ = (λ₁ − λ₂)/2 of FᵀF, so the grid's best point is within
    δ(1 − cos h) ≤ δ h²/2 of the optimum (h = π/20000). The closed form must be no worse than every grid
    point and within δh²/2 of the best. Rules out a wrong V_1 losing more than δ·1.2e-8.
    """
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, p))
    Y = X @ rng.standard_normal((p, 2)) + 0.5 * rng.standard_normal((n, 2))
    B = th.reduced_rank_regression(X, Y, 1)
    closed = _rrr_value(X, Y, B)
    grid = 20000
    h = np.pi / grid
    theta = np.arange(grid) * h
    V = np.stack([np.cos(theta), np.sin(theta)])               # (2, grid) unit output directions
    W = np.linalg.lstsq(X, Y @ V, rcond=None)[0]               # (p, grid): the best w for each v
    fitted = (X @ W)[:, None, :] * V[None, :, :]               # X w vᵀ for every v: (n, 2, grid)
    losses = np.sum((Y[:, :, None] - fitted) ** 2, axis=(0, 1))
    F = X @ np.linalg.lstsq(X, Y, rcond=None)[0]
    lam = np.linalg.eigvalsh(F.T @ F)
    half_gap = (lam[1] - lam[0]) / 2
    tol = _loss_tol(X, Y, B)
    assert closed <= losses.min() + tol
    assert losses.min() <= closed + half_gap * h**2 / 2 + tol


def test_rrr_batched_equals_one_at_a_time(rng):
    X = rng.standard_normal((4, 3, 30, 6))
    Y = rng.standard_normal((4, 3, 30, 5))
    B = th.reduced_rank_regression(X, Y, 2)
    assert B.shape == (4, 3, 5, 6)
    for i in range(4):
        for j in range(3):
            np.testing.assert_allclose(B[i, j], th.reduced_rank_regression(X[i, j], Y[i, j], 2), atol=1e-12)


def test_rrr_recovers_a_noiseless_low_rank_map(rng):
    X = rng.standard_normal((50, 7))
    B_true = rng.standard_normal((6, 2)) @ rng.standard_normal((2, 7))
    np.testing.assert_allclose(th.reduced_rank_regression(X, X @ B_true.T, 2), B_true, atol=1e-10)


def test_full_rank_rrr_is_least_squares(rng):
    X = rng.standard_normal((40, 5))
    Y = rng.standard_normal((40, 4))
    np.testing.assert_allclose(th.reduced_rank_regression(X, Y, 4),
                               np.linalg.lstsq(X, Y, rcond=None)[0].T, atol=1e-12)


def test_subspace_and_procrustes_metrics(rng):
    U = rng.standard_normal((8, 3))
    Q, _ = np.linalg.qr(rng.standard_normal((3, 3)))
    assert th.procrustes_distance(U, U @ Q) < 1e-12
    assert th.subspace_sin(U, U @ rng.standard_normal((3, 3))) < 1e-10
    e1, e2 = np.eye(8)[:, :1], np.eye(8)[:, 1:2]
    assert np.isclose(th.subspace_sin(e1, e2), 1.0)
    angle = 0.3
    v = np.cos(angle) * e1 + np.sin(angle) * e2
    assert np.isclose(th.subspace_sin(v, e1), np.sin(angle))
    # Procrustes is a distance on the quotient: ‖U1U1ᵀ‖ invariant and triangle inequality.
    V, W = rng.standard_normal((8, 3)), rng.standard_normal((8, 3))
    assert th.procrustes_distance(U, W) <= th.procrustes_distance(U, V) + th.procrustes_distance(V, W) + 1e-12


@pytest.mark.parametrize("r", [0, 1, 3])
def test_tail_energy_batched(r, rng):
    M = rng.standard_normal((5, 4, 6))
    np.testing.assert_allclose(th.tail_energy(M, r), [th.tail_energy(m, r) for m in M])
