"""The model (spec §2) and P1, the population identity.

| check | predicted | tolerance | rules out (margin) |
|-------|-----------|-----------|--------------------|
| P1: E‖y − W x‖² by Monte Carlo (20000 draws) | ‖W − A*_t‖² + dσ² | 5 SE (SE ≈ 1% of the mean) | a missing dσ² (off by dσ², up to 32 = ~30 SE at σ = 2, d = 8), a σ for σ² noise (Q1), or a non-squared norm |
| shapes, symmetric base, R*_t, R̄*, A*_{T+1} | spec §2 | exact / 1e-12 | a test task inside R̄*, an unsymmetrised base |
| noiseless data | Y = X A*_tᵀ | 1e-12 | rows/columns transposed (samples as columns) |
| batched ground truths | every base, then every set of adapters, from one stream | bit-identical | another draw order (the P6 figure's numbers would change) |
"""

import numpy as np
from helpers import mean_and_se, seeds
from hypothesis import given
from hypothesis import strategies as st

import theory as th


def test_ground_truth_shapes_and_conventions():
    truth = th.sample_ground_truth(6, 2, 4, rng=0)
    assert truth.A_star.shape == (6, 6) and truth.U_star.shape == (5, 6, 2)
    assert (truth.d, truth.k, truth.T) == (6, 2, 4)
    np.testing.assert_array_equal(truth.A_star, truth.A_star.T)  # the paper's symmetric base
    np.testing.assert_allclose(truth.R_star[3], truth.U_star[3] @ truth.U_star[3].T)
    np.testing.assert_allclose(truth.R_bar, truth.R_star[:4].mean(axis=0))
    np.testing.assert_allclose(truth.test_weight, truth.A_star + truth.R_star[4])
    assert np.linalg.matrix_rank(truth.R_star[0]) == 2
    asym = th.sample_ground_truth(6, 2, 4, rng=0, symmetric_base=False)
    assert not np.allclose(asym.A_star, asym.A_star.T)


def test_sampling_is_reproducible_and_seed_dependent():
    a = th.sample_tasks(th.sample_ground_truth(5, 1, 3, rng=1), 20, 7, 0.1, rng=2)
    b = th.sample_tasks(th.sample_ground_truth(5, 1, 3, rng=1), 20, 7, 0.1, rng=2)
    c = th.sample_tasks(th.sample_ground_truth(5, 1, 3, rng=1), 20, 7, 0.1, rng=3)
    np.testing.assert_array_equal(a.Y, b.Y)
    assert not np.array_equal(a.Y, c.Y)
    assert a.X.shape == a.Y.shape == (3, 20, 5) and a.X_test.shape == a.Y_test.shape == (7, 5)


def test_noiseless_data_follow_y_equals_W_x():
    truth = th.sample_ground_truth(5, 2, 3, rng=4)
    data = th.sample_tasks(truth, 30, 11, 0.0, rng=5)
    for t in range(3):
        np.testing.assert_allclose(data.Y[t], data.X[t] @ truth.task_weights[t].T, atol=1e-12)
    np.testing.assert_allclose(data.Y_test, data.X_test @ truth.test_weight.T, atol=1e-12)


@given(d=st.integers(1, 8), sigma=st.floats(0.0, 2.0), seed=seeds)
def test_P1_population_identity_monte_carlo(d, sigma, seed):
    """E‖y − W x‖² = ‖W − A*_t‖² + dσ², checked by Monte Carlo within 5 standard errors."""
    rng = np.random.default_rng(seed)
    truth = th.sample_ground_truth(d, 1, 1, rng=rng)
    W = rng.standard_normal((d, d))
    data = th.sample_tasks(truth, 20000, 1, sigma, rng=rng)
    sq = np.sum((data.Y[0] - data.X[0] @ W.T) ** 2, axis=1)
    mean, se = mean_and_se(sq)
    predicted = float(th.population_risk(W, truth.task_weights[0], sigma))
    assert abs(mean - predicted) <= 5 * se + 1e-12
    assert np.isclose(predicted - d * sigma**2, th.excess_risk(W, truth.task_weights[0]))


def test_batched_ground_truths_follow_the_documented_draw_order():
    """size = B draws every base, then every set of adapters, from one stream (the order the batched
    P6 table has always used), each base symmetrised; a GroundTruth per instance. A per-instance
    order (base, adapters, base, …) or a missing symmetrisation would fail."""
    d, k, T, B = 4, 2, 3, 5
    truths = th.sample_ground_truth(d, k, T, rng=7, size=B)
    rng = np.random.default_rng(7)
    G = rng.standard_normal((B, d, d))
    U = rng.standard_normal((B, T + 1, d, k))
    assert len(truths) == B and all(isinstance(t, th.GroundTruth) for t in truths)
    np.testing.assert_array_equal(np.stack([t.A_star for t in truths]), (G + np.swapaxes(G, 1, 2)) / 2)
    np.testing.assert_array_equal(np.stack([t.U_star for t in truths]), U)
    one = th.sample_ground_truth(d, k, T, rng=7)               # size=None: the first base, then its adapters
    np.testing.assert_array_equal(one.A_star, truths[0].A_star)
    assert not np.array_equal(one.U_star, truths[0].U_star)
