"""Figures of the theory core's predictions: fine-tuning rate (P6 with the P4 floor), P10."""

from __future__ import annotations

from pathlib import Path

import numpy as np

import sims

from ._style import COLORS, RC, plt, save

__all__ = ["make_theory_figures", "plot_finetune_rate", "plot_retraining_samples"]


def plot_finetune_rate(table, path: Path, *, pdf: bool = True) -> list[Path]:
    """Log–log test-task excess risk against n, one panel per k."""
    ks = sorted(table["k"].unique())
    with plt.rc_context(RC):
        fig, axes = plt.subplots(1, len(ks), figsize=(2.4 * len(ks) + 0.6, 2.6), sharey=True)
        axes = np.atleast_1d(axes)
        for ax, k in zip(axes, ks):
            sub = table[table["k"] == k]
            for method in ("LoRA-ML", "SR"):
                g = sub[sub["method"] == method].groupby("n")
                mean, lo, hi = g["error"].mean(), g["error"].min(), g["error"].max()
                n = mean.index.to_numpy()
                ax.plot(n, mean, "o-", ms=3, color=COLORS[method], label=f"{method} + rank-k fine-tuning (Lemma 1)")
                ax.fill_between(n, lo, hi, color=COLORS[method], alpha=0.15, lw=0)
                pred = g["prediction"].mean()
                label = r"P6: $\sigma^2k(2d-k)/(n-d-1)$" if method == "LoRA-ML" else "P4 floor (mean)"
                ax.plot(n, pred, ":", color=COLORS["prediction"] if method == "LoRA-ML" else COLORS[method],
                        lw=1.2, label=label)
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_title(f"k = {k}")
            ax.set_xlabel("test-task samples n")
        axes[0].set_ylabel(r"excess risk $\|\hat A+\hat\Delta-A^*_{T+1}\|_F^2$")
        handles, labels = axes[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="lower center", ncol=4, frameon=False, bbox_to_anchor=(0.5, -0.02))
        d = int(table.attrs.get("d", 10))
        fig.suptitle(f"Rank-k fine-tuning from the retrained base (d = {d}, T = 3, σ = 0.1; "
                     "mean and min–max over runs)", fontsize=9)
        fig.tight_layout(rect=(0, 0.08, 1, 1))
        return save(fig, path, pdf=pdf)


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
    """Regenerate ``<out>/theory/*.png``; ``fast`` uses fewer repetitions (for tests)."""
    out = Path(out) / "theory"
    reps = 6 if fast else 40
    rate = sims.finetune_rate_table(reps=reps, ns=(30, 120, 1000) if fast else
                                    (30, 60, 120, 250, 500, 1000, 2000, 4000))
    rate.attrs["d"] = 10
    paths = plot_finetune_rate(rate, out / "finetune-rate.png", pdf=not fast)
    samples = sims.retraining_samples_table(reps=2 if fast else 6,
                                            Ns=(250, 1000) if fast else (250, 1000, 4000, 16000))
    paths += plot_retraining_samples(samples, out / "retraining-samples.png", pdf=not fast)
    return paths
