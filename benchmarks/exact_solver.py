"""Exact LoRA-ML solver: accuracy and wall time, beside the paper's alternating gradient descent.

Run:  .venv/bin/python benchmarks/exact_solver.py
Prints, for the population problem at (d, k, T) = (20, 3, 5), the relative errors of Â and
U_tU_tᵀ and the time per solve; and at the paper's default sizes (d = 10, k = 1, T = 3,
N = 5000, σ = 0.1) the time of the exact solver and of the authors' 3000-step GD, as a ratio
measured in this one run.
"""

from __future__ import annotations

import time

import numpy as np

import theory as th


def _time(fn, repeat):
    best = np.inf
    out = None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def population(d=20, k=3, T=5, seeds=range(10)):
    print(f"population exact solver, (d, k, T) = ({d}, {k}, {T})")
    worst_A = worst_R = worst_t = 0.0
    for seed in seeds:
        truth = th.sample_ground_truth(d, k, T, rng=seed)
        t, fit = _time(lambda: th.fit_loraml_population(truth, k, rng=seed), 3)
        eA = np.linalg.norm(fit.A - truth.A_star) / np.linalg.norm(truth.A_star)
        eR = np.linalg.norm(fit.R - truth.R_star[:T]) / np.linalg.norm(truth.R_star[:T])
        worst_A, worst_R, worst_t = max(worst_A, eA), max(worst_R, eR), max(worst_t, t)
        print(f"  seed {seed}: {t * 1e3:7.1f} ms, {fit.n_iter:2d} LM steps, rel. error A {eA:.1e}, R {eR:.1e}")
    print(f"  worst over {len(seeds)} seeds: {worst_t * 1e3:.1f} ms, rel. error A {worst_A:.1e}, R {worst_R:.1e}")


def finite_sample(d=10, k=1, T=3, N=5000, sigma=0.1, seed=0):
    truth = th.sample_ground_truth(d, k, T, rng=seed)
    data = th.sample_tasks(truth, N, 100, sigma, rng=seed + 1)
    t_exact, exact = _time(lambda: th.fit_loraml(data.X, data.Y, k, rng=seed), 3)
    t_paper, paper = _time(lambda: th.fit_loraml(data.X, data.Y, k, rng=seed, method="paper"), 1)
    print(f"finite sample, paper defaults (d={d}, k={k}, T={T}, N={N}, sigma={sigma})")
    print(f"  exact: {t_exact * 1e3:.1f} ms, loss {exact.loss:.10e}")
    print(f"  paper: {t_paper * 1e3:.1f} ms, loss {paper.loss:.10e}, |A_paper - A_exact| = "
          f"{np.linalg.norm(paper.A - exact.A):.1e}")
    print(f"  ratio paper / exact: {t_paper / t_exact:.0f}x")


if __name__ == "__main__":
    population()
    finite_sample()
