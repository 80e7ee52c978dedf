"""Landscape of the population LoRA-ML objective: derivatives, P5's boundary, P7, P8, P9.

Reference values, tolerances, and what each check rules out (every predicted value is derived in
the test's docstring or in notebooks/01-two-task-landscape.py):

| check | quantity | predicted | tolerance | rules out (margin) |
|-------|----------|-----------|-----------|--------------------|
| derivatives | ∇F, ∇G, ∇²F, ∇²G | central differences, h = 1e-5 | 1e-6 relative (truncation h²·F‴ ≈ 1e-10) | a dropped symmetrisation (E instead of E + Eᵀ) or a missing curvature term: O(1) relative error |
| elimination of A | G(U) vs F(A(U), U); ∇_A F at A(U) | equal; 0 | 1e-12 / 1e-10 relative | an optimal base off by R̄* or by a factor T: O(1) |
| P7 | F on [U₁ U₂]·Q, Q ∈ O(k,k) | 0 | residual ≤ 64 ε · size of the terms | Q orthogonal instead of hyperbolic: F = O(s²) |
| P7 | σ_{2k+1}(Â − A*), σ_{3k+1}(A*₃ − Â) | ≤ ‖E₁‖_op ≤ √(2F) | exact bound + 64 ε · scale | rank 2k enough for fine-tuning: σ_{2k+1}(A*₃ − Â) = O(1) |
| P8 | λ_min(∇²F) at (A*+R̄*, 0) | min(T, 2 min_t λ_min(R̄* − R*_t)); −‖M‖_op at T = 2 | 1e-8·(1 + ‖R*‖) against the dense Hessian; 1e-6·(1 + ‖R*‖) against a finite-difference Hessian (h = 1e-4) | a factor 1 instead of 2, or R*_t − R̄* for R̄* − R*_t: off by |λ|/2 or more |
| P8 | F along the escape direction | F(x + tv) − F(x) = ½λt² | 1e-2 relative at t = 1e-3 (cubic term O(t)) | a non-eigenvector or a wrong sign: O(1) |
| P9 | λ_min(∇²G), U = 0 / v₊ family / kernel family | −‖M‖_op / ½(s − √(s² + 4|μ₋|(μ₊+|μ₋|))) / a² − √(a⁴ + ‖M‖²_op) | 1e-8 relative | a 1/a⁴ law for ∇²G: off by a factor a² |
| P9 | λ_min(∇²F), kernel family | λ_min of [[2, √2a, √2a], [√2a, 2a²−μ, 0], [√2a, 0, 2a²+μ]], μ = ‖M‖_op (~ −μ²/(2a⁴)) | 1e-8 relative | ∇²F decaying like ∇²G (1/a²): off by a² = 256μ at the last point |
| P9 | inertia of ∇²F and ∇²G | equal (Haynsworth: ∇²_AA F = T·I ≻ 0) | exact | a critical point misclassified by the reduced Hessian |
| P9 | G along gradient descent, 121 recorded points | non-increasing; < 1e-10 after 6000 steps | rounding of G, 64 ε s(√(2G) + ε s); instances with min(μ₊, |μ₋|) ≥ 0.1‖M‖_op | a spurious local minimum (G stalls at O(1)); an overshooting step (an increase) |
| P5 | d = 4, k = 2, T = 3 | zero loss with Â ≠ A* | ‖Â − A*‖ > 1e-3‖A*‖ | a solver that always returns A* there (the continuum exists) |
| solver | a batch of 4 vs batches of one; asymmetric at (T, d, k) = (3, 6, 1) | Â = A* | 1e-8 relative | instances mixed within a batch; gauge fixing breaking convergence |
| Gauss–Newton | _gram vs JᵀJ (J by unit-step central differences: exact for bilinear residuals) | equal | 1e-12 relative | a wrong centring (1/T) or a missing cross block: O(1) |
| residual-space step | (K + μI) x = g through the d² residual space (Sylvester frames, Schur complement, refinement), μ from 1 to 1e-10·‖K‖, a symmetric U with a zero column | every instance reported solved, with normwise backward error ≤ 64 ε against the dense _gram | 64 ε (‖g‖ + (max_t ‖L_t‖² + μ)‖x‖), ‖K‖ ≤ max_t ‖L_t‖²: the level of a backward-stable solve | a factor 2 dropped from the symmetric operator, a wrong gauge projection or no refinement: backward errors 1e-2 to 1e-6 |
| residual-space step | an instance it cannot solve accurately (μ = 1e-15‖K‖) | reported unsolved (the solver falls back to the dense path) | exact | an inaccurate step passed on as solved |
| solver | residual-space vs dense steps, (T, d, k) = (3, 12, 4) asymmetric and (5, 9, 4) symmetric (d ≥ 3k: A* identified) | Â = A* on both routes | 1e-8 relative | a step that converges to the wrong base or stalls |
"""

import numpy as np
import pytest
from helpers import examples, seeds
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import theory as th
from theory import landscape as L
from theory.landscape import _objective as LO
from theory.landscape import _solver as LS

EPS = np.finfo(float).eps


def _truth(d, k, T, seed):
    return th.sample_ground_truth(d, k, T, rng=np.random.default_rng(seed))


# ------------------------------------------------------------------------- finite differences


def _fd_check(f, g, H, x, h=1e-5):
    """Central differences of f (for the gradient g) and of g (for the Hessian H) at x."""
    n = x.size
    E = np.eye(n)
    g_fd = np.array([(f(x + h * e) - f(x - h * e)) / (2 * h) for e in E])
    H_fd = np.array([(g(x + h * e) - g(x - h * e)) / (2 * h) for e in E])
    gx, Hx = g(x), H(x)
    return np.linalg.norm(g_fd - gx) / np.linalg.norm(gx), np.linalg.norm(H_fd - Hx) / np.linalg.norm(Hx)


@settings(max_examples=examples(12))
@given(d=st.integers(2, 4), k=st.integers(1, 2), T=st.integers(2, 3), asym=st.booleans(), seed=seeds)
def test_gradient_and_hessian_of_F_match_finite_differences(d, k, T, asym, seed):
    k = min(k, d)
    truth = _truth(d, k, T, seed)
    rng = np.random.default_rng(seed)
    shapes = [(d, d), (T, d, k)] + ([(T, d, k)] if asym else [])
    sizes = [int(np.prod(s)) for s in shapes]

    def split(x):
        parts, i = [], 0
        for s, m in zip(shapes, sizes):
            parts.append(x[i:i + m].reshape(s))
            i += m
        return parts[0], parts[1], (parts[2] if asym else None)

    def f(x):
        A, U, V = split(x)
        return L.landscape_objective(truth, A, U, V=V).value

    def g(x):
        A, U, V = split(x)
        o = L.landscape_objective(truth, A, U, V=V)
        return np.concatenate([o.grad_A.ravel(), o.grad_U.ravel()] + ([o.grad_V.ravel()] if asym else []))

    def H(x):
        A, U, V = split(x)
        return L.loraml_hessian(truth, A, U, V=V)

    x = rng.standard_normal(sum(sizes))
    eg, eh = _fd_check(f, g, H, x)
    assert eg <= 1e-6 and eh <= 1e-6


@settings(max_examples=examples(12))
@given(d=st.integers(2, 4), k=st.integers(1, 2), T=st.integers(2, 4), asym=st.booleans(), seed=seeds)
def test_reduced_objective_derivatives_and_elimination_of_A(d, k, T, asym, seed):
    """G(U) = F(A(U), U), and ∇G, ∇²G against central differences."""
    k = min(k, d)
    truth = _truth(d, k, T, seed)
    rng = np.random.default_rng(seed)
    n1 = T * d * k

    def split(x):
        return x[:n1].reshape(T, d, k), (x[n1:].reshape(T, d, k) if asym else None)

    def f(x):
        U, V = split(x)
        return L.reduced_objective(truth, U, V=V).value

    def g(x):
        U, V = split(x)
        o = L.reduced_objective(truth, U, V=V)
        return np.concatenate([o.grad_U.ravel()] + ([o.grad_V.ravel()] if asym else []))

    def H(x):
        U, V = split(x)
        return L.reduced_hessian(truth, U, V=V)

    x = rng.standard_normal(n1 * (2 if asym else 1))
    eg, eh = _fd_check(f, g, H, x)
    assert eg <= 1e-6 and eh <= 1e-6
    U, V = split(x)
    A = L.optimal_base(truth, U, V=V)
    full = L.landscape_objective(truth, A, U, V=V)
    assert abs(full.value - f(x)) <= 1e-12 * max(1.0, f(x))
    assert np.linalg.norm(full.grad_A) <= 1e-10 * (1 + np.linalg.norm(truth.task_weights))


def test_hvp_is_the_hessian_times_the_direction(rng):
    truth = _truth(4, 2, 3, 5)
    A, U, V = rng.standard_normal((4, 4)), rng.standard_normal((3, 4, 2)), rng.standard_normal((3, 4, 2))
    dA, dU, dV = rng.standard_normal((4, 4)), rng.standard_normal((3, 4, 2)), rng.standard_normal((3, 4, 2))
    hA, hU, hV = L.landscape_hvp(truth, A, U, dA, dU, V=V, dV=dV)
    H = L.loraml_hessian(truth, A, U, V=V)
    ref = H @ np.concatenate([dA.ravel(), dU.ravel(), dV.ravel()])
    np.testing.assert_allclose(np.concatenate([hA.ravel(), hU.ravel(), hV.ravel()]), ref, rtol=1e-12, atol=1e-10)


# ---------------------------------------------------------------------------------------- P8


def _fd_hessian_of_F(truth, A, U, h):
    """Hessian of F at (A, U) by central differences of landscape_objective's gradient, symmetrised."""
    x0 = np.concatenate([A.ravel(), U.ravel()])
    na = A.size

    def grad(x):
        o = L.landscape_objective(truth, x[:na].reshape(A.shape), x[na:].reshape(U.shape))
        return np.concatenate([o.grad_A.ravel(), o.grad_U.ravel()])

    E = np.eye(x0.size)
    H = np.stack([(grad(x0 + h * e) - grad(x0 - h * e)) / (2 * h) for e in E])
    return (H + H.T) / 2


@settings(max_examples=examples(10))
@given(d=st.integers(2, 6), k=st.integers(1, 3), T=st.sampled_from([2, 3, 5]), seed=seeds)
def test_P8_sr_is_a_saddle_with_the_predicted_curvature(d, k, T, seed):
    """At (A*+R̄*, 0) the Hessian is block diagonal: T·I on A and 2(R̄* − R*_t) on each column of U_t."""
    k = min(k, d)
    truth = _truth(d, k, T, seed)
    point = L.sr_saddle(truth)
    out = L.landscape_objective(truth, point.A, point.U)
    scale = 1 + np.linalg.norm(truth.R_star)
    assert out.grad_norm <= 64 * EPS * scale
    lam = np.linalg.eigvalsh(L.loraml_hessian(truth, point.A, point.U))[0]
    R = truth.R_star[:T]
    predicted = min(T, 2 * np.linalg.eigvalsh(truth.R_bar - R)[:, 0].min())
    assert abs(lam - predicted) <= 1e-8 * scale
    # The closed form against an independent Hessian: central differences of the gradient (not
    # loraml_hessian, whose HVPs share kernels with the objective). F is quartic, so the truncation
    # error of a central difference is h²/6·|∂³∇F| ≲ h²·(1 + ‖U‖)·…: at h = 1e-4 about 1e-8, while a
    # factor-2 slip in the formula (λ_min(R̄* − R*_t) instead of 2λ_min) moves it by |predicted|/2.
    H_fd = _fd_hessian_of_F(truth, point.A, point.U, h=1e-4)
    lam_fd = np.linalg.eigvalsh(H_fd)[0]
    assert abs(L.sr_saddle_min_eigenvalue(truth) - lam_fd) <= 1e-6 * scale
    assert predicted < 0  # Σ_t tr(R̄* − R*_t) = 0 and the R*_t differ: some task has a negative direction
    if T == 2:
        assert abs(lam + np.linalg.norm(R[0] - R[1], 2)) <= 1e-8 * scale
    esc = L.hessian_min_eigenpair(truth, point.A, point.U)
    assert abs(esc.eigenvalue - lam) <= 1e-12 * scale
    # moving along the escape direction lowers F at second order: F(x + t v) − F(x) ≈ ½ λ t²
    t = 1e-3
    moved = L.landscape_objective(truth, point.A + t * esc.dA, point.U + t * esc.dU).value
    assert moved - out.value == pytest.approx(0.5 * lam * t * t, rel=1e-2)


# ---------------------------------------------------------------------------------------- P7


@settings(max_examples=examples(10))
@given(k=st.integers(1, 2), extra=st.integers(1, 3), s=st.floats(0.1, 1.5), seed=seeds)
def test_P7_two_tasks_have_a_continuum_of_minima(k, extra, s, seed):
    """W = [U₁ U₂] → W Q with Q J Qᵀ = J, J = diag(I_k, −I_k), keeps U₁U₁ᵀ − U₂U₂ᵀ, so zero loss."""
    d = 3 * k + extra
    truth = _truth(d, k, 2, seed)
    rng = np.random.default_rng(seed)
    Wm = np.concatenate([truth.U_star[0], truth.U_star[1]], axis=1)            # (d, 2k)
    B = rng.standard_normal((k, k))
    X = np.block([[np.zeros((k, k)), s * B], [s * B.T, np.zeros((k, k))]])   # X J + J Xᵀ = 0
    lam, P = np.linalg.eigh(X)
    Q = (P * np.exp(lam)) @ P.T                                                # expm(X) ∈ O(k, k)
    J = np.diag([1.0] * k + [-1.0] * k)
    assert np.allclose(Q @ J @ Q.T, J, atol=1e-12 * np.linalg.norm(Q) ** 2)
    WQ = Wm @ Q
    U = np.stack([WQ[:, :k], WQ[:, k:]])
    A = L.optimal_base(truth, U)
    out = L.landscape_objective(truth, A, U)
    size = np.linalg.norm(truth.task_weights[:2]) + np.linalg.norm(U) ** 2
    assert np.sqrt(2 * out.value) <= 64 * EPS * size * np.linalg.norm(Q) ** 2
    # ... but the base moves: Â − A* = R*₁ − U₁U₁ᵀ ≠ 0 for Q ≠ I
    shift = truth.R_star[0] - U[0] @ U[0].T
    assert np.linalg.norm(A - truth.A_star - shift) <= 1e-9 * size
    assert np.linalg.norm(shift) > 1e-3 * np.linalg.norm(truth.R_star[0])


@settings(max_examples=examples(8))
@given(k=st.integers(1, 2), extra=st.integers(1, 3), seed=seeds)
def test_P7_fitted_two_task_base_has_the_predicted_ranks(k, extra, seed):
    """At any fit, Â − A* = E₁ + R*₁ − U₁U₁ᵀ and A*₃ − Â = R*₃ − R*₁ + U₁U₁ᵀ − E₁ with E₁ the task-1
    residual, so σ_{2k+1}(Â − A*) and σ_{3k+1}(A*₃ − Â) are at most ‖E₁‖_op ≤ √(2F)."""
    d = 3 * k + extra
    truth = _truth(d, k, 2, seed)
    fit = th.fit_loraml_population(truth, k, rng=seed)
    scale = np.linalg.norm(truth.task_weights)
    assert fit.loss <= (1e-10 * scale) ** 2
    bound = np.sqrt(2 * fit.loss) + 64 * EPS * scale
    s1 = np.linalg.svd(fit.A - truth.A_star, compute_uv=False)
    s3 = np.linalg.svd(truth.test_weight - fit.A, compute_uv=False)
    assert s1[2 * k] <= bound
    assert s3[3 * k] <= bound


# ---------------------------------------------------------------------------------------- P9


def _mu(truth):
    lam = np.linalg.eigvalsh(truth.R_star[0] - truth.R_star[1])
    return lam[-1], lam[0]


@settings(max_examples=examples(10))
@given(d=st.integers(2, 6), seed=seeds)
def test_P9_enumerated_critical_points_are_minima_or_strict_saddles(d, seed):
    """Every enumerated point is critical and its class is the predicted one.

    Conditioning is explicit: on the v± families λ_min ≈ −|μ∓|(μ₊ + |μ₋|)/s, which the classifier
    resolves only above tol·s (tol = 1e-8); instances with min(μ₊, |μ₋|) < 1e-3‖M‖_op (nearly rank-one
    M) are left out. (The thorough profile found one at d = 2 whose v₊ saddle has F = 3.6e-7 and
    λ_min = −3.8e-4: the classifier then called it a global minimum, because it tested the value
    before the curvature; fixed, and kept as a regression case below.)
    """
    truth = _truth(d, 1, 2, seed)
    mp, mm = _mu(truth)
    m_op = max(mp, -mm)
    assume(min(mp, -mm) >= 1e-3 * m_op)
    points = L.critical_points_two_tasks(truth)
    assert {p.family for p in points} >= {"global minimum", "U = 0", "v+ family", "v- family"}
    assert ("kernel family" in {p.family for p in points}) == (d >= 3)
    for p in points:
        c = L.classify_critical_point(truth, p.A, p.U)
        assert c.critical, p.label
        assert c.kind == p.predicted, (p.label, c)
        lam_G = np.linalg.eigvalsh(L.reduced_hessian(truth, p.U))
        lam_F = np.linalg.eigvalsh(L.loraml_hessian(truth, p.A, p.U))
        tol = 1e-9 * (m_op + np.sum(p.U ** 2))
        # Haynsworth: ∇²_AA F = 2I ≻ 0, so ∇²F and its Schur complement ∇²G have the same negative count
        assert np.sum(lam_F < -tol) == np.sum(lam_G < -tol)
        s = p.a ** 2 + p.b ** 2
        predicted = {
            "U = 0": -m_op,
            "v+ family": 0.5 * (s - np.sqrt(s * s + 4 * (-mm) * (mp - mm))),
            "v- family": 0.5 * (s - np.sqrt(s * s + 4 * mp * (mp - mm))),
            "kernel family": p.a ** 2 - np.sqrt(p.a ** 4 + m_op ** 2),
        }.get(p.family)
        if predicted is not None:
            assert abs(lam_G[0] - predicted) <= 1e-8 * (m_op + s), p.label
            assert lam_F[0] < -tol


def test_critical_point_finder_survives_flat_directions():
    """Regression (thorough profile, d = 3, seed 10): near the continuum of T = 2 minima ∇²G is
    singular and H² + μ²I was singular to working precision once μ reached its floor (LinAlgError).
    The step now goes through H's eigenpairs; every start must end at a classified point."""
    truth = _truth(3, 1, 2, 10)
    found = L.find_critical_points(truth, rng=10, n_starts=8)
    assert len(found) >= 4
    assert {L.classify_critical_point(truth, p.A, p.U).kind for p in found} <= {"global minimum", "strict saddle"}


def test_a_saddle_with_a_tiny_value_is_classified_as_a_saddle():
    """Regression (thorough profile, d = 2, seed 437635): μ₋ ≈ −6e-4 ≪ μ₊, so the v₊ family's saddle
    at s = 0 has F = 3.6e-7 < tol·s² but λ_min = −3.8e-4 < −tol·s: negative curvature decides."""
    truth = _truth(2, 1, 2, 437635)
    point = [p for p in L.critical_points_two_tasks(truth) if p.family == "v+ family"][0]
    c = L.classify_critical_point(truth, point.A, point.U)
    assert c.value < c.tol * c.scale**2 and c.lambda_min < -c.tol * c.scale
    assert c.kind == "strict saddle"


@settings(max_examples=examples(6))
@given(d=st.integers(3, 6), seed=seeds)
def test_P9_curvature_along_the_kernel_family_decays(d, seed):
    """u₁ = u₂ = a v, v ∈ ker M: λ_min(∇²G) = a² − √(a⁴ + μ²) ~ −μ²/(2a²) (the spec's 1/a²), while
    the full Hessian's λ_min(∇²F) is that of [[2, √2a, √2a], [√2a, 2a²−μ, 0], [√2a, 0, 2a²+μ]],
    ~ −μ²/(2a⁴): the A-direction absorbs the escape, so F's curvature decays like 1/a⁴."""
    truth = _truth(d, 1, 2, seed)
    mp, mm = _mu(truth)
    mu = max(mp, -mm)
    prev = None
    for c in (1.0, 4.0, 16.0):
        a = c * np.sqrt(mu)
        p = [q for q in L.critical_points_two_tasks(truth, scales=(a,)) if q.family == "kernel family"][0]
        lam_G = np.linalg.eigvalsh(L.reduced_hessian(truth, p.U))[0]
        lam_F = np.linalg.eigvalsh(L.loraml_hessian(truth, p.A, p.U))[0]
        r = np.sqrt(2) * a
        ref_F = np.linalg.eigvalsh(np.array([[2, r, r], [r, 2 * a * a - mu, 0], [r, 0, 2 * a * a + mu]]))[0]
        assert abs(lam_G - (a * a - np.sqrt(a ** 4 + mu * mu))) <= 1e-8 * (mu + a * a)
        assert abs(lam_F - ref_F) <= 1e-8 * abs(ref_F) + 64 * EPS * (mu + a * a)
        assert lam_G < 0 and lam_F < 0
        if prev is not None:
            assert prev[0] < lam_G and prev[1] < lam_F      # the negative curvature shrinks as a grows
        prev = (lam_G, lam_F)
    # a² = 256 μ: a²λ_G = −μ²a²/(a² + √(a⁴+μ²)) is within μ²/(4a⁴) < 1e-5 of −μ²/2 (relative)
    assert a * a * lam_G == pytest.approx(-mu * mu / 2, rel=1e-4)
    # a⁴λ_F = −μ²/2 · (1 + O(1/a²)): within 1e-2 once a² ≥ 256 μ and μ ≥ ½ (checked on the 3×3 form)
    assert a ** 4 * ref_F == pytest.approx(-mu * mu / 2, rel=max(1e-2, 4 / (a * a)))
    assert a ** 4 * lam_F == pytest.approx(a ** 4 * ref_F, rel=1e-6)


@settings(max_examples=examples(6))
@given(d=st.integers(2, 5), seed=seeds)
def test_P9_found_critical_points_are_minima_or_strict_saddles(d, seed):
    truth = _truth(d, 1, 2, seed)
    found = L.find_critical_points(truth, rng=seed, n_starts=8)
    assert len(found) >= 4
    kinds = [L.classify_critical_point(truth, p.A, p.U).kind for p in found]
    assert set(kinds) <= {"global minimum", "strict saddle"}, kinds


@settings(max_examples=examples(6))
@given(d=st.integers(2, 6), seed=seeds)
def test_P9_gradient_descent_from_random_starts_reaches_zero(d, seed):
    """No spurious local minima: plain GD from 16 random starts near the SR saddle reaches G ≈ 0.

    Conditioning is explicit: near the minimiser (√μ₊ v₊, √|μ₋| v₋) the slowest direction has
    curvature 2 min(μ₊, |μ₋|), so G falls by (1 − 2η min(μ₊, |μ₋|))² per step. With
    min(μ₊, |μ₋|) ≥ 0.1 ‖M‖_op and η = 0.25/(‖M‖_op + ‖U*‖²) (‖U*‖² ≤ ~4‖M‖_op + 2d here) 6000 steps
    shrink G by far more than the 1e-10 asked; below that ratio (about 3% of draws) GD needs up to
    10⁶ steps, which says nothing about spurious minima (measured: 10 of 300 instances at
    ratios 0.0004–0.07 stop between 4e-10 and 6e-4 after 6000 steps).
    """
    truth = _truth(d, 1, 2, seed)
    mp, mm = _mu(truth)
    assume(min(mp, -mm) >= 0.1 * max(mp, -mm))
    rng = np.random.default_rng(seed)
    U0 = 0.1 * np.sqrt(max(mp, -mm)) * rng.standard_normal((16, 2, d, 1))
    step = 0.25 / (max(mp, -mm) + float(np.sum(truth.U_star[:2] ** 2)))
    res = L.reduced_gradient_descent(truth, U0, step=step, n_steps=6000, record_every=50)
    assert np.all(res.values[-1] < 1e-10), res.values[-1]
    # Descent along the whole recorded path (121 points, not just start and end): with step ≤ 1/L on
    # the sublevel set, G(U − η∇G) ≤ G(U) − η/2‖∇G‖² at every step, so every recorded value is at most
    # the previous one (up to rounding of G, ≤ 64ε·G). An overshooting step or a sign error in the
    # gradient breaks this at the first recorded points.
    assert res.path.shape == (121, 16, 2, d, 1) and res.steps[1] == 50
    # G = ½‖r‖² is computed from residuals r with absolute rounding error ≲ ε·s (s = the size of the
    # terms, ‖W‖ + ‖U‖²), so G itself is known to ±(‖r‖ε s + (ε s)²): allow 64 times that.
    s_terms = np.linalg.norm(truth.task_weights[:2]) + np.max(np.sum(res.path ** 2, axis=(-3, -2, -1)))
    prev = res.values[:-1]
    assert np.all(np.diff(res.values, axis=0) <= 64 * EPS * s_terms * (np.sqrt(2 * prev) + EPS * s_terms))
    np.testing.assert_allclose(res.values[-1], [L.reduced_objective(truth, u).value for u in res.path[-1]],
                               rtol=1e-12, atol=1e-300)


# ------------------------------------------------------------------------ P5 and the solvers


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_P5_boundary_d4_k2_T3_zero_loss_without_recovery(seed):
    """d = 4 < 3k = 6: Sym(4) has 10 dimensions, each rank-2 constraint on R*_t − Δ removes
    (d−k)(d−k+1)/2 = 3, so a curve of alternatives Δ passes through 0 and the solver lands on it."""
    truth = th.sample_ground_truth(4, 2, 3, rng=seed)
    fit = th.fit_loraml_population(truth, 2, rng=seed, n_starts=20)
    scale = np.linalg.norm(truth.task_weights[:3])
    assert fit.loss <= (1e-9 * scale) ** 2
    assert np.linalg.norm(fit.A - truth.A_star) > 1e-3 * np.linalg.norm(truth.A_star)


@settings(max_examples=examples(5))
@given(seed=seeds)
def test_batched_symmetric_solver_equals_one_instance_at_a_time(seed):
    """A batch of 4 recovers each A* (P5) exactly as fit_loraml_population (a batch of one) does:
    instances mixed or misaligned within a batch would move Â off A* by O(1)."""
    d, k, T = 7, 2, 3
    truths = [_truth(d, k, T, seed + i) for i in range(4)]
    W = np.stack([t.task_weights[:T] for t in truths])
    fit = L.fit_population_batch(W, k, rng=seed)
    for t, A in zip(truths, fit.A):
        ref = th.fit_loraml_population(t, k, rng=seed)
        assert np.linalg.norm(A - t.A_star) <= 1e-8 * np.linalg.norm(t.A_star)
        assert np.linalg.norm(ref.A - t.A_star) <= 1e-8 * np.linalg.norm(t.A_star)


def test_asymmetric_solver_recovers_in_the_identifiable_regime():
    """T = 3, d = 6, k = 1: d² = 36 unknowns of A against T(d−k)² = 75 rank conditions."""
    fit = L.fit_asymmetric_population(_truth(6, 1, 3, 11), 1, rng=0)
    truth = _truth(6, 1, 3, 11)
    assert np.linalg.norm(fit.A[0] - truth.A_star) <= 1e-8 * np.linalg.norm(truth.A_star)
    assert fit.converged[0]


def test_errors_name_the_argument():
    truth = _truth(3, 1, 2, 0)
    with pytest.raises(ValueError, match="'U' parameter of landscape_objective"):
        L.landscape_objective(truth, np.zeros((3, 3)), np.zeros((3, 3, 1)))
    with pytest.raises(ValueError, match="'A' parameter of loraml_hessian"):
        L.loraml_hessian(truth, np.zeros((2, 2)), np.zeros((2, 3, 1)))
    with pytest.raises(ValueError, match="'truth' parameter of critical_points_two_tasks"):
        L.critical_points_two_tasks(_truth(3, 1, 3, 0))
    with pytest.raises(ValueError, match="'tol' parameter of classify_critical_point"):
        L.classify_critical_point(truth, np.zeros((3, 3)), np.zeros((2, 3, 1)), tol=0)
    with pytest.raises(ValueError, match="'k' parameter of fit_population_batch"):
        L.fit_population_batch(np.zeros((1, 2, 3, 3)), 4, rng=0)


@pytest.mark.parametrize("asym", [False, True])
def test_gauss_newton_matrix_is_JtJ_of_the_centred_residuals(asym):
    """The centred residuals r_t = U_tV_tᵀ − W_t − mean_s(U_sV_sᵀ − W_s) are bilinear in the
    factors, so central differences with a unit step give the Jacobian exactly (up to rounding)."""
    B, T, d, k = 2, 3, 4, 2
    rng = np.random.default_rng(5)
    U = rng.standard_normal((B, T, d, k))
    V = rng.standard_normal((B, T, d, k)) if asym else None
    x = U.reshape(B, -1) if not asym else np.stack([U, V], axis=2).reshape(B, -1)

    def residual(xb):
        Ub, Vb = LS._unpack(xb[None], (1, T, d, k), not asym)
        P = LO._prod(Ub, Vb)[0]
        return (P - P.mean(axis=0)).ravel()

    for b in range(B):
        E = np.eye(x.shape[1])
        J = np.stack([(residual(x[b] + e) - residual(x[b] - e)) / 2 for e in E], axis=1)
        K = LS._gram(*LS._unpack(x[b:b + 1], (1, T, d, k), not asym), T)[0]
        np.testing.assert_allclose(K, J.T @ J, rtol=0, atol=1e-12 * np.abs(J.T @ J).max())


def test_spd_solve_matches_lu_and_falls_back_to_the_pseudo_inverse():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((3, 6, 9))
    K = X @ np.swapaxes(X, 1, 2)
    b = rng.standard_normal((3, 6))
    K[2] = np.diag([1.0, 2.0, 3.0, 0.0, -1.0, 5.0])           # not positive definite: pinv branch
    before = K.copy()
    x = LS._spd_solve(K, b)
    np.testing.assert_array_equal(K, before)
    np.testing.assert_allclose(x[:2], np.linalg.solve(K[:2], b[:2, :, None])[..., 0], rtol=1e-10)
    np.testing.assert_allclose(x[2], np.linalg.pinv(K[2]) @ b[2], rtol=1e-12)


def test_recovery_phase_table_lands_on_the_truth_only_where_it_is_identified():
    """T = 2 never identifies A* (P7: a continuum of zero-loss minima); T = 3 with 3k ≤ d does,
    for symmetric and asymmetric adapters alike (P5). (That the table does not depend on the
    executor, solver columns included, is test_identifiability's phase-table test.)"""
    from sims._landscape import recovery_phase_table

    kw = dict(Ts=(2, 3), ds=(3, 6), ks=(1,), reps=3)
    serial = recovery_phase_table(**kw)
    assert len(serial) == 2 * 2 * 2 * 3
    assert serial["zero_loss"].all()
    assert not serial.loc[serial["T"] == 2, "recovered"].any()
    assert serial.loc[serial["T"] == 3, "recovered"].all()
    with pytest.raises(ValueError, match="'executor' parameter of recovery_phase_table"):
        recovery_phase_table(**kw, executor="threads")


def _tangent_norm2(U, V):
    """max_t ‖L_t‖², an upper bound on ‖K‖ (K = Lᵀ C L with C the centring, a projection):
    σ₁(U_t)² + σ₁(V_t)² for L_t(a, b) = a V_tᵀ + U_t bᵀ, 4 σ₁(U_t)² for a U_tᵀ + U_t aᵀ."""
    s = np.linalg.svd(U, compute_uv=False)[..., 0] ** 2
    s = 4 * s if V is None else s + np.linalg.svd(V, compute_uv=False)[..., 0] ** 2
    return s.max(axis=1)


def _backward_error(U, V, g, mu, x):
    """‖(K + μI) x − g‖ / (‖g‖ + (max_t ‖L_t‖² + μ) ‖x‖), K the dense _gram: the normwise backward
    error of a solve, with ‖K‖ bounded as the residual-space solver bounds it."""
    K = LS._gram(U, V, U.shape[1])
    r = np.einsum("bij,bj->bi", K, x) + mu[:, None] * x - g
    size = np.linalg.norm(g, axis=1) + (_tangent_norm2(U, V) + mu) * np.linalg.norm(x, axis=1)
    return np.linalg.norm(r, axis=1) / size


@pytest.mark.parametrize("T, d, k, asym", [(5, 8, 4, True), (3, 6, 2, False), (5, 7, 4, False), (2, 4, 2, True)])
def test_residual_space_step_solves_the_gauss_newton_system(T, d, k, asym):
    """_residual_space_solve against the dense Gauss–Newton matrix (_gram, itself checked against
    JᵀJ above): x solves (K + μI) x = g with the backward error of a backward-stable solve,
    ≤ 64 ε, for μ from 1 to 1e-10 ‖K‖. g is the gradient at a random point
    (g = Jᵀr, as in Levenberg–Marquardt), and a random vector (as the refinement's residuals are,
    with parts in the gauge directions). One symmetric instance has a column of zeros (as the
    spectral start has where a task has fewer than k positive eigenvalues), so its gauge is
    larger than {U S: S skew}. ‖K‖ is bounded by max_t ‖L_t‖², the bound the solver refines
    against; the residual is taken with the dense K. A factor 2 dropped from
    the symmetric Sylvester operator, a wrong gauge projection or no refinement leaves backward
    errors of 1e-6 to O(1) at the small μ."""
    rng = np.random.default_rng(11)
    B = 4
    U = rng.standard_normal((B, T, d, k))
    V = rng.standard_normal((B, T, d, k)) if asym else None
    W = rng.standard_normal((B, T, d, d))
    if not asym:
        W = W + np.swapaxes(W, -1, -2)
        U[1, 2, :, -1] = 0.0
    k_norm = np.linalg.norm(LS._gram(U, V, T), 2, axis=(1, 2))
    for g in (LS._grad_packed(W, U, V)[1], rng.standard_normal((B, T * d * k * (2 if asym else 1)))):
        for rel_mu in (1.0, 1e-4, 1e-8, 1e-10):
            mu = rel_mu * k_norm
            x, ok = LS._residual_space_solve(U, V, g, mu)
            err = _backward_error(U, V, g, mu, x)
            assert ok.all(), (rel_mu, err)
            assert np.all(err <= 64 * EPS), (rel_mu, err)


def test_residual_space_step_reports_what_it_cannot_solve():
    """At μ = 1e-15 ‖K‖ the residual-space factorisation's condition (‖K‖/μ) is beyond what
    refinement recovers: the instances are reported unsolved (Levenberg–Marquardt solves them
    densely), and none reported solved misses the backward-error bound."""
    rng = np.random.default_rng(12)
    B, T, d, k = 4, 5, 8, 4
    U, V = rng.standard_normal((2, B, T, d, k))
    g = LS._grad_packed(rng.standard_normal((B, T, d, d)), U, V)[1]
    for rel_mu in (1e-15, 1e-13):
        mu = rel_mu * np.linalg.norm(LS._gram(U, V, T), 2, axis=(1, 2))
        x, ok = LS._residual_space_solve(U, V, g, mu)
        err = _backward_error(U, V, g, mu, x)
        assert np.all(err[ok] <= 64 * EPS)
        if rel_mu == 1e-15:
            assert not ok.any()


@pytest.mark.parametrize("T, d, k, asym", [(3, 12, 4, True), (5, 9, 4, False)])
def test_residual_space_and_dense_steps_land_on_the_truth(T, d, k, asym, monkeypatch):
    """fit_population_batch where d ≥ 3k and T ≥ 3 (A* identified, P5) lands on A* whichever way
    its steps are solved: the residual-space route (what these sizes use) and the dense one
    (forced). A step that converged elsewhere or stalled leaves ‖Â − A*‖ = O(‖A*‖)."""
    truths = [_truth(d, k, T, seed) for seed in range(3)]
    W = np.stack([t.task_weights[:T] for t in truths])
    A_star = np.stack([t.A_star for t in truths])
    assert LS._residual_space_pays(T, d, k, not asym)
    for route in (True, False):
        monkeypatch.setattr(LS, "_residual_space_pays", lambda *a, r=route: r)
        fit = LS.fit_population_batch(W, k, rng=0, symmetric=not asym)
        err = np.linalg.norm(fit.A - A_star, axis=(1, 2)) / np.linalg.norm(A_star, axis=(1, 2))
        assert fit.converged.all() and np.all(err <= 1e-8), (route, err)
