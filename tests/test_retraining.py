"""Retraining and fine-tuning: SR (P2, P4), LoRA-ML (P5, P10), the rate (P6), and the solvers.

Each prediction's test, the wrong formula or bug it rules out, and the margin (z = 4 throughout: a
two-sided normal false-alarm probability of 6e-5 per assertion; rounding tolerances come from the
backward error of an SVD/eigendecomposition, |σ̂_i² − σ_i²| ≤ 2 d eps ‖M‖², summed over d values):

| prediction | quantity and predicted value                         | tolerance                           | rules out (margin)                                                    |
|------------|------------------------------------------------------|-------------------------------------|-----------------------------------------------------------------------|
| P2         | E‖Â_SR − (A* + R̄*)‖² = (d²σ² + (d+1)·mean_t‖R*_t − R̄*‖²)/(TN) | 4 SE + (d+1)/(TN−d−1) relative (the O(1/N²) remainder) | the factor d+1 written d or d+2 (±20 % = 8 SE at SE 2.5 %); σ²d/(TN) (−98 % of the noise part) |
| P2         | rank(A_SR − A*), rank(A*_{T+1} − A_SR)               | exact                               | A_SR ≠ A* + R̄* (assert_allclose), a rank-deficient R̄*                 |
| P4 (data)  | min over rank-k Δ of ‖Â_SR + Δ − A*_{T+1}‖² = Σ_{i>k} σ_i²(M), M = A*_{T+1} − Â_SR | 4 d² eps (‖M‖ + ‖A*_{T+1}‖ + ‖Â_SR‖)² (rounding) | tail from index k−1 or k+1, or of A*_{T+1} − A* (off by σ_k², σ_{k+1}² or all of it: ≥ 4e7× the tolerance in 2000 draws of the test's sizes); oracle: eigh of MᵀM, the Δ it attains, Lemma 1's Δ and perturbations of the optimum along the rank-k manifold |
| P4 (pop.)  | floor = Σ_{i>k} λ_i²(R*_{T+1} − R̄*), eigh of that symmetric matrix built from U*, and attained | same                                | a wrong population SR (R̄* over T+1 tasks), a tail from k±1 (≥ 1e5× the tolerance in 2000 draws) |
| P5         | Â, U_tU_tᵀ from the exact population solver          | A*, R*_t to 1e-8 relative           | a solver that stops short (the loss 1e-18 certifies zero)               |
| P5, P7     | d = 4, k = 2, T = 3 and T = 2: zero loss with Â ≠ A* | distance > 1e-3                     | a solver that always returns the truth (it cannot, from a random start)|
| P6         | E‖Δ̂ − R*_{T+1}‖² at Â = A*: theory.rate_prediction = σ²k[d/(n−d−1) + (d−k)/(n−k−1)] ≈ σ²k(2d−k)/n | 4 SE | at (6, 1, 16): the spec's σ²k(2d−k)/(n−d−1) (+19 %, ≈ 30 SE) and σ²k(2d−k)/n (−33 %, ≈ 50 SE) |
| P6         | log–log slope of that error over n = 50…3200          | slope of rate_prediction ± 4 SE     | O(n^{-1/2}) and O(n^{-2}) rates (≥ 0.5 away, ≈ 50 SE)                   |
| paper GD   | the authors' GD reaches the exact optimum at the rate ρ of its linearisation | one-step residual ≤ (10T lr_U + lr_A)‖∇F̂‖; ρ^m to 1 %; end ≤ κ·residual/(1−ρ) | a GD with another fixed point (G_t U_t for (G_t + G_tᵀ)U_t: residual 2e10× the bound); measured here: residual 0.77 of the bound, rate off by 4e-5, end 3.7e-12 against 1.1e-10 |
| P10        | log-slope of E‖Â_LoRA-ML − A*‖² in N                  | −1 ± (4 SE + (d+1)/(N₁−d−1)/ln(N₂/N₁)) | slope −1/2 (24 SE) or 0 (48 SE); SR's error − ‖R̄*‖² = the P2 term ± 4 SE: SR → A* would be ≥ 30 SE off |
"""

import cvxpy as cp
import numpy as np
import pytest
from helpers import examples, frob2, mean_and_se, recoverable_sizes, seeds
from hypothesis import assume, given, settings
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


def test_sr_from_statistics_is_batched_and_minimum_norm_when_rank_deficient(rng):
    """The one pooled least squares: batched over leading axes, and with T·N < d (a rank-deficient
    pooled design) the minimum-norm solution, checked against numpy's lstsq on the stacked data
    (an SVD oracle). A plain inverse would return garbage there (norm O(1/ε)); a wrong cutoff that
    drops a kept direction misses the fit by O(1)."""
    X = rng.standard_normal((4, 2, 3, 7, 5))
    Y = rng.standard_normal((4, 2, 3, 7, 5))
    S = np.swapaxes(X, -1, -2) @ X / 7
    C = np.swapaxes(np.swapaxes(X, -1, -2) @ Y, -1, -2) / 7
    batched = th.standard_retraining_from_statistics(S, C)
    assert batched.shape == (4, 2, 5, 5)
    for i in range(4):
        for j in range(2):
            np.testing.assert_allclose(batched[i, j], th.standard_retraining(X[i, j], Y[i, j]), atol=1e-12)
    Xs, Ys = rng.standard_normal((2, 1, 3, 6))          # T·N = 3 < d = 6
    oracle = np.linalg.lstsq(Xs[0], Ys[0], rcond=None)[0].T
    np.testing.assert_allclose(th.standard_retraining(Xs, Ys), oracle, atol=1e-12)


Z = 4.0   # every statistical assertion: |measured − predicted| ≤ Z·SE (two-sided normal false alarm 6e-5)


def _rounding_tol(M, *parts):
    """Rounding bound for a sum of squared singular values of M (d × d) = a difference of ``parts``.

    Backward-stable SVD and eigh give |σ̂_i − σ_i| ≤ d eps ‖M‖₂, hence |σ̂_i² − σ_i²| ≤ 2 d eps ‖M‖²,
    summed over ≤ d values, and a factor 2 for the two computations compared; forming M from parts
    of larger norm costs eps (Σ‖parts‖) per entry, so the norm used is ‖M‖ + Σ‖parts‖."""
    d = M.shape[-1]
    scale = np.linalg.norm(M) + sum(np.linalg.norm(P) for P in parts)
    return 4 * d * d * np.finfo(float).eps * scale**2


def test_P2_sr_converges_at_the_predicted_rate():
    """Pooled least squares with task heterogeneity acting as (x-dependent) noise.

    Â_SR − A_SR = (Σ e xᵀ)(Σ x xᵀ)⁻¹ with e = (R*_t − R̄*) x + ε. For Gaussian x,
    E‖e‖²‖x‖² = d²σ² + (d+2)‖D_t‖², and the within-task cross terms subtract ‖D_t‖² per
    sample, so E‖Â_SR − A_SR‖² = (d²σ² + (d+1) mean_t‖D_t‖²)/(TN) · (1 + ρ).

    The remainder ρ: for the noise part it is exactly (d+1)/(TN−d−1) (E(XᵀX)⁻¹ = I/(TN−d−1) for a
    Gaussian design); for the heterogeneity part the next terms of the expansion of (Σ xxᵀ)⁻¹ (the
    same Wishart mean, and a third-moment cross term) are of the same order, so we bound
    |ρ| ≤ (d+1)/(TN−d−1) (measured at N = 25, where it is 40× larger than here: ρ = 0.042 ± 0.004
    against the bound 0.071). Here the bound is 0.17 % and the SE 1.6 %: the test is Z·SE + bound.
    Rules out: (d+1) written d or d+2 (±20 % of the total here, 12 SE), a missing 1/T (×3).
    """
    d, k, T, N, sigma, reps = 4, 1, 3, 1000, 0.3, 1000
    rng = np.random.default_rng(7)
    truth = th.sample_ground_truth(d, k, T, rng=rng)
    D = truth.R_star[:T] - truth.R_bar
    het = np.mean(np.sum(D**2, axis=(1, 2)))
    predicted = (d * d * sigma**2 + (d + 1) * het) / (T * N)
    remainder = (d + 1) / (T * N - d - 1)
    A_sr = th.standard_retraining_population(truth)
    errs = [frob2(th.standard_retraining(*_xy(truth, N, sigma, rng)) - A_sr) for _ in range(reps)]
    mean, se = mean_and_se(errs)
    assert abs(mean / predicted - 1) <= Z * se / predicted + remainder
    # Power: the nearby wrong constants lie outside the band by a margin.
    for wrong in ((d * d * sigma**2 + d * het) / (T * N), (d * d * sigma**2 + (d + 2) * het) / (T * N)):
        assert abs(wrong - predicted) >= 2 * (Z * se + remainder * predicted)


def _xy(truth, N, sigma, rng):
    data = th.sample_tasks(truth, N, 1, sigma, rng=rng)
    return data.X, data.Y


@given(d=st.integers(2, 10), k=st.integers(1, 3), T=st.integers(1, 6), seed=seeds)
def test_P2_sr_is_high_rank(d, k, T, seed):
    """rank(A_SR − A*) = min(Tk, d) and rank(A*_{T+1} − A_SR) = min((T+1)k, d) for generic U*.

    Conditioning explicit: with the stacked adapters [U*_1 … U*_{T+1}] of σ_min/σ_max ≥ 1e-2, the
    smallest nonzero singular value of R̄* (or R*_{T+1} − R̄*) is ≳ 1e-4 σ_max²/T, far above the rank
    cutoff 1e-8·‖M‖; nearly parallel adapters make it vanish continuously (thorough profile: d = 2,
    k = 1, T = 2). A rank-k SR (the LoRA-ML answer) or R̄* over T + 1 tasks would fail by ≥ 1 rank."""
    k = min(k, d)
    truth = th.sample_ground_truth(d, k, T, rng=seed)
    s = np.linalg.svd(np.concatenate(list(truth.U_star), axis=1), compute_uv=False)[: min(d, (T + 1) * k)]
    assume(s[-1] >= 1e-2 * s[0])
    A_sr = th.standard_retraining_population(truth)
    np.testing.assert_allclose(A_sr, truth.A_star + truth.R_bar)
    for M, rank in ((A_sr - truth.A_star, min(T * k, d)), (truth.test_weight - A_sr, min((T + 1) * k, d))):
        assert np.linalg.matrix_rank(M, tol=1e-8 * np.linalg.norm(M, 2)) == rank


def _eig_oracle(M, k):
    """Independent of theory's SVD: the eigendecomposition of MᵀM. Returns Σ_{i>k} σ_i²(M), the
    best rank-k approximation M V_k V_kᵀ (Eckart–Young through the right singular vectors) and V
    (right singular vectors, descending)."""
    lam, V = np.linalg.eigh(M.T @ M)                 # ascending
    V = V[:, ::-1]
    return float(np.sum(np.clip(lam[: M.shape[1] - k], 0, None))), M @ V[:, :k] @ V[:, :k].T, V


def _manifold_competitors(M, V, k, rng, scales=(1e-4, 1e-3, 1e-2)):
    """Rank-k matrices near the optimum M V_k V_kᵀ, along the rank-k manifold: (P + εE)(V_k + εF)ᵀ
    with P = M V_k, and the best approximation with V_k rotated by ε toward the next singular
    vector. A floor too high by δ is beaten by them as soon as their excess (O(ε²)) is below δ."""
    P = M @ V[:, :k]
    for eps in scales:
        E, F = rng.standard_normal(P.shape), rng.standard_normal((M.shape[1], k))
        yield (P + eps * np.linalg.norm(P) * E) @ (V[:, :k] + eps * F).T
        if k < M.shape[1]:
            Q = V.copy()
            Q[:, k - 1], Q[:, k] = (np.cos(eps) * V[:, k - 1] + np.sin(eps) * V[:, k],
                                    -np.sin(eps) * V[:, k - 1] + np.cos(eps) * V[:, k])
            yield M @ Q[:, :k] @ Q[:, :k].T


@given(d=st.integers(2, 9), k=st.integers(1, 3), T=st.integers(2, 5), n=st.integers(5, 60), seed=seeds)
def test_P4_sr_plus_any_low_rank_update_stays_above_the_floor(d, k, T, n, seed):
    """P4 on data: the floor Σ_{i>k} σ_i²(A*_{T+1} − Â_SR) is attained by a rank-k update and
    nothing of rank k goes below it.

    The floor from theory.tail_energy is checked against an eigendecomposition of MᵀM (M the
    residual), attained by the rank-k update that oracle builds, and bounded below by Lemma 1's
    fine-tuned update and by perturbations of the optimum along the rank-k manifold. A floor from
    index k−1 (too high by σ_k²) fails the attainment, from index k+1 (too low by σ_{k+1}²) fails
    the oracle equality, and the floor of A*_{T+1} − A* (zero, rank k) fails both.
    """
    k = min(k, d)
    rng = np.random.default_rng(seed)
    truth = th.sample_ground_truth(d, k, T, rng=rng)
    data = th.sample_tasks(truth, 30, n, 0.1, rng=rng)
    A_sr = th.standard_retraining(data.X, data.Y)
    residual = truth.test_weight - A_sr
    floor = float(th.tail_energy(residual, k))
    tol = _rounding_tol(residual, truth.test_weight, A_sr)
    oracle, best, V = _eig_oracle(residual, k)
    assert abs(floor - oracle) <= tol                                   # the right tail
    assert abs(frob2(residual - best) - floor) <= tol                   # attained by a rank-k Δ
    tuned = th.finetune_lora(A_sr, data.X_test, data.Y_test, k)         # Lemma 1 on the test data
    assert frob2(A_sr + tuned - truth.test_weight) >= floor - tol
    for delta in _manifold_competitors(residual, V, k, rng):              # and rank-k Δ near the optimum
        assert frob2(A_sr + delta - truth.test_weight) >= floor - tol


@given(d=st.integers(2, 12), k=st.integers(1, 3), T=st.integers(1, 5), seed=seeds)
def test_P4_population_floor_and_weyl_bound(d, k, T, seed):
    """In population the floor is Σ_{i>k} σ_i²(R*_{T+1} − R̄*): R*_{T+1} − R̄* is built here from U*
    (not from truth.R_bar or standard_retraining_population), and, being symmetric, its singular
    values are |eigenvalues| from eigvalsh, a computation independent of tail_energy's SVD."""
    k = min(k, d)
    truth = th.sample_ground_truth(d, k, T, rng=seed)
    A_sr = th.standard_retraining_population(truth)
    residual = truth.test_weight - A_sr
    floor = float(th.tail_energy(residual, k))
    U = truth.U_star
    D = U[T] @ U[T].T - sum(U[t] @ U[t].T for t in range(T)) / T
    lam, V = np.linalg.eigh(D)
    order = np.argsort(-np.abs(lam))
    tol = _rounding_tol(D, truth.test_weight, A_sr)
    assert abs(floor - float(np.sum(lam[order[k:]] ** 2))) <= tol
    top = V[:, order[:k]]
    assert abs(frob2(residual - top @ np.diag(lam[order[:k]]) @ top.T) - floor) <= tol   # attained
    # Weyl: σ_{i+k}(R_{T+1} − R̄) ≥ σ_{i+2k}(R̄) since R_{T+1} has rank k.
    weyl = float(th.tail_energy(truth.R_bar, min(2 * k, d)))
    assert floor >= weyl - tol
    # Positive for generic U*: explicit conditioning, since the floor vanishes continuously as the
    # adapters become dependent (thorough profile: d = 2, k = T = 1 with u₁ ∥ u₂ to 1e-7 gave 3e-14).
    s = np.linalg.svd(np.concatenate(list(U), axis=1), compute_uv=False)[: min(d, (T + 1) * k)]
    if k < min((T + 1) * k, d) and s[-1] >= 1e-2 * s[0]:
        assert floor > 1e3 * tol       # a sum of positive eigenvalues² (≥ 1e5 tol in 2000 draws)


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


@settings(max_examples=examples(20))
@given(sizes=recoverable_sizes(), seed=seeds)
def test_P5_exact_population_solver_recovers_the_truth(sizes, seed):
    d, k, T = sizes
    truth = th.sample_ground_truth(d, k, T, rng=seed)
    # P5 is about generic U*: conditioning explicit. Nearly dependent adapters create stationary points
    # with F > 0 that a local solver from 3 starts can stop at (thorough profile: (d, k, T) = (3, 1, 3),
    # stacked-adapter σ_min/σ_max = 0.004, F = 2.7e-6 from 3 starts; 30 starts reach F = 1e-29 at A*).
    s = np.linalg.svd(np.concatenate(list(truth.U_star[:T]), axis=1), compute_uv=False)[: min(d, T * k)]
    assume(s[-1] >= 1e-2 * s[0])
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


@settings(max_examples=examples(8))
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
    # Stationary to the solver's documented accuracy: the gradient within 1e-9 of the size of the terms
    # it is formed from, mean_t(‖W_t‖‖S_t‖ + ‖C_t‖)·max(1, ‖U‖). An absolute 1e-9 is not its contract:
    # at T = 2 the minimisers form a continuum and Levenberg–Marquardt stops at rounding-size steps with
    # a gradient of ~2e-9 (seen under the thorough profile at d = 5, m = 5), still 1e-10 relative.
    S, C, _ = th.task_statistics(X, Y)
    nW = np.linalg.norm(fit.A + fit.R, axis=(1, 2))
    terms = np.mean(nW * np.linalg.norm(S, axis=(1, 2)) + np.linalg.norm(C, axis=(1, 2)))
    assert fit.grad_norm <= 1e-9 * terms * max(1.0, np.linalg.norm(fit.U))
    more = th.fit_loraml(X, Y, 1, rng=rng, n_starts=6)
    assert fit.loss <= more.loss + 1e-10 * fit.loss


def test_paper_gd_converges_to_the_exact_optimum_at_its_linear_rate():
    """The authors' alternating GD (default steps) converges to the exact solver's optimum, at the
    rate ρ of its own linearisation there.

    Instance d = 4, k = 1, T = 4, N = 40, σ = 0.3 (seed 3), identifiable (T ≥ 3, d ≥ 3k), where ρ ≈ 0.995
    per outer step (so the 6000 steps below take ~0.5 s). Three derived checks:
    1. the exact optimum z* is a fixed point of one outer step Φ: one step moves z by at most
       (10 T lr_U + lr_A)‖∇F̂(z*)‖ (each inner step moves U_t by lr_U (G_t + G_tᵀ)U_t = lr_U T ∇_{U_t}F̂,
       the outer step moves A by lr_A ∇_A F̂), plus rounding;
    2. ρ = spectral radius of the Jacobian of Φ at z* (central differences) is < 1, and from the
       paper's initialisation the error e(n) = ‖Â_n − Â_exact‖ contracts by ρ^m over m steps once the
       second mode (ρ₂/ρ)^n has died out: after n = 3000 steps (ρ₂/ρ)^n < 1e-4, so e(n + m)/e(n)
       matches ρ^m to 1 % even if the second mode starts 100× larger than the first;
    3. the end point lies within the exact solver's own accuracy: a contraction of rate ρ and
       eigenvector conditioning κ has its fixed point within κ‖Φ(z*) − z*‖/(1 − ρ) of z*.
    Rules out a GD whose fixed point is not the optimum (e.g. G_t U_t in place of (G_t + G_tᵀ)U_t:
    its one-step residual at z* is 1e8× the bound) and one that converges elsewhere or sublinearly.
    """
    d, T, N = 4, 4, 40
    opts = {key: th.PAPER_DEFAULTS[key] for key in ("inner_steps", "lr_A", "lr_U")}
    rng = np.random.default_rng(3)
    truth = th.sample_ground_truth(d, 1, T, rng=rng)
    X, Y = _xy(truth, N, 0.3, rng)
    S, C, _ = th.task_statistics(X, Y)
    exact = th.fit_loraml(X, Y, 1, rng=0)
    assert exact.converged, exact.message

    def phi(z, steps=1):
        A, U = th.paper_gd(S, C, z[: d * d].reshape(d, d), z[d * d:].reshape(T, d, 1), outer_steps=steps, **opts)
        return np.concatenate([A.ravel(), U.ravel()])

    z_star = np.concatenate([exact.A.ravel(), exact.U.ravel()])
    eps = np.finfo(float).eps
    moved = np.linalg.norm(phi(z_star) - z_star)
    bound = (opts["inner_steps"] * T * opts["lr_U"] + opts["lr_A"]) * exact.grad_norm
    assert moved <= 1.01 * bound + 100 * eps * np.linalg.norm(z_star)                       # 1.
    h = 1e-6
    J = np.stack([(phi(z_star + h * e) - phi(z_star - h * e)) / (2 * h) for e in np.eye(z_star.size)], axis=1)
    ev, vecs = np.linalg.eig(J)
    order = np.argsort(-np.abs(ev))
    rho, rho2 = np.abs(ev[order[:2]])
    assert np.isreal(ev[order[0]]) and rho < 1                                              # 2.
    n, m = 3000, 500
    assert (rho2 / rho) ** n < 1e-4
    A, U = np.zeros((d, d)), th.PAPER_DEFAULTS["init_scale"] * np.random.default_rng(5).standard_normal((T, d, 1))
    A, U = th.paper_gd(S, C, A, U, outer_steps=n, **opts)
    e_n = np.linalg.norm(A - exact.A)
    A, U = th.paper_gd(S, C, A, U, outer_steps=m, **opts)
    e_nm = np.linalg.norm(A - exact.A)
    assert abs(e_nm / e_n / rho**m - 1) <= 0.01
    A, U = th.paper_gd(S, C, A, U, outer_steps=2500, **opts)                                 # 3.
    kappa = np.linalg.cond(vecs)
    assert np.linalg.norm(A - exact.A) <= kappa * moved / (1 - rho) + e_nm * 1.01 * rho**2500


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


def _finetune_errors(d, k, n, sigma, reps, rng):
    """‖Δ̂ − R‖² for ``reps`` draws of R = UUᵀ, X and noise, with Â = A* (one batched Lemma 1 call)."""
    U = rng.standard_normal((reps, d, k))
    R = U @ np.swapaxes(U, 1, 2)
    X = rng.standard_normal((reps, n, d))
    Z = X @ R + sigma * rng.standard_normal((reps, n, d))     # residual targets Y − X A*ᵀ (R symmetric)
    delta = th.reduced_rank_regression(X, Z, k)
    return np.sum((delta - R) ** 2, axis=(1, 2))


@pytest.mark.parametrize(("d", "k", "n", "sigma", "reps", "discriminates"), [
    (8, 2, 800, 0.5, 400, False),
    (10, 1, 100, 0.1, 400, False),
    (6, 3, 60, 0.2, 400, False),
    (6, 1, 16, 1e-3, 10000, True),
])
def test_P6_finetuning_rate_constant(d, k, n, sigma, reps, discriminates, rng):
    """E‖Δ̂ − R*_{T+1}‖² = theory.rate_prediction(d, k, n, σ) = σ²k[d/(n−d−1) + (d−k)/(n−k−1)]
    ≈ σ²k(2d−k)/n to first order in σ, at Â = A*.

    The measured mean must lie within Z·SE of the prediction. The second-order term in σ is
    relative O(σ² E[1/(s_k(R)² λ_min(XᵀX))]): negligible at σ = 1e-3 (the same 200 000 draws at
    (6, 1, 16) give 1.0228 ± 0.0014 at σ = 1e-3 and at 1e-5), and at the three old points with their
    σ it moved the mean by ≤ 0.3 % (common draws, σ against 1e-3), below 0.2 SE of these 400 draws.
    The error is right-skewed (skewness 2.4 at (6, 1, 16)); the skewness of a mean of 10 000 is 0.02,
    so the normal false-alarm rate of Z = 4 stands.

    At (6, 1, 16) (small n − d) the spec's σ²k(2d−k)/(n−d−1) is 19 % high and the naive σ²k(2d−k)/n
    33 % low, about 30 and 50 SE (SE 0.6 %): the test asserts both lie outside twice the band, so
    it would fail with near certainty had either been the truth. At the old points they differ
    from the prediction by ≤ 5 % (≤ 3 SE): those points check the large-n regime, not the constant.
    """
    err = _finetune_errors(d, k, n, sigma, reps, rng)
    mean, se = mean_and_se(err)
    predicted = float(th.rate_prediction(d, k, n, sigma))
    assert abs(mean - predicted) <= Z * se
    if discriminates:
        for wrong in (sigma**2 * k * (2 * d - k) / (n - d - 1), sigma**2 * k * (2 * d - k) / n):
            assert abs(mean - wrong) >= 2 * Z * se


def test_P6_log_log_slope_is_minus_one(rng):
    """The fitted slope of log E‖Δ̂ − R‖² against log n over n = 50…3200 equals that of
    theory.rate_prediction (−1.023 here: the rate is O(1/n) with a d/n correction), within Z·SE.

    The slope is a linear combination Σ w_i log m_i of the four means, so its SE is
    sqrt(Σ w_i² (se_i/m_i)²) (≈ 0.01 with 200 draws per n). Rules out O(n^{-1/2}) and O(n^{-2}) (≥ 0.5
    away, about 50 SE) and any exponent off by more than ≈ 0.04.
    """
    d, k, sigma, reps = 6, 1, 0.1, 200
    ns = np.array([50, 200, 800, 3200])
    stats = [mean_and_se(_finetune_errors(d, k, n, sigma, reps, rng)) for n in ns]
    means, ses = np.array(stats).T
    x = np.log(ns)
    w = (x - x.mean()) / np.sum((x - x.mean()) ** 2)          # least-squares slope weights
    slope = float(w @ np.log(means))
    slope_se = float(np.sqrt(np.sum((w * ses / means) ** 2)))
    predicted = float(w @ np.log(th.rate_prediction(d, k, ns, sigma)))
    assert abs(slope - predicted) <= Z * slope_se
    assert min(abs(predicted + 0.5), abs(predicted + 2)) >= 2 * Z * slope_se


def test_P10_loraml_base_error_decays_like_one_over_N_while_SR_does_not():
    """‖Â_LoRA-ML − A*‖² ∝ 1/N: the slope of log E‖Â − A*‖² between N₁ = 500 and N₂ = 8000 is −1.

    Tolerance Z·SE (SE propagated from the two means) + the O(1/N²) remainder in slope units: as in
    P2 the relative remainder at N is O((d+1)/(N−d−1)) (1.8 % at N₁, 0.1 % at N₂), i.e. at most
    (d+1)/(N₁−d−1)/ln(N₂/N₁) = 0.007 in slope (measured over 200 draws: N·E‖Â − A*‖² = 7.06 ± 0.14 at
    N₁ and 7.02 ± 0.11 at N₂). With these 16 draws the slope is −0.991 with SE 0.021 (band 0.089):
    slope −1/2 (an O(N^{-1/2}) rate) is 24 SE away, slope 0 (no decay) 48 SE.

    SR's base error tends to ‖R̄*‖²: per draw Â_SR − A* = R̄* + (the P2 fluctuation), so
    E‖Â_SR − A*‖² − ‖R̄*‖² is the P2 term (the cross term has mean zero); the paired differences
    must match it within Z·SE at both N (SE 0.4 and 0.15, dominated by the cross term 2⟨R̄*, ξ⟩): SR
    tending to A* instead (excess −‖R̄*‖² ≈ −14) would be ≥ 30 SE off. And it stays ≥ 1e3 × LoRA-ML.
    """
    d, k, T, sigma, reps = 8, 1, 3, 0.5, 16
    N1, N2 = 500, 8000
    lo = {N1: [], N2: []}
    sr, sr_excess = {N1: [], N2: []}, {N1: [], N2: []}
    for ss in np.random.SeedSequence(10).spawn(reps):
        rng = np.random.default_rng(ss)
        truth = th.sample_ground_truth(d, k, T, rng=rng)
        D = truth.R_star[:T] - truth.R_bar
        for N in (N1, N2):
            X, Y = _xy(truth, N, sigma, rng)
            fit = th.fit_loraml(X, Y, k, rng=rng)
            assert fit.converged, fit.message
            lo[N].append(frob2(fit.A - truth.A_star))
            p2 = (d * d * sigma**2 + (d + 1) * np.mean(np.sum(D**2, axis=(1, 2)))) / (T * N)
            sr[N].append(frob2(th.standard_retraining(X, Y) - truth.A_star))
            sr_excess[N].append(sr[N][-1] - frob2(truth.R_bar) - p2)
    (m1, s1), (m2, s2) = mean_and_se(lo[N1]), mean_and_se(lo[N2])
    slope = np.log(m2 / m1) / np.log(N2 / N1)
    slope_se = np.hypot(s1 / m1, s2 / m2) / np.log(N2 / N1)
    remainder = (d + 1) / (N1 - d - 1) / np.log(N2 / N1)
    assert abs(slope + 1) <= Z * slope_se + remainder
    assert 0.5 >= 2 * (Z * slope_se + remainder)                  # slope −1/2 would fail
    for N in (N1, N2):
        mean, se = mean_and_se(sr_excess[N])
        assert abs(mean) <= Z * se
    assert np.mean(sr[N2]) >= 1e3 * m2


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
