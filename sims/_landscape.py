"""Landscape experiments (spec P5, P7–P9): tidy tables for the landscape figures and notebooks.

- :func:`saddle_slice_table` and :func:`descent_paths_table`: the reduced objective G of a
  two-task, rank-one instance on a plane through the SR saddle, and gradient-descent paths;
- :func:`critical_spectra_table`: Hessian spectra of F at every class of critical points (P9);
- :func:`recovery_phase_table`: over d × k × T, for symmetric and asymmetric adapters, whether A*
  is identified (the only zero-loss base), has isolated alternatives, sits on an exhibited curve
  of zero-loss bases (a continuum) or is undetermined (:func:`theory.identifiability_batch`), beside how often the exact population solver lands on
  it (P5's boundary);
- :func:`convex_recovery_table`: the same for the convex relaxation of the adapters to PSD
  matrices (cvxpy, Clarabel).
"""

from __future__ import annotations

import functools

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

from theory import GroundTruth, sample_ground_truth
from theory.validation import (MAX_COUNT, MAX_DIM, check_array, check_int, check_real, check_seed,
                               check_values)
from theory.landscape import (
    critical_points_two_tasks,
    fit_population_batch,
    hessian_min_eigenpair,
    identifiability_batch,
    loraml_hessian,
    reduced_gradient_descent,
)

from ._run import Pool, check_executor

__all__ = [
    "saddle_slice_table",
    "descent_paths_table",
    "critical_spectra_table",
    "recovery_phase_table",
    "convex_recovery_table",
    "convex_certificate_margin",
    "solve_psd_relaxation",
    "RECOVERY_TOL",
    "RECOVERY_TOL_CONVEX",
    "CLARABEL_TOL",
]

#: Â recovers A* when ‖Â − A*‖ ≤ RECOVERY_TOL · ‖A*‖ (Frobenius).
RECOVERY_TOL = 1e-6

#: Default multi-start budget of the identifiability search per adapter kind (asymmetric starts
#: cost several times more).
SEARCH_STARTS = {"symmetric": 16, "asymmetric": 8}


def _single_threaded_blas():
    """Run BLAS on one thread inside the block (threadpoolctl).

    The phase diagram makes thousands of small batched solves (matrices of side ≤ 480); a
    multi-threaded OpenBLAS gains nothing on them and, on a loaded machine, its spinning threads
    slowed them down 50-fold in our measurements.
    """
    return threadpool_limits(limits=1, user_api="blas")


# --------------------------------------------------------------------------------------------
# T = 2 landscape on a plane through the SR saddle


def _two_task_truth(d, seed) -> GroundTruth:
    return sample_ground_truth(d, 1, 2, rng=np.random.default_rng(seed))


def _slice_basis(truth: GroundTruth):
    """Orthonormal directions (e, g) in U-space: the escape direction of G at U = 0, and the
    direction from U = 0 to the global minimum U* made orthogonal to e."""
    U0 = np.zeros((2, truth.d, 1))
    e = hessian_min_eigenpair(truth, None, U0, reduced=True).dU
    Ustar = np.asarray(truth.U_star[:2])
    if np.sum(e * Ustar) < 0:
        e = -e
    g = Ustar - np.sum(Ustar * e) * e
    g = g / np.linalg.norm(g)
    return e, g, Ustar


def saddle_slice_table(*, d=4, seed=0, n_grid=121, extent=1.6) -> pd.DataFrame:
    """G on the plane U(x, y) = x e + y g through the SR saddle U = 0 (T = 2, k = 1).

    e is the escape direction (eigenvector of ∇²G's smallest eigenvalue at U = 0) and g the
    direction to the global minimum U* = (u*₁, u*₂), made orthogonal to e. The grid spans
    ±``extent`` · max(|⟨U*, e⟩|, |⟨U*, g⟩|). Columns: ``x``, ``y``, ``G``. ``attrs`` hold the
    coordinates of U* (``star``), the escape eigenvalue (``lambda_min``) and ‖M‖_op.

    Parameters
    ----------
    d : int >= 2
        Dimension of the two-task instance (T = 2, k = 1).
    seed : int >= 0
        Seed of the instance (``sample_ground_truth(d, 1, 2, rng=default_rng(seed))``).
    n_grid : int >= 3
        Grid points per axis.
    extent : float > 0
        Half-width of the grid, in units of U*'s largest coordinate on the plane.

    Examples
    --------
    >>> import numpy as np
    >>> import sims
    >>> table = sims.saddle_slice_table(n_grid=5)
    >>> len(table), sorted(table.columns)
    (25, ['G', 'x', 'y'])
    >>> bool(table['G'].min() >= 0)
    True
    """
    func = "saddle_slice_table"
    d = check_int(d, "d", func, low=2, high=MAX_DIM)
    n_grid = check_int(n_grid, "n_grid", func, low=3, high=10_000)
    seed = check_seed(seed, "seed", func)
    extent = check_real(extent, "extent", func, low=0.0, low_open=True)
    truth = _two_task_truth(d, seed)
    e, g, Ustar = _slice_basis(truth)
    star = (float(np.sum(Ustar * e)), float(np.sum(Ustar * g)))
    r = extent * max(abs(star[0]), abs(star[1]))
    xs = np.linspace(-r, r, n_grid)
    X, Y = np.meshgrid(xs, xs)
    U = X[..., None, None, None] * e + Y[..., None, None, None] * g
    W = np.asarray(truth.task_weights[:2])
    D = U @ np.swapaxes(U, -1, -2) - W
    D = D - D.mean(axis=-3, keepdims=True)
    G = 0.5 * np.sum(D * D, axis=(-3, -2, -1))
    table = pd.DataFrame({"x": X.ravel(), "y": Y.ravel(), "G": G.ravel()})
    M = truth.R_star[0] - truth.R_star[1]
    table.attrs.update(star=star, d=d, seed=seed,
                       lambda_min=float(hessian_min_eigenpair(truth, None, np.zeros((2, d, 1)), reduced=True).eigenvalue),
                       M_op=float(np.linalg.norm(M, 2)))
    return table


def descent_paths_table(*, d=4, seed=0, n_paths=6, n_steps=4000, init_scale=0.05, record_every=10) -> pd.DataFrame:
    """Gradient descent on G from random starts near the SR saddle, projected on the slice plane.

    Starts are U = 0 plus iid N(0, init_scale² ‖M‖_op) entries in the whole space (not only in the
    plane); the step is 0.25 / (‖M‖_op + ‖U*‖²). Columns: ``path``, ``step``, ``x``, ``y`` (the
    projections on e and g), ``off_plane`` (norm of the rest) and ``G``.

    Parameters
    ----------
    d : int >= 2
        Dimension of the two-task instance (T = 2, k = 1).
    seed : int >= 0
        Seed of the instance, as in :func:`saddle_slice_table`; the starts use ``(seed, 1)``.
    n_paths : int >= 1
        Number of random starts.
    n_steps : int >= 1
        Gradient steps per path.
    init_scale : float > 0
        Size of the starts, relative to √‖M‖_op.
    record_every : int >= 1
        Record every this many steps.

    Examples
    --------
    >>> import numpy as np
    >>> import sims
    >>> table = sims.descent_paths_table(n_paths=2, n_steps=200, record_every=100)
    >>> sorted(table.columns)
    ['G', 'off_plane', 'path', 'step', 'x', 'y']
    >>> sorted(int(p) for p in table['path'].unique())
    [0, 1]
    """
    func = "descent_paths_table"
    d = check_int(d, "d", func, low=2, high=MAX_DIM)
    n_paths = check_int(n_paths, "n_paths", func, low=1, high=MAX_COUNT // (2 * d))
    n_steps = check_int(n_steps, "n_steps", func, low=1)
    init_scale = check_real(init_scale, "init_scale", func, low=0.0, low_open=True)
    record_every = check_int(record_every, "record_every", func, low=1)
    seed = check_seed(seed, "seed", func)
    truth = _two_task_truth(d, seed)
    e, g, Ustar = _slice_basis(truth)
    M = truth.R_star[0] - truth.R_star[1]
    m_op = float(np.linalg.norm(M, 2))
    rng = np.random.default_rng([seed, 1])
    U0 = init_scale * np.sqrt(m_op) * rng.standard_normal((n_paths, 2, d, 1))
    step = 0.25 / (m_op + float(np.sum(Ustar * Ustar)))
    res = reduced_gradient_descent(truth, U0, step=step, n_steps=n_steps, record_every=record_every)
    P = res.path                                              # (n_rec, n_paths, 2, d, 1)
    x = np.einsum("rptdk,tdk->rp", P, e)
    y = np.einsum("rptdk,tdk->rp", P, g)
    rest = P - x[..., None, None, None] * e - y[..., None, None, None] * g
    off = np.sqrt(np.sum(rest * rest, axis=(-3, -2, -1)))
    n_rec = P.shape[0]
    return pd.DataFrame({
        "path": np.tile(np.arange(n_paths), n_rec),
        "step": np.repeat(res.steps, n_paths),
        "x": x.ravel(), "y": y.ravel(), "off_plane": off.ravel(), "G": res.values.ravel(),
    })


# --------------------------------------------------------------------------------------------
# Hessian spectra at the critical points (P9)


def critical_spectra_table(*, d=4, seed=0, scales=(0.5, 2.0)) -> pd.DataFrame:
    """Eigenvalues of ∇²F at a representative of every class of critical points (T = 2, k = 1).

    Columns: ``point`` (index), ``family``, ``label``, ``predicted`` ("global minimum" or
    "strict saddle"), ``index`` (eigenvalue rank, ascending), ``eigenvalue``, ``grad_norm``
    and ``value`` (F at the point).

    Parameters
    ----------
    d : int >= 2
        Dimension of the two-task instance (T = 2, k = 1).
    seed : int >= 0
        Seed of the instance, as in :func:`saddle_slice_table`.
    scales : sequence of float > 0
        The adapter sizes at which the unbounded families (kernel lines, hyperbolas) are sampled
        (``scales`` of :func:`theory.critical_points_two_tasks`).

    Examples
    --------
    >>> import numpy as np
    >>> import sims
    >>> table = sims.critical_spectra_table(d=4)
    >>> sorted(table.columns)
    ['eigenvalue', 'family', 'grad_norm', 'index', 'label', 'point', 'predicted', 'value']
    >>> bool((table.groupby('label')['eigenvalue'].min() < 0).any())
    True
    """
    func = "critical_spectra_table"
    d = check_int(d, "d", func, low=2, high=MAX_DIM)
    seed = check_seed(seed, "seed", func)
    scales = check_values(scales, "scales", func, lambda a: check_real(a, "scales", func, low=0.0, low_open=True))
    truth = _two_task_truth(d, seed)
    rows = []
    from theory.landscape import landscape_objective

    for i, p in enumerate(critical_points_two_tasks(truth, scales=scales)):
        lam = np.linalg.eigvalsh(loraml_hessian(truth, p.A, p.U))
        out = landscape_objective(truth, p.A, p.U)
        rows.append(pd.DataFrame({"point": i, "family": p.family, "label": p.label, "predicted": p.predicted,
                                  "index": np.arange(lam.size), "eigenvalue": lam,
                                  "grad_norm": out.grad_norm, "value": out.value}))
    table = pd.concat(rows, ignore_index=True)
    M = truth.R_star[0] - truth.R_star[1]
    table.attrs.update(d=d, seed=seed, M_eigenvalues=np.linalg.eigvalsh(M))
    return table


# --------------------------------------------------------------------------------------------
# Recovery phase diagram (P5)


def _cells(ds, ks):
    return [(d, k) for d in ds for k in ks if k <= d]


def _instances(d, k, T, reps, seed, *, adapters=False):
    """Ground truths of one cell, seeded by (seed, T, d, k) so that a cell never depends on others:
    targets W (reps, T, d, d), bases A* (reps, d, d) and, with ``adapters``, U* (reps, T, d, k)."""
    ss = np.random.SeedSequence([seed, T, d, k])
    truths = [sample_ground_truth(d, k, T, rng=np.random.default_rng(s)) for s in ss.spawn(reps)]
    W = np.stack([t.task_weights[:T] for t in truths])
    A = np.stack([t.A_star for t in truths])
    if adapters:
        return W, A, np.stack([t.U_star[:T] for t in truths])
    return W, A


def recovery_phase_table(*, Ts=(2, 3, 4, 5), ds=range(2, 13), ks=range(1, 5), reps=50, seed=0,
                         adapters=("symmetric", "asymmetric"), n_starts=3, max_iter=60, identify=True,
                         search_starts=None, search_iter=60, landing=True, search_max_unknowns=None,
                         executor="serial") -> pd.DataFrame:
    """Is A* identified, and does the exact population solver land on it? One row per instance.

    For each T, d, k (k ≤ d) and adapter type, ``reps`` ground truths (sample_ground_truth: A*
    symmetric Gaussian, U*_t Gaussian of rank k) are

    - classified by :func:`theory.identifiability_batch` (with ``identify``): ``status`` is
      "identified" (A* is the only zero-loss base), "isolated" (other zero-loss bases, each an
      isolated zero; at least one was found), "continuum" (a curve of zero-loss bases through A*
      or an alternative was exhibited) or "undetermined" (degenerate to first order and settled
      neither way); ``obstruction_order`` (1, 2, inf on a curve, nan undetermined),
      ``second_order_obstruction``, ``growth_exponent`` (of the corrected residual on small
      spheres), ``curve_residual`` (the largest independent residual of the curve's points) and
      ``curve_through`` ("A*", "alternative" or "") are the evidence beyond first order
      (:func:`theory.identifiability_batch`);
      ``method`` says what settled it ("curve" for the examination beyond first order,
      "jacobian", "theorem" for T ≥ 3 and d ≥ 3k, "plane" for the
      exact construction at T = 3, d = 3k − 1, symmetric, "pencil" for the exact construction at
      T ≥ 4, d = 2k, asymmetric, "search" for ``search_starts`` random
      starts of ``search_iter`` Levenberg–Marquardt steps, only where nothing else applies:
      an int, or a mapping from adapter kind to an int; by default 16 symmetric and 8 asymmetric
      starts, the asymmetric ones being several times dearer);
      ``n_alternatives``, ``excess_nullity`` (Jacobian nullity − gauge dimension),
      ``spectrum_gap`` (the singular-value gap of the tangent map that decided the rank),
      ``search_starts`` and ``search_zero_loss_starts`` (how many starts reached zero loss, at A*
      or elsewhere: a search whose starts rarely do is weak evidence);
    - fitted with adapters of rank k by :func:`theory.landscape.fit_population_batch` (all
      instances of a cell in one batch; ``n_starts``, ``max_iter``): ``zero_loss`` (F at rounding
      level), ``recovered`` (‖Â − A*‖ ≤ 1e-6 ‖A*‖: the solver landed on A*), ``A_error``
      (‖Â − A*‖/‖A*‖), ``loss``, ``n_iter``.

    With ``landing=False`` the solver is not run and its columns are absent (the classification
    alone). ``search_max_unknowns`` (int or None) bounds the search: in a cell whose
    Levenberg–Marquardt problem has more unknowns than that (T·d·k, twice that asymmetric; one
    step costs ~ unknowns³), no search runs, and the locally identified instances that nothing
    else settles are reported as "identified" with method "jacobian" and ``search_starts`` 0
    (local identification only). The wide example (d up to 30, k up to 10, T up to 6:
    ``benchmarks/landscape_wide.py``) uses both.

    Columns ``T``, ``d``, ``k``, ``adapters``, ``rep`` name the instance. ``executor`` ("serial",
    "processes" or an object with ``submit``, as in :func:`sims.run`) spreads the cells over
    processes, the most expensive first. Every cell is seeded by (seed, T, d, k, adapters) alone,
    so the table does not depend on the executor.

    Parameters
    ----------
    Ts : sequence of int >= 1
        Numbers of retraining tasks.
    ds : sequence of int >= 1
        Dimensions.
    ks : sequence of int >= 1
        Adapter ranks; a cell needs k <= d.
    reps : int >= 1
        Instances per cell.
    seed : int >= 0
        Seeds every cell, with (T, d, k).
    adapters : "symmetric", "asymmetric" or a sequence of them
        The learner's adapter kinds.
    n_starts : int >= 1
        Starts of the landing solver (the spectral start, then random ones).
    max_iter : int >= 1
        Levenberg–Marquardt iterations per start of the landing solver.
    identify : bool
        Classify the instances (the classification columns); off, the solver alone runs.
    search_starts : int, a mapping from adapter kind to int, or None
        Starts of the multi-start search where one is needed; None: 16 symmetric, 8 asymmetric.
    search_iter : int >= 1
        Levenberg–Marquardt iterations per search start.
    landing : bool
        Run the landing solver (its columns).
    search_max_unknowns : int >= 0 or None
        No search in a cell with more unknowns than this; None: no bound.
    executor : "serial", "processes" or an object with ``submit``
        Runs the cells, as in :func:`sims.run`.

    Examples
    --------
    >>> import numpy as np
    >>> import sims
    >>> table = sims.recovery_phase_table(Ts=(3,), ds=(3, 2), ks=(1,), reps=2, adapters=('symmetric',))
    >>> print(table[['T', 'd', 'k', 'status']].drop_duplicates().to_string(index=False))
     T  d  k     status
     3  3  1 identified
     3  2  1   isolated
    """
    func = "recovery_phase_table"
    reps = check_int(reps, "reps", func, low=1, high=MAX_COUNT)
    Ts = list(check_values(Ts, "Ts", func, lambda T: check_int(T, "Ts", func, low=1, high=MAX_COUNT)))
    ds = list(check_values(ds, "ds", func, lambda d: check_int(d, "ds", func, low=1, high=MAX_DIM)))
    ks = list(check_values(ks, "ks", func, lambda k: check_int(k, "ks", func, low=1, high=MAX_DIM)))
    if not any(k <= d for d in ds for k in ks):
        raise ValueError(f"The 'ks' parameter of {func} must hold a rank k <= some d in 'ds' (no cell). "
                         f"Got ks={ks}, ds={ds}.")
    seed = check_seed(seed, "seed", func)
    n_starts = check_int(n_starts, "n_starts", func, low=1, high=MAX_COUNT)
    max_iter = check_int(max_iter, "max_iter", func, low=1)
    search_iter = check_int(search_iter, "search_iter", func, low=1)
    if search_max_unknowns is not None:
        search_max_unknowns = check_int(search_max_unknowns, "search_max_unknowns", func, low=0)
    if not isinstance(landing, (bool, np.bool_)):
        raise ValueError(f"The 'landing' parameter of {func} must be a bool. Got {landing!r} instead.")
    if not isinstance(identify, (bool, np.bool_)):
        raise ValueError(f"The 'identify' parameter of {func} must be a bool. Got {identify!r} instead.")
    adapters = (adapters,) if isinstance(adapters, str) else check_values(adapters, "adapters", func, lambda a: a)
    for a in adapters:
        if a not in ("symmetric", "asymmetric"):
            raise ValueError(f"The 'adapters' parameter of {func} must hold 'symmetric' and/or 'asymmetric'. Got {a!r}.")
    if search_starts is None:
        search_starts = SEARCH_STARTS
    if not isinstance(search_starts, dict):
        search_starts = {"symmetric": search_starts, "asymmetric": search_starts}
    search_starts = {a: check_int(search_starts.get(a), "search_starts", func, low=1) for a in adapters}
    check_executor(executor, func)
    jobs = [(T, d, k, a) for T in Ts for d, k in _cells(ds, ks) for a in adapters]
    rest = dict(reps=reps, seed=seed, n_starts=n_starts, max_iter=max_iter, identify=bool(identify),
                search_starts=search_starts, search_iter=search_iter, landing=bool(landing),
                search_max_unknowns=search_max_unknowns)
    # Largest first (one LM step costs ~ (unknowns)³), so that no big cell starts last.
    order = sorted(range(len(jobs)), key=lambda i: -_cell_cost(*jobs[i], landing=landing,
                                                               search_max_unknowns=search_max_unknowns))
    cell = functools.partial(_recovery_cell_single_threaded, **rest)
    frames = [None] * len(jobs)
    with Pool(executor, func) as pool:
        for i, frame in pool.map_unordered(cell, [jobs[i] for i in order]):
            frames[order[i]] = frame
    return pd.concat(frames, ignore_index=True)


def _unknowns(T, d, k, adapters):
    """Unknowns of the reduced objective (the size of one Levenberg–Marquardt system)."""
    return T * d * k * (1 if adapters == "symmetric" else 2)


def _cell_cost(T, d, k, adapters, *, landing=True, search_max_unknowns=None):
    unknowns = _unknowns(T, d, k, adapters)
    if landing or search_max_unknowns is None or unknowns <= search_max_unknowns:
        return unknowns ** 3
    return d ** 3 * T * (T + 1)          # the local check and the rank argument only


def _recovery_cell_single_threaded(*args, **kwargs):
    with _single_threaded_blas():
        return _recovery_cell(*args, **kwargs)


def _recovery_cell(T, d, k, adapters, *, reps, seed, n_starts, max_iter, identify=False, search_starts=None,
                   search_iter=60, landing=True, search_max_unknowns=None):
    """The ``reps`` instances of one cell: classified, and (with ``landing``) fitted in one batch."""
    W, A_star, U_star = _instances(d, k, T, reps, seed, adapters=True)
    symmetric = adapters == "symmetric"
    table = pd.DataFrame({"T": T, "d": d, "k": k, "adapters": adapters, "rep": np.arange(reps)})
    if landing:
        scale = np.sum((W - W.mean(axis=1, keepdims=True)) ** 2, axis=(1, 2, 3)) / T + 1e-300
        fit = fit_population_batch(W, k, rng=np.random.default_rng([seed, T, d, k, symmetric]),
                                   symmetric=symmetric, n_starts=n_starts, max_iter=max_iter)
        err = np.linalg.norm(fit.A - A_star, axis=(1, 2)) / np.linalg.norm(A_star, axis=(1, 2))
        table = table.assign(zero_loss=fit.loss <= 1e-20 * scale, recovered=err <= RECOVERY_TOL,
                             A_error=err, loss=fit.loss, n_iter=fit.n_iter)
    if identify:
        starts = (search_starts or SEARCH_STARTS)[adapters]
        affordable = search_max_unknowns is None or _unknowns(T, d, k, adapters) <= search_max_unknowns
        ident = identifiability_batch(A_star, U_star, adapters=adapters, n_starts=starts,
                                      max_iter=search_iter, search="auto" if affordable else "never",
                                      rng=np.random.default_rng([seed, T, d, k, symmetric, 1]))
        table = table.assign(status=ident.status, method=ident.method, n_alternatives=ident.n_alternatives,
                             excess_nullity=ident.nullity - ident.gauge_dim, spectrum_gap=ident.spectrum_gap,
                             search_starts=ident.n_starts, search_zero_loss_starts=ident.n_zero_loss_starts,
                             obstruction_order=ident.obstruction_order,
                             second_order_obstruction=ident.second_order_obstruction,
                             growth_exponent=ident.growth_exponent,
                             curve_residual=np.max(ident.curve_residuals, axis=1),
                             curve_through=ident.curve_through)
    return table


# --------------------------------------------------------------------------------------------
# Convex relaxation (cvxpy)


class _PSDRelaxation:
    """min ½ Σ_t ‖A + M_t − A*_t‖² + λ Σ_t tr M_t over A and M_t ⪰ 0, compiled once per shape.

    With λ = 0 the λ → 0⁺ limit is solved instead: min Σ_t tr M_t subject to A + M_t = A*_t,
    M_t ⪰ 0 (the trace-minimal interpolant, which the penalised solutions approach as λ → 0).
    """

    def __init__(self, d, T, lam):
        import cvxpy as cp

        self.W = [cp.Parameter((d, d)) for _ in range(T)]
        self.A = cp.Variable((d, d))
        self.M = [cp.Variable((d, d), PSD=True) for _ in range(T)]
        trace = sum(cp.trace(M) for M in self.M)
        if lam > 0:
            fit = sum(cp.sum_squares(self.A + M - W) for M, W in zip(self.M, self.W))
            self.problem = cp.Problem(cp.Minimize(0.5 * fit + lam * trace))
        else:
            cons = [self.A + M == W for M, W in zip(self.M, self.W)]
            self.problem = cp.Problem(cp.Minimize(trace), cons)

    def solve(self, W):
        import cvxpy as cp

        for p, w in zip(self.W, W):
            p.value = w
        self.problem.solve(solver=cp.CLARABEL, tol_gap_abs=CLARABEL_TOL, tol_gap_rel=CLARABEL_TOL,
                           tol_feas=CLARABEL_TOL)
        return self.A.value, [M.value for M in self.M], self.problem.status


#: Tolerance of every Clarabel solve: one it reaches. Measured on 60 instances at (T, d, k) =
#: (3, 6, 2): at 1e-12 every solve ends "optimal_inaccurate", at 1e-10 62 %, at 1e-9 22 %, at
#: 1e-8 none (3 of 1000 on a larger sample: the ``status`` column says which). The relaxed base is
#: then accurate to ~1e-7 relative, far inside RECOVERY_TOL_CONVEX.
CLARABEL_TOL = 1e-8
#: The certificate's margin problem reaches 1e-7 (at 1e-8, 4 of 180 solves end "optimal_inaccurate",
#: at 1e-7 none, measured at (3, 6, 2), (3, 4, 1), (4, 4, 2); 4 of 1000 on a larger sample at
#: (3, 6, 2)); only the margin's sign matters.
CERTIFICATE_TOL = 1e-7
#: The convex relaxation recovers A* when ‖Â − A*‖ ≤ RECOVERY_TOL_CONVEX · ‖A*‖; a failure is an
#: O(1e-2) error or more (measured), a success O(1e-7).
RECOVERY_TOL_CONVEX = 1e-5


def convex_certificate_margin(U_star) -> float:
    """How strictly a dual certificate of the convex relaxation exists at A*, for adapters U* (T, d, k).

    The relaxation min Σ_t tr M_t s.t. A + M_t = A*_t, M_t ⪰ 0 is, with Δ = A* − A,
    min T·tr Δ s.t. R*_t + Δ ⪰ 0. Its dual: Y_t ⪰ 0 with Σ_t Y_t = T·I; Δ = 0 is optimal iff there
    are Y_t ⪰ 0 with Y_tU*_t = 0 and Σ_t Y_t = I (complementary slackness; the primal is strictly
    feasible, so the dual optimum is attained). Writing Y_t = P_t Z_t P_tᵀ with P_t an orthonormal
    basis of span(U*_t)^⊥, this returns max s such that Σ_t P_t Z_t P_tᵀ = I with Z_t ⪰ s·I. A
    positive margin is a strict certificate: then every optimal Δ has R*_t + Δ supported on
    span(U*_t), so Δ = 0 and the relaxation returns A* (and only A*); a negative margin means no
    certificate, and the relaxation returns another base. Solved with cvxpy and Clarabel at
    ``CERTIFICATE_TOL``.

    Parameters
    ----------
    U_star : (T, d, k), 1 <= k < d
        The adapters U*_t of the T retraining tasks.

    Examples
    --------
    >>> import numpy as np
    >>> import sims
    >>> import theory as th
    >>> truth = th.sample_ground_truth(6, 2, 3, rng=0)
    >>> margin = sims.convex_certificate_margin(truth.U_star[:-1])
    >>> isinstance(margin, float)
    True
    """
    from theory.validation import check_array

    return _certificate(check_array(U_star, "U_star", "convex_certificate_margin", ndim=3))[0]


def _certificate(U):
    """(margin, solver status) of :func:`convex_certificate_margin`."""
    import cvxpy as cp

    T, d, k = U.shape
    if not 1 <= k < d:
        raise ValueError("The 'U_star' parameter of convex_certificate_margin must have shape (T, d, k) with "
                         f"1 <= k < d. Got shape {U.shape}.")
    P = [np.linalg.svd(u)[0][:, k:] for u in U]
    Z = [cp.Variable((d - k, d - k), symmetric=True) for _ in range(T)]
    margin = cp.Variable()
    cons = [sum(p @ z @ p.T for p, z in zip(P, Z)) == np.eye(d)]
    cons += [z - margin * np.eye(d - k) >> 0 for z in Z]
    problem = cp.Problem(cp.Maximize(margin), cons)
    problem.solve(solver=cp.CLARABEL, tol_gap_abs=CERTIFICATE_TOL, tol_gap_rel=CERTIFICATE_TOL,
                  tol_feas=CERTIFICATE_TOL)
    if problem.status == "infeasible":
        return -np.inf, problem.status
    return float(margin.value), problem.status


def solve_psd_relaxation(task_weights, *, lam=0.0):
    """Solve the PSD relaxation of LoRA-ML for one instance; returns (A, M (T, d, d), status).

    Parameters
    ----------
    task_weights : (T, d, d) the targets A*_t.
    lam : float >= 0
        Trace penalty; 0 solves the λ → 0⁺ limit (see :class:`_PSDRelaxation`).

    Examples
    --------
    >>> import numpy as np
    >>> import sims
    >>> import theory as th
    >>> truth = th.sample_ground_truth(6, 1, 3, rng=0)
    >>> A, M, status = sims.solve_psd_relaxation(truth.task_weights[:3])
    >>> status, A.shape, M.shape
    ('optimal', (6, 6), (3, 6, 6))
    """
    W = check_array(task_weights, "task_weights", "solve_psd_relaxation", ndim=3)
    if W.shape[0] < 1 or W.shape[1] < 1 or W.shape[1] != W.shape[2] or W.shape[2] > MAX_DIM:
        raise ValueError("The 'task_weights' parameter of solve_psd_relaxation must have shape (T, d, d) with "
                         f"T >= 1 and 1 <= d <= {MAX_DIM}. Got shape {W.shape} instead.")
    lam = check_real(lam, "lam", "solve_psd_relaxation", low=0.0, high=1e8)
    prob = _PSDRelaxation(W.shape[-1], W.shape[0], lam)
    A, M, status = prob.solve(W)
    return A, np.array(M), status


def convex_recovery_table(*, Ts=(2, 3, 5), ds=range(2, 9), ks=range(1, 4), reps=20, seed=0, lam=0.0,
                          tol=RECOVERY_TOL_CONVEX, certificate=True) -> pd.DataFrame:
    """Recovery by the convex PSD relaxation, on the instances of :func:`recovery_phase_table`.

    Each cell's problem is compiled once (cvxpy parameters) and re-solved for every instance with
    Clarabel at ``CLARABEL_TOL`` (a tolerance it reaches). ``recovered`` uses ``tol`` (relative).
    With ``certificate`` (and λ = 0, k < d), ``certificate_margin`` is
    :func:`convex_certificate_margin` and ``certified`` whether it is positive: the relaxation
    returns A* exactly when ``certified``. Columns as in :func:`recovery_phase_table`, with
    ``adapters`` = "convex PSD", the solver's ``status`` and the certificate's ``certificate_status``.

    Parameters
    ----------
    Ts : sequence of int >= 1
        Numbers of retraining tasks.
    ds : sequence of int >= 1
        Dimensions.
    ks : sequence of int >= 1
        Adapter ranks; a cell needs k <= d.
    reps : int >= 1
        Instances per cell, the same as :func:`recovery_phase_table`'s for the same ``seed``.
    seed : int >= 0
        Seeds every cell, with (T, d, k).
    lam : float >= 0
        Trace penalty of the relaxation; 0 solves the λ → 0⁺ limit.
    tol : float > 0
        ``recovered`` means ‖Â − A*‖ ≤ tol ‖A*‖.
    certificate : bool
        Also compute the dual certificate's margin (λ = 0 and k < d only).

    Examples
    --------
    >>> import numpy as np
    >>> import sims
    >>> table = sims.convex_recovery_table(Ts=(3,), ds=(6,), ks=(2,), reps=2)
    >>> len(table), sorted(table.columns)[:4]
    (2, ['A_error', 'T', 'adapters', 'certificate_margin'])
    >>> bool(((table['recovered']) == (table['certificate_margin'] > 0)).all())
    True
    """
    func = "convex_recovery_table"
    reps = check_int(reps, "reps", func, low=1, high=MAX_COUNT)
    tol = check_real(tol, "tol", func, low=0.0, low_open=True)
    Ts = list(check_values(Ts, "Ts", func, lambda T: check_int(T, "Ts", func, low=1, high=MAX_COUNT)))
    ds = list(check_values(ds, "ds", func, lambda d: check_int(d, "ds", func, low=1, high=MAX_DIM)))
    ks = list(check_values(ks, "ks", func, lambda k: check_int(k, "ks", func, low=1, high=MAX_DIM)))
    seed = check_seed(seed, "seed", func)
    lam = check_real(lam, "lam", func, low=0.0, high=1e8)
    if not isinstance(certificate, (bool, np.bool_)):
        raise ValueError(f"The 'certificate' parameter of {func} must be a bool. Got {certificate!r} instead.")
    rows = []
    for T in Ts:
        for d, k in _cells(ds, ks):
            W, A_star, U_star = _instances(d, k, T, reps, seed, adapters=True)
            prob = _PSDRelaxation(d, T, lam)
            for r in range(reps):
                A, _, status = prob.solve(W[r])
                err = float(np.linalg.norm(A - A_star[r]) / np.linalg.norm(A_star[r])) if A is not None else np.inf
                row = {"T": T, "d": d, "k": k, "adapters": "convex PSD", "rep": r,
                       "zero_loss": True, "recovered": err <= tol, "A_error": err, "status": status}
                if certificate and lam == 0 and k < d:
                    m, m_status = _certificate(U_star[r])
                    row.update(certificate_margin=m, certified=m > 0, certificate_status=m_status)
                rows.append(row)
    return pd.DataFrame(rows)
