"""The shallow-network figures and table of spec §5.2 (median over trials, central range)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

import sims

from ._style import COLORS, RC, finish_row, panel_row, plt, save

__all__ = ["make_shallow_figures", "shallow_configs", "central_range", "shallow_table", "plot_shallow_sweep"]


def central_range(values) -> tuple[float, float]:
    """The paper's band: the 4th and 7th of 10 sorted values (indices ⌊0.3m⌋ and ⌊0.6m⌋ of m)."""
    v = np.sort(np.asarray(values, dtype=float))
    m = v.size
    return float(v[int(0.3 * m)]), float(v[min(m - 1, int(0.6 * m))])


def shallow_table(tables) -> pd.DataFrame:
    """Final median and central range per sweep, value, method and fine-tuning rank."""
    rows = []
    for table in tables:
        last = table[table["step"] == table["step"].max()]
        for (value, method, rank), g in last.groupby(["value", "method", "rank"], observed=True):
            lo, hi = central_range(g["test_mse"])
            rows.append({"sweep": table["vary"].iloc[0], "value": int(value), "method": method, "rank": int(rank),
                         "median": float(np.median(g["test_mse"])), "range_lo": lo, "range_hi": hi,
                         "trials": int(g["trial"].nunique())})
    return pd.DataFrame(rows)


def plot_shallow_sweep(table, path: Path, *, title: str, pdf: bool = True) -> list[Path]:
    vary = table["vary"].iloc[0]
    values = sorted(table["value"].unique())
    with plt.rc_context(RC):
        fig, axes = panel_row(len(values), width=2.3)
        for ax, value in zip(axes, values):
            sub = table[table["value"] == value]
            ranks = sorted(sub["rank"].unique())
            for method in ("LoRA-ML", "SR"):
                for rank, ls in zip(ranks, ("-", "--")):
                    g = sub[(sub["method"] == method) & (sub["rank"] == rank)].groupby("step")["test_mse"]
                    steps = g.median().index.to_numpy()
                    band = np.array([central_range(v) for _, v in g])
                    label = method if len(ranks) == 1 or rank == ranks[0] else f"{method}, rank 3k"
                    ax.plot(steps, g.median(), ls, color=COLORS[method], lw=1.3, label=label)
                    ax.fill_between(steps, band[:, 0], band[:, 1], color=COLORS[method], alpha=0.15, lw=0)
            ax.set_yscale("log")
            ax.set_ylim(1e-3, 5)
            ax.set_title(f"{vary} = {value}")
            ax.set_xlabel("fine-tuning iteration")
            ax.margins(x=0)
        axes[0].set_ylabel("test MSE vs clean labels")
        finish_row(fig, axes, title)
        return save(fig, path, pdf=pdf)


def _markdown(table: pd.DataFrame) -> str:
    lines = ["| sweep | value | method | rank | median final MSE | central range (4th–7th of 10) |",
             "|---|---|---|---|---|---|"]
    for r in table.itertuples():
        lines.append(f"| {r.sweep} | {r.value} | {r.method} | {r.rank} | {r.median:.4g} | "
                     f"{r.range_lo:.4g} – {r.range_hi:.4g} |")
    return "\n".join(lines) + "\n"


def shallow_configs(*, fast: bool = False) -> list:
    """The configs of the two sweeps (d, then T)."""
    overrides = dict(retrain_steps=100, ft_steps=60, N=100, n=30, record_every=10) if fast else {}
    # Chunks of 5 trials balance the workers (the T = 10 value alone is ~30 % of the work).
    return [sims.shallow_sweep(vary, trials=3 if fast else 10, chunk_trials=0 if fast else 5, **overrides)
            for vary in ("d", "T")]


def make_shallow_figures(out: Path, *, fast: bool = False, store="results", executor="processes",
                         progress: bool = True, device: str | None = None) -> list[Path]:
    """Run (or read from the store) both sweeps; write vary-d/vary-T figures and the table."""
    folder = Path(out) / "shallow"
    configs = shallow_configs(fast=fast)
    tables = sims.run_many(configs, executor=executor, store=store, progress=progress,
                           device=device or sims.default_device())
    paths = []
    for cfg, table in zip(configs, tables):
        title = (f"Shallow network, vary {cfg.vary} (d=10, T=3, N={cfg.N}, n={cfg.n}, k=1 unless swept; "
                 f"{cfg.trials} trials: median and 4th–7th of 10)")
        paths += plot_shallow_sweep(table, folder / f"vary-{cfg.vary}.png", title=title, pdf=not fast)
    summary = shallow_table(tables)
    folder.mkdir(parents=True, exist_ok=True)
    csv, md = folder / "table.csv", folder / "table.md"
    summary.to_csv(csv, index=False, float_format="%.6g")
    md.write_text(_markdown(summary))
    return paths + [csv, md]
