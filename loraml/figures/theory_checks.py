"""Figures of the theory core's predictions: P10 (the P6 rate figure is in the landscape group)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

import sims

from ._style import COLORS, RC, plt, save

__all__ = ["make_theory_figures", "plot_retraining_samples"]


def plot_retraining_samples(table, path: Path, *, pdf: bool = True) -> list[Path]:
    """Log–log ‖Â − A*‖² against N for LoRA-ML and SR, with a 1/N guide."""
    with plt.rc_context(RC):
        fig, ax = plt.subplots(figsize=(3.6, 2.8))
        for method in ("LoRA-ML", "SR"):
            g = table[table["method"] == method].groupby("N")["A_error"]
            N = g.mean().index.to_numpy()
            ax.plot(N, g.mean(), "o-", ms=3, color=COLORS[method], label=method)
            ax.fill_between(N, g.min(), g.max(), color=COLORS[method], alpha=0.15, lw=0)
        g = table[table["method"] == "LoRA-ML"].groupby("N")["A_error"].mean()
        N = g.index.to_numpy()
        c = float(np.exp(np.mean(np.log(g.to_numpy() * N))))
        ax.plot(N, c / N, ":", color=COLORS["prediction"], label=f"{c:.1f}/N")
        ax.axhline(table["R_bar_sq"].mean(), color=COLORS["SR"], ls="--", lw=1,
                   label=r"mean $\|\bar R^*\|_F^2$ (SR limit)")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("samples per retraining task N")
        ax.set_ylabel(r"$\|\hat A-A^*\|_F^2$")
        ax.set_title("P10: retrained base error (d = 8, k = 1, T = 3, σ = 0.5)")
        ax.legend(loc="center right")
        fig.tight_layout()
        return save(fig, path, pdf=pdf)


def make_theory_figures(out: Path, *, fast: bool = False) -> list[Path]:
    """Regenerate ``<out>/theory/*.png``; ``fast`` uses fewer repetitions (for tests).

    The P6/P4 fine-tuning-rate figure lives in the landscape group (``landscape/rate.png``).
    """
    out = Path(out) / "theory"
    samples = sims.retraining_samples_table(reps=2 if fast else 6,
                                            Ns=(250, 1000) if fast else (250, 1000, 4000, 16000))
    return plot_retraining_samples(samples, out / "retraining-samples.png", pdf=not fast)
