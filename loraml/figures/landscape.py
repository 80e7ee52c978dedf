"""Figures of the LoRA-ML landscape (P5, P7–P9) and the adaptation rate (P6). They read tables."""

from __future__ import annotations

from pathlib import Path

import numpy as np

import sims

from ._style import COLORS, RC, plt, save

__all__ = ["make_landscape_figures", "plot_saddle_slice", "plot_critical_spectra", "plot_recovery_phase",
           "plot_rate"]


def plot_saddle_slice(grid, paths, path: Path) -> list[Path]:
    """Contour of G on the plane through the SR saddle, with projected gradient-descent paths."""
    n = int(np.sqrt(len(grid)))
    X = grid["x"].to_numpy().reshape(n, n)
    Y = grid["y"].to_numpy().reshape(n, n)
    G = grid["G"].to_numpy().reshape(n, n)
    with plt.rc_context(RC):
        fig, ax = plt.subplots(figsize=(4.4, 3.8))
        levels = np.quantile(G, np.linspace(0, 1, 16) ** 2)
        cs = ax.contourf(X, Y, G, levels=np.unique(levels), cmap="Greys_r", alpha=0.85)
        ax.contour(X, Y, G, levels=np.unique(levels), colors="k", linewidths=0.3, alpha=0.5)
        fig.colorbar(cs, ax=ax, label="reduced objective G")
        for i, (_, p) in enumerate(paths.groupby("path")):
            ax.plot(p["x"], p["y"], "-", color=COLORS["LoRA-ML"], lw=1.1,
                    label="gradient descent (projection)" if i == 0 else None)
            ax.plot(p["x"].iloc[-1], p["y"].iloc[-1], "o", ms=3.5, color=COLORS["LoRA-ML"])
        ax.plot(0, 0, "X", ms=8, color=COLORS["SR"], label=f"SR saddle U = 0 (λ_min = {grid.attrs['lambda_min']:.2f})")
        sx, sy = grid.attrs["star"]
        ax.plot(sx, sy, "*", ms=11, color="gold", mec="k", label="global minimum U*")
        ax.set_xlabel("escape direction e (eigenvector of λ_min at U = 0)")
        ax.set_ylabel("direction to U*, orthogonal to e")
        final = paths[paths["step"] == paths["step"].max()]["G"].max()
        ax.set_title(f"T = 2, k = 1, d = {grid.attrs['d']}: G on a plane through the SR saddle\n"
                     f"(paths run in the full space; largest final G = {final:.1e})")
        ax.legend(loc="lower left", fontsize=6.5, framealpha=0.9)
        fig.tight_layout()
        return save(fig, path)


def plot_critical_spectra(table, path: Path) -> list[Path]:
    """Hessian eigenvalues of F at each critical point class; symlog axis."""
    points = table.drop_duplicates("point").sort_values("point")
    with plt.rc_context(RC):
        fig, ax = plt.subplots(figsize=(7.2, 3.6))
        for i, (_, p) in enumerate(points.iterrows()):
            lam = table[table["point"] == p["point"]]["eigenvalue"].to_numpy()
            minimum = p["predicted"] == "global minimum"
            color = COLORS["LoRA-ML"] if minimum else COLORS["SR"]
            jitter = np.linspace(-0.18, 0.18, lam.size)
            ax.scatter(i + jitter, lam, s=9, color=color, zorder=3,
                       label=("global minimum" if minimum else "strict saddle") if i in (0, 3) else None)
            ax.plot(i, lam.min(), "_", ms=14, color="k", zorder=4)
        ax.axhline(0, color="k", lw=0.6)
        ax.set_yscale("symlog", linthresh=1e-2)
        ax.set_xticks(range(len(points)))
        short = [lab.replace("global minimum: ", "min: ").replace(", a² − b² = μ₊", "").replace(", a² − b² = μ₋", "")
                 for lab in points["label"]]
        ax.set_xticklabels(short, rotation=40, ha="right", fontsize=6.5)
        ax.set_ylabel("eigenvalues of ∇²F (symlog)")
        mu = table.attrs.get("M_eigenvalues")
        extra = f"; μ₊ = {mu[-1]:.2f}, μ₋ = {mu[0]:.2f}" if mu is not None else ""
        ax.set_title(f"P9: Hessian spectra at every class of critical points (T = 2, k = 1, d = {table.attrs.get('d')}"
                     f"{extra}); black bar = λ_min")
        ax.legend(loc="lower left")
        fig.tight_layout()
        return save(fig, path)


def plot_recovery_phase(table, path: Path, *, convex_note: str = "") -> list[Path]:
    """Recovery fraction over d × k, one panel per (adapter type, T), with the line 3k = d."""
    kinds = [a for a in ("symmetric", "asymmetric", "convex PSD") if a in set(table["adapters"])]
    Ts = sorted(table["T"].unique())
    with plt.rc_context(RC):
        fig, axes = plt.subplots(len(kinds), len(Ts), figsize=(2.5 * len(Ts) + 1.0, 2.4 * len(kinds) + 0.6),
                                 squeeze=False, sharex=True, sharey=True, gridspec_kw={"hspace": 0.45})
        dmax = int(table["d"].max())
        kmax = int(table["k"].max())
        for r, kind in enumerate(kinds):
            for c, T in enumerate(Ts):
                ax = axes[r, c]
                sub = table[(table["adapters"] == kind) & (table["T"] == T)]
                frac = sub.groupby(["k", "d"])["recovered"].mean().unstack()
                img = np.full((kmax, dmax - 1), np.nan)
                for (k, d), v in sub.groupby(["k", "d"])["recovered"].mean().items():
                    img[k - 1, d - 2] = v
                im = ax.imshow(img, origin="lower", cmap="Blues", vmin=0, vmax=1, aspect="auto",
                               extent=(1.5, dmax + 0.5, 0.5, kmax + 0.5))
                dd = np.linspace(1.5, dmax + 0.5, 50)
                ax.plot(dd, dd / 3, "--", color=COLORS["SR"], lw=1.2, label="3k = d" if r == c == 0 else None)
                ax.set_xlim(1.5, dmax + 0.5)
                ax.set_ylim(0.5, kmax + 0.5)
                ax.grid(False)
                n = int(sub.groupby(["k", "d"]).size().min()) if len(sub) else 0
                ax.set_title(f"{kind}, T = {T}\n{n} instances per cell", fontsize=8)
                if frac.size == 0:
                    ax.text(0.5, 0.5, "not computed", transform=ax.transAxes, ha="center")
                if c == 0:
                    ax.set_ylabel("adapter rank k")
                if r == len(kinds) - 1:
                    ax.set_xlabel("dimension d")
                ax.set_yticks(range(1, kmax + 1))
        fig.colorbar(im, ax=axes, shrink=0.8, label="fraction recovering A* (‖Â−A*‖ ≤ 1e-6‖A*‖)")
        axes[0, 0].legend(loc="upper left", fontsize=7)
        title = "P5: recovery of A* by the exact population solver (factored) and by the convex PSD relaxation"
        if convex_note:
            title += "\n" + convex_note
        fig.suptitle(title, fontsize=8.5)
        return save(fig, path)


def plot_rate(table, path: Path) -> list[Path]:
    """Test error vs n (log–log) for LoRA-ML + rank-k fine-tuning, the P6 prediction and SR's floor."""
    ks = sorted(table["k"].unique())
    markers = ["o", "s", "^", "D"]
    with plt.rc_context(RC):
        fig, ax = plt.subplots(figsize=(4.8, 3.4))
        for i, k in enumerate(ks):
            sub = table[table["k"] == k]
            for method in ("LoRA-ML", "SR"):
                g = sub[sub["method"] == method].groupby("n")
                n = g["error"].mean().index.to_numpy()
                ax.plot(n, g["error"].mean(), marker=markers[i % 4], ms=3.5, ls="-", color=COLORS[method],
                        alpha=1.0 - 0.22 * i, label=f"{method} + rank-k FT, k = {k}")
                ls = ":" if method == "LoRA-ML" else "--"
                ax.plot(n, g["prediction"].mean(), ls=ls, color=COLORS["prediction"] if method == "LoRA-ML"
                        else COLORS["SR"], lw=1.0, alpha=1.0 - 0.22 * i)
        ax.plot([], [], ":", color=COLORS["prediction"], label=r"P6: $\sigma^2k\,[d/(n-d-1)+(d-k)/(n-k-1)]$")
        ax.plot([], [], "--", color=COLORS["SR"], label="SR floor (P4)")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("test-task samples n")
        ax.set_ylabel(r"test error $\|\hat A+\hat\Delta-A^*_{T+1}\|_F^2$")
        ax.set_title(f"Adaptation rate (d = {table.attrs.get('d', 10)}, T = 3, σ = 0.1; mean over runs)")
        ax.legend(fontsize=6, ncol=2, loc="center right", bbox_to_anchor=(1.0, 0.55))
        fig.tight_layout()
        return save(fig, path)


def make_landscape_figures(out: Path, *, fast: bool = False, executor="processes") -> list[Path]:
    """Regenerate ``<out>/landscape/*.png`` (and PDFs); ``fast`` shrinks every computation.

    ``executor`` ("serial" or "processes") runs the cells of the recovery phase diagram.
    """
    out = Path(out) / "landscape"
    paths = []
    grid = sims.saddle_slice_table(d=4, seed=0, n_grid=61 if fast else 161)
    walks = sims.descent_paths_table(d=4, seed=0, n_paths=4 if fast else 8, n_steps=1500 if fast else 4000)
    paths += plot_saddle_slice(grid, walks, out / "saddle-slice.png")
    paths += plot_critical_spectra(sims.critical_spectra_table(d=4, seed=0), out / "critical-spectra.png")
    if fast:
        phase = sims.recovery_phase_table(Ts=(2, 3), ds=range(2, 7), ks=range(1, 3), reps=4, executor=executor)
        convex = sims.convex_recovery_table(Ts=(2, 3), ds=range(2, 5), ks=(1,), reps=3)
        note = "convex: d ≤ 4, k = 1, 3 instances per cell (fast preview)"
    else:
        phase = sims.recovery_phase_table(executor=executor)
        convex = sims.convex_recovery_table(ds=range(2, 9), ks=range(1, 4), reps=20)
        note = "convex PSD relaxation (λ → 0⁺ limit, Clarabel): d ≤ 8, k ≤ 3 only, cvxpy is slower"
    import pandas as pd

    paths += plot_recovery_phase(pd.concat([phase, convex], ignore_index=True), out / "recovery-phase.png",
                                 convex_note=note)
    rate = sims.finetune_rate_table(reps=6 if fast else 40, ks=(1, 2, 3),
                                    ns=(30, 120, 1000) if fast else (30, 60, 120, 250, 500, 1000, 2000, 4000))
    rate.attrs["d"] = 10
    paths += plot_rate(rate, out / "rate.png")
    return paths
