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
# # 1. The two-task landscape is a strict saddle landscape (P7–P9)
#
# **Claim.** With T = 2 retraining tasks and rank-one adapters, every critical point of the
# population objective F(A, U) = ½ Σ_t ‖A + u_tu_tᵀ − A*_t‖² is a global minimum or has a strictly
# negative Hessian eigenvalue; the SR solution (A* + R̄*, U = 0) is one of the saddles, with
# λ_min = −‖M‖_op, M = R\*₁ − R\*₂. The global minima form a continuum (P7).

# %%
import os

import numpy as np
from IPython.display import Image, display

import sims
import theory as th
from loraml.figures.landscape import plot_critical_spectra, plot_saddle_slice
from theory import landscape as L

FAST = os.environ.get("LORAML_FAST") == "1"
truth = th.sample_ground_truth(4, 1, 2, rng=0)
M = truth.R_star[0] - truth.R_star[1]
print("eigenvalues of M:", np.round(np.linalg.eigvalsh(M), 3))

# %% [markdown]
# **The SR saddle.** The Hessian at U = 0 is block diagonal (T·I on A, 2(R̄* − R*_t) on U_t), so
# its smallest eigenvalue is −‖M‖_op for T = 2.

# %%
sr = L.sr_saddle(truth)
esc = L.hessian_min_eigenpair(truth, sr.A, sr.U)
print(f"λ_min at the SR saddle = {esc.eigenvalue:.6f};  −‖M‖_op = {-np.linalg.norm(M, 2):.6f}")

# %% [markdown]
# **Every class of critical points.** u₁ = a v, u₂ = b v with M v = (a² − b²) v (v = v₊, v₋ or
# v ∈ ker M), and the global minima u₁u₁ᵀ − u₂u₂ᵀ = M. The classifier uses the Hessian of F.

# %%
for p in L.critical_points_two_tasks(truth):
    c = L.classify_critical_point(truth, p.A, p.U)
    print(f"{p.label:55s} {c.kind:15s} λ_min = {c.lambda_min: .3e}  F = {c.value:.2e}")

# %% [markdown]
# **Picture.** G on the plane through U = 0 spanned by the escape direction and the direction to
# U*; gradient descent from small random starts leaves the saddle along the escape direction.

# %%
out = "figures-notebook"
grid = sims.saddle_slice_table(d=4, seed=0, n_grid=41 if FAST else 121)
walks = sims.descent_paths_table(d=4, seed=0, n_paths=3 if FAST else 8, n_steps=800 if FAST else 4000)
plot_saddle_slice(grid, walks, f"{out}/saddle-slice.png")
plot_critical_spectra(sims.critical_spectra_table(d=4, seed=0), f"{out}/critical-spectra.png")
display(Image(f"{out}/saddle-slice.png"), Image(f"{out}/critical-spectra.png"))
print("final G of the descent paths:", walks[walks.step == walks.step.max()].G.max())

# %% [markdown]
# **Conclusion.** The saddles are strict, but not uniformly: along u₁ = u₂ = a v (v ∈ ker M) the
# smallest eigenvalue of ∇²G is a² − √(a⁴ + ‖M‖²_op) ≈ −‖M‖²_op/(2a²), and that of the full ∇²F
# decays faster, like −‖M‖²_op/(2a⁴), because the base A absorbs most of the escape direction.

# %%
mu = np.linalg.norm(M, 2)
for a in (1.0, 4.0, 16.0):
    p = [q for q in L.critical_points_two_tasks(truth, scales=(a,)) if q.family == "kernel family"][0]
    lg = np.linalg.eigvalsh(L.reduced_hessian(truth, p.U))[0]
    lf = np.linalg.eigvalsh(L.loraml_hessian(truth, p.A, p.U))[0]
    print(f"a = {a:5.1f}: a²·λ_min(∇²G) = {a * a * lg: .4f}, a⁴·λ_min(∇²F) = {a ** 4 * lf: .4f}, −μ²/2 = {-mu * mu / 2:.4f}")
