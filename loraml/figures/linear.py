"""The paper's five linear figures: test-task loss against fine-tuning iteration."""

from __future__ import annotations

from pathlib import Path

import numpy as np

import sims

from ._style import COLORS, RC, finish_row, panel_row, plot_many, plt, save

__all__ = ["linear_configs", "make_linear_figures", "plot_linear_sweep", "run_linear_sweeps"]

_YLABEL = {
    "in_sample_sum": "test loss (in-sample, summed)\n" + r"$\|(A^*_{T+1}-\hat A-\Delta)X^\top\|_F^2$",
    "excess_risk": "excess risk\n" + r"$\|\hat A+\Delta-A^*_{T+1}\|_F^2$",
}


def plot_linear_sweep(table, path: Path, *, metric: str, title: str, pdf: bool = True) -> list[Path]:
    """One panel per swept value: mean over runs with a min–max band, Lemma 1 optimum dotted."""
    vary = table["vary"].iloc[0]
    values = sorted(table["value"].unique())
    with plt.rc_context(RC):
        fig, axes = panel_row(len(values))
        for ax, value in zip(axes, values):
            sub = table[table["value"] == value]
            for method in ("LoRA-ML", "SR"):
                m = sub[sub["method"] == method]
                g = m.groupby("step")["test_loss"]
                steps = g.mean().index.to_numpy()
                ax.plot(steps, g.mean(), color=COLORS[method], lw=1.4, label=method)
                ax.fill_between(steps, g.min(), g.max(), color=COLORS[method], alpha=0.18, lw=0)
                per_trial = m.groupby("trial")[["optimum", "optimum_exact"]].first().mean()
                ax.axhline(per_trial["optimum"], color=COLORS[method], ls=":", lw=1.1,
                           label=f"{method}: Lemma 1 optimum")
                if method == "LoRA-ML" and np.isfinite(per_trial["optimum_exact"]):
                    ax.axhline(per_trial["optimum_exact"], color=COLORS["exact"], ls="-.", lw=1.0,
                               label="exact LoRA-ML retraining + Lemma 1")
            ax.set_yscale("log")
            ax.set_title(f"{vary} = {value}")
            ax.set_xlabel("fine-tuning iteration")
            ax.margins(x=0)
        axes[0].set_ylabel(_YLABEL[metric])
        finish_row(fig, axes, title, fontsize=7)
        return save(fig, path, pdf=pdf)


def linear_configs(*, preset="paper", fast=False, sweeps=("T", "n", "N", "d", "k")) -> list:
    """The configs of the five sweeps of one preset ("paper", "clean" or "both": ten)."""
    if preset == "both":
        return [c for each in ("paper", "clean") for c in linear_configs(preset=each, fast=fast, sweeps=sweeps)]
    overrides = dict(outer_steps=100, ft_steps=100) if fast else {}
    return [sims.linear_sweep(vary, preset=preset, runs=2 if fast else 5, **overrides) for vary in sweeps]


def run_linear_sweeps(*, preset="paper", store="results", executor="processes", fast=False, progress=True,
                      sweeps=("T", "n", "N", "d", "k")):
    """Run (or read from the store) the five sweeps in one pool; returns {vary: (config, table)}."""
    configs = linear_configs(preset=preset, fast=fast, sweeps=sweeps)
    tables = sims.run_many(configs, executor=executor, store=store, progress=progress)
    return {cfg.vary: (cfg, table) for cfg, table in zip(configs, tables)}


def make_linear_figures(out: Path, *, fast: bool = False, preset: str = "paper", store="results",
                        executor="processes", progress: bool = True) -> list[Path]:
    """Regenerate ``<out>/linear/vary-<param>.png`` (paper preset) and/or ``<out>/linear-clean/``
    ("both": the ten figures); the sweeps run in one pool, and so do the plots on a process pool."""
    configs = linear_configs(preset=preset, fast=fast)
    with sims.Pool(executor, "make_linear_figures") as pool:      # one pool for the sweeps and the plots
        shared = "serial" if pool.kind == "serial" else pool.executor
        tables = sims.run_many(configs, executor=shared, store=store, progress=progress)
        return _plot_all(configs, tables, out, fast, shared)


def _plot_all(configs, tables, out, fast, executor):
    jobs = []
    for cfg, table in zip(configs, tables):
        folder = Path(out) / ("linear" if cfg.preset == "paper" else f"linear-{cfg.preset}")
        title = (f"Vary {cfg.vary} ({cfg.preset} preset; d={cfg.d}, k={cfg.k}, T={cfg.T}, N={cfg.N}, n={cfg.n}, "
                 f"σ={cfg.sigma} unless swept; {cfg.runs} runs, mean and min–max)")
        jobs.append((table, folder / f"vary-{cfg.vary}.png", cfg.metric, title, not fast))
    return [path for paths in plot_many(_plot, jobs, executor) for path in paths]


def _plot(table, path, metric, title, pdf):
    return plot_linear_sweep(table, path, metric=metric, title=title, pdf=pdf)
