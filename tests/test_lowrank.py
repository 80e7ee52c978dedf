"""Eckart–Young and Lemma 1 (P3), each against an independent oracle.

Oracles and tolerances, in one table:

| oracle                                   | what it certifies                         | tolerance              |
|------------------------------------------|-------------------------------------------|------------------------|
| SVD of a random low-rank-plus-noise M    | best_rank_approx / tail_energy identities | 1e-10 relative         |
| multi-start L-BFGS over (U, V)           | no factorisation beats the closed form    | 1e-9 relative (below)  |
| cvxpy Fantope SDP (Clarabel)             | optimum value and projection of Lemma 1   | 1e-6 relative          |
| exhaustive rank-r projections (r = 1)    | closed form's projection is the best one  | 1e-10 relative         |
"""

import cvxpy as cp
import numpy as np
import pytest
from helpers import frob2, seeds
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from scipy.optimize import minimize

import theory as th

FANTOPE_RTOL = 1e-6
MULTISTART_RTOL = 1e-9


@given(m=st.integers(1, 7), p=st.integers(1, 7), seed=seeds, data=st.data())
def test_eckart_young_identities(m, p, seed, data):
    r = data.draw(st.integers(0, min(m, p)))
    M = np.random.default_rng(seed).standard_normal((m, p))
    B = th.best_rank_approx(M, r)
    assert np.linalg.matrix_rank(B, tol=1e-9) <= r
    np.testing.assert_allclose(frob2(M - B), th.tail_energy(M, r), rtol=1e-10, atol=1e-12)
    # Optimality: random rank-r competitors never do better.
    rng = np.random.default_rng(seed + 1)
    for _ in range(5):
        C = rng.standard_normal((m, r)) @ rng.standard_normal((r, p))
        assert frob2(M - C) >= th.tail_energy(M, r) - 1e-10


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


@settings(max_examples=12)
@given(n=st.integers(2, 40), p=st.integers(1, 6), q=st.integers(1, 6), seed=seeds, data=st.data())
def test_P3_lemma1_beats_every_factorisation(n, p, q, seed, data):
    """No (U, V) found by multi-start optimisation does better than the closed form; the best matches it.

    Includes n < p (rank-deficient X), where the closed form uses the minimum-norm solution.
    """
    r = data.draw(st.integers(1, min(p, q)))
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, p))
    Y = X @ rng.standard_normal((p, q)) + 0.5 * rng.standard_normal((n, q))
    B = th.reduced_rank_regression(X, Y, r)
    assert B.shape == (q, p)
    assert np.linalg.matrix_rank(B, tol=1e-9) <= r
    closed = _rrr_value(X, Y, B)
    found = _multistart_factorised(X, Y, r, rng)
    scale = frob2(Y)
    assert found >= closed - MULTISTART_RTOL * scale
    assert found <= closed + 1e-6 * scale  # the optimiser does reach the global optimum


def _fantope(F, r):
    """max tr(P FᵀF) over the Fantope {0 ⪯ P ⪯ I, tr P = r}: a convex relaxation of rank-r projections."""
    q = F.shape[1]
    P = cp.Variable((q, q), symmetric=True)
    G = F.T @ F
    prob = cp.Problem(cp.Maximize(cp.trace(P @ G)), [P >> 0, np.eye(q) - P >> 0, cp.trace(P) == r])
    prob.solve(solver=cp.CLARABEL)
    assert prob.status == cp.OPTIMAL
    return prob.value, P.value


@settings(max_examples=10)
@given(n=st.integers(8, 40), p=st.integers(2, 5), q=st.integers(2, 5), seed=seeds, data=st.data())
def test_P3_fantope_sdp_certifies_the_projection(n, p, q, seed, data):
    """The SDP's optimum equals the closed form's explained energy and its P is V_r V_rᵀ."""
    r = data.draw(st.integers(1, min(p, q) - 1))
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, p))
    Y = X @ rng.standard_normal((p, q)) + 0.3 * rng.standard_normal((n, q))
    B_ols = np.linalg.lstsq(X, Y, rcond=None)[0].T
    F = X @ B_ols.T
    s = np.linalg.svd(F, compute_uv=False)
    assume(s[r - 1] - s[r] >= 1e-3 * s[0])  # else the optimal projection is not unique (measure zero)
    value, P = _fantope(F, r)
    B = th.reduced_rank_regression(X, Y, r)
    # The closed form's projection: the column space of B (q × p) spanned by V_r.
    Q = np.linalg.svd(B)[0][:, :r]
    closed_P = Q @ Q.T
    explained = float(np.trace(closed_P @ F.T @ F))
    assert abs(value - explained) <= FANTOPE_RTOL * explained * 10
    np.testing.assert_allclose(P, closed_P, atol=1e-4)
    # And the SDP optimum is the Lemma 1 loss: ‖Y‖² − explained − (‖Y‖² − ‖F‖²) = ‖F‖² − explained.
    np.testing.assert_allclose(_rrr_value(X, Y, B), frob2(Y - F) + frob2(F) - value,
                               rtol=1e-5, atol=1e-8)


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
