"""Identifiability of the base A* from the population objective (spec P5, P7).

A base Â has zero population loss exactly when every A*_t − Â = R*_t + Δ (Δ = A* − Â) is a
possible adapter product: PSD of rank ≤ k for symmetric adapters U_tU_tᵀ, of rank ≤ k for
asymmetric U_tV_tᵀ. A* is *identified* when Δ = 0 is the only such Δ. Each instance is put in
one of four classes — identified, isolated (other zero-loss bases exist, each an isolated zero),
continuum (a curve of zero-loss bases is exhibited), undetermined — with the evidence kept. The
cheapest test that settles an instance runs first:

- **first order** (``_local``): the Jacobian of the residual map (A, U) ↦ (A + U_tV_tᵀ − A*_t)_t at
  the truth, modulo the gauge (U_t → U_tQ_t with Q_t orthogonal, dimension T·k(k−1)/2; or
  (U_t, V_t) → (U_tC, V_tC⁻ᵀ), dimension T·k²). Its null space is {(dA, dU): dA + dR_t = 0 ∀t},
  and dU_t ↦ dR_t maps onto the tangent space 𝒯_t of the rank-k (PSD) matrices at R*_t with the
  gauge as kernel, so nullity J = gauge + dim ∩_t 𝒯_t, with 𝒯_t = {Δ: Q_tᵀΔQ_t = 0} (Q_t a basis
  of span(U*_t)^⊥; Δ symmetric, or any Δ asymmetric). The excess dim ∩_t 𝒯_t is the nullity of the
  stacked linear map Δ ↦ (Q_tᵀΔQ_t)_t, read off a gap in its singular values (one SVD with ≤ d²
  columns). It agrees with the rank of the Gauss–Newton matrix of the reduced objective
  (``_solver._gram``, side T·d·k) on all 16400 instances of the standard phase diagram. No excess:
  A* is an isolated zero (obstruction order 1: the residual grows like ‖Δ‖).
- **beyond first order**, where there is excess (``_examine``). An excess null direction proves
  only that A* is not identified *to first order*; the zero-loss set need not be a manifold there
  (the constant-rank theorem does not apply where the rank drops). Near Δ = 0 the zero-loss
  condition is, in the frames [P_t Q_t] (column space of X_t = R*_t and its complement) and
  [P'_t Q'_t] (row space), the vanishing of the Schur complements
  h_t(Δ) = Q_tᵀΔQ'_t − Q_tᵀΔP'_t (S_t + P_tᵀΔP'_t)⁻¹ P_tᵀΔQ'_t (S_t = P_tᵀX_tP'_t), free of any
  gauge: h = LΔ + q(Δ) + O(‖Δ‖³) with L the tangent map above and q_t(Δ) = −Q_tᵀΔP'_tS_t⁻¹P_tᵀΔQ'_t.

  - **second-order test**: ω = min over unit v ∈ ker L of ‖P⊥ q(v)‖·ρ (P⊥ onto range(L)^⊥,
    ρ = min_t σ_k(X_t)). If ω > 0, every zero near 0 has Δ = n + m with n ∈ ker L and ‖m‖ = O(‖n‖²),
    and then ‖h‖ ≥ ω‖n‖²/ρ − O(‖n‖³): A* is isolated, obstruction order 2 (the residual grows like
    ε², the loss like ε⁴), as in the second-order sufficient condition. The minimum of the quartic
    ‖P⊥q(v)‖² on the sphere of ker L is exact in dimension 1, a dense grid of angles refined by
    golden-section search in dimension 2, and Gauss–Newton from 32 random starts above.
  - **curve following** along the minimiser v*: for ε = 0.1, 0.03, 0.01, 0.003, the predictor
    Δ = ερ v*, then Levenberg–Marquardt on h = 0 with every step orthogonal to v*. On a curve of
    zeros tangent to v* the corrected points reach rounding at every distance; at an isolated zero
    their residual is ≈ ω ε² (its log-log slope is ``growth_exponent``). The points are checked by
    the independent residual below. A sequence of zero-loss bases at distances ε₁ > ε₂ > … → 0 makes
    A* a non-isolated point of a real algebraic set, hence on a curve of zeros (curve selection
    lemma): "continuum", order inf. At T = 2 the curve is known in closed form (``_two_task_curve``)
    and checked the same way; at k = d every small Δ is a zero.
  - neither ω above rounding nor a curve: "undetermined", order nan, with ω and the curve's
    distances and residuals as evidence.

- where A* is an isolated zero (order 1 or 2), the question is global:

  - **the rank argument** (``"theorem"``; both adapter kinds): with X_t = R*_t + Δ of rank ≤ k and
    span(U*_s) ∩ span(U*_t) = 0 (d ≥ 2k), X_s − X_t = R*_s − R*_t has rank 2k, so
    col X_s ⊕ col X_t = span(U*_s, U*_t) for every pair; hence col X_t ⊆ I_t = ∩_{s≠t} span(U*_t, U*_s).
    If I_1 = span(U*_1) and I_2 = span(U*_2), then Δ = X_1 − R*_1 = X_2 − R*_2 has its columns in
    span(U*_1) ∩ span(U*_2) = 0: Δ = 0, A* is identified. Modulo span(U*_t), I_t is the
    intersection of T − 1 generic k-dimensional subspaces of R^{d−k}, trivial when
    (T − 1)(d − 2k) ≥ d − k: d ≥ 3k for T = 3 (P5's theorem), d ≥ 2.5k for T = 4, d ≥ 7k/3 for
    T = 5. The conditions are checked on the instance (singular values above 1e-8 relative).
  - **T = 3, d = 3k − 1, symmetric** (the ``"plane"`` construction): [U*_1 U*_2 U*_3] (d × 3k) has
    a one-dimensional kernel (a, b, c), and S = span(U*_1a, U*_2b) is the unique plane meeting
    every span(U*_t) in a line. For Δ = B M Bᵀ (B an orthonormal basis of S, M symmetric 2 × 2),
    with n = (n_U, n_B) the kernel of [U*_t B] (rank k + 1) scaled to ‖n_U‖ = 1, rank(R*_t + Δ) ≤ k
    ⇔ det M + n_Bᵀ adj(M) n_B = 0 (det of Z D Zᵀ is det D · nᵀD⁻¹n up to a positive factor, with
    D = diag(I_k, M)). These are the three equations of the case (T, d, k) = (3, 2, 1); their
    differences are linear in M, so M = λM₀, and λ ≠ 0 solves the remaining one. The candidate is
    an alternative iff every R*_t + Δ is PSD. A multi-start search never found an alternative that
    the construction missed (see ``tests/test_identifiability.py``): that it finds all of them is
    the measured claim of spec P5, not a proof.
  - **T ≥ 4, d = 2k ≤ 14, asymmetric** (the ``"pencil"`` construction; A* is isolated there only at
    second order, and a search from random starts rarely reaches the other zeros). In the basis
    W = [U*_1 U*_2] of R^d write R*_t + Δ = W(G_t + M)Wᵀ, G_t = g_tg_tᵀ, g_t = W⁻¹U*_t (G_1, G_2 the
    coordinate projections). X = G_1 + M has rank k exactly, with column space 𝒞 and row space 𝓡;
    for an invertible D, rank(X − D) ≤ k ⇔ D⁻¹X is a projection ⇔ X D⁻¹ X = X ⇔, with
    X = C N R, R D⁻¹ C = N⁻¹. Task 2 (D = G_1 − G_2 = J = diag(I, −I)) gives N = (R J C)⁻¹, and
    tasks 3, 4 (D_t = G_1 − G_t) then read R H_t C = 0 with H_t = D_t⁻¹ − J (symmetric): 𝓡 ⊥ H_3𝒞
    and 𝓡 ⊥ H_4𝒞, so (H_3 invertible) H_4𝒞 = H_3𝒞: 𝒞 is a k-dimensional invariant subspace of
    P = H_3⁻¹H_4, and 𝓡 = (H_3𝒞)^⊥, X = C(RJC)⁻¹R. Conversely every such 𝒞 with RJC invertible
    gives a zero of tasks 1–4. At Δ = 0, 𝒞₀ = span(e_1 … e_k) is invariant (P|𝒞₀ = Λ = β_3⁻ᵀβ_4ᵀ,
    β_t the off-diagonal block of H_t) and H_3-neutral, so P (H_3-self-adjoint) has each eigenvalue
    μ_i of Λ twice; where the μ_i are distinct and each has one eigenvector (checked), P is
    non-derogatory with Jordan blocks of size 2 (v_i ∈ 𝒞₀, and w_i with (H_4 − μ_iH_3)w_i = H_3v_i),
    and its k-dimensional invariant subspaces are the spans of the first m_i vectors of each chain,
    m ∈ {0, 1, 2}^k with Σm = k (μ_i and its conjugate with the same m_i for a real subspace):
    finitely many, (1, …, 1) being A*. So the zero set is finite (every alternative is isolated)
    and the construction lists it; tasks t ≥ 5 are checked by the independent residual. At k = 2
    there are alternatives iff both μ_i are real, and then exactly two, Δ and Δᵀ (patterns (2, 0)
    and (0, 2)); k = 1 has none. The tasks are relabelled so that the pairs (1, t), t ≤ 4, are the
    best-conditioned (only their spans must meet trivially); the candidates get three damped Newton steps on R H_t C = 0 in the
    chart C = [I; Y], R = [I Z], kept where they lower the residual. Where a condition fails
    (spans meeting, H_3 or β_3 singular, repeated μ, a second eigenvector: 6 of 2000 instances at
    (4, 4, 2)), the instance goes to the search.
  - elsewhere (e.g. T = 4 with 2k < d < 2.5k, or a non-generic instance), a multi-start search: Levenberg–
    Marquardt on the reduced objective from ``n_starts`` random points per instance, all starts of
    all instances in one batch. Zero-loss end points with Â far from A* are alternatives (after
    the independent check below, and deduplicated); none found means "identified" up to the
    search's miss rate, which the tests measure against the exact construction at T = 3.

Every reported alternative passes a check independent of the solver that found it
(:func:`zero_loss_residual`): the eigenvalues (symmetric) or singular values (asymmetric) of
A*_t − Â beyond rank k, and (symmetric) the negative part and the asymmetry, are at rounding level.
Each alternative is then examined like A* (its own frames X_t = R*_t + Δ): an alternative on a
curve makes the instance a continuum ("through an alternative"), an undetermined one makes it
undetermined, otherwise the instance is "isolated". The pencil construction's alternatives are
isolated by the finiteness above: they are examined to second order only (order 1 or 2, nan
where ω does not settle it: far alternatives, ‖Δ‖ ≫ ρ, have ω below the tolerance calibrated at
A*, and curve following there reaches the curve tolerance without a curve). With asymmetric adapters Δᵀ is a zero with Δ
((R*_t + Δ)ᵀ = R*_t + Δᵀ), so the search's alternatives are completed by their transposes.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from .._results import ArrayFields
from ..validation import MAX_COUNT, check_array, check_choice, check_int, check_memory, check_rng
from ._objective import _base, _center, _check_truth, _prod, _tr
from ._solver import _gram, _lm_batch

__all__ = [
    "Identifiability",
    "IdentifiabilityBatch",
    "identifiability",
    "identifiability_batch",
    "zero_loss_residual",
]

_EPS = np.finfo(float).eps
#: Zero loss of a search end point: F ≤ ZERO_LOSS · mean_t ‖R*_t − R̄*‖² (as in sims' phase table).
_ZERO_LOSS = 1e-20
#: Â is "far" from A* (and two alternatives are distinct) beyond this, relative to the same scale.
_FAR = 1e-6
#: Two alternatives are the same zero within this, relative: at a zero of second order (the
#: residual grows like ‖δ‖²) an end point passing the check _CHECK can lie √_CHECK from it
#: (measured: search end points 1e-5 from the exact zeros of the pencil construction).
_SAME = 1e-4
#: Independent check: residual eigen/singular values beyond rank k, relative to the scale.
#: A zero-loss end point has ‖A + U_tV_tᵀ − A*_t‖ ≤ √(2·ZERO_LOSS·T) · scale ≈ 2.4e-10 · scale,
#: and by Weyl the eigenvalues of A*_t − Â move by at most that much; 1e-8 leaves a margin.
_CHECK = 1e-8
#: A subspace condition of the rank argument holds when the deciding σ_min/σ_max exceeds this.
_GENERIC = 1e-8


@dataclass(frozen=True, eq=False)
class Identifiability(ArrayFields):
    """Is A* the only zero-loss base of one instance? (:func:`identifiability`)

    Attributes
    ----------
    status : "identified" (A* the only zero-loss base found), "isolated" (other zero-loss bases,
        each an isolated zero; those found are in ``alternatives``), "continuum" (a curve of
        zero-loss bases through A*, or through an alternative, was exhibited: ``curve_through``)
        or "undetermined" (A* or an alternative is degenerate to first order, and neither the
        second-order test nor curve following settled it; the evidence is in the fields below).
    method : what settled it: "curve" (the examination beyond first order at A*: a continuum, or
        undetermined), "theorem" (the rank argument: T = 3 and d ≥ 3k, T = 4 and d ≥ 2.5k, …,
        checked on the instance), "plane" (T = 3, d = 3k − 1, symmetric: the exact
        construction), "pencil" (T ≥ 4, d = 2k, asymmetric: the exact construction), "search" (multi-start; ``n_starts`` per instance) or "jacobian" (A* locally
        isolated and no global check run: ``search="never"``).
    jacobian_rank : rank of the residual map's Jacobian at the truth (unknowns − nullity).
    expected_rank : the rank when A* is locally identified: number of unknowns − gauge_dim.
    gauge_dim : T·k(k−1)/2 (symmetric) or T·k² (asymmetric).
    nullity : dimension of the Jacobian's null space (= gauge_dim when locally identified).
    spectrum_gap : evidence for the rank: the smallest singular value of the tangent map
        Δ ↦ (Q_tᵀΔQ_t)_t counted nonzero over the largest counted zero, or over the threshold
        when none is zero (inf when the zeros are structural: fewer equations than unknowns).
    threshold : singular values at or below it count as zero (64 · max(N, n) · ε · s_max for an
        N × n map). (Where some U*_t is numerically rank-deficient, the eigenvalues of the
        Gauss–Newton matrix JᵀJ decide instead, with 64 · m · ε · λ_max, m its side.)
    alternative_bases : (n, d, d) the alternatives Â ≠ A* found; ``alternatives`` lists them.
    alternative_residuals : (n,) their independent zero-loss residual (:func:`zero_loss_residual`).
    n_starts : search starts run for this instance (0 when no search was needed).
    n_zero_loss_starts : how many of them ended at zero loss, at A* or elsewhere (the search's
        evidence: "identified" by a search whose starts rarely reach zero loss is weak).
    obstruction_order : at A*: 1 (no excess null direction: the residual grows like ‖Δ‖), 2 (the
        second-order term is nonzero on every excess null direction: it grows like ‖Δ‖², the
        loss like ‖Δ‖⁴), inf (a curve exhibited: no obstruction) or nan (undetermined).
    second_order_obstruction : ω = min over unit excess null directions v of ‖P⊥ q(v)‖·ρ (nan
        where there are none, or at T = 2 where the curve is closed-form); above 1e-9, order 2.
    curve_distances, curve_residuals : (4,) the curve-following test at A* (nan where not run):
        the corrected points' distances from A* in units of ρ = min_t σ_k(R*_t), for predictor
        steps ``CURVE_DISTANCES``, and their independent zero-loss residual
        (:func:`zero_loss_residual`). A curve: every residual ≤ 1e-11 at distances 0.1ρ … 0.003ρ.
    growth_exponent : log-log slope of the corrected residual between the two smallest distances
        (≈ 2 at a second-order obstruction; inf on a curve; nan where not run).
    curve_through : "A*", "alternative" (continuum) or "".
    alternative_orders : (n,) ``obstruction_order`` at each alternative (method "pencil": 1, 2,
        or nan where the second-order test does not settle it; isolated by the construction).

    Examples
    --------
    >>> import numpy as np
    >>> import theory as th
    >>> r = th.identifiability(th.sample_ground_truth(6, 2, 3, rng=0), rng=0)
    >>> r.status, r.method, r.nullity == r.gauge_dim
    ('identified', 'theorem', True)
    """

    status: str
    method: str
    adapters: str
    jacobian_rank: int
    expected_rank: int
    gauge_dim: int
    nullity: int
    spectrum_gap: float
    threshold: float
    alternative_bases: np.ndarray
    alternative_residuals: np.ndarray
    n_starts: int
    n_zero_loss_starts: int
    obstruction_order: float
    second_order_obstruction: float
    curve_distances: np.ndarray
    curve_residuals: np.ndarray
    growth_exponent: float
    curve_through: str
    alternative_orders: np.ndarray

    @property
    def alternatives(self) -> list:
        """The zero-loss bases other than A* that were found, as a list of (d, d) arrays."""
        return list(self.alternative_bases)


@dataclass(frozen=True, eq=False)
class IdentifiabilityBatch(ArrayFields):
    """:func:`identifiability_batch` for B instances: the fields of :class:`Identifiability` as
    (B,) arrays (``gauge_dim`` and ``expected_rank`` are ints: they depend on T, d, k only;
    ``curve_distances`` and ``curve_residuals`` are (B, 4)), with the alternatives of every
    instance stacked in ``alternative_bases`` (n, d, d), ``alternative_orders`` (n,) and
    ``alternative_owner`` (n,) the index of the instance each belongs to; ``alternatives`` lists
    them per instance. ``instance(i)`` returns the :class:`Identifiability` of one instance.

    Examples
    --------
    >>> import numpy as np
    >>> import theory as th
    >>> truths = th.sample_ground_truth(4, 2, 3, rng=0, size=3)
    >>> A_star = np.stack([t.A_star for t in truths])
    >>> U_star = np.stack([t.U_star[:-1] for t in truths])
    >>> b = th.identifiability_batch(A_star, U_star, rng=0)
    >>> b.status.tolist()
    ['continuum', 'continuum', 'continuum']
    """

    status: np.ndarray
    method: np.ndarray
    adapters: str
    jacobian_rank: np.ndarray
    expected_rank: int
    gauge_dim: int
    nullity: np.ndarray
    spectrum_gap: np.ndarray
    threshold: np.ndarray
    n_alternatives: np.ndarray
    alternative_bases: np.ndarray
    alternative_residuals: np.ndarray
    alternative_owner: np.ndarray
    n_starts: np.ndarray
    n_zero_loss_starts: np.ndarray
    obstruction_order: np.ndarray
    second_order_obstruction: np.ndarray
    curve_distances: np.ndarray
    curve_residuals: np.ndarray
    growth_exponent: np.ndarray
    curve_through: np.ndarray
    alternative_orders: np.ndarray

    @property
    def alternatives(self) -> list:
        """Per instance, the zero-loss bases other than A* that were found, (n_i, d, d)."""
        return [self.alternative_bases[self.alternative_owner == i] for i in range(len(self.status))]

    def instance(self, i) -> Identifiability:
        own = self.alternative_owner == i
        return Identifiability(
            status=str(self.status[i]), method=str(self.method[i]), adapters=self.adapters,
            jacobian_rank=int(self.jacobian_rank[i]), expected_rank=self.expected_rank,
            gauge_dim=self.gauge_dim, nullity=int(self.nullity[i]), spectrum_gap=float(self.spectrum_gap[i]),
            threshold=float(self.threshold[i]), alternative_bases=self.alternative_bases[own],
            alternative_residuals=self.alternative_residuals[own], n_starts=int(self.n_starts[i]),
            n_zero_loss_starts=int(self.n_zero_loss_starts[i]), obstruction_order=float(self.obstruction_order[i]),
            second_order_obstruction=float(self.second_order_obstruction[i]),
            curve_distances=self.curve_distances[i], curve_residuals=self.curve_residuals[i],
            growth_exponent=float(self.growth_exponent[i]), curve_through=str(self.curve_through[i]),
            alternative_orders=self.alternative_orders[own])


# --------------------------------------------------------------------------------------------
# The independent zero-loss check


def _residual(A_hat, A_star, U_star, symmetric):
    """Largest violation, relative to max(1, ‖R*_t‖_op), of "A*_t − Â is an adapter product of rank
    ≤ k": eigen/singular values beyond the k-th, negative eigenvalues and asymmetry (symmetric)."""
    R = _prod(U_star, None)
    M = (A_star - A_hat)[..., None, :, :] + R                      # A*_t − Â = R*_t + Δ
    k = U_star.shape[-1]
    scale = np.maximum(np.linalg.norm(R, ord=2, axis=(-2, -1)), 1.0)
    if symmetric:
        asym = np.linalg.norm(M - _tr(M), axis=(-2, -1))
        lam = np.linalg.eigvalsh((M + _tr(M)) / 2)                 # ascending
        d = lam.shape[-1]
        rest = np.abs(lam[..., : d - k]).max(axis=-1, initial=0.0)
        neg = np.clip(-lam[..., d - k:], 0.0, None).max(axis=-1, initial=0.0)
        bad = np.maximum(np.maximum(asym, rest), neg)
    else:
        s = np.linalg.svd(M, compute_uv=False)
        bad = s[..., k:].max(axis=-1, initial=0.0)
    return (bad / scale).max(axis=-1)


def zero_loss_residual(A_hat, truth, *, adapters="symmetric") -> float:
    """How far Â is from zero population loss, checked without any solver.

    Â has zero loss iff every A*_t − Â (t ≤ T) is PSD of rank ≤ k (symmetric adapters) or of
    rank ≤ k (asymmetric). Returns the largest violation over t, relative to max(1, ‖R*_t‖_op):
    the eigenvalues (or singular values) beyond the k-th, the negative eigenvalues and the
    asymmetry. It is at rounding level (≲ 1e-12) for a zero-loss base, O(1) otherwise.

    Parameters
    ----------
    A_hat : (d, d)
        The base to check.
    truth : GroundTruth
        Supplies the targets A*_t of the T retraining tasks.
    adapters : "symmetric" or "asymmetric"
        The adapter kind: every A*_t − Â must be PSD of rank ≤ k (symmetric) or of rank ≤ k
        (asymmetric).

    Examples
    --------
    >>> from theory import sample_ground_truth
    >>> truth = sample_ground_truth(4, 1, 3, rng=0)
    >>> zero_loss_residual(truth.A_star, truth) < 1e-14, zero_loss_residual(truth.A_star + 0.1, truth) > 0.01
    (True, True)
    """
    func = "zero_loss_residual"
    truth = _check_truth(truth, func)
    A_hat = check_array(A_hat, "A_hat", func, ndim=2, shape=(truth.d, truth.d))
    adapters = check_choice(adapters, "adapters", func, ("symmetric", "asymmetric"))
    return float(_residual(A_hat, np.asarray(truth.A_star), np.asarray(truth.U_star[: truth.T]),
                           adapters == "symmetric"))


# --------------------------------------------------------------------------------------------
# Local: the Jacobian at the truth


def _local_gram(U, symmetric):
    """Nullity, rank, gap and threshold of JᵀJ (U-block) at U*, batched: the eigenvalues of the
    Gauss–Newton matrix of side m = T·d·k (symmetric) or 2·T·d·k. Used where an adapter U*_t is
    numerically rank-deficient (the tangent check below assumes rank k), and as the tests' second
    opinion on the tangent check."""
    B, T = U.shape[:2]
    lam = np.linalg.eigvalsh(_gram(U, None if symmetric else U, T))      # ascending, (B, m)
    m = lam.shape[-1]
    top = np.maximum(lam[:, -1], np.finfo(float).tiny)
    # eigvalsh is backward stable: each eigenvalue of the computed Gram matrix is within
    # ~ m·ε·λ_max of the exact one, and assembling JᵀJ adds rounding of the same order.
    threshold = 64.0 * m * _EPS * top
    zero = lam <= threshold[:, None]
    nullity = zero.sum(axis=1)
    idx = np.arange(B)
    small = np.where(nullity > 0, np.abs(lam[idx, np.maximum(nullity - 1, 0)]), 0.0)
    big = np.where(nullity < m, lam[idx, np.minimum(nullity, m - 1)], np.inf)
    with np.errstate(over="ignore", divide="ignore"):
        gap = np.where(nullity > 0, big / np.maximum(small, np.finfo(float).tiny), np.inf)
    return nullity, m - nullity, gap, threshold


def _sym_pairs(n, below):
    """Pairs i ≤ j < n with i < below: coordinates of Sym(n) in the orthonormal basis
    (e_ie_jᵀ + e_je_iᵀ)/√2 (i < j), e_ie_iᵀ (i = j)."""
    i, j = np.triu_indices(n)
    keep = i < below
    return i[keep], j[keep]


def _tangent_map(U, symmetric):
    """The map Δ ↦ (Q_tᵀΔQ_t)_{t ≥ 2} on 𝒯_1, in orthonormal coordinates, batched (B, N, n).

    Q_t is an orthonormal basis of span(U*_t)^⊥. Everything is written in the frame O_1 = [B_1 Q_1]
    (B_1 a basis of span(U*_1)), where 𝒯_1 is the Δ with a zero (Q_1, Q_1) block: its coordinates
    are the entries (i, j) with min(i, j) < k (symmetric: i ≤ j, weighted to be orthonormal; the
    output Q_tᵀΔQ_t likewise on a ≤ b). Each block is a partial isometry, so the singular values
    lie in [0, √(T − 1)] whatever the scale of U*.
    """
    B, T, d, k = U.shape
    c = d - k
    O = np.linalg.svd(U, full_matrices=True)[0]                        # (B, T, d, d)
    Q = _tr(O[:, :1]) @ O[:, 1:, :, k:]                                 # (B, T − 1, d, c), frame O_1
    if symmetric:
        i, j = _sym_pairs(d, k)
        a, b = _sym_pairs(c, c)
        alpha = np.where(i == j, 0.5, np.sqrt(0.5))                     # input weights
        beta = np.where(a == b, 1.0, np.sqrt(2.0))                      # output weights
        X, Y = Q[:, :, i], Q[:, :, j]                                   # (B, T − 1, n, c)
        L = X[..., a] * Y[..., b] + Y[..., a] * X[..., b]               # (B, T − 1, n, N_t)
        L *= alpha[:, None] * beta
    else:
        i, j = np.nonzero(np.minimum.outer(np.arange(d), np.arange(d)) < k)
        L = (Q[:, :, i, :, None] * Q[:, :, j, None, :]).reshape(B, T - 1, i.size, c * c)
    return np.swapaxes(L, -1, -2).reshape(B, -1, L.shape[2])


def _local(U, symmetric):
    """Nullity, rank, gap and threshold of the Jacobian at U*, batched, from the tangent spaces.

    The Jacobian of (A, U) ↦ (A + U_tV_tᵀ − A*_t)_t has null space {(dA, dU): dA + dR_t = 0 ∀t}:
    dR_t ranges over the tangent space 𝒯_t of rank-k (PSD) matrices at R*_t with the gauge as
    kernel, so nullity = gauge + dim ∩_t 𝒯_t. 𝒯_t = {Δ: Q_tᵀΔQ_t = 0} (Δ symmetric, or any Δ for
    asymmetric adapters), and the excess dim ∩_t 𝒯_t is the nullity of the stacked map of
    :func:`_tangent_map` (n = dim 𝒯_1 unknowns: k(k+1)/2 + k(d − k), or d² − (d − k)²): one
    SVD of a matrix with a few hundred columns at d = 30, instead of the eigenvalues of a Gram
    matrix of side T·d·k (1800 at d = 30, k = 10, T = 6; twice that asymmetric).

    The threshold on the singular values s is 64·max(N, n)·ε·s_max (the SVD is backward stable,
    and the map's entries carry rounding of order ε·s_max); ``gap`` is the smallest singular
    value counted nonzero over the largest counted zero, or over the threshold when none is zero;
    inf when the zeros are exact (more unknowns than equations: the map has fewer rows than
    columns, and the missing singular values are structurally zero) or every direction is null. Instances with a numerically rank-deficient U*_t
    (σ_k ≤ 1e-8 σ_1: the gauge is larger than assumed) go to :func:`_local_gram`.
    """
    B, T, d, k = U.shape
    gauge = T * k * (k - 1) // 2 if symmetric else T * k * k
    m = T * d * k * (1 if symmetric else 2)
    n = k * (k + 1) // 2 + k * (d - k) if symmetric else d * d - (d - k) ** 2
    sv = np.linalg.svd(U, compute_uv=False)
    generic = np.all(sv[..., -1] > _GENERIC * sv[..., 0], axis=1)
    nullity = np.empty(B, int)
    gap = np.empty(B)
    threshold = np.empty(B)
    fast = np.flatnonzero(generic)
    if fast.size:
        if T == 1 or d == k:                                             # no equation: ∩ 𝒯_t = 𝒯_1
            excess, g, thr = np.full(fast.size, n), np.full(fast.size, np.inf), np.zeros(fast.size)
        else:
            L = _tangent_map(U[fast], symmetric)
            s = np.linalg.svd(L, compute_uv=False)                       # descending, (b, min(N, n))
            thr = 64.0 * max(L.shape[1:]) * _EPS * np.maximum(s[:, 0], np.finfo(float).tiny)
            rank = (s > thr[:, None]).sum(axis=1)
            excess = n - rank
            idx = np.arange(fast.size)
            r = s.shape[1]
            big = np.where(rank > 0, s[idx, np.maximum(rank - 1, 0)], 0.0)
            small = np.where(rank < r, s[idx, np.minimum(rank, r - 1)], 0.0)   # 0 if only by dimension
            small = np.where(excess > 0, small, thr)
            with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
                g = np.where((rank > 0) & (small > 0), big / np.where(small > 0, small, 1.0), np.inf)
        nullity[fast], gap[fast], threshold[fast] = gauge + excess, g, thr
    slow = np.flatnonzero(~generic)
    if slow.size:
        nu, _, g, thr = _local_gram(U[slow], symmetric)
        nullity[slow], gap[slow], threshold[slow] = nu, g, thr
    return nullity, m - nullity, gap, threshold


def _rank_argument(U):
    """Whether the rank argument (module docstring) proves Δ = 0, per instance: d ≥ 2k, span(U_t)
    meets every other span(U_s) trivially for t = 1, 2, and I_t = span(U_t) for t = 1, 2."""
    B, T, d, k = U.shape
    ok = np.full(B, T >= 3 and d >= 2 * k and (T - 1) * (d - 2 * k) >= d - k)
    if not ok.any():
        return ok
    for t in (0, 1):
        for s in range(T):
            if s != t:
                sv = np.linalg.svd(np.concatenate([U[:, t], U[:, s]], axis=-1), compute_uv=False)
                ok &= sv[:, -1] > _GENERIC * sv[:, 0]
        Q = np.linalg.svd(U[:, t])[0][:, :, k:]                       # span(U_t)^⊥, (B, d, d − k)
        rows = []
        for s in range(T):
            if s != t:
                Y = np.linalg.svd(_tr(Q) @ U[:, s])[0]                # (B, d − k, d − k)
                rows.append(_tr(Y[:, :, k:]))                         # complement of span(QᵀU_s)
        sv = np.linalg.svd(np.concatenate(rows, axis=1), compute_uv=False)    # (B, d − k)
        ok &= sv[:, -1] > _GENERIC                                    # ∩_s span(QᵀU_s) = 0
    return ok


# --------------------------------------------------------------------------------------------
# Beyond first order: the second-order test and curve following


#: Distances of the curve-following test, in units of ρ = min_t σ_k(X_t) (the local frames'
#: radius of validity): predictor steps ε·ρ along the tangent, then a corrector back to zero.
CURVE_DISTANCES = (0.1, 0.03, 0.01, 0.003)
#: "At rounding" for a corrected point: the independent residual (:func:`_residual`, relative to
#: max(1, ‖R*_t‖_op)) of every point of the curve. Rounding is ~ d·ε·(that scale) ≈ 3e-15 at
#: d = 12 (measured ≤ 5e-16 on the continuum cells of the standard diagram); an isolated zero
#: with second-order obstruction ω has corrected residual ≈ ω·ε²·ρ/scale at distance ε·ρ, ≥ 4e-9
#: at the largest distance on every second-order instance of the standard diagram.
_CURVE_TOL = 1e-11
#: A second-order obstruction ω (dimensionless: ‖h‖/ρ ≈ ω·(‖Δ‖/ρ)² on the worst direction)
#: counts as nonzero above this. Computed ω is ≲ 1e-15 on the continuum cells (rounding of the
#: null basis and of the projection) and ≥ 2e-5 on the isolated ones; 1e-9 sits between.
_OMEGA_TOL = 1e-9
#: Starts of the minimisation of the second-order term on the sphere of the excess null space
#: (dimension ≥ 3; dimension 1 is exact and dimension 2 a dense grid of angles, then refined).
_SPHERE_STARTS = 32
#: Where A* is a second-order zero, alternatives must lie farther than this times ρ from it.
_NEAR = 1e-2
#: Search starts, as a multiple of ``n_starts``, where A* is isolated only at second order.
SECOND_ORDER_STARTS = 4
#: The pencil construction runs up to this k: it enumerates the central trinomial coefficient
#: of k patterns (392 at k = 7, 8952 at k = 10) and examines every alternative; at (4, 20, 10)
#: one instance has 824 of them and costs a minute. Above it, the search (or "jacobian").
PENCIL_MAX_K = 7


def _sym_basis(d):
    """(d², n) orthonormal basis of Sym(d) in row-major vec coordinates (n = d(d + 1)/2)."""
    i, j = np.triu_indices(d)
    E = np.zeros((d, d, i.size))
    w = np.where(i == j, 1.0, np.sqrt(0.5))
    E[i, j, np.arange(i.size)] = w
    E[j, i, np.arange(i.size)] = w
    return E.reshape(d * d, -1)


def _frames(X, k, symmetric):
    """Left and right frames of X_t (rank k): P, Q (column space and its complement), P', Q'
    (row space and complement) and the k kept singular values s (eigenvalues when symmetric)."""
    if symmetric:
        lam, O = np.linalg.eigh((X + _tr(X)) / 2)
        O, lam = O[..., ::-1], lam[..., ::-1]
        return O[..., :k], O[..., k:], O[..., :k], O[..., k:], lam[..., :k]
    Ul, s, Vt = np.linalg.svd(X)
    V = _tr(Vt)
    return Ul[..., :k], Ul[..., k:], V[..., :k], V[..., k:], s[..., :k]


def _schur(D, P, Q, Pp, Qp, s):
    """h_t(Δ) = QᵀΔQ' − QᵀΔP'(S + PᵀΔP')⁻¹PᵀΔQ' (B, T, c, c): zero iff rank(X_t + Δ) ≤ k near Δ = 0;
    and the factors of its Jacobian, dh_t = Lᵀ dΔ R with L = Q − P Gᵀ, R = Q' − P' H
    (G = QᵀΔP' M⁻¹, H = M⁻¹ PᵀΔQ', M = S + PᵀΔP')."""
    Dl = D[:, None]
    Bm = _tr(Q) @ Dl @ Pp
    C = _tr(P) @ Dl @ Qp
    M = s[..., :, None] * np.eye(s.shape[-1]) + _tr(P) @ Dl @ Pp
    H = np.linalg.solve(M, C)
    G = _tr(np.linalg.solve(_tr(M), _tr(Bm)))
    return _tr(Q) @ Dl @ Qp - Bm @ H, Q - P @ _tr(G), Qp - Pp @ H


def _second_order(N, Ur, P, Q, Pp, Qp, s, rho, E, d, rng):
    """Minimum over unit v of the excess null space (basis N, (b, n, e)) of ‖P⊥ q(v)‖·ρ, and the
    minimiser; q(v)_t = −QᵀvP' S⁻¹ PᵀvQ' is the quadratic term of h, P⊥ the projection on the
    complement of range(L) (Ur: an orthonormal basis of that range)."""
    b, n, e = N.shape
    Nd = np.moveaxis((E @ N).reshape(b, d, d, e), -1, 1)                       # (b, e, d, d)
    a = np.einsum("ztia,zeij,ztjp->ztepa", Q, Nd, Pp)                          # (QᵀN_eP')ᵀ
    c = np.einsum("ztip,zeij,ztjq->ztepq", P, Nd, Qp)                          # PᵀN_eQ'
    q = -np.einsum("ztipa,ztp,ztjpq->zijtaq", a, 1.0 / s, c)
    q = (0.5 * (q + np.swapaxes(q, 1, 2))).reshape(b, e, e, -1)               # symmetric bilinear form
    q = q - np.einsum("zmr,zijr->zijm", Ur, np.einsum("zmr,zijm->zijr", Ur, q))
    q = q * rho[:, None, None, None]
    # An orthonormal basis of span{q_ij} (same norms, fewer coordinates).
    Uq, sq, _ = np.linalg.svd(q.reshape(b, e * e, -1), full_matrices=False)
    G = (Uq * sq[:, None, :]).reshape(b, e, e, -1)

    def value(V):                                                              # (b, s, e) -> (b, s, p)
        return np.einsum("zsi,zsj,zijm->zsm", V, V, G)

    if e == 1:
        v = np.ones((b, 1))
    elif e == 2:
        # The quartic is a trigonometric polynomial of degree 4 in the angle: 2048 angles over
        # [0, π) leave one local minimum per cell at most, refined by golden-section search.
        th = np.linspace(0.0, np.pi, 2049)[:-1]
        grid = np.linalg.norm(value(np.broadcast_to(np.stack([np.cos(th), np.sin(th)], -1), (b, th.size, 2))), axis=-1)
        t0 = th[grid.argmin(axis=1)]
        lo, hi = t0 - np.pi / 2048, t0 + np.pi / 2048
        gr = (np.sqrt(5.0) - 1.0) / 2.0
        for _ in range(40):
            m1, m2 = hi - gr * (hi - lo), lo + gr * (hi - lo)
            f1 = np.linalg.norm(value(np.stack([np.cos(m1), np.sin(m1)], -1)[:, None]), axis=-1)[:, 0]
            f2 = np.linalg.norm(value(np.stack([np.cos(m2), np.sin(m2)], -1)[:, None]), axis=-1)[:, 0]
            lo, hi = np.where(f1 < f2, lo, m1), np.where(f1 < f2, m2, hi)
        t = (lo + hi) / 2
        v = np.stack([np.cos(t), np.sin(t)], -1)
    else:
        # Gauss–Newton on y(v) = Σ v_iv_j G_ij = 0 on the sphere, from many random starts.
        V = rng.standard_normal((b, _SPHERE_STARTS, e))
        V /= np.linalg.norm(V, axis=-1, keepdims=True)
        for _ in range(40):
            y = value(V)
            if np.all(np.min(np.sum(y * y, axis=-1), axis=1) <= 1e-30):
                break
            Jy = 2 * np.einsum("zsj,zijm->zsmi", V, G)
            Jy = Jy - (Jy @ V[..., None]) * V[..., None, :]                    # tangent to the sphere
            H = np.einsum("zsmi,zsmj->zsij", Jy, Jy)
            mu = 1e-3 * np.sum(y * y, axis=-1) + 1e-12 * np.trace(H, axis1=-2, axis2=-1) + np.finfo(float).tiny
            grad = np.einsum("zsmi,zsm->zsi", Jy, y)[..., None]
            V = V - np.linalg.solve(H + mu[..., None, None] * np.eye(e), grad)[..., 0]
            V /= np.linalg.norm(V, axis=-1, keepdims=True)
        v = V[np.arange(b), np.linalg.norm(value(V), axis=-1).argmin(axis=1)]
    omega = np.linalg.norm(value(v[:, None]), axis=-1)[:, 0]
    return omega, np.einsum("zni,zi->zn", N, v)


def _follow(v, P, Q, Pp, Qp, s, rho, E, d, eps, n_iter=30):
    """Predictor–corrector from Δ = 0 along v (b, n): for each ε, Δ = ερ v, then Levenberg–Marquardt
    on h(Δ) = 0 with every step orthogonal to v. Returns the points (b, nε, d, d). E: the basis of
    Sym(d) (symmetric adapters), or None (coordinates are the entries of Δ)."""
    b, n = v.shape
    nE = len(eps)
    i = np.repeat(np.arange(b), nE)
    step_to = np.tile(np.asarray(eps, float), b) * rho[i]
    vv = v[i]
    x = step_to[:, None] * vv
    Pi = np.eye(n) - vv[:, :, None] * vv[:, None, :]
    to_matrix = (lambda x: x) if E is None else (lambda x: x @ E.T)
    frames = P[i], Q[i], Pp[i], Qp[i], s[i]
    for _ in range(n_iter):
        h, Lf, Rf = _schur(to_matrix(x).reshape(-1, d, d), *frames)
        JtJ = np.einsum("ztij,ztkl->zikjl", Lf @ _tr(Lf), Rf @ _tr(Rf)).reshape(-1, d * d, d * d)
        Jth = (Lf @ h @ _tr(Rf)).sum(axis=1).reshape(-1, d * d)
        if E is not None:                                # symmetric Δ: in the basis of Sym(d)
            JtJ, Jth = E.T @ JtJ @ E, Jth @ E
        nh = np.sqrt(np.sum(h * h, axis=(1, 2, 3)))
        # Damping ∝ ‖h‖ (Fan and Yuan): quadratic convergence onto a non-isolated zero set.
        floor = 1e-14 * np.trace(JtJ, axis1=1, axis2=2) / n + np.finfo(float).tiny
        A = Pi @ JtJ @ Pi + np.maximum(1e-2 * nh, floor)[:, None, None] * np.eye(n)
        step = np.linalg.solve(A, -(Pi @ Jth[..., None]))[..., 0]
        x = x + step
        if np.all(np.linalg.norm(step, axis=1) <= 1e-13 * step_to):
            break
    return to_matrix(x).reshape(b, nE, d, d)


def _radius(U):
    """ρ = min_t σ_k(U*_t)² (B,): the scale of the curve test's distances at A*."""
    return np.linalg.svd(U, compute_uv=False)[..., -1].min(axis=1) ** 2


def _two_task_curve(U, eps, rho):
    """T = 2: the zero-loss curve in closed form, Δ(s) = C M(s) Cᵀ with C = [U*_1 U*_2] and
    M(s) = [[sinh²s, sinh s cosh s], [sinh s cosh s, sinh²s]] ⊗ I_k: R*_1 + Δ = (cosh s U*_1 + sinh s U*_2)(…)ᵀ
    and R*_2 + Δ = (sinh s U*_1 + cosh s U*_2)(…)ᵀ, PSD of rank ≤ k, for every s. Points at
    s = ε·ρ/‖U*_1U*_2ᵀ + U*_2U*_1ᵀ‖ (ρ = :func:`_radius` of U)."""
    U1, U2 = U[:, 0], U[:, 1]
    cross = U1 @ _tr(U2)
    cross = cross + _tr(cross)
    s = np.asarray(eps, float)[None, :] * (rho / np.linalg.norm(cross, axis=(1, 2)))[:, None]      # (B, nε)
    sh, ch = np.sinh(s)[..., None, None], np.cosh(s)[..., None, None]
    return sh * sh * (U1 @ _tr(U1) + U2 @ _tr(U2))[:, None] + sh * ch * cross[:, None]


def _examine_chunk(X, k, symmetric, rng, eps, follow=True):
    B, T, d, _ = X.shape
    c = d - k
    P, Q, Pp, Qp, s = _frames(X, k, symmetric)
    rho = np.maximum(s[..., -1].min(axis=1), np.finfo(float).tiny)
    E = _sym_basis(d) if symmetric else np.eye(d * d)
    n = E.shape[1]
    e = np.zeros(B, int)
    omega = np.full(B, np.nan)
    points = np.full((B, len(eps), d, d), np.nan)
    if c == 0:
        # k = d: no equation, every small Δ (symmetric for symmetric adapters) is a zero.
        e[:] = n
        omega[:] = 0.0
        points[:] = (np.asarray(eps, float)[None, :, None, None] * rho[:, None, None, None]) * np.eye(d) / np.sqrt(d)
        return e, omega, points, rho
    L = np.einsum("ztia,ztjb->ztabij", Q, Qp).reshape(B, T * c * c, d * d) @ E
    M = L.shape[1]
    if M < n:                                   # a full set of right singular vectors
        L = np.concatenate([L, np.zeros((B, n - L.shape[1], n))], axis=1)
    Us, sv, Vt = np.linalg.svd(L, full_matrices=False)
    thr = 64.0 * max(L.shape[1:]) * _EPS * np.maximum(sv[:, 0], np.finfo(float).tiny)
    rank = (sv > thr[:, None]).sum(axis=1)
    e = n - rank
    v = np.zeros((B, n))
    for ee in np.unique(e[e > 0]):
        idx = np.flatnonzero(e == ee)
        r = n - ee
        omega[idx], v[idx] = _second_order(_tr(Vt[idx, r:]), Us[idx, :M, :r], P[idx], Q[idx], Pp[idx], Qp[idx],
                                           s[idx], rho[idx], E, d, rng)
    deg = np.flatnonzero((e > 0) & follow)
    if deg.size:
        points[deg] = _follow(v[deg], P[deg], Q[deg], Pp[deg], Qp[deg], s[deg], rho[deg], E if symmetric else None,
                              d, eps)
    return e, omega, points, rho


def _examine_memory(T, d, k, symmetric, chunk=1):
    """Bytes of one chunk of :func:`_examine`: the map L and its SVD, and the corrector's normal
    matrices (d² × d², one per distance), a few copies each."""
    n = d * (d + 1) // 2 if symmetric else d * d
    M = max(T * (d - k) ** 2, n)
    return 8 * chunk * (3 * M * n + 4 * len(CURVE_DISTANCES) * (d ** 4 + n * n))


def _examine(X, k, symmetric, rng, A_star, U_star, offset, follow=None):
    """Beyond first order at zero-loss points X (B, T, d, d) = (A*_t − Â)_t: per point the excess
    null dimension e, the second-order obstruction ω, the obstruction order (1, 2, inf: a curve
    exhibited, nan: undetermined), and the curve test's distances and independent residuals.
    ``follow`` (B,) bool: where False, no curve following (order nan where ω does not settle)."""
    B, T, d, _ = X.shape
    eps = CURVE_DISTANCES
    chunk = max(1, int(2**27 // _examine_memory(T, d, k, symmetric)))
    follow = np.ones(B, bool) if follow is None else follow
    out = [_examine_chunk(X[lo:lo + chunk], k, symmetric, rng, eps, follow[lo:lo + chunk]) for lo in range(0, B, chunk)]
    e, omega, points, rho = (np.concatenate(parts) for parts in zip(*out))
    return _judge(e, omega, points, rho, A_star, U_star, offset, symmetric)


def _judge(e, omega, points, rho, A_star, U_star, offset, symmetric):
    """Orders and curve evidence from the examination's raw output. ``offset`` (B, d, d) is Δ of the
    examined point (0 at A*), so that the curve's points are A* − offset − δ, checked independently."""
    B, nE = points.shape[:2]
    eps = np.asarray(CURVE_DISTANCES, float)
    run = np.all(np.isfinite(points), axis=(1, 2, 3))
    dist = np.full((B, nE), np.nan)
    res = np.full((B, nE), np.nan)
    if run.any():
        dist[run] = np.linalg.norm(points[run], axis=(2, 3)) / rho[run, None]
        A_hat = A_star[run, None] - offset[run, None] - points[run]
        res[run] = _residual(A_hat, A_star[run, None], U_star[run, None], symmetric)
    curve = run & np.all(res <= _CURVE_TOL, axis=1) & np.all(dist <= 2 * eps, axis=1) & np.all(dist >= 0.5 * eps, axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        growth = np.log(res[:, -2] / res[:, -1]) / np.log(dist[:, -2] / dist[:, -1])
    growth = np.where(curve, np.inf, growth)
    order = np.where(e == 0, 1.0, np.where(omega > _OMEGA_TOL, 2.0, np.where(curve, np.inf, np.nan)))
    return dict(excess=e, omega=omega, order=order, dist=dist, res=res, growth=growth)


# --------------------------------------------------------------------------------------------
# Global: the plane construction (T = 3, d = 3k − 1, symmetric)


def _null_vector(M):
    """A unit vector spanning the (generically one-dimensional) kernel of each wide M (B, p, p+1)."""
    return np.linalg.svd(M)[2][:, -1]


def _plane_candidates(U):
    """The one candidate Δ ≠ 0 supported on the plane S of each instance (B, d, d), or NaN."""
    B, T, d, k = U.shape
    n = _null_vector(np.concatenate([U[:, 0], U[:, 1], U[:, 2]], axis=-1))           # (B, 3k)
    basis = np.stack([(U[:, 0] @ n[:, :k, None])[..., 0], (U[:, 1] @ n[:, k:2 * k, None])[..., 0]], axis=-1)
    basis = np.linalg.qr(basis)[0]                                                      # (B, d, 2)
    coef = []
    for t in range(3):
        nt = _null_vector(np.concatenate([U[:, t], basis], axis=-1))                  # (B, k + 2)
        x, y = (nt[:, k:] / np.linalg.norm(nt[:, :k], axis=1, keepdims=True)).T
        coef.append(np.stack([y * y, -2 * x * y, x * x], axis=-1))   # n_Bᵀ adj(M) n_B on (a, b, c)
    E = np.stack([coef[0] - coef[1], coef[0] - coef[2]], axis=1)                     # (B, 2, 3)
    a, b, c = np.linalg.svd(E)[2][:, -1].T
    det0 = a * c - b * b
    with np.errstate(divide="ignore", invalid="ignore"):
        lam = -np.einsum("bi,bi->b", coef[0], np.stack([a, b, c], axis=-1)) / det0
    M = lam[:, None, None] * np.stack([np.stack([a, b], -1), np.stack([b, c], -1)], axis=-2)
    return basis @ M @ _tr(basis)


# --------------------------------------------------------------------------------------------
# Global: the pencil construction (T ≥ 4, d = 2k, asymmetric)


def _patterns(k):
    """The multiplicity patterns m ∈ {0, 1, 2}^k with Σm = k other than (1, …, 1) (that is A*)."""
    pats = [m for m in itertools.product(range(3), repeat=k) if sum(m) == k and any(x != 1 for x in m)]
    return np.array(pats, int).reshape(-1, k)


def _pencil_candidates(U, chunk=64):
    """Every zero-loss Δ ≠ 0 of each instance (asymmetric, d = 2k, T ≥ 4), from tasks 1–4 alone.

    Returns (B, p, d, d) candidates (NaN where a pattern gives none; p = len(_patterns(k)); to be
    checked by :func:`_residual`) and ``ok`` (B,): the genericity conditions under which the
    candidates are all the zeros of tasks 1–4 hold (module docstring). The tasks are relabelled per instance (best-conditioned pairs
    (1, t), t ≤ 4).
    """
    B, T, d, k = U.shape
    # Only the pairs (1, t), t = 2, 3, 4, must meet trivially: task 1 and three partners are
    # chosen to maximise the worst of their conditions, task 2 the best-conditioned partner.
    cond = np.ones((B, T, T))
    for s, t in itertools.combinations(range(T), 2):
        sv = np.linalg.svd(np.concatenate([U[:, s], U[:, t]], -1), compute_uv=False)
        cond[:, s, t] = cond[:, t, s] = sv[:, -1] / sv[:, 0]
    choices = [(f, S) for f in range(T) for S in itertools.combinations([r for r in range(T) if r != f], 3)]
    score = np.stack([cond[:, f, list(S)].min(axis=1) for f, S in choices], 1)
    order = np.empty((B, T), int)
    for b, c in enumerate(score.argmax(axis=1)):
        f, S = choices[c]
        S = sorted(S, key=lambda t: -cond[b, f, t])
        order[b] = [f, *S] + [r for r in range(T) if r != f and r not in S]
    U = np.take_along_axis(U, order[:, :, None, None], axis=1)
    sD = np.linalg.svd(np.concatenate([np.broadcast_to(U[:, :1], (B, 3, d, k)), U[:, 1:4]], -1), compute_uv=False)
    # ``ok``: the conditions of completeness, at _GENERIC; ``use``: the computation is defined
    # (at rounding level), so that its candidates, checked afterwards, are kept even where the
    # list may be incomplete.
    tiny = 64 * _EPS
    ok = np.all(sD[..., -1] > _GENERIC * sD[..., 0], axis=1)                 # span(U*_1) ∩ span(U*_t) = 0
    use = np.all(sD[..., -1] > tiny * sD[..., 0], axis=1)
    W = np.where(use[:, None, None], np.concatenate([U[:, 0], U[:, 1]], axis=-1), np.eye(d))
    g = np.linalg.solve(W[:, None], U[:, :4])                                  # W⁻¹U*_t
    G = g @ _tr(g)
    Dm = np.where(use[:, None, None, None], G[:, :1] - G[:, 2:4], np.eye(d))    # G_1 − G_t, t = 3, 4
    J = np.diag(np.r_[np.ones(k), -np.ones(k)])                                # (G_1 − G_2)⁻¹
    H = np.linalg.inv(Dm) - J                                                  # H_3, H_4 (symmetric)
    H3, H4 = H[:, 0], H[:, 1]
    s3 = np.linalg.svd(H3, compute_uv=False)
    beta3, beta4 = H3[:, :k, k:], H4[:, :k, k:]
    sb = np.linalg.svd(beta3, compute_uv=False)
    ok &= (s3[:, -1] > _GENERIC * s3[:, 0]) & (sb[:, -1] > _GENERIC * sb[:, 0])
    use &= (s3[:, -1] > tiny * s3[:, 0]) & (sb[:, -1] > tiny * sb[:, 0])
    beta3 = np.where(use[:, None, None], beta3, np.eye(k))
    Lam = np.linalg.solve(_tr(beta3), _tr(beta4))                              # P on span(e_1 … e_k)
    mu, v = np.linalg.eig(Lam)
    scale = np.maximum(np.abs(mu).max(axis=1), np.finfo(float).tiny)
    gaps = np.where(np.eye(k, dtype=bool), np.inf, np.abs(mu[:, :, None] - mu[:, None, :]))
    ok &= gaps.min(axis=(1, 2)) > 1e-6 * scale                                # distinct eigenvalues
    V = np.concatenate([v, np.zeros_like(v)], axis=1)                          # v_i = (v, 0): in 𝒞₀
    Ul, sp, Vh = np.linalg.svd(H4[:, None] - mu[..., None, None] * H3[:, None])    # (B, k, d, d)
    ok &= np.all(sp[..., -2] > 1e-8 * sp[..., 0], axis=1)                     # geometric multiplicity 1
    # The generalised eigenvector: (H_4 − μ_iH_3) w_i = H_3 v_i, on the range of the pencil.
    rhs = np.einsum("bij,bjl->bli", H3, V)
    coef = np.einsum("bkji,bkj->bki", Ul[..., :-1].conj(), rhs) / np.where(sp[..., :-1] > 0, sp[..., :-1], 1.0)
    w = np.einsum("bkji,bkj->bki", Vh[..., :-1, :].conj(), coef)
    finite = np.all(np.isfinite(w), axis=(1, 2))
    ok &= finite
    use &= finite
    w = np.where(finite[:, None, None], w, 0.0)
    partner = np.abs(mu[:, :, None] - mu[:, None, :].conj()).argmin(axis=2)   # the conjugate of μ_i
    pats = _patterns(k)
    vi = np.moveaxis(V, 1, 2)                                                  # (B, k, d)
    out = np.full((B, len(pats), d, d), np.nan)
    G1 = np.diag(np.r_[np.ones(k), np.zeros(k)])
    for lo in range(0, len(pats), chunk):
        p = pats[lo:lo + chunk]
        c = len(p)
        # Real subspaces only: a pattern gives μ_i and its conjugate the same multiplicity.
        valid = np.all(p[None] == np.take_along_axis(np.broadcast_to(p[None], (B, c, k)),
                                                    np.broadcast_to(partner[:, None], (B, c, k)), 2), axis=2)
        cols = np.concatenate([vi[:, None] * (p >= 1)[None, :, :, None], w[:, None] * (p == 2)[None, :, :, None]],
                              axis=2)                                          # (B, c, 2k, d)
        Us, ss, _ = np.linalg.svd(np.swapaxes(np.concatenate([cols.real, cols.imag], axis=2), -1, -2),
                                  full_matrices=False)
        C = Us[..., :k]                                                        # a real basis of 𝒞
        valid &= ss[..., k] <= 1e-8 * ss[..., 0]
        R = _tr(np.linalg.svd(H3[:, None] @ C)[0][..., k:])                   # 𝓡 = (H_3𝒞)^⊥, as rows
        N = R @ J @ C
        sN = np.linalg.svd(N, compute_uv=False)
        valid &= use[:, None] & (sN[..., -1] > _GENERIC * sN[..., 0])
        X1 = C @ np.linalg.solve(np.where(valid[..., None, None], N, np.eye(k)), R)
        D = W[:, None] @ (X1 - G1) @ _tr(W)[:, None]
        # Newton steps in a chart, kept only where they lower the independent residual.
        Dp = W[:, None] @ (_polish(X1, H, k, valid) - G1) @ _tr(W)[:, None]
        Uc = np.broadcast_to(U[:, None], (B, c) + U.shape[1:])
        r0 = _residual(-np.where(valid[..., None, None], D, 0.0), 0.0, Uc, False)
        r1 = _residual(-np.where(valid[..., None, None] & np.isfinite(Dp), Dp, 0.0), 0.0, Uc, False)
        D = np.where((r1 < r0)[..., None, None], Dp, D)
        out[:, lo:lo + c] = np.where(valid[..., None, None], D, np.nan)
    return out, ok


def _polish(X1, H, k, valid, n_iter=3):
    """Damped Newton steps on R H_t C = 0 (t = 3, 4) in the chart C = [I; Y], R = [I Z] of X_1
    (where its leading k × k block is invertible); X_1 = C (I − ZY)⁻¹ R."""
    B, c, d, _ = X1.shape
    top = X1[..., :k, :k]
    st = np.linalg.svd(top, compute_uv=False)
    use = valid & (st[..., -1] > 1e-6 * st[..., 0])
    top = np.where(use[..., None, None], top, np.eye(k))
    Y = X1[..., k:, :k] @ np.linalg.inv(top)
    Z = np.linalg.solve(top, X1[..., :k, k:])
    I = np.eye(k)
    Hb = H[:, None]                                                            # (B, 1, 2, d, d)
    al, be, ga, Cm = Hb[..., :k, :k], Hb[..., :k, k:], Hb[..., k:, :k], Hb[..., k:, k:]
    for _ in range(n_iter):
        Zt, Yt = Z[:, :, None], Y[:, :, None]
        F = al + Zt @ ga + be @ Yt + Zt @ Cm @ Yt                             # R H_t C, (B, c, 2, k, k)
        JY = np.einsum("...ab,cd->...acbd", be + Zt @ Cm, I).reshape(B, c, 2 * k * k, k * k)
        JZ = np.einsum("ac,...db->...abcd", I, ga + Cm @ Yt).reshape(B, c, 2 * k * k, k * k)
        Jm = np.where(use[..., None, None], np.concatenate([JY, JZ], axis=-1), np.eye(2 * k * k))
        f = np.where(use[..., None], F.reshape(B, c, -1), 0.0)
        JtJ = _tr(Jm) @ Jm
        mu = 1e-12 * np.trace(JtJ, axis1=-2, axis2=-1) + np.finfo(float).tiny
        step = -np.linalg.solve(JtJ + mu[..., None, None] * np.eye(2 * k * k), _tr(Jm) @ f[..., None])[..., 0]
        step = np.where(use[..., None] & np.isfinite(step), step, 0.0)
        Y = Y + step[..., :k * k].reshape(Y.shape)
        Z = Z + step[..., k * k:].reshape(Z.shape)
    Cc = np.concatenate([np.broadcast_to(I, Y.shape), Y], axis=-2)
    Rr = np.concatenate([np.broadcast_to(I, Z.shape), Z], axis=-1)
    M = np.where(use[..., None, None], I - Z @ Y, I)
    with np.errstate(invalid="ignore", over="ignore"):
        return np.where(use[..., None, None], Cc @ np.linalg.solve(M, Rr), X1)


# --------------------------------------------------------------------------------------------
# Global: multi-start search


def _search(W, A_star, U_star, symmetric, n_starts, max_iter, rng):
    """Alternatives found by ``n_starts`` random Levenberg–Marquardt starts per instance.

    Returns a list (one entry per instance) of (n_i, d, d) arrays of distinct far zero-loss bases,
    and per instance the number of starts that ended at zero loss (at A* or elsewhere).
    """
    B, T, d, k = U_star.shape
    scale = np.sqrt(np.sum(_center(W) ** 2, axis=(1, 2, 3)) / T) + np.finfo(float).tiny
    sd = np.sqrt(np.sum(U_star ** 2, axis=(1, 2, 3)) / (T * d * k))     # the truth's entry scale
    m = T * d * k * (1 if symmetric else 2)
    per_chunk = max(1, int(3e6 // (m * m)))            # bounds the Gauss–Newton matrices' memory
    inst = np.repeat(np.arange(B), n_starts)
    bases = np.empty((inst.size, d, d))
    good = np.zeros(inst.size, bool)
    zero = np.zeros(inst.size, bool)
    for lo in range(0, inst.size, per_chunk):
        sl = slice(lo, lo + per_chunk)
        i = inst[sl]
        Wc = W[i]
        # Half the starts at the truth's scale, half log-uniform over [1, 30] times it: the
        # alternatives that starts at the truth's scale miss are mostly far away (‖Δ‖ ≫ ‖R*‖).
        s = sd[i] * np.where(rng.random(i.size) < 0.5, 1.0, 10.0 ** rng.uniform(0.0, 1.5, i.size))
        U0 = s[:, None, None, None] * rng.standard_normal((i.size, T, d, k))
        V0 = None if symmetric else s[:, None, None, None] * rng.standard_normal((i.size, T, d, k))
        Ue, Ve, f, _, _ = _lm_batch(Wc, U0, V0, max_iter=max_iter, ftol=1e-26 * scale[i] ** 2,
                                    gtol=1e-14 * np.sqrt(np.sum(Wc * Wc, axis=(1, 2, 3))))
        A = _base(Wc, _prod(Ue, Ve))
        bases[sl] = A
        far = np.linalg.norm(A - A_star[i], axis=(1, 2)) > _FAR * scale[i]
        zero[sl] = f <= _ZERO_LOSS * scale[i] ** 2
        good[sl] = zero[sl] & far
    found = [_add_distinct(np.empty((0, d, d)), bases[(inst == b) & good], scale[b]) for b in range(B)]
    return found, np.bincount(inst[zero], minlength=B)


def _add_distinct(kept, candidates, scale):
    """``kept`` (n, d, d) followed by each candidate, in order, that is not the same zero as one
    kept before it: farther than _SAME · max(scale, ‖other‖) from every one."""
    for A in candidates:
        if all(np.linalg.norm(A - other) > _SAME * max(scale, np.linalg.norm(other)) for other in kept):
            kept = np.concatenate([kept, A[None]])
    return kept


# --------------------------------------------------------------------------------------------
# Public


def _memory_need(B, T, d, k, symmetric, search) -> int:
    """Bytes at the peak of :func:`identifiability_batch`, before anything is allocated.

    The local check builds the tangent map (B, (T − 1)·N, n) of :func:`_tangent_map` and factors
    it: measured peaks are about four times its size for symmetric adapters (the two products
    that build it, the map and the SVD's copy) and twice asymmetric; 4.5 and 2.5 leave a margin.
    A search, where one may run, holds Gauss–Newton matrices of side m = T·d·k (about
    3·max(m², 3·10⁶) entries per chunk of starts: measured twice the matrices, plus the
    factorisation's workspace). The two phases do not overlap, so the peak is the larger.
    (Instances with a rank-deficient adapter take the Gram route in the local check instead, m²
    entries each: rare, and not counted.)
    """
    c = d - k
    if T == 1 or d == k:
        tangent = 0
    elif symmetric:
        tangent = 4.5 * B * (T - 1) * (c * (c + 1) // 2) * (k * (k + 1) // 2 + k * c)
    else:
        tangent = 2.5 * B * (T - 1) * c * c * (d * d - c * c)
    m = T * d * k * (1 if symmetric else 2)
    theorem = T >= 3 and d >= 2 * k and (T - 1) * (d - 2 * k) >= d - k
    plane = symmetric and T == 3 and d == 3 * k - 1
    searches = search in ("always", "only") or (search == "auto" and not theorem and not plane)
    gram = 3 * max(m * m, 3 * 10**6) if searches else 0
    # Beyond first order (only where A* can be degenerate: below the rank argument's bound),
    # in chunks of at most 2²⁷ bytes, or one instance where that is more.
    examine = 0 if theorem or T == 2 else max(2**27, _examine_memory(T, d, k, symmetric)) / 8
    return int(8 * max(tangent, gram, examine))


def identifiability_batch(A_star, U_star, *, adapters="symmetric", rng, n_starts=16, max_iter=100,
                          search="auto") -> IdentifiabilityBatch:
    """Classify B instances as identified, isolated, continuum or undetermined (see the module
    docstring), with the evidence.

    Parameters
    ----------
    A_star : (B, d, d)
        The true bases.
    U_star : (B, T, d, k)
        The true adapters of the T retraining tasks (the problem depends on them only; A_star
        places the alternatives).
    adapters : "symmetric" or "asymmetric"
        Adapter kind of the learner (U_tU_tᵀ or U_tV_tᵀ); the truth is U*_tU*_tᵀ either way.
    rng : numpy.random.Generator, int or None
        Starts of the multi-start search.
    n_starts : int >= 1
        Search starts per instance, where a search is needed (``SECOND_ORDER_STARTS`` = 4 times
        as many where A* is isolated only at second order: few starts reach zero loss there).
    max_iter : int >= 1
        Levenberg–Marquardt iterations per start.
    search : "auto", "always", "only" or "never"
        "auto" searches only the instances where A* is an isolated zero (first or second order)
        and neither the rank argument nor the plane or pencil construction settles them; "always" also
        searches (and adds what it finds) where the theorem or the construction applies, as a
        check of them; "only" settles every instance where A* is an isolated zero by the search
        alone (to measure the search against the construction); "never" reports the unsettled
        instances as "identified" with method "jacobian" (A* an isolated zero: local only).

    Returns
    -------
    IdentifiabilityBatch

    Examples
    --------
    >>> import numpy as np
    >>> import theory as th
    >>> truths = th.sample_ground_truth(6, 2, 3, rng=0, size=3)   # d = 3k: identified
    >>> A_star = np.stack([t.A_star for t in truths])
    >>> U_star = np.stack([t.U_star[:-1] for t in truths])
    >>> th.identifiability_batch(A_star, U_star, rng=0).status.tolist()
    ['identified', 'identified', 'identified']
    """
    func = "identifiability_batch"
    U = check_array(U_star, "U_star", func, ndim=4)
    B, T, d, k = U.shape
    if B < 1 or T < 1 or not 1 <= k <= d:
        raise ValueError(f"The 'U_star' parameter of {func} must have shape (B, T, d, k) with B, T >= 1 and "
                         f"1 <= k <= d. Got shape {U.shape}.")
    A = check_array(A_star, "A_star", func, ndim=3, shape=(B, d, d))
    adapters = check_choice(adapters, "adapters", func, ("symmetric", "asymmetric"))
    rng = check_rng(rng, func)
    n_starts = check_int(n_starts, "n_starts", func, low=1, high=MAX_COUNT)
    max_iter = check_int(max_iter, "max_iter", func, low=1)
    search = check_choice(search, "search", func, ("auto", "always", "only", "never"))
    symmetric = adapters == "symmetric"
    check_memory(_memory_need(B, T, d, k, symmetric, search), f"B = {B}, T = {T}, d = {d}, k = {k} ({adapters})",
                 func)
    W = A[:, None] + _prod(U, None)
    nE = len(CURVE_DISTANCES)

    gauge = T * k * (k - 1) // 2 if symmetric else T * k * k
    n_unknowns = d * d + T * d * k * (1 if symmetric else 2)
    nullity, rank_u, gap, threshold = _local(U, symmetric)
    # Beyond first order at A*: where the Jacobian has excess null directions, the second-order
    # test and curve following (T = 2: the curve in closed form).
    order = np.ones(B)
    omega = np.full(B, np.nan)
    dist = np.full((B, nE), np.nan)
    res = np.full((B, nE), np.nan)
    growth = np.full(B, np.nan)
    deg = np.flatnonzero(nullity > gauge)
    if deg.size:
        zero = np.zeros((deg.size, d, d))
        if T == 2:
            rho = _radius(U[deg])
            J = _judge(nullity[deg] - gauge, np.full(deg.size, np.nan), _two_task_curve(U[deg], CURVE_DISTANCES, rho),
                       rho, A[deg], U[deg], zero, symmetric)
        else:
            J = _examine(_prod(U[deg], None), k, symmetric, rng, A[deg], U[deg], zero)
        order[deg], omega[deg], dist[deg], res[deg], growth[deg] = J["order"], J["omega"], J["dist"], J["res"], J["growth"]
    status = np.full(B, "identified", dtype=object)
    method = np.full(B, "", dtype=object)
    through = np.full(B, "", dtype=object)
    status[order == np.inf] = "continuum"
    through[order == np.inf] = "A*"
    status[np.isnan(order)] = "undetermined"
    method[~np.isfinite(order)] = "curve"
    alts = [np.empty((0, d, d)) for _ in range(B)]
    starts = np.zeros(B, int)
    zero_starts = np.zeros(B, int)

    local = np.isfinite(order)                   # A* an isolated zero (order 1 or 2): the global question
    open_ = local.copy()
    if search != "only":
        theorem = open_ & (nullity <= gauge) & _rank_argument(U)
        method[theorem] = "theorem"
        open_ &= ~theorem
    if symmetric and T == 3 and d == 3 * k - 1 and search != "only":
        plane = np.flatnonzero(open_)
        if plane.size:
            delta = _plane_candidates(U[plane])
            ok = np.all(np.isfinite(delta), axis=(1, 2))
            cand = A[plane] - np.where(ok[:, None, None], delta, 0.0)
            res_p = np.where(ok, _residual(cand, A[plane], U[plane], True), np.inf)
            for j, b in enumerate(plane):
                if res_p[j] <= _CHECK:
                    alts[b] = cand[j][None]
            method[plane] = "plane"
            open_[plane] = False
    if not symmetric and T >= 4 and d == 2 * k and k <= PENCIL_MAX_K and search != "only":
        pencil = np.flatnonzero(open_)
        if pencil.size:
            delta, ok = _pencil_candidates(U[pencil])
            fin = np.all(np.isfinite(delta), axis=(2, 3))
            cand = A[pencil, None] - np.where(fin[..., None, None], delta, 0.0)
            res_p = np.where(fin, _residual(cand, A[pencil, None], U[pencil, None], False), np.inf)
            for j, b in enumerate(pencil):
                alts[b] = cand[j][res_p[j] <= _CHECK]
            # Where a genericity condition fails (e.g. two adapters' spans nearly meet), the list
            # may be incomplete: its checked zeros are kept, and the instance is searched too.
            method[pencil[ok]] = "pencil"
            open_[pencil[ok]] = False
    todo = np.flatnonzero({"auto": open_, "only": open_, "always": local, "never": np.zeros(B, bool)}[search])
    # Where A* is isolated only at second order, few starts reach zero loss (1.3 of 8 on average
    # at (4, 4, 2), asymmetric): those instances get SECOND_ORDER_STARTS times the starts.
    for group, ns in ((todo[order[todo] == 1], n_starts), (todo[order[todo] == 2], n_starts * SECOND_ORDER_STARTS)):
        if not group.size:
            continue
        found, n_zero = _search(W[group], A[group], U[group], symmetric, ns, max_iter, rng)
        for j, b in enumerate(group):
            starts[b] = ns
            zero_starts[b] = n_zero[j]
            if not method[b]:
                method[b] = "search"
            # Asymmetric adapters: with A* − Â = A*_t − (R*_t + Δ) of rank ≤ k for all t, so is
            # R*_t + Δᵀ = (R*_t + Δ)ᵀ: every alternative Â = A* − Δ comes with A* − Δᵀ.
            more = found[j] if symmetric else np.concatenate([found[j], A[b] - _tr(A[b] - found[j])])
            alts[b] = _add_distinct(alts[b], more, 1.0)
    method[method == ""] = "jacobian"

    # Every alternative through the independent check at once; only those that pass are kept.
    owner = np.repeat(np.arange(B), [a.shape[0] for a in alts])
    bases = np.concatenate(alts) if B else np.empty((0, d, d))
    res_alt = _residual(bases, A[owner], U[owner], symmetric) if owner.size else np.empty(0)
    keep = res_alt <= _CHECK
    second = np.flatnonzero(order[owner] == 2)
    if second.size:
        # Near a second-order zero the loss grows like ‖Δ‖⁴, so search end points still
        # converging to A* itself pass the zero-loss tolerances (measured: ‖Δ‖ ≈ 3e-5,
        # residual ≈ 1e-11 at (4, 4, 2)); end points within _NEAR·ρ of A* are those.
        rho = _radius(U[owner[second]])
        keep[second] &= np.linalg.norm(bases[second] - A[owner[second]], axis=(1, 2)) > _NEAR * rho
    bases, owner, res_alt = bases[keep], owner[keep], res_alt[keep]
    # Each alternative examined like A*: isolated (order 1 or 2), on a curve, or undetermined.
    # The pencil construction proves the zeros finite: its alternatives are isolated, and are
    # examined to second order only (their order is nan where ω does not settle it).
    examined = method[owner] != "pencil"
    alt_order = np.ones(owner.size)
    if owner.size:
        offset = A[owner] - bases                                     # Δ of each alternative
        X = offset[:, None] + _prod(U[owner], None)
        alt_order = _examine(X, k, symmetric, rng, A[owner], U[owner], offset, follow=examined)["order"]
    n_alt = np.bincount(owner, minlength=B)
    on_curve = np.bincount(owner, weights=examined & (alt_order == np.inf), minlength=B) > 0
    unsettled = np.bincount(owner, weights=examined & np.isnan(alt_order), minlength=B) > 0
    status[n_alt > 0] = "isolated"
    status[unsettled] = "undetermined"
    status[on_curve] = "continuum"
    through[on_curve] = "alternative"
    return IdentifiabilityBatch(
        status=status.astype(str), method=method.astype(str), adapters=adapters,
        jacobian_rank=d * d + rank_u, expected_rank=n_unknowns - gauge, gauge_dim=gauge,
        nullity=nullity, spectrum_gap=gap, threshold=threshold, n_alternatives=n_alt,
        alternative_bases=bases, alternative_residuals=res_alt, alternative_owner=owner, n_starts=starts,
        n_zero_loss_starts=zero_starts,
        obstruction_order=order, second_order_obstruction=omega, curve_distances=dist, curve_residuals=res,
        growth_exponent=growth, curve_through=through.astype(str), alternative_orders=alt_order)


def identifiability(truth, *, adapters="symmetric", rng, n_starts=16, max_iter=100,
                    search="auto") -> Identifiability:
    """Is A* the only base with zero population loss? Classify one ground truth (its T retraining
    tasks) as "identified", "isolated", "continuum" or "undetermined", with the evidence.

    The local question is answered by the rank of the residual map's Jacobian at the truth
    modulo the gauge of the adapters; the global one by a rank argument (T = 3 and d ≥ 3k, T = 4
    and d ≥ 2.5k, …), the exact plane construction (T = 3, d = 3k − 1, symmetric), the exact pencil
    construction (T ≥ 4, d = 2k ≤ 14, asymmetric) or a multi-start search (elsewhere). :func:`identifiability_batch` classifies many instances in one call; the
    module ``theory.landscape._identify`` holds the mathematics.

    Parameters
    ----------
    truth : GroundTruth
        The instance: its T retraining tasks' adapters U*_t define the problem, its base A* places
        the alternatives.
    adapters : "symmetric" or "asymmetric"
        Adapter kind of the learner (U_tU_tᵀ or U_tV_tᵀ); the truth is U*_tU*_tᵀ either way.
    rng : numpy.random.Generator, int or None
        Starts of the multi-start search.
    n_starts : int >= 1
        Search starts, where a search is needed.
    max_iter : int >= 1
        Levenberg–Marquardt iterations per start.
    search : "auto", "always", "only" or "never"
        When to search, as in :func:`identifiability_batch`: "auto" only where neither the Jacobian,
        the rank argument nor the plane construction settles the instance.

    Returns
    -------
    Identifiability

    Examples
    --------
    Three tasks of rank k = 2 need room: at d = 4 the Jacobian has one null direction beyond the
    3 gauge rotations, and a curve of zero-loss bases through A* is exhibited (its points' residual
    stays at rounding down to distance 0.003ρ); at d = 6 = 3k A* is the only zero-loss base; two
    tasks never identify it (P7: the curve in closed form):

    >>> from theory import sample_ground_truth
    >>> for d, T in [(4, 3), (6, 3), (6, 2)]:
    ...     r = identifiability(sample_ground_truth(d, 2, T, rng=0), rng=0)
    ...     print(d, T, r.status, r.method, r.nullity - r.gauge_dim, r.obstruction_order,
    ...           not np.any(r.curve_residuals > 1e-11))
    4 3 continuum curve 1 inf True
    6 3 identified theorem 0 1.0 True
    6 2 continuum curve 4 inf True

    First-order degeneracy is not a continuum: with four tasks and asymmetric adapters at
    (d, k) = (4, 2) the Jacobian has 2 excess null directions, yet the second-order term is
    nonzero on all of them (A* is isolated, the residual grows like ε²), and the pencil
    construction lists the other zero-loss bases, here one pair Δ, Δᵀ:

    >>> r = identifiability(sample_ground_truth(4, 2, 4, rng=1), adapters="asymmetric", rng=0)
    >>> r.status, r.method, r.nullity - r.gauge_dim, r.obstruction_order, round(r.growth_exponent, 2), len(r.alternatives)
    ('isolated', 'pencil', 2, 2.0, 2.0, 2)

    >>> r = identifiability(sample_ground_truth(5, 2, 3, rng=0), rng=0)
    >>> r.status, r.method, len(r.alternatives), bool(r.alternative_residuals[0] < 1e-12)
    ('isolated', 'plane', 1, True)
    """
    func = "identifiability"
    truth = _check_truth(truth, func)
    adapters = check_choice(adapters, "adapters", func, ("symmetric", "asymmetric"))
    rng = check_rng(rng, func)
    search = check_choice(search, "search", func, ("auto", "always", "only", "never"))
    T, d, k = truth.T, truth.d, truth.k
    check_memory(_memory_need(1, T, d, k, adapters == "symmetric", search), f"T = {T}, d = {d}, k = {k} ({adapters})",
                 func)
    out = identifiability_batch(np.asarray(truth.A_star)[None], np.asarray(truth.U_star[: truth.T])[None],
                                adapters=adapters, rng=rng, n_starts=n_starts, max_iter=max_iter, search=search)
    return out.instance(0)
