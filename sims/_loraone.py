"""Toy experiments of LoRA-One (spec/loraone.md §4), each returning a tidy ``pandas.DataFrame``.

The instance is that of spec §3: ΔW = P Λ Qᵀ with r* = 4 and singular values geometric from 1 to
1/κ, x ~ N(0, I_d), noise-free labels Y = X(W0 + ΔW), W0 = 0 (the gradient does not depend on W0 in
the linear model). All runs of one table advance together (batched over α, κ or methods).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from theory import loraone as lo
from theory.validation import MAX_COUNT, MAX_DIM, check_int, check_real, check_seed, check_values

__all__ = [
    "vanilla_alpha_table",
    "init_comparison_table",
    "kappa_iterations_table",
    "two_parameter_table",
]


def _instance(d, m, rstar, kappas, N, rng):
    dW = np.stack([lo.sample_low_rank(d, m, rstar, kappa=k, rng=rng) for k in kappas])
    X = rng.standard_normal((N, d))
    return dW, X, X @ dW


def vanilla_alpha_table(*, alpha2=(1.0, 0.1, 1e-2, 1e-3, 1e-4), d=100, m=100, rstar=4, r=8, kappa=1.0,
                        N_ratio=16, lr=1 / 64, steps=1500, seed=0) -> pd.DataFrame:
    """Vanilla LoRA (A0 ~ N(0, α²), B0 = 0, plain GD) for several α² at once (spec §4, figures 1–2).

    Columns: ``alpha2``, ``step``, ``risk`` (½‖A_tB_t − ΔW‖²), ``alignment`` (sin θ between the
    top-r* left singular vectors of A_t and those of G♮). ``attrs["angle"]`` holds sin θ(G♮, ΔW),
    the plateau, and ``attrs["sqrt_d_over_N"]`` its scale √(d/N).

    Parameters
    ----------
    alpha2 : sequence of float > 0
        The init variances α² compared, all in one batched run.
    d, m : int >= 2
        Shape of ΔW (d, m).
    rstar : int in [1, min(d, m)]
        Rank r* of ΔW.
    r : int in [rstar, min(d, m)]
        LoRA rank.
    kappa : float >= 1
        Condition number of ΔW.
    N_ratio : int >= 1
        Samples per dimension: N = N_ratio · d.
    lr : float > 0
        Step size.
    steps : int >= 1
        GD steps.
    seed : int >= 0
        Seed of the instance, the samples and the init.

    Examples
    --------
    >>> import numpy as np
    >>> import sims
    >>> table = sims.vanilla_alpha_table(alpha2=(1e-2, 1e-4), d=10, m=10, rstar=2, r=4, steps=50)
    >>> sorted(table.columns)
    ['alignment', 'alpha2', 'risk', 'step']
    >>> sorted(float(a) for a in table['alpha2'].unique())
    [0.0001, 0.01]
    """
    func = "vanilla_alpha_table"
    d = check_int(d, "d", func, low=2, high=MAX_DIM)
    m = check_int(m, "m", func, low=2, high=MAX_DIM)
    rstar = check_int(rstar, "rstar", func, low=1, high=min(d, m))
    r = check_int(r, "r", func, low=rstar, high=min(d, m))
    steps = check_int(steps, "steps", func, low=1)
    lr = check_real(lr, "lr", func, low=0.0, low_open=True)
    alpha2 = np.array(check_values(alpha2, "alpha2", func,
                                   lambda a: check_real(a, "alpha2", func, low=0.0, low_open=True)))
    kappa = check_real(kappa, "kappa", func, low=1.0)
    N_ratio = check_int(N_ratio, "N_ratio", func, low=1, high=MAX_COUNT // d)
    seed = check_seed(seed, "seed", func)
    rng = np.random.default_rng(seed)
    N = N_ratio * d
    dW, X, Y = _instance(d, m, rstar, [kappa], N, rng)
    dW, Y = dW[0], Y[0]
    W0 = np.zeros((d, m))
    G = lo.one_step_gradient(X, Y, W0)
    UG = np.linalg.svd(G)[0][:, :rstar]
    P = np.linalg.svd(dW)[0][:, :rstar]
    A0, B0 = lo.vanilla_init(d, m, r, alpha=np.sqrt(alpha2), rng=rng)
    res = lo.finetune(X, Y, W0, A0, B0, method="gd", lr=lr, max_iter=steps, tol=1e-300, target=dW,
                      align_to=UG)
    nrm2 = float(np.sum(dW**2))
    rows = []
    for j, a2 in enumerate(alpha2):
        rows.append(pd.DataFrame({"alpha2": a2, "step": np.arange(res.rel_error.shape[0]),
                                  "risk": 0.5 * res.rel_error[:, j] ** 2 * nrm2,
                                  "alignment": res.alignment[:, j]}))
    table = pd.concat(rows, ignore_index=True)
    table.attrs.update(angle=float(lo.subspace_sin(UG, P)), sqrt_d_over_N=float(np.sqrt(d / N)), d=d, N=N,
                       lr=lr, r=r, rstar=rstar, kappa=kappa)
    return table


def init_comparison_table(*, d=100, m=100, rstar=4, r=8, kappa=10.0, N_ratio=16, lr=0.5, lam=1e-3, steps=100,
                          vanilla_alpha=1e-2, loraga_gamma=8.0, seed=0) -> pd.DataFrame:
    """Preconditioned GD (ScaledGD(λ)) from four initialisations (spec §4, figure 3).

    ``method`` ∈ {"spectral" (theory form, γ = 1), "spectral (code form)" (α = 16, γ = 128),
    "vanilla" (A0 ~ N(0, α²), B0 = 0), "LoRA-GA" (γ = ``loraga_gamma``, W0 shifted)}.
    Columns: ``method``, ``step``, ``rel_error`` = ‖W0′ + A_tB_t − W♮‖/‖ΔW‖ (W0′ the possibly
    shifted base).

    Parameters
    ----------
    d, m : int >= 2
        Shape of ΔW (d, m).
    rstar : int in [1, min(d, m)]
        Rank r* of ΔW.
    r : int in [1, min(d, m) / 2]
        LoRA rank.
    kappa : float >= 1
        Condition number of ΔW.
    N_ratio : int >= 1
        Samples per dimension: N = N_ratio · d.
    lr : float > 0
        Step size of ScaledGD(λ).
    lam : float >= 0
        Its damping λ.
    steps : int >= 1
        Steps.
    vanilla_alpha : float > 0
        Standard deviation α of the vanilla init's A0 entries.
    loraga_gamma : float > 0
        LoRA-GA's scale γ.
    seed : int >= 0
        Seed of the instance, the samples and the vanilla init.

    Examples
    --------
    >>> import numpy as np
    >>> import sims
    >>> table = sims.init_comparison_table(d=10, m=10, rstar=2, r=4, steps=20)
    >>> sorted(table['method'].unique())
    ['LoRA-GA', 'spectral', 'spectral (code form)', 'vanilla']
    >>> sorted(table.columns)
    ['method', 'rel_error', 'step']
    """
    func = "init_comparison_table"
    d = check_int(d, "d", func, low=2, high=MAX_DIM)
    m = check_int(m, "m", func, low=2, high=MAX_DIM)
    r = check_int(r, "r", func, low=1, high=min(d, m) // 2)
    steps = check_int(steps, "steps", func, low=1)
    rstar = check_int(rstar, "rstar", func, low=1, high=min(d, m))
    kappa = check_real(kappa, "kappa", func, low=1.0)
    N_ratio = check_int(N_ratio, "N_ratio", func, low=1, high=MAX_COUNT // d)
    lr = check_real(lr, "lr", func, low=0.0, low_open=True)
    lam = check_real(lam, "lam", func, low=0.0)
    vanilla_alpha = check_real(vanilla_alpha, "vanilla_alpha", func, low=0.0, low_open=True)
    loraga_gamma = check_real(loraga_gamma, "loraga_gamma", func, low=0.0, low_open=True)
    seed = check_seed(seed, "seed", func)
    rng = np.random.default_rng(seed)
    dW, X, Y = _instance(d, m, rstar, [kappa], d * N_ratio, rng)
    dW, Y = dW[0], Y[0]
    W0 = np.zeros((d, m))
    G = lo.one_step_gradient(X, Y, W0)
    inits = {"spectral": lo.spectral_init(G, r) + (W0,),
             "spectral (code form)": lo.spectral_init_code(G, r) + (W0,),
             "vanilla": lo.vanilla_init(d, m, r, alpha=vanilla_alpha, rng=rng) + (W0,),
             "LoRA-GA": lo.loraga_init(G, W0, r, gamma=loraga_gamma)}
    names = list(inits)
    A0 = np.stack([inits[k][0] for k in names])
    B0 = np.stack([inits[k][1] for k in names])
    W0s = np.stack([inits[k][2] for k in names])
    target = dW - W0s                                  # what A B must reach: W♮ − W0′
    res = lo.finetune(X, Y, W0s, A0, B0, method="precgd", lr=lr, lam=lam, max_iter=steps, tol=1e-300,
                      target=target)
    scale = np.linalg.norm(target, axis=(-2, -1)) / np.linalg.norm(dW)
    rows = [pd.DataFrame({"method": name, "step": np.arange(res.rel_error.shape[0]),
                          "rel_error": res.rel_error[:, j] * scale[j]}) for j, name in enumerate(names)]
    table = pd.concat(rows, ignore_index=True)
    table.attrs.update(d=d, N=d * N_ratio, r=r, rstar=rstar, kappa=kappa, lr=lr, lam=lam)
    return table


def kappa_iterations_table(*, kappas=(1.0, 3.0, 10.0, 30.0, 100.0), d=100, m=100, rstar=4, N_ratio=16, lr=0.5,
                           tol=1e-6, max_iter=20000, seeds=(0,)) -> pd.DataFrame:
    """Iterations to ``tol`` relative error from the spectral init against κ (spec §4, figure 4; L2).

    Columns: ``method`` ("precgd", "gd"), ``kappa``, ``seed``, ``n_iter``, ``converged``.
    ``attrs["slopes"]`` maps each method to the fitted log–log slope of mean iterations in κ.

    Parameters
    ----------
    kappas : sequence of float >= 1
        Condition numbers κ of ΔW, all in one batched run per method.
    d, m : int >= 1
        Shape of ΔW (d, m).
    rstar : int in [1, min(d, m)]
        Rank r* of ΔW, which is also the LoRA rank.
    N_ratio : int >= 1
        Samples per dimension: N = N_ratio · d.
    lr : float > 0
        Step size of both methods.
    tol : float > 0
        Relative error ‖A_tB_t − ΔW‖/‖ΔW‖ that stops a run.
    max_iter : int >= 1
        Most steps per run (``converged`` False if reached).
    seeds : sequence of int >= 0
        One instance per seed.

    Examples
    --------
    >>> import numpy as np
    >>> import sims
    >>> table = sims.kappa_iterations_table(kappas=(1.0, 10.0), d=10, m=10, rstar=2)
    >>> print(table.to_string(index=False))                # plain GD needs about κ times more steps
    method  kappa  seed  n_iter  converged
    precgd    1.0     0      31       True
    precgd   10.0     0      29       True
        gd    1.0     0      32       True
        gd   10.0     0     305       True
    """
    func = "kappa_iterations_table"
    lr = check_real(lr, "lr", func, low=0.0, low_open=True)
    max_iter = check_int(max_iter, "max_iter", func, low=1)
    kappas = check_values(kappas, "kappas", func, lambda k: check_real(k, "kappas", func, low=1.0))
    seeds = check_values(seeds, "seeds", func, lambda s: check_seed(s, "seeds", func))
    d = check_int(d, "d", func, low=1, high=MAX_DIM)
    m = check_int(m, "m", func, low=1, high=MAX_DIM)
    rstar = check_int(rstar, "rstar", func, low=1, high=min(d, m))
    N_ratio = check_int(N_ratio, "N_ratio", func, low=1, high=MAX_COUNT // d)
    tol = check_real(tol, "tol", func, low=0.0, low_open=True)
    rows = []
    for seed in seeds:
        rng = np.random.default_rng(seed)
        dW, X, Y = _instance(d, m, rstar, kappas, d * N_ratio, rng)
        W0 = np.zeros((d, m))
        A0, B0 = lo.spectral_init(lo.one_step_gradient(X, Y, W0), rstar)
        for method in ("precgd", "gd"):
            res = lo.finetune(X, Y, W0, A0, B0, method=method, lr=lr, tol=tol, max_iter=max_iter, target=dW)
            rows.append(pd.DataFrame({"method": method, "kappa": kappas, "seed": seed, "n_iter": res.n_iter,
                                      "converged": res.converged}))
    table = pd.concat(rows, ignore_index=True)
    slopes = {}
    for method, g in table.groupby("method"):
        mean = g.groupby("kappa")["n_iter"].mean()
        # a slope needs two distinct κ (one κ: polyfit's least squares is singular and raised LinAlgError)
        slopes[method] = (float(np.polyfit(np.log(mean.index), np.log(mean.to_numpy()), 1)[0])
                          if len(mean) >= 2 else float("nan"))
    table.attrs.update(slopes=slopes, d=d, N=d * N_ratio, lr=lr, tol=tol)
    return table


def two_parameter_table(*, a_star=(2.0, 1.0), N=40, lr=0.05, steps=400, init_scale=1.0, seed=1) -> pd.DataFrame:
    """The two-parameter picture (spec §4, figure 5): pred = b·(xᵀa), a ∈ R², b ∈ R.

    LoRA with d = 2, m = 1, r = 1, W0 = 0, target ΔW = a_star (the minimisers are a = a_star/b).
    GD paths from a random init (a ~ N(0, init_scale²), b = 0) and from the spectral init
    (a = g/√‖g‖, b = √‖g‖, g the one-step gradient on N samples). Columns: ``init``, ``step``,
    ``a1``, ``a2``, ``b``, ``risk`` (population ½‖ab − a_star‖²). ``attrs["g"]`` is g.

    Parameters
    ----------
    a_star : pair of float
        The target ΔW = a_star (d = 2, m = 1).
    N : int >= 1
        Samples of the one-step gradient (and of the loss).
    lr : float > 0
        GD step size.
    steps : int >= 1
        GD steps.
    init_scale : float >= 0
        Standard deviation of the random init's a.
    seed : int >= 0
        Seed of the samples and of the random init.

    Examples
    --------
    >>> import numpy as np
    >>> import sims
    >>> table = sims.two_parameter_table(steps=50)
    >>> sorted(table.columns)
    ['a1', 'a2', 'b', 'init', 'risk', 'step']
    >>> sorted(table['init'].unique())
    ['random', 'spectral']
    """
    func = "two_parameter_table"
    N = check_int(N, "N", func, low=1, high=MAX_COUNT)
    steps = check_int(steps, "steps", func, low=1)
    lr = check_real(lr, "lr", func, low=0.0, low_open=True)
    a_star = check_values(a_star, "a_star", func, lambda a: check_real(a, "a_star", func), least=2)
    if len(a_star) != 2:
        raise ValueError(f"The 'a_star' parameter of {func} must be a pair of finite reals. Got {a_star!r} instead.")
    init_scale = check_real(init_scale, "init_scale", func, low=0.0)
    seed = check_seed(seed, "seed", func)
    rng = np.random.default_rng(seed)
    target = np.asarray(a_star, dtype=float).reshape(2, 1)
    X = rng.standard_normal((N, 2))
    Y = X @ target
    W0 = np.zeros((2, 1))
    g = lo.one_step_gradient(X, Y, W0)
    A_sp, B_sp = lo.spectral_init(g, 1)
    A_rd = init_scale * rng.standard_normal((2, 1))
    rows = []
    for name, A, B in (("random", A_rd, np.zeros((1, 1))), ("spectral", A_sp, B_sp)):
        path = [(A, B)]
        for _ in range(steps):             # tiny problem: record every iterate
            obj = lo.lora_objective(X, Y, W0, A, B)
            A, B = A - lr * obj.grad_A, B - lr * obj.grad_B
            path.append((A, B))
        a = np.array([p[0][:, 0] for p in path])
        b = np.array([p[1][0, 0] for p in path])
        risk = 0.5 * np.sum((a * b[:, None] - target[:, 0]) ** 2, axis=1)
        rows.append(pd.DataFrame({"init": name, "step": np.arange(steps + 1), "a1": a[:, 0], "a2": a[:, 1],
                                  "b": b, "risk": risk}))
    table = pd.concat(rows, ignore_index=True)
    table.attrs.update(g=g[:, 0].tolist(), a_star=list(map(float, a_star)), N=N, lr=lr)
    return table
