# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 5. Off the paper's assumptions: which predictions survive?
#
# The theory assumes isotropic Gaussian inputs, Gaussian noise, a correctly known adapter rank k
# and tasks drawn from one distribution. Each assumption is now a knob of the linear protocol
# (`sims.linear_sweep(..., covariance=, noise_law=, k_fit=, norm_ratio=)`; the defaults are the
# paper's and reproduce its numbers bit for bit). Only the data change; the estimators do not.
#
# **Claims checked here**, each against a prediction computed from the ground truth:
# P2 (SR tends to A* + R̄*), P4 (SR's fine-tuned error has a floor), P5/P10 (LoRA-ML recovers A*)
# and P6 (LoRA-ML's fine-tuned error is the noise rate). Under a covariance Σ the rate holds for
# the excess risk tr(EΣEᵀ) with the isotropic constant; the parameter error ‖Δ̂ − R‖² needs the
# corrected constant k tr Σ⁻¹/(n−d−1) + (d−k) tr (VᵀΣV)⁻¹/(n−k−1)
# (`theory.rate_prediction_general`).

# %%
import os

import numpy as np
from IPython.display import Image, display

import sims
import theory as th
from loraml.figures.offpaper import OFFPAPER_SETTINGS, offpaper_configs, offpaper_table, plot_offpaper

FAST = os.environ.get("LORAML_FAST") == "1"
configs = offpaper_configs(fast=FAST)
tables = sims.run_many(configs, executor="serial" if FAST else "processes", store="results", progress=False)
rows = offpaper_table(configs, tables)
for knob in OFFPAPER_SETTINGS:
    plot_offpaper(rows[rows["knob"] == knob].reset_index(drop=True), f"figures-notebook/{knob}.png", title=knob,
                  pdf=False)
    display(Image(f"figures-notebook/{knob}.png"))
cols = ["knob", "setting", "LoRA-ML A_error", "SR A_error / |R_bar|^2 (P2)", "exact / P6", "SR / P4 floor",
        "LoRA-ML GD diverged"]
rows[cols]

# %% [markdown]
# ## The P6 constant under a covariance, at the theory level
#
# From Â = A*, rank-k Lemma 1 on n samples x ~ N(0, Σ): the excess risk keeps σ²k[d/(n−d−1) +
# (d−k)/(n−k−1)], the parameter error does not.

# %%
rng = np.random.default_rng(0)
d, k, n, sigma, reps = 6, 1, 60, 1e-3, 400 if FAST else 4000
for kind in ("spiked", "toeplitz"):
    Sigma = th.input_covariance(d, kind, condition=10.0, rho=0.8)
    U = rng.standard_normal((reps, d, k))
    R = U @ np.swapaxes(U, -1, -2)
    X = th.draw_inputs(rng, (reps, n, d), Sigma)
    Y = X @ np.swapaxes(R, -1, -2) + th.draw_noise(rng, (reps, n, d), sigma)
    E = th.reduced_rank_regression(X, Y, k) - R
    param, risk = np.sum(E**2, axis=(1, 2)).mean(), np.sum((E @ Sigma) * E, axis=(1, 2)).mean()
    p_param = th.rate_prediction_general(n, sigma, U, covariance=Sigma, metric="parameter").mean()
    iso = float(th.rate_prediction(d, k, n, sigma))
    print(f"{kind:9s} risk/iso rate {risk / iso:.3f}   parameter/corrected {param / p_param:.3f}   "
          f"parameter/iso rate {param / iso:.3f}")

# %% [markdown]
# **Conclusion** (numbers in the README, from the full-size run of `make reproduce`):
# input covariance and the noise law leave every prediction standing — the rate in the excess
# risk is the isotropic one, SR keeps its floor; heavy tails only widen the spread. A wrong rank
# does not: under-specified (k_fit < k) LoRA-ML loses A* and lands near SR; over-specified, A*
# is not identified (‖Â − A*‖² of order 1–10) yet rank-k_fit fine-tuning stays far below SR's floor.
# Unequal adapter norms keep P5 for the exact solver, but the paper's fixed step sizes diverge once
# the largest adapter is 4× the others.
