"""Small experiments that put the theory core's predictions on a plot (P4, P6, P10).

Each returns a tidy ``pandas.DataFrame`` (one row per method × setting × repetition) so that
figures and notebooks read tables, never raw engine arrays.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from theory import (
    GroundTruth,
    fit_loraml,
    rate_prediction,
    reduced_rank_regression,
    sample_ground_truth,
    sample_tasks,
    standard_retraining,
    tail_energy,
)
from theory.validation import MAX_COUNT, MAX_DIM, check_entries, check_int, check_real, check_seed, check_values

__all__ = ["finetune_rate_table", "retraining_samples_table"]


def finetune_rate_table(*, d=10, ks=(1, 2, 3), ns=(30, 60, 120, 250, 500, 1000, 2000, 4000), T=3,
                        sigma=0.1, reps=40, seed=0) -> pd.DataFrame:
    """Test-task excess risk after rank-k fine-tuning (Lemma 1) from the LoRA-ML and SR bases.

    LoRA-ML's base is A* itself (exact recovery, P5, which holds for T ≥ 3 and d ≥ 3k and is
    tested separately); SR's base is the population A* + R̄* (P2). All repetitions of one
    (k, n) cell are fitted in one batched call. Columns: ``method``, ``k``, ``n``, ``rep``,
    ``error`` (‖Â + Δ̂ − A*_{T+1}‖²), ``prediction`` (P6 for LoRA-ML, the P4 floor for SR).

    Parameters
    ----------
    d : int >= 2
        Dimension.
    ks : sequence of int in [1, d]
        Adapter ranks; rank k fine-tunes a new task of rank k.
    ns : sequence of int > d + 1
        Fine-tuning samples.
    T : int >= 1
        Retraining tasks (they set SR's base A* + R̄*).
    sigma : float >= 0
        Noise standard deviation.
    reps : int >= 1
        Ground truths per k, shared by every n (the samples are new for each n).
    seed : int >= 0
        Seed of everything drawn.

    Examples
    --------
    >>> import numpy as np
    >>> import sims
    >>> table = sims.finetune_rate_table(d=4, ks=(1,), ns=(30, 60), reps=2)
    >>> sorted(table.columns)
    ['error', 'k', 'method', 'n', 'prediction', 'rep']
    >>> len(table)
    8
    """
    func = "finetune_rate_table"
    d = check_int(d, "d", func, low=2, high=MAX_DIM)
    T = check_int(T, "T", func, low=1, high=MAX_COUNT)
    reps = check_int(reps, "reps", func, low=1, high=MAX_COUNT)
    sigma = check_real(sigma, "sigma", func, low=0.0)
    ks = list(check_values(ks, "ks", func, lambda k: check_int(k, "ks", func, low=1, high=d)))
    ns = list(check_values(ns, "ns", func, lambda n: check_int(n, "ns", func, low=d + 2, high=MAX_COUNT)))
    seed = check_seed(seed, "seed", func)
    check_entries(max(ns) * d, "'ns' and 'd'", func)
    rows = []
    rng = np.random.default_rng(seed)
    for k in ks:
        truths = sample_ground_truth(d, k, T, rng=rng, size=reps)
        A_star = np.stack([t.A_star for t in truths])
        U = np.stack([t.U_star for t in truths])
        R = U @ np.swapaxes(U, -1, -2)
        target = A_star + R[:, T]
        bases = {"LoRA-ML": A_star, "SR": A_star + R[:, :T].mean(axis=1)}
        floors = {"LoRA-ML": np.zeros(reps), "SR": tail_energy(target - bases["SR"], k)}
        for n in ns:
            X = rng.standard_normal((reps, n, d))
            Y = X @ np.swapaxes(target, -1, -2) + sigma * rng.standard_normal((reps, n, d))
            for method, base in bases.items():
                Z = Y - X @ np.swapaxes(base, -1, -2)
                delta = reduced_rank_regression(X, Z, k)
                err = np.sum((base + delta - target) ** 2, axis=(-2, -1))
                pred = rate_prediction(d, k, n, sigma) if method == "LoRA-ML" else floors[method]
                rows.append(pd.DataFrame({"method": method, "k": k, "n": n, "rep": np.arange(reps),
                                          "error": err, "prediction": np.broadcast_to(pred, (reps,))}))
    return pd.concat(rows, ignore_index=True)


def retraining_samples_table(*, d=8, k=1, T=3, sigma=0.5, Ns=(250, 1000, 4000, 16000), reps=6,
                             seed=0) -> pd.DataFrame:
    """‖Â − A*‖² against the samples per retraining task N, for LoRA-ML (exact solver) and SR (P10).

    One ground truth per repetition, shared across N. Columns: ``method``, ``N``, ``rep``,
    ``A_error`` and ``R_bar_sq`` (‖R̄*‖², SR's limit).

    Parameters
    ----------
    d : int >= 1
        Dimension.
    k : int in [1, d]
        Adapter rank.
    T : int >= 1
        Retraining tasks.
    sigma : float >= 0
        Noise standard deviation.
    Ns : sequence of int >= 1
        Samples per retraining task.
    reps : int >= 1
        Repetitions (ground truths).
    seed : int >= 0
        Seed of everything drawn (``SeedSequence(seed)``, one stream per repetition).

    Examples
    --------
    >>> import numpy as np
    >>> import sims
    >>> table = sims.retraining_samples_table(d=4, Ns=(100, 400), reps=1)
    >>> sorted(table.columns)
    ['A_error', 'N', 'R_bar_sq', 'method', 'rep']
    >>> len(table)
    4
    """
    func = "retraining_samples_table"
    d = check_int(d, "d", func, low=1, high=MAX_DIM)
    k = check_int(k, "k", func, low=1, high=d)
    T = check_int(T, "T", func, low=1, high=MAX_COUNT)
    reps = check_int(reps, "reps", func, low=1, high=MAX_COUNT)
    sigma = check_real(sigma, "sigma", func, low=0.0)
    Ns = list(check_values(Ns, "Ns", func, lambda N: check_int(N, "Ns", func, low=1, high=MAX_COUNT)))
    seed = check_seed(seed, "seed", func)
    check_entries(T * max(Ns) * d, "'T', 'Ns' and 'd'", func)
    seeds = np.random.SeedSequence(seed).spawn(reps)
    rows = []
    # The exact solver fits one problem at a time (a few ms each); data are drawn per repetition.
    for rep, ss in enumerate(seeds):
        rng = np.random.default_rng(ss)
        truth: GroundTruth = sample_ground_truth(d, k, T, rng=rng)
        rbar = float(np.sum(truth.R_bar**2))
        for N in Ns:
            data = sample_tasks(truth, N, 1, sigma, rng=rng)
            fit = fit_loraml(data.X, data.Y, k, rng=rng)
            A_sr = standard_retraining(data.X, data.Y)
            for method, A in (("LoRA-ML", fit.A), ("SR", A_sr)):
                rows.append({"method": method, "N": N, "rep": rep,
                             "A_error": float(np.sum((A - truth.A_star) ** 2)), "R_bar_sq": rbar})
    return pd.DataFrame(rows)
