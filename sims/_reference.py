"""A straightforward per-run implementation of the linear protocol, as the authors' code does it.

One run at a time, one task at a time, every gradient from the full data matrices. It exists as
an oracle for the batched engine (tests compare the two at small sizes) and as the baseline of
``benchmarks/linear_engine.py``. It draws its randomness exactly like the engine, so the same
config and trial give the same numbers up to rounding.
"""

from __future__ import annotations

import numpy as np


from theory import reduced_rank_regression, standard_retraining
from theory.validation import check_int

from ._linear import METHODS, LinearConfig, _draw_trial, _shared_truth, _trial_streams

__all__ = ["reference_trial"]


def reference_trial(config: LinearConfig, value_index: int, trial: int) -> dict:
    """Run one trial the slow way.

    Returns a dict with ``steps``, ``test_loss`` (method, step), ``A_error`` and ``optimum``
    (each per method, in the order of ``METHODS``).

    Parameters
    ----------
    config : LinearConfig
        The sweep.
    value_index : int
        Index of the swept value in ``config.values``.
    trial : int
        The trial, below ``config.runs``.

    Examples
    --------
    >>> import numpy as np
    >>> import sims
    >>> cfg = sims.linear_sweep('T', values=(3,), runs=1, preset='clean', outer_steps=20, ft_steps=20, N=200, n=40, d=4)
    >>> ref = sims.reference_trial(cfg, 0, 0)
    >>> sorted(ref)
    ['A_error', 'optimum', 'steps', 'test_loss']
    >>> fast = sims.simulate_chunk(cfg, 0, (0,))      # the batched engine on the same trial
    >>> engine = fast.groupby('method', sort=False)['A_error'].first()
    >>> list(engine.index), bool(np.allclose(ref['A_error'], engine.to_numpy(), rtol=1e-10))
    (['LoRA-ML', 'SR'], True)
    """
    func = "reference_trial"
    if not isinstance(config, LinearConfig):
        raise ValueError(f"The 'config' parameter of {func} must be a LinearConfig. "
                         f"Got {type(config).__name__} instead.")
    value_index = check_int(value_index, "value_index", func, low=0, high=len(config.values) - 1)
    trial = check_int(trial, "trial", func, low=0, high=config.runs - 1)
    value = config.values[value_index]
    shared = _shared_truth(config) if config.truth == "shared" else None
    rng = _trial_streams(config, value_index, [trial])[0]
    draw = _draw_trial(config, value, rng, shared, keep_data=True)
    config = config.point(value)                   # every swept field set: the step counts and sizes at this value
    Sigma = config.input_cov
    X, Y = draw["X"], draw["Y"]
    T, N, d = X.shape

    # LoRA-ML retraining: the authors' alternating GD, one task at a time, on the full data.
    A = np.zeros((d, d))
    U = draw["U0"].copy()
    for _ in range(config.outer_steps):
        for _ in range(config.inner_steps):
            for t in range(T):
                G = (X[t] @ (A + U[t] @ U[t].T).T - Y[t]).T @ X[t] / N
                U[t] = U[t] - config.lr_U * (G + G.T) @ U[t]
        G_sum = np.zeros((d, d))
        for t in range(T):
            G_sum += (X[t] @ (A + U[t] @ U[t].T).T - Y[t]).T @ X[t] / N
        A = A - config.lr_A * G_sum / T
    A_ml = A

    # SR: pooled least squares, or the authors' learner with T stray adapters (Q2).
    Xp, Yp = X.reshape(-1, d), Y.reshape(-1, d)
    if config.sr == "closed_form":
        A_sr = standard_retraining(X, Y)
    else:
        R = draw["U_stray"] @ np.swapaxes(draw["U_stray"], -1, -2)
        A_sr = np.zeros((d, d))
        for _ in range(config.outer_steps):
            G_sum = np.zeros((d, d))
            for t in range(T):
                G_sum += (Xp @ (A_sr + R[t]).T - Yp).T @ Xp / (N * T)
            A_sr = A_sr - config.lr_A * G_sum

    # Fine-tuning U Vᵀ by gradient descent on the test task, from each base.
    X_test, Y_test, target = draw["X_test"], draw["Y_test"], draw["target"]
    n = X_test.shape[0]
    steps = list(range(0, config.ft_steps + 1, config.stride))
    if steps[-1] != config.ft_steps:
        steps.append(config.ft_steps)
    losses = np.empty((len(METHODS), len(steps)))
    optimum = np.empty(len(METHODS))
    A_error = np.empty(len(METHODS))
    r = config.ft_rank()
    for m, base in enumerate((A_ml, A_sr)):
        Uf, Vf = draw["ft_U"][m].copy(), draw["ft_V"][m].copy()
        j = 0
        for step in range(config.ft_steps + 1):
            if step == steps[j]:
                losses[m, j] = _score(target - base - Uf @ Vf.T, X_test, config.metric, Sigma)
                j += 1
                if j == len(steps):
                    break
            G = (X_test @ (base + Uf @ Vf.T).T - Y_test).T @ X_test / n
            Uf, Vf = Uf - config.ft_lr * G @ Vf, Vf - config.ft_lr * G.T @ Uf
        delta = reduced_rank_regression(X_test, Y_test - X_test @ base.T, r)
        optimum[m] = _score(target - base - delta, X_test, config.metric, Sigma)
        A_error[m] = float(np.sum((base - draw["A_star"]) ** 2))
    return {"steps": np.array(steps), "test_loss": losses, "A_error": A_error, "optimum": optimum}


def _score(E, X_test, metric, Sigma=None):
    """Excess risk ‖E‖² (tr(E Σ Eᵀ) under the covariance knob), or the paper's in-sample summed
    ‖E X_testᵀ‖² (Q4)."""
    if metric == "excess_risk":
        return float(np.sum(E * E)) if Sigma is None else float(np.trace(E @ Sigma @ E.T))
    return float(np.sum((E @ X_test.T) ** 2))
