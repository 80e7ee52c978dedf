"""Figures of the LoRA-ML landscape (P5, P7–P9) and the adaptation rate (P6). They read tables."""

from __future__ import annotations

from pathlib import Path

import numpy as np

import sims

from ._style import COLORS, RC, plt, save

__all__ = ["make_landscape_figures", "start_landscape_figures", "plot_saddle_slice", "plot_critical_spectra",
           "plot_recovery_phase", "plot_rate"]


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


def plot_recovery_phase(table, path: Path) -> list[Path]:
    """Identifiability classes over d × k, one panel per (adapter type, T), with the solver's
    landing rate written in each cell.

    Cell colour: blue = every instance identified (A* is the only zero-loss base found); grey = a
    continuum (a curve of zero-loss bases exhibited) in most instances; orange, darker with the
    fraction = some instances have isolated other zero-loss bases; red = some instance left
    undetermined. The number is the percentage of instances on which the exact solver (one run of
    ``fit_population_batch``) lands on A*; a dot marks cells settled by the multi-start search, a
    triangle cells where the Jacobian at A* is degenerate yet A* is isolated at second order.
    Dashed: d = 3k; dotted: where the rank argument starts ((T − 1)(d − 2k) = d − k).
    """
    from matplotlib.colors import LinearSegmentedColormap, ListedColormap

    kinds = [a for a in ("symmetric", "asymmetric") if a in set(table["adapters"])]
    Ts = sorted(table["T"].unique())
    dmin, dmax = int(table["d"].min()), int(table["d"].max())
    kmax = int(table["k"].max())
    oranges = LinearSegmentedColormap.from_list("iso", ["#fde0c5", "#e6550d"])
    order = table["obstruction_order"] if "obstruction_order" in table else None
    with plt.rc_context(RC):
        fig, axes = plt.subplots(len(kinds), len(Ts), figsize=(2.9 * len(Ts) + 1.2, 2.5 * len(kinds) + 0.9),
                                 squeeze=False, sharex=True, sharey=True, gridspec_kw={"hspace": 0.35, "wspace": 0.08})
        extent = (dmin - 0.5, dmax + 0.5, 0.5, kmax + 0.5)
        for r, kind in enumerate(kinds):
            for c, T in enumerate(Ts):
                ax = axes[r, c]
                sub = table[(table["adapters"] == kind) & (table["T"] == T)]
                cls = np.full((kmax, dmax - dmin + 1), np.nan)        # 0 identified, 1 continuum, 2 undetermined
                iso = np.full_like(cls, np.nan)
                for (k, d), g in sub.groupby(["k", "d"]):
                    f_iso = float((g["status"] == "isolated").mean())
                    f_con = float((g["status"] == "continuum").mean())
                    if (g["status"] == "undetermined").any():
                        cls[k - 1, d - dmin] = 2.0
                    elif f_iso > 0:
                        iso[k - 1, d - dmin] = f_iso
                    else:
                        cls[k - 1, d - dmin] = 1.0 if f_con >= 0.5 else 0.0
                    ax.text(d, k, f"{100 * g['recovered'].mean():.0f}", ha="center", va="center", fontsize=5.6,
                            color="k")
                    if (g["method"] == "search").any():
                        ax.plot(d + 0.36, k + 0.3, ".", ms=2.5, color="k")
                    if order is not None and (order.loc[g.index] == 2).mean() >= 0.5:
                        ax.plot(d - 0.34, k + 0.3, "^", ms=2.6, color="k")
                ax.imshow(cls, origin="lower", cmap=ListedColormap(["#c6dbef", "#d9d9d9", "#cb181d"]), vmin=0, vmax=2,
                          aspect="auto", extent=extent, interpolation="nearest")
                im = ax.imshow(iso, origin="lower", cmap=oranges, vmin=0, vmax=1, aspect="auto", extent=extent,
                               interpolation="nearest")
                dd = np.linspace(dmin - 0.5, dmax + 0.5, 50)
                ax.plot(dd, dd / 3, "--", color="k", lw=0.9, label="d = 3k" if r == c == 0 else None)
                if T >= 3:
                    ax.plot(dd, dd * (T - 2) / (2 * T - 3), ":", color="k", lw=1.1,
                            label="rank argument: (T−1)(d−2k) = d−k" if r == 0 and c == 1 else None)
                ax.set_xlim(*extent[:2])
                ax.set_ylim(*extent[2:])
                ax.grid(False)
                n = int(sub.groupby(["k", "d"]).size().min()) if len(sub) else 0
                ax.set_title(f"{kind}, T = {T}, {n} per cell", fontsize=7.5)
                if c == 0:
                    ax.set_ylabel(f"{kind} adapters\nadapter rank k")
                if r == len(kinds) - 1:
                    ax.set_xlabel("dimension d")
                ax.set_yticks(range(1, kmax + 1))
                ax.set_xticks(range(dmin, dmax + 1, 2))
        from matplotlib.lines import Line2D
        from matplotlib.patches import Patch

        handles = [Patch(color="#c6dbef", label="identified (A* the only zero-loss base)"),
                   Patch(color="#e6550d", label="isolated other zero-loss bases (shade: fraction)"),
                   Patch(color="#d9d9d9", label="continuum: a curve of zero-loss bases exhibited"),
                   Patch(color="#cb181d", label="some instance undetermined"),
                   Line2D([], [], ls="", marker="^", ms=4, color="k",
                          label="Jacobian degenerate, A* isolated at 2nd order")]
        handles += axes[0, 0].get_legend_handles_labels()[0] + (axes[0, 1].get_legend_handles_labels()[0]
                                                                 if len(Ts) > 1 else [])
        fig.legend(handles=handles, loc="lower center", ncol=4, fontsize=7, frameon=False,
                   bbox_to_anchor=(0.5, -0.05))
        fig.colorbar(im, ax=axes, shrink=0.7, pad=0.015, label="fraction with another zero-loss base")
        fig.suptitle("P5: is A* the only zero-loss base? Colour = identifiability class; number = % of instances on "
                     "which the exact solver lands on A*;\n· = settled by a multi-start search (no alternative found "
                     "⇒ identified up to its miss rate)", fontsize=8.5)
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
    return start_landscape_figures(out, fast=fast, executor=executor)()


def start_landscape_figures(out: Path, *, fast: bool = False, executor="processes", background=None):
    """:func:`make_landscape_figures` in two steps, so that a caller can do other work while the
    recovery phase diagram's cells run: computes and plots every figure but the phase diagram now,
    and returns ``finish()``, which plots the phase diagram and returns all paths (in the order of
    :func:`make_landscape_figures`). With ``background`` (a ``concurrent.futures`` executor of
    threads) the phase diagram is submitted to it now, so its cells reach ``executor``'s queue at
    once; without, ``finish`` computes it.

    Examples
    --------
    >>> import tempfile
    >>> from loraml.figures.landscape import start_landscape_figures
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     finish = start_landscape_figures(tmp, fast=True, executor="serial")
    ...     sorted(p.name for p in finish() if p.suffix == ".png")
    ['critical-spectra.png', 'rate.png', 'recovery-phase.png', 'saddle-slice.png']
    """
    out = Path(out) / "landscape"
    paths = []
    grid = sims.saddle_slice_table(d=4, seed=0, n_grid=61 if fast else 161)
    walks = sims.descent_paths_table(d=4, seed=0, n_paths=4 if fast else 8, n_steps=1500 if fast else 4000)
    paths += plot_saddle_slice(grid, walks, out / "saddle-slice.png")
    paths += plot_critical_spectra(sims.critical_spectra_table(d=4, seed=0), out / "critical-spectra.png")
    rate = sims.finetune_rate_table(reps=6 if fast else 40, ks=(1, 2, 3),
                                    ns=(30, 120, 1000) if fast else (30, 60, 120, 250, 500, 1000, 2000, 4000))
    rate.attrs["d"] = 10
    rate_paths = plot_rate(rate, out / "rate.png")

    # The phase diagram last: on a pool that other work shares (``loraml reproduce``), its cells
    # queue behind that work while this process does the rest.
    def phase_table():
        if fast:
            return sims.recovery_phase_table(Ts=(2, 3), ds=range(2, 7), ks=range(1, 3), reps=4, executor=executor)
        return sims.recovery_phase_table(executor=executor)

    job = None if background is None else background.submit(phase_table)

    def finish() -> list[Path]:
        phase = phase_table() if job is None else job.result()
        return paths + plot_recovery_phase(phase, out / "recovery-phase.png") + rate_paths

    return finish
