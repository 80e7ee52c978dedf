"""Figures of LoRA-One (spec/loraone.md §4) and of the joined LoRA-ML + LoRA-One pipeline (§5).

Every plot reads a table from ``sims``; colours are fixed per method (``METHOD_COLORS``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sims import (
    JOINED_METHODS,
    finetune_comparison,
    finetune_summary,
    init_comparison_table,
    kappa_iterations_table,
    two_parameter_table,
    vanilla_alpha_table,
)

from ._style import COLORS, RC, plt, save

__all__ = [
    "METHOD_COLORS",
    "make_loraone_figures",
    "plot_alignment",
    "plot_init_comparison",
    "plot_joined",
    "plot_kappa_iterations",
    "plot_two_parameter",
    "plot_vanilla_risk",
]

#: One colour per fine-tuning method / initialisation, shared by every LoRA-One figure.
METHOD_COLORS = {
    "spectral": "#2ca02c",
    "spectral (code form)": "#17becf",
    "vanilla": "#ff7f0e",
    "LoRA-GA": "#9467bd",
    "precgd": "#2ca02c",
    "gd": "#ff7f0e",
    "random": "#ff7f0e",
    "vanilla LoRA + GD": "#ff7f0e",
    "spectral + GD": "#8c564b",
    "spectral + precGD": "#2ca02c",
    "Lemma 1": "#222222",
}
_LABELS = {"precgd": "preconditioned GD (ScaledGD)", "gd": "plain GD"}


def _alpha_colors(values):
    cmap = plt.get_cmap("viridis")
    values = sorted(values, reverse=True)
    return {v: cmap(i / max(len(values) - 1, 1) * 0.9) for i, v in enumerate(values)}


def plot_vanilla_risk(table, path: Path) -> list[Path]:
    """Figure 1: vanilla LoRA risk ½‖A_tB_t − ΔW‖² against step, one curve per α²."""
    colors = _alpha_colors(table["alpha2"].unique())
    with plt.rc_context(RC):
        fig, ax = plt.subplots(figsize=(4.2, 3.0))
        for a2, g in table.groupby("alpha2", sort=False):
            ax.plot(g["step"], np.maximum(g["risk"], 1e-32), color=colors[a2], lw=1.3, label=f"α² = {a2:g}")
        ax.set_yscale("log")
        ax.set_xlabel("gradient step t")
        ax.set_ylabel(r"risk $\frac{1}{2}\|A_tB_t-\Delta W\|_F^2$")
        at = table.attrs
        ax.set_title(f"Vanilla LoRA: small inits converge, large ones stall\n(d = {at.get('d')}, N = {at.get('N')}, "
                     f"r = {at.get('r')}, r* = {at.get('rstar')}, η = 1/64)")
        ax.legend(loc="lower left", ncol=2)
        fig.tight_layout()
        return save(fig, path)


def plot_alignment(table, path: Path) -> list[Path]:
    """Figure 2: sin θ(A_t, U_{r*}(G♮)) against step, with the G♮-vs-ΔW angle."""
    colors = _alpha_colors(table["alpha2"].unique())
    with plt.rc_context(RC):
        fig, ax = plt.subplots(figsize=(4.2, 3.0))
        for a2, g in table.groupby("alpha2", sort=False):
            ax.plot(g["step"], g["alignment"], color=colors[a2], lw=1.3, label=f"α² = {a2:g}")
        angle = table.attrs.get("angle")
        if angle is not None:
            ax.axhline(angle, color=COLORS["prediction"], ls="--", lw=1,
                       label=f"sin θ(G♮, ΔW) = {angle:.3f}")
            ax.axhline(table.attrs["sqrt_d_over_N"], color=COLORS["prediction"], ls=":", lw=1,
                       label=f"√(d/N) = {table.attrs['sqrt_d_over_N']:.3f}")
        ax.set_yscale("log")
        ax.set_xscale("symlog", linthresh=10)
        ax.set_xlim(left=0)
        ax.set_xlabel("gradient step t (linear to 10, then log)")
        ax.set_ylabel(r"$\sin\theta(A_t,\ U_{r^*}(G^\natural))$")
        ax.set_title("Alignment of vanilla LoRA with the one-step gradient")
        ax.legend(loc="lower left", ncol=2, fontsize=6.5)
        fig.tight_layout()
        return save(fig, path)


def plot_init_comparison(table, path: Path) -> list[Path]:
    """Figure 3: preconditioned GD from four initialisations; LoRA-GA plateaus."""
    with plt.rc_context(RC):
        fig, ax = plt.subplots(figsize=(4.2, 3.0))
        for method, g in table.groupby("method", sort=False):
            ax.plot(g["step"], np.maximum(g["rel_error"], 1e-17), color=METHOD_COLORS[method], lw=1.4,
                    label=f"{method} init")
        ax.set_yscale("log")
        ax.set_xlabel("preconditioned GD step t")
        ax.set_ylabel(r"$\|W_0'+A_tB_t-W^\natural\|_F\,/\,\|\Delta W\|_F$")
        at = table.attrs
        ax.set_title(f"ScaledGD(λ = {at.get('lam'):g}, η = {at.get('lr')}) from four inits\n"
                     f"(d = {at.get('d')}, N = {at.get('N')}, r = {at.get('r')}, r* = {at.get('rstar')}, "
                     f"κ = {at.get('kappa'):g})")
        ax.legend(loc="center right")
        fig.tight_layout()
        return save(fig, path)


def plot_kappa_iterations(table, path: Path) -> list[Path]:
    """Figure 4: iterations to 1e-6 against κ, log–log, with fitted slopes."""
    slopes = table.attrs.get("slopes", {})
    with plt.rc_context(RC):
        fig, ax = plt.subplots(figsize=(4.0, 3.0))
        for method in ("gd", "precgd"):
            g = table[table["method"] == method].groupby("kappa")["n_iter"]
            k = g.mean().index.to_numpy()
            ax.plot(k, g.mean(), "o-", ms=4, color=METHOD_COLORS[method],
                    label=f"{_LABELS[method]}: slope {slopes.get(method, np.nan):.2f}")
            if g.ngroups and table["seed"].nunique() > 1:
                ax.fill_between(k, g.min(), g.max(), color=METHOD_COLORS[method], alpha=0.15, lw=0)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(r"condition number $\kappa=\lambda^*_1/\lambda^*_{r^*}$")
        ax.set_ylabel(f"iterations to relative error {table.attrs.get('tol', 1e-6):g}")
        ax.set_title(f"From the spectral init, η = {table.attrs.get('lr')} (d = {table.attrs.get('d')}, "
                     f"N = {table.attrs.get('N')})")
        ax.legend(loc="upper left")
        fig.tight_layout()
        return save(fig, path)


def plot_two_parameter(table, path: Path) -> list[Path]:
    """Figure 5: pred = b·(xᵀa): the minimiser manifold a = a*/b and two GD paths."""
    a_star = np.array(table.attrs.get("a_star", [2.0, 1.0]))
    u = a_star / np.linalg.norm(a_star)
    v = np.array([-u[1], u[0]])
    with plt.rc_context(RC):
        fig, (ax, ax2) = plt.subplots(1, 2, figsize=(7.4, 3.1), gridspec_kw={"width_ratios": [1.15, 1]})
        # Left: the plane (a·u, b) at a ⟂ u = 0, population risk contours and the manifold a·u = ‖a*‖/b.
        s = np.linspace(-3.2, 3.2, 120)
        P, Bm = np.meshgrid(s, s)
        risk = 0.5 * ((P * Bm - np.linalg.norm(a_star)) ** 2)
        ax.contourf(P, Bm, np.log10(risk + 1e-3), levels=20, cmap="Greys", alpha=0.55)
        for sign in (1, -1):
            b = sign * np.linspace(0.45, 3.2, 200)
            ax.plot(np.linalg.norm(a_star) / b, b, color=COLORS["prediction"], lw=1.6,
                    label=r"minimisers $a=a^*/b$" if sign == 1 else None)
        for init, g in table.groupby("init", sort=False):
            a = g[["a1", "a2"]].to_numpy()
            color = METHOD_COLORS[init]
            ax.plot(a @ u, g["b"], "-", color=color, lw=1.4, label=f"GD from {init} init")
            ax.plot(a[0] @ u, g["b"].iloc[0], "o", color=color, ms=5)
            ax.plot(a[-1] @ u, g["b"].iloc[-1], "*", color=color, ms=9, mec="k", mew=0.5)
            ax2.plot(g["step"], np.maximum(g["risk"], 1e-16), color=color, lw=1.4, label=f"{init} init")
            ax2.plot(g["step"], np.abs(a @ v), color=color, lw=1, ls=":",
                     label=rf"{init}: $|a\cdot u_\perp|$")
        ax.set_xlim(-3.2, 3.2)
        ax.set_ylim(-3.2, 3.2)
        ax.set_xlabel(r"$a\cdot u$,  $u=a^*/\|a^*\|$")
        ax.set_ylabel("b")
        ax.set_title(r"$\hat y=b\,(x^\top a)$, $a^*=(2,1)$: paths (o start, * end)")
        ax.legend(loc="lower left", fontsize=6.5)
        ax2.set_yscale("log")
        ax2.set_xlabel("gradient step t")
        ax2.set_ylabel(r"risk $\frac{1}{2}\|ab-a^*\|^2$ (solid)")
        ax2.set_title(f"spectral init: a = g/√‖g‖, b = √‖g‖ (N = {table.attrs.get('N')})")
        ax2.legend(loc="upper right", fontsize=6.5)
        fig.tight_layout()
        return save(fig, path)


def plot_joined(table, path: Path) -> list[Path]:
    """Test-task error against fine-tuning step: 2 bases × 4 methods, mean and min–max over runs."""
    styles = {"SR": "--", "LoRA-ML": "-"}
    with plt.rc_context(RC):
        fig, ax = plt.subplots(figsize=(5.2, 3.4))
        for base in ("SR", "LoRA-ML"):
            for method in JOINED_METHODS:
                g = table[(table["base"] == base) & (table["method"] == method)].groupby("step")["test_error"]
                if not g.ngroups:
                    continue
                steps = g.mean().index.to_numpy()
                ax.plot(steps, g.mean(), styles[base], color=METHOD_COLORS[method],
                        lw=1.0 if method == "Lemma 1" else 1.4, label=f"{base}: {method}")
                ax.fill_between(steps, g.min(), g.max(), color=METHOD_COLORS[method], alpha=0.10, lw=0)
        ax.set_yscale("log")
        ax.set_xscale("symlog", linthresh=10)
        ax.set_xlim(left=0)
        ax.set_xlabel("fine-tuning step (linear to 10, then log)")
        ax.set_ylabel(r"test error $\|\hat A+\Delta_t-A^*_{T+1}\|_F^2$")
        at = table.attrs
        ax.set_title(f"Which base (line style) × how to fine-tune (colour)\n(d = {at.get('d')}, k = {at.get('k')}, "
                     f"T = {at.get('T')}, N = {at.get('N')}, n = {at.get('n')}, σ = {at.get('sigma')}, "
                     f"{at.get('runs')} runs)")
        ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=7)
        fig.tight_layout()
        return save(fig, path)


def make_loraone_figures(out: Path, *, fast: bool = False) -> list[Path]:
    """Regenerate ``<out>/loraone/*.png`` (five figures of spec §4 and the joined one of §5).

    ``fast`` uses smaller instances and fewer steps (for tests), not the gallery's settings.
    """
    out = Path(out) / "loraone"
    if fast:
        vanilla = vanilla_alpha_table(d=40, m=40, steps=400, alpha2=(1.0, 1e-2, 1e-4))
        inits = init_comparison_table(d=40, m=40, steps=60)
        kappas = kappa_iterations_table(d=40, m=40, kappas=(1.0, 10.0, 100.0))
        joined = finetune_comparison(runs=2, max_steps=100)
    else:
        vanilla = vanilla_alpha_table()
        inits = init_comparison_table()
        kappas = kappa_iterations_table(seeds=(0, 1, 2))
        joined = finetune_comparison()
    paths = plot_vanilla_risk(vanilla, out / "vanilla-risk.png")
    paths += plot_alignment(vanilla, out / "alignment.png")
    paths += plot_init_comparison(inits, out / "inits.png")
    paths += plot_kappa_iterations(kappas, out / "kappa-iterations.png")
    paths += plot_two_parameter(two_parameter_table(), out / "two-parameter.png")
    paths += plot_joined(joined, out / "joined.png")
    joined.attrs["summary"] = finetune_summary(joined)
    return paths
