"""Joining LoRA-ML and LoRA-One (spec/loraone.md §5): which base, then how to fine-tune it.

For the linear model of spec/theory.md, retrain a base on T tasks by SR (pooled least squares) or
LoRA-ML (the exact solver), then fine-tune the unseen test task's rank-r update on its n samples with

- "vanilla LoRA + GD": A0 ~ N(0, α²), B0 = 0, plain gradient descent;
- "spectral + GD": LoRA-One's spectral init (γ = 1), plain gradient descent;
- "spectral + precGD": spectral init, preconditioned GD (ScaledGD(λ), η = 0.5);
- "Lemma 1": the closed-form optimum (theory.finetune_lora), constant in the step.

Orientation: LoRA-ML maps y = Â x (Â out × in) so the test data satisfy Y = X Âᵀ + …; LoRA-One's
paper orientation is Y = X W, so the frozen base is W0 = Âᵀ and the update is Δ = (A B)ᵀ. The one-step
gradient is G♮ = (1/n) X_testᵀ(Y_test − X_test Âᵀ). Plain GD uses the step lr_gd/σ₁(G♮) (σ₁(G♮)
estimates the scale of the residual, so no truth is used); every run of both bases advances in one
batched call.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from theory import finetune_lora, fit_loraml, sample_ground_truth, sample_tasks, standard_retraining
from theory import loraone as lo
from theory.validation import (MAX_COUNT, MAX_DIM, check_entries, check_int, check_memory, check_real,
                               check_seed)

from ._config import MAX_STEPS

__all__ = ["finetune_comparison", "finetune_summary", "JOINED_METHODS"]

#: Fine-tuning methods of the joined comparison, in plotting order.
JOINED_METHODS = ("vanilla LoRA + GD", "spectral + GD", "spectral + precGD", "Lemma 1")


def finetune_comparison(*, d=10, k=1, T=3, N=5000, n=100, sigma=0.1, runs=5, seed=0, max_steps=300,
                        lr_gd=0.25, lr_prec=0.5, lam=0.0, vanilla_alpha=0.1) -> pd.DataFrame:
    """Test-task error along fine-tuning, from the SR and LoRA-ML bases, for four methods.

    Parameters
    ----------
    d, k, T, N, n, sigma : int, int, int, int, int, float
        The linear model of spec/theory.md: dimension, adapter rank, retraining tasks, samples per
        retraining task, fine-tuning samples (n > d) and noise (defaults: its §5.1 defaults).
    runs : int >= 1
        Independent runs (a new ground truth and data set each).
    seed : int >= 0
        Root seed: the runs' streams are ``SeedSequence(seed).spawn(runs)``.
    max_steps : int >= 1
        Fine-tuning steps recorded (every step).
    lr_gd : float > 0
        Plain GD step, in units of 1/σ₁(G♮).
    lr_prec : float > 0
        Preconditioned GD step.
    lam : float >= 0
        Its damping λ.
    vanilla_alpha : float > 0
        Standard deviation of the vanilla init's A0 entries.

    Returns
    -------
    DataFrame with columns ``base`` ("SR", "LoRA-ML"), ``method``, ``run``, ``step``,
    ``test_error`` = ‖Â + Δ_step − A*_{T+1}‖². The rank is r = k (r = 3k when T = 2, the paper's
    protocol). ``attrs`` records the settings.

    Examples
    --------
    >>> import numpy as np
    >>> import sims
    >>> table = sims.finetune_comparison(d=6, N=300, n=60, runs=1, max_steps=20)
    >>> sorted(table['base'].unique()), sorted(table['method'].unique())
    (['LoRA-ML', 'SR'], ['Lemma 1', 'spectral + GD', 'spectral + precGD', 'vanilla LoRA + GD'])
    >>> sorted(table.columns)
    ['base', 'method', 'run', 'step', 'test_error']
    """
    func = "finetune_comparison"
    d = check_int(d, "d", func, low=2, high=MAX_DIM)
    k = check_int(k, "k", func, low=1, high=d)
    T = check_int(T, "T", func, low=2, high=MAX_COUNT)
    N = check_int(N, "N", func, low=1, high=MAX_COUNT)
    n = check_int(n, "n", func, low=d + 1, high=MAX_COUNT)
    sigma = check_real(sigma, "sigma", func, low=0.0, high=1e100)          # the noise std of theory.draw_noise
    runs = check_int(runs, "runs", func, low=1, high=MAX_COUNT)
    seed = check_seed(seed, "seed", func)
    check_entries(T * N * d, "'T', 'N' and 'd'", func)
    max_steps = check_int(max_steps, "max_steps", func, low=1, high=MAX_STEPS)
    # Every run's test data and bases (float64), and the table: one row per base, method, run and
    # step (about 200 bytes a row while it is built).
    rows = 2 * len(JOINED_METHODS) * runs * (max_steps + 1)
    check_memory(8 * runs * (3 * n * d + 12 * d * d) + 200 * rows,
                 f"'runs', 'max_steps', 'n' and 'd' ({rows:,} table rows)", func)
    lr_gd = check_real(lr_gd, "lr_gd", func, low=0.0, low_open=True)
    lr_prec = check_real(lr_prec, "lr_prec", func, low=0.0, low_open=True)
    lam = check_real(lam, "lam", func, low=0.0)
    vanilla_alpha = check_real(vanilla_alpha, "vanilla_alpha", func, low=0.0, low_open=True)
    r = 3 * k if T == 2 else k
    r = min(r, d)
    bases = ("SR", "LoRA-ML")
    W0 = np.empty((2, runs, d, d))
    target = np.empty((2, runs, d, d))
    Xs, Ys, closed = np.empty((runs, n, d)), np.empty((runs, n, d)), np.empty((2, runs))
    init_rngs = []
    for run, ss in enumerate(np.random.SeedSequence(seed).spawn(runs)):
        rng = np.random.default_rng(ss)
        truth = sample_ground_truth(d, k, T, rng=rng)
        data = sample_tasks(truth, N, n, sigma, rng=rng)
        A_hat = {"SR": standard_retraining(data.X, data.Y), "LoRA-ML": fit_loraml(data.X, data.Y, k, rng=rng).A}
        Xs[run], Ys[run] = data.X_test, data.Y_test
        for b, name in enumerate(bases):
            W0[b, run] = A_hat[name].T                         # paper orientation: Y = X W
            target[b, run] = (truth.test_weight - A_hat[name]).T
            delta = finetune_lora(A_hat[name], data.X_test, data.Y_test, r)
            closed[b, run] = float(np.sum((A_hat[name] + delta - truth.test_weight) ** 2))
        init_rngs.append(rng)
    G = lo.one_step_gradient(Xs, Ys, W0)                       # (2, runs, d, d)
    sigma1 = np.linalg.norm(G, ord=2, axis=(-2, -1))
    A_sp, B_sp = lo.spectral_init(G, r)
    A_va = np.stack([[vanilla_alpha * rg.standard_normal((d, r)) for rg in init_rngs] for _ in bases])
    B_va = np.zeros((2, runs, r, d))
    tnorm = np.linalg.norm(target, axis=(-2, -1))
    opts = dict(max_iter=max_steps, tol=1e-300, target=target)
    results = {
        "vanilla LoRA + GD": lo.finetune(Xs, Ys, W0, A_va, B_va, method="gd", lr=lr_gd / sigma1, **opts),
        "spectral + GD": lo.finetune(Xs, Ys, W0, A_sp, B_sp, method="gd", lr=lr_gd / sigma1, **opts),
        "spectral + precGD": lo.finetune(Xs, Ys, W0, A_sp, B_sp, method="precgd", lr=lr_prec, lam=lam, **opts),
    }
    rows = []
    for b, name in enumerate(bases):
        for run in range(runs):
            for method in JOINED_METHODS:
                if method == "Lemma 1":
                    err = np.full(max_steps + 1, closed[b, run])
                else:
                    rel = results[method].rel_error[:, b, run]
                    err = (rel * tnorm[b, run]) ** 2
                    if err.size < max_steps + 1:               # a run frozen early (never with tol=1e-300)
                        err = np.concatenate([err, np.full(max_steps + 1 - err.size, err[-1])])
                rows.append(pd.DataFrame({"base": name, "method": method, "run": run,
                                          "step": np.arange(max_steps + 1), "test_error": err}))
    table = pd.concat(rows, ignore_index=True)
    table.attrs.update(d=d, k=k, T=T, N=N, n=n, sigma=sigma, runs=runs, rank=r, lr_gd=lr_gd, lr_prec=lr_prec,
                       lam=lam, vanilla_alpha=vanilla_alpha, seed=seed)
    return table


def finetune_summary(table: pd.DataFrame, *, factor: float = 1.01) -> pd.DataFrame:
    """Per base × method: the error at step 0 and at the last step, and the steps until the test
    error is within ``factor`` × the Lemma 1 optimum's test error of the same run (NaN if never).

    Columns: ``base``, ``method``, ``initial_error``, ``final_error``, ``lemma1_error`` (means over
    runs), ``steps_median``, ``steps_max`` and ``reached`` (runs that reached it, of ``runs``).

    Parameters
    ----------
    table : pandas.DataFrame
        A table of :func:`finetune_comparison`.
    factor : float >= 1
        A run has reached the optimum once its test error is within ``factor`` × Lemma 1's.

    Examples
    --------
    >>> import numpy as np
    >>> import sims
    >>> table = sims.finetune_comparison(d=6, N=300, n=60, runs=1, max_steps=20)
    >>> summary = sims.finetune_summary(table)
    >>> sorted(summary.columns)
    ['base', 'final_error', 'initial_error', 'lemma1_error', 'method', 'reached', 'runs', 'steps_max', 'steps_median']
    >>> len(summary)
    6
    """
    factor = check_real(factor, "factor", "finetune_summary", low=1.0)
    columns = ("base", "method", "run", "step", "test_error")
    if not isinstance(table, pd.DataFrame):
        raise ValueError(f"The 'table' parameter of finetune_summary must be a pandas DataFrame (from "
                         f"finetune_comparison). Got {type(table).__name__} instead.")
    missing = [c for c in columns if c not in table.columns]
    if missing or table.empty:
        raise ValueError(f"The 'table' parameter of finetune_summary must be a non-empty table with the columns "
                         f"{', '.join(columns)} (from finetune_comparison). Missing: {', '.join(missing) or 'rows'}.")
    lemma = table[table["method"] == "Lemma 1"].groupby(["base", "run"])["test_error"].first()
    out = []
    for (base, method), g in table[table["method"] != "Lemma 1"].groupby(["base", "method"], sort=False):
        steps, init, final, opt = [], [], [], []
        for run, h in g.groupby("run"):
            h = h.sort_values("step")
            goal = factor * lemma[(base, run)]
            hit = h["step"].to_numpy()[h["test_error"].to_numpy() <= goal]
            steps.append(float(hit[0]) if hit.size else np.nan)
            init.append(h["test_error"].iloc[0])
            final.append(h["test_error"].iloc[-1])
            opt.append(lemma[(base, run)])
        steps = np.array(steps)
        out.append({"base": base, "method": method, "initial_error": float(np.mean(init)),
                    "final_error": float(np.mean(final)), "lemma1_error": float(np.mean(opt)),
                    "steps_median": float(np.nanmedian(steps)) if np.any(~np.isnan(steps)) else np.nan,
                    "steps_max": float(np.nanmax(steps)) if np.all(~np.isnan(steps)) else np.nan,
                    "reached": int(np.sum(~np.isnan(steps))), "runs": int(steps.size)})
    return pd.DataFrame(out)
