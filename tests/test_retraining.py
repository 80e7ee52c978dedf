"""Retraining and fine-tuning: SR (P2, P4), LoRA-ML (P5, P10), the rate (P6), and the solvers.

Reference values and tolerances:

| prediction | quantity                                        | predicted                                   | tolerance                          |
|------------|-------------------------------------------------|---------------------------------------------|------------------------------------|
| P2         | E‖Â_SR − (A* + R̄*)‖²                           | (d²σ² + (d+1)·mean_t‖R*_t − R̄*‖²)/(TN)      | 5 SE + 3d/(TN) relative            |
| P2         | rank(A_SR − A*), rank(A*_{T+1} − A_SR)          | min(Tk, d), min((T+1)k, d)                  | exact                              |
| P4         | SR + any rank-r Δ                               | ≥ Σ_{i>r} σ_i²(A*_{T+1} − Â_SR)             | 1e-9 relative                      |
| P5         | Â, U_tU_tᵀ from the exact population solver     | A*, R*_t                                    | 1e-8 relative                      |
| P6         | E‖Δ̂ − R*_{T+1}‖² at Â = A*                      | σ²k(2d−k)/(n−d−1)                           | 5 SE + 3% (second-order in noise)  |
| P10        | log-slope of E‖Â_LoRA-ML − A*‖² in N            | −1                                          | 4 SE + 0.05                        |
"""

import cvxpy as cp
import numpy as np
import pytest
from helpers import frob2, mean_and_se, recoverable_sizes, seeds
from hypothesis import given, settings
from hypothesis import strategies as st

import theory as th

# ----------------------------------------------------------------------------------- SR (P2, P4)


def test_sr_matches_cvxpy_least_squares(rng):
    truth = th.sample_ground_truth(4, 1, 3, rng=rng)
    data = th.sample_tasks(truth, 25, 1, 0.2, rng=rng)
    B = cp.Variable((4, 4))
    Xp, Yp = data.X.reshape(-1, 4), data.Y.reshape(-1, 4)
    cp.Problem(cp.Minimize(cp.sum_squares(Yp - Xp @ B.T))).solve(solver=cp.CLARABEL)
    np.testing.assert_allclose(th.standard_retraining(data.X, data.Y), B.value, atol=1e-6)


def test_sr_from_sufficient_statistics(rng):
    """Â_SR = (Σ_t C_t)(Σ_t S_t)⁻¹ (spec §3.1)."""
    truth = th.sample_ground_truth(5, 2, 3, rng=rng)
    data = th.sample_tasks(truth, 40, 1, 0.1, rng=rng)
    S, C, _ = th.task_statistics(data.X, data.Y)
    np.testing.assert_allclose(th.standard_retraining(data.X, data.Y),
                               C.sum(0) @ np.linalg.inv(S.sum(0)), atol=1e-10)


def test_P2_sr_converges_at_the_predicted_rate():
    """Pooled least squares with task heterogeneity acting as (x-dependent) noise.

    Â_SR − A_SR = (Σ e xᵀ)(Σ x xᵀ)⁻¹ with e = (R*_t − R̄*) x + ε. For Gaussian x,
    E‖e‖²‖x‖² = d²σ² + (d+2)‖D_t‖², and the within-task cross terms subtract ‖D_t‖² per
    sample, so E‖Â_SR − A_SR‖² = (d²σ² + (d+1) mean_t‖D_t‖²)/(TN) + O(1/N²).
    """
    d, k, T, N, sigma, reps = 4, 1, 3, 1000, 0.3, 400
    rng = np.random.default_rng(7)
    truth = th.sample_ground_truth(d, k, T, rng=rng)
    D = truth.R_star[:T] - truth.R_bar
    predicted = (d * d * sigma**2 + (d + 1) * np.mean(np.sum(D**2, axis=(1, 2)))) / (T * N)
    A_sr = th.standard_retraining_population(truth)
    errs = [frob2(th.standard_retraining(*_xy(truth, N, sigma, rng)) - A_sr) for _ in range(reps)]
    mean, se = mean_and_se(errs)
    assert abs(mean / predicted - 1) <= 5 * se / predicted + 3 * d / (T * N)


def _xy(truth, N, sigma, rng):
    data = th.sample_tasks(truth, N, 1, sigma, rng=rng)
    return data.X, data.Y


@given(d=st.integers(2, 10), k=st.integers(1, 3), T=st.integers(1, 6), seed=seeds)
def test_P2_sr_is_high_rank(d, k, T, seed):
    k = min(k, d)
    truth = th.sample_ground_truth(d, k, T, rng=seed)
    A_sr = th.standard_retraining_population(truth)
    np.testing.assert_allclose(A_sr, truth.A_star + truth.R_bar)
    assert np.linalg.matrix_rank(A_sr - truth.A_star, tol=1e-8) == min(T * k, d)
    assert np.linalg.matrix_rank(truth.test_weight - A_sr, tol=1e-8) == min((T + 1) * k, d)


@given(d=st.integers(2, 9), k=st.integers(1, 3), T=st.integers(2, 5), n=st.integers(5, 60), seed=seeds)
def test_P4_sr_plus_any_low_rank_update_stays_above_the_floor(d, k, T, n, seed):
    k = min(k, d)
    rng = np.random.default_rng(seed)
    truth = th.sample_ground_truth(d, k, T, rng=rng)
    data = th.sample_tasks(truth, 30, n, 0.1, rng=rng)
    A_sr = th.standard_retraining(data.X, data.Y)
    residual = truth.test_weight - A_sr
    floor = float(th.tail_energy(residual, k))
    tol = 1e-9 * frob2(residual)
    tuned = th.finetune_lora(A_sr, data.X_test, data.Y_test, k)      # Lemma 1 on the test data
    assert frob2(A_sr + tuned - truth.test_weight) >= floor - tol
    for _ in range(5):                                                 # and any rank-k update
        delta = rng.standard_normal((d, k)) @ rng.standard_normal((k, d))
        assert frob2(A_sr + delta - truth.test_weight) >= floor - tol


@given(d=st.integers(2, 12), k=st.integers(1, 3), T=st.integers(1, 5), seed=seeds)
def test_P4_population_floor_and_weyl_bound(d, k, T, seed):
    k = min(k, d)
    truth = th.sample_ground_truth(d, k, T, rng=seed)
    A_sr = th.standard_retraining_population(truth)
    residual = truth.test_weight - A_sr
    floor = float(th.tail_energy(residual, k))
    # The floor is the SR + rank-k optimum, and it is Σ_{i>k} σ_i²(R*_{T+1} − R̄*).
    np.testing.assert_allclose(frob2(residual - th.best_rank_approx(residual, k)), floor, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(floor, th.tail_energy(truth.R_star[-1] - truth.R_bar, k), rtol=1e-9, atol=1e-12)
    # Weyl: σ_{i+k}(R_{T+1} − R̄) ≥ σ_{i+2k}(R̄) since R_{T+1} has rank k.
    weyl = float(th.tail_energy(truth.R_bar, min(2 * k, d)))
    assert floor >= weyl - 1e-9 * (1 + weyl)
    if k < min((T + 1) * k, d):
        assert floor > 0


# ----------------------------------------------------------------------------- the objective


def _finite_difference_grad(f, A, U, h=1e-6):
    gA, gU = np.zeros_like(A), np.zeros_like(U)
    for arr, g in ((A, gA), (U, gU)):
        it = np.nditer(arr, flags=["multi_index"])
        for _ in it:
            i = it.multi_index
            old = arr[i]
            arr[i] = old + h
            fp = f(A, U)
            arr[i] = old - h
            fm = f(A, U)
            arr[i] = old
            g[i] = (fp - fm) / (2 * h)
    return gA, gU


@pytest.mark.parametrize("population", [False, True])
def test_objective_gradient_matches_finite_differences(population, rng):
    d, k, T = 4, 2, 3
    truth = th.sample_ground_truth(d, k, T, rng=rng)
    kw = {"truth": truth} if population else dict(zip(("X", "Y"), _xy(truth, 15, 0.3, rng)))
    A, U = rng.standard_normal((d, d)), rng.standard_normal((T, d, k))
    obj = th.loraml_objective(A, U, **kw)
    gA, gU = _finite_difference_grad(lambda a, u: th.loraml_objective(a, u, **kw).value, A.copy(), U.copy())
    np.testing.assert_allclose(obj.grad_A, gA, rtol=1e-6, atol=1e-6 * np.abs(gA).max())
    np.testing.assert_allclose(obj.grad_U, gU, rtol=1e-6, atol=1e-6 * np.abs(gU).max())


def test_objective_values_match_their_definitions(rng):
    d, k, T = 5, 1, 3
    truth = th.sample_ground_truth(d, k, T, rng=rng)
    X, Y = _xy(truth, 12, 0.5, rng)
    A, U = rng.standard_normal((d, d)), rng.standard_normal((T, d, k))
    W = A + U @ np.swapaxes(U, 1, 2)
    finite = np.mean([frob2(Y[t] - X[t] @ W[t].T) / (2 * 12) for t in range(T)])
    np.testing.assert_allclose(th.loraml_objective(A, U, X=X, Y=Y).value, finite, rtol=1e-12)
    pop = 0.5 * sum(frob2(W[t] - truth.task_weights[t]) for t in range(T))
    np.testing.assert_allclose(th.loraml_objective(A, U, truth=truth).value, pop, rtol=1e-12)


# ---------------------------------------------------------------------------------- LoRA-ML (P5)


@settings(max_examples=20)
@given(sizes=recoverable_sizes(), seed=seeds)
def test_P5_exact_population_solver_recovers_the_truth(sizes, seed):
    d, k, T = sizes
    truth = th.sample_ground_truth(d, k, T, rng=seed)
    fit = th.fit_loraml_population(truth, k, rng=seed)
    assert fit.converged, fit.message
    assert fit.loss <= 1e-18 * frob2(truth.task_weights[:T])
    assert np.linalg.norm(fit.A - truth.A_star) <= 1e-8 * np.linalg.norm(truth.A_star)
    R_true = truth.R_star[:T]
    assert np.linalg.norm(fit.R - R_true) <= 1e-8 * np.linalg.norm(R_true)
    # U_t = U*_t Q_t: equal up to rotation (Procrustes).
    assert np.all(th.procrustes_distance(fit.U, truth.U_star[:T]) <= 1e-7 * np.linalg.norm(truth.U_star[:T]))
    # Rank-k fine-tuning from Â is then exact in population.
    residual = truth.test_weight - fit.A
    assert float(th.tail_energy(residual, k)) <= 1e-14 * frob2(truth.R_star[-1])


def test_P5_boundary_three_k_above_d_has_zero_loss_minima_away_from_A_star():
    """d = 4, k = 2, T = 3 (3k > d): zero population loss is reached with Â ≠ A* (recovery fails)."""
    failures = 0
    for seed in range(4):
        truth = th.sample_ground_truth(4, 2, 3, rng=seed)
        fit = th.fit_loraml_population(truth, 2, rng=seed, n_starts=20)
        assert fit.loss <= 1e-18 * frob2(truth.task_weights[:3])          # a global minimum...
        failures += np.linalg.norm(fit.A - truth.A_star) > 1e-3 * np.linalg.norm(truth.A_star)  # ...not A*
    assert failures == 4


def test_T2_is_not_identifiable_but_reaches_zero_loss():
    truth = th.sample_ground_truth(6, 1, 2, rng=3)
    fit = th.fit_loraml_population(truth, 1, rng=3)
    assert fit.loss <= 1e-18 * frob2(truth.task_weights[:2])
    assert np.linalg.norm(fit.A - truth.A_star) > 1e-3
    assert np.linalg.matrix_rank(fit.A - truth.A_star, tol=1e-8) <= 2       # P7's rank bound


def test_noiseless_finite_data_recover_exactly(rng):
    truth = th.sample_ground_truth(6, 2, 3, rng=rng)
    data = th.sample_tasks(truth, 30, 1, 0.0, rng=rng)
    fit = th.fit_loraml(data.X, data.Y, 2, rng=rng)
    assert fit.converged
    np.testing.assert_allclose(fit.A, truth.A_star, atol=1e-8 * np.linalg.norm(truth.A_star))


@settings(max_examples=8)
@given(d=st.integers(3, 8), T=st.integers(2, 4), m=st.integers(5, 20), seed=seeds)
def test_exact_finite_sample_fit_is_a_certified_minimum(d, T, m, seed):
    """The exact fit is stationary, and neither extra random starts nor the paper's GD do better.

    N = m·d ≥ 5d: with fewer samples the noisy landscape can have spurious local minima that
    a local method from 3 starts may end in (seen at d = 3, T = 2, N = 11).
    """
    N = m * d
    rng = np.random.default_rng(seed)
    truth = th.sample_ground_truth(d, 1, T, rng=rng)
    X, Y = _xy(truth, N, 0.3, rng)
    fit = th.fit_loraml(X, Y, 1, rng=rng)
    assert fit.converged, fit.message
    obj = th.loraml_objective(fit.A, fit.U, X=X, Y=Y)
    np.testing.assert_allclose(obj.value, fit.loss, rtol=1e-12)
    assert fit.grad_norm <= 1e-9 * (1 + fit.loss)
    more = th.fit_loraml(X, Y, 1, rng=rng, n_starts=6)
    assert fit.loss <= more.loss + 1e-10 * fit.loss
    # The paper's GD from its own initialisation, run a short while, never ends below the optimum.
    paper = th.fit_loraml(X, Y, 1, rng=rng, method="paper", outer_steps=100)
    assert paper.loss >= fit.loss - 1e-10 * fit.loss


def test_paper_method_matches_exact_at_default_sizes():
    """Spec §5.1 defaults (d = 10, k = 1, T = 3, N = 5000, σ = 0.1): the authors' alternating GD
    with 3000 outer steps agrees with the exact solver's Â to 1e-3."""
    truth = th.sample_ground_truth(10, 1, 3, rng=0)
    data = th.sample_tasks(truth, 5000, 100, 0.1, rng=100)
    exact = th.fit_loraml(data.X, data.Y, 1, rng=0)
    paper = th.fit_loraml(data.X, data.Y, 1, rng=0, method="paper")
    assert exact.converged and paper.method == "paper" and paper.n_iter == 3000
    assert np.linalg.norm(paper.A - exact.A) <= 1e-3
    assert paper.loss >= exact.loss - 1e-12
    # The base is close to A* (LoRA-ML) while SR is far from it (P2).
    assert frob2(exact.A - truth.A_star) < 1e-3 < 1.0 < frob2(th.standard_retraining(data.X, data.Y) - truth.A_star)


def test_paper_gd_is_batched_over_leading_axes(rng):
    """paper_gd on a stack of problems equals running each one alone."""
    S = np.stack([np.stack([np.eye(3)] * 2)] * 4) + 0.01 * rng.standard_normal((4, 2, 3, 3))
    S = (S + np.swapaxes(S, -1, -2)) / 2
    C = rng.standard_normal((4, 2, 3, 3))
    A0, U0 = np.zeros((4, 3, 3)), 0.1 * rng.standard_normal((4, 2, 3, 1))
    kw = dict(outer_steps=20, inner_steps=3, lr_A=0.03, lr_U=0.003)
    A, U = th.paper_gd(S, C, A0, U0, **kw)
    for i in range(4):
        Ai, Ui = th.paper_gd(S[i], C[i], A0[i], U0[i], **kw)
        np.testing.assert_allclose(A[i], Ai, atol=1e-14)
        np.testing.assert_allclose(U[i], Ui, atol=1e-14)


# ----------------------------------------------------------------------------------- rates (P6, P10)


@pytest.mark.parametrize(("d", "k", "n", "sigma"), [(8, 2, 800, 0.5), (10, 1, 100, 0.1), (6, 3, 60, 0.2)])
def test_P6_finetuning_rate_constant(d, k, n, sigma):
    """E‖Δ̂ − R*_{T+1}‖² = σ²k(2d−k)/(n−d−1) to first order in the noise, at Â = A*."""
    reps = 400
    rng = np.random.default_rng(d * 1000 + n)
    U = rng.standard_normal((reps, d, k))
    R = U @ np.swapaxes(U, 1, 2)
    X = rng.standard_normal((reps, n, d))
    Z = X @ R + sigma * rng.standard_normal((reps, n, d))     # residual targets Y − X A*ᵀ (R symmetric)
    delta = th.reduced_rank_regression(X, Z, k)
    err = np.sum((delta - R) ** 2, axis=(1, 2))
    mean, se = mean_and_se(err)
    predicted = sigma**2 * k * (2 * d - k) / (n - d - 1)
    assert abs(mean / predicted - 1) <= 5 * se / predicted + 0.03


def test_P6_log_log_slope_is_minus_one():
    d, k, sigma, reps = 6, 1, 0.1, 200
    ns = np.array([50, 200, 800, 3200])
    rng = np.random.default_rng(11)
    means = []
    for n in ns:
        U = rng.standard_normal((reps, d, k))
        R = U @ np.swapaxes(U, 1, 2)
        X = rng.standard_normal((reps, n, d))
        delta = th.reduced_rank_regression(X, X @ R + sigma * rng.standard_normal((reps, n, d)), k)
        means.append(np.mean(np.sum((delta - R) ** 2, axis=(1, 2))))
    slope = np.polyfit(np.log(ns - d - 1), np.log(means), 1)[0]
    assert abs(slope + 1) <= 0.05


def test_P10_loraml_base_error_decays_like_one_over_N_while_SR_does_not():
    d, k, T, sigma, reps = 8, 1, 3, 0.5, 8
    N1, N2 = 500, 8000
    seeds_ = np.random.SeedSequence(10).spawn(reps)
    lo, sr1, sr2, rbar = {N1: [], N2: []}, [], [], []
    for ss in seeds_:
        rng = np.random.default_rng(ss)
        truth = th.sample_ground_truth(d, k, T, rng=rng)
        rbar.append(frob2(truth.R_bar))
        for N in (N1, N2):
            X, Y = _xy(truth, N, sigma, rng)
            fit = th.fit_loraml(X, Y, k, rng=rng)
            assert fit.converged, fit.message
            lo[N].append(frob2(fit.A - truth.A_star))
            (sr1 if N == N1 else sr2).append(frob2(th.standard_retraining(X, Y) - truth.A_star))
    (m1, s1), (m2, s2) = mean_and_se(lo[N1]), mean_and_se(lo[N2])
    slope = np.log(m2 / m1) / np.log(N2 / N1)
    slope_se = np.hypot(s1 / m1, s2 / m2) / np.log(N2 / N1)
    assert abs(slope + 1) <= 4 * slope_se + 0.05
    # SR's base error tends to ‖R̄*‖² (it does not decay): within the P2 fluctuation, far above LoRA-ML.
    np.testing.assert_allclose(np.mean(sr2), np.mean(rbar), rtol=0.05)
    assert np.mean(sr2) > 0.9 * np.mean(sr1) and np.mean(sr2) > 1e3 * m2


def test_fit_from_statistics_equals_fit_from_data(rng):
    truth = th.sample_ground_truth(6, 2, 3, rng=rng)
    X, Y = _xy(truth, 80, 0.3, rng)
    S, C, e = th.task_statistics(X, Y)
    a = th.fit_loraml(X, Y, 2, rng=1)
    b = th.fit_loraml_from_statistics(S, C, 2, rng=1)
    np.testing.assert_allclose(b.A, a.A, atol=1e-9)
    np.testing.assert_allclose(b.R, a.R, atol=1e-9)
    # The reported loss is the excess over per-task least squares.
    per_task = np.mean([0.5 * frob2(Y[t] - X[t] @ np.linalg.lstsq(X[t], Y[t], rcond=None)[0]) / 80 for t in range(3)])
    np.testing.assert_allclose(b.loss, a.loss - per_task, rtol=1e-8, atol=1e-12)
    with pytest.raises(ValueError, match="'S'"):
        th.fit_loraml_from_statistics(C, C, 2, rng=0)
