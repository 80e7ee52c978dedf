"""Any stored sweep, drawn or printed (``loraml plot``, ``loraml show --format``).

:func:`plot_stored` reads nothing but the tidy table of a store folder: one panel per swept
value (the metric against the fine-tuning step, mean over trials with a min–max band, the
Lemma 1 optimum dotted where the table has it), or for a grid of two fields a heat map of the
final values per method. ``metric="A_error"`` draws the base error ‖Â − A*‖² against the swept
value instead (it does not change with the fine-tuning step), or its heat map.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

import sims

from ._style import COLORS, RC, legend_entries, plt

__all__ = ["check_plot_path", "format_summary", "grid_fields", "final_values", "plot_stored"]

_LABEL = {"test_loss": "test loss", "test_mse": "test MSE", "A_error": r"$\|\hat A-A^*\|_F^2$"}


def check_plot_path(path) -> Path:
    """The output of ``loraml plot``: a .png or .pdf file in a folder that exists or can be made."""
    if not isinstance(path, (str, os.PathLike)) or str(path) == "":
        raise ValueError(f"-o/--output must be a file path ending in .png or .pdf. Got {path!r}.")
    path = Path(path)
    if path.suffix.lower() not in (".png", ".pdf"):
        raise ValueError(f"-o/--output {path}: the file must end in .png or .pdf (got {path.suffix or 'no suffix'!r}).")
    if path.is_dir():
        raise ValueError(f"-o/--output {path}: is a folder, not a file.")
    from sims import folder_problem

    problem = folder_problem(path.parent)
    if problem is not None:
        raise ValueError(f"-o/--output {path}: {problem}.")
    return path


def format_summary(summary: pd.DataFrame, fmt: str) -> str:
    """A summary table (``loraml show``'s) as "table", "csv", "md" (Markdown) or "json" text."""
    if fmt not in ("table", "csv", "md", "json"):
        raise ValueError(f"The 'fmt' parameter of format_summary must be one of 'table', 'csv', 'md', 'json'. "
                         f"Got {fmt!r}.")
    flat = summary.reset_index()
    for col in flat.columns:
        if isinstance(flat[col].dtype, pd.CategoricalDtype):
            flat[col] = flat[col].astype(str)
    if fmt == "table":
        return summary.to_string(float_format=lambda x: f"{x:.4g}") + "\n"
    if fmt == "csv":
        return flat.to_csv(index=False)
    if fmt == "json":
        rows = [{k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()}
                for row in json.loads(flat.to_json(orient="records", double_precision=15))]
        return json.dumps(rows, indent=1) + "\n"
    def cell(v):
        return f"{v:.4g}" if isinstance(v, (float, np.floating)) else str(v)
    lines = ["| " + " | ".join(map(str, flat.columns)) + " |",
             "|" + "|".join("---" for _ in flat.columns) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in flat.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def grid_fields(table: pd.DataFrame) -> list[str]:
    """The fields of a grid sweep (the table's columns named in ``vary``), else []."""
    if "vary" not in table.columns or table.empty:
        return []
    names = str(table["vary"].iloc[0]).split(",")
    return names if len(names) > 1 and all(n in table.columns for n in names) else []


def _metric_column(table: pd.DataFrame, metric: str) -> str:
    for col in ("method", "value", "trial"):
        if col not in table.columns:
            raise ValueError(f"The stored table has no {col!r} column; loraml plot draws sweeps (linear, shallow) "
                             f"and real-data runs. Its columns: {', '.join(map(str, table.columns))}.")
    if metric == "test_loss" and "test_loss" not in table.columns and "test_mse" in table.columns:
        return "test_mse"                            # the shallow engine's name for it
    if metric not in table.columns:
        have = set(table.columns)
        allowed = [m for m in ("test_loss", "A_error") if m in have or (m == "test_loss" and "test_mse" in have)]
        held = f"{table['vary'].iloc[0]} sweep" if "vary" in table.columns else "sweep"
        which = "the default metric, test_loss" if metric == "test_loss" else f"--metric {metric}"
        raise ValueError(f"The stored {held} has no column for {which} (its columns: "
                         f"{', '.join(map(str, table.columns))}); --metric can be "
                         f"{' or '.join(allowed) if allowed else 'nothing this table holds'} here.")
    return metric


def final_values(table: pd.DataFrame, metric: str = "test_loss") -> pd.DataFrame:
    """Per method and swept value (and grid field): the metric at each value's last step, mean,
    min and max over trials."""
    col = _metric_column(table, metric)
    if "step" in table.columns:
        table = table[table["step"] == table.groupby("value")["step"].transform("max")]
    keys = ["value", *grid_fields(table), "method"]
    per_trial = table.groupby(keys + ["trial"], observed=True)[col].mean()
    return per_trial.groupby(keys, observed=True).agg(["mean", "min", "max"]).reset_index()


def _color(method, i):
    return COLORS.get(method, f"C{i + 2}")


def _methods(table):
    m = table["method"]
    return [x for x in (m.cat.categories if isinstance(m.dtype, pd.CategoricalDtype) else pd.unique(m))
            if (m == x).any()]


def _value_label(table, value, grid):
    if grid:
        row = table[table["value"] == value].iloc[0]
        return ", ".join(f"{g} = {row[g]:g}" for g in grid)
    return f"{table['vary'].iloc[0]} = {value:g}" if "vary" in table.columns else f"value {value:g}"


def _panels(table, col, grid):
    """One panel per swept value: the metric against the step, mean and min–max band over trials."""
    values = sorted(table["value"].unique())
    ncols = min(len(values), 5)
    nrows = math.ceil(len(values) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(2.5 * ncols + 0.7, 2.5 * nrows + 0.4), sharey=True,
                             squeeze=False)
    for ax in axes.flat[len(values):]:
        ax.set_visible(False)
    ends, lows = [], []
    for ax, value in zip(axes.flat, values):
        sub = table[table["value"] == value]
        for i, method in enumerate(_methods(sub)):
            m = sub[sub["method"] == method]
            g = m.groupby("step")[col]
            steps = g.mean().index.to_numpy()
            ax.plot(steps, g.mean(), color=_color(method, i), lw=1.4, label=method)
            ax.fill_between(steps, g.min(), g.max(), color=_color(method, i), alpha=0.18, lw=0)
            mean = g.mean().to_numpy()
            ends += [v for v in (mean[0], mean[-1], g.max().iloc[-1]) if np.isfinite(v) and v > 0]
            lows += [v for v in g.min().to_numpy() if np.isfinite(v) and v > 0]
            if "optimum" in m.columns and col == "test_loss":
                ax.axhline(m.groupby("trial")["optimum"].first().mean(), color=_color(method, i), ls=":", lw=1.1,
                           label=f"{method}: Lemma 1 optimum")
        ax.set_yscale("log")
        ax.set_title(_value_label(table, value, grid), fontsize=8)
        ax.set_xlabel("fine-tuning iteration")
        ax.margins(x=0)
    for row in axes:
        row[0].set_ylabel(_LABEL.get(col, col))
    if ends and lows:     # the start and end of every curve in view; a diverging transient may leave it
        axes.flat[0].set_ylim(min(lows) / 3, max(ends) * 10)
    return fig, list(axes.flat[:len(values)])


def _against_value(table, col):
    """A_error (or any per-trial column) against the swept value: mean and min–max over trials."""
    fin = final_values(table, col)
    fig, ax = plt.subplots(figsize=(4.2, 3.0))
    for i, method in enumerate(_methods(table)):
        f = fin[fin["method"] == method].sort_values("value")
        x = f["value"].to_numpy(dtype=float)
        ax.plot(x, f["mean"], "o-", color=_color(method, i), lw=1.4, label=method)
        ax.fill_between(x, f["min"], f["max"], color=_color(method, i), alpha=0.18, lw=0)
    x = fin["value"].to_numpy(dtype=float)
    if np.all(x > 0) and x.max() / x.min() >= 10:
        ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(str(table["vary"].iloc[0]) if "vary" in table.columns else "value")
    ax.set_ylabel(_LABEL.get(col, col))
    return fig, [ax]


def _heatmap(table, col, grid):
    """A 2-D grid: one heat map per method of the mean final metric, the number in each cell."""
    from matplotlib.colors import LogNorm

    fin = final_values(table, col)
    methods = _methods(table)
    ys, xs = (sorted(table[g].unique()) for g in grid)
    positive = fin["mean"][fin["mean"] > 0]
    norm = LogNorm(positive.min(), positive.max()) if len(positive) and positive.max() > positive.min() else None
    fig, axes = plt.subplots(1, len(methods), figsize=(0.62 * len(xs) * len(methods) + 2.2 * len(methods),
                                                       0.5 * len(ys) + 1.6), squeeze=False)
    for ax, method in zip(axes[0], methods):
        f = fin[fin["method"] == method]
        M = np.full((len(ys), len(xs)), np.nan)
        for _, row in f.iterrows():
            M[ys.index(row[grid[0]]), xs.index(row[grid[1]])] = row["mean"]
        im = ax.imshow(M, origin="lower", aspect="auto", cmap="viridis", norm=norm)
        for (i, j), v in np.ndenumerate(M):
            if np.isfinite(v):
                ax.text(j, i, f"{v:.2g}", ha="center", va="center", fontsize=6.5,
                        color="white" if norm is not None and norm(v) < 0.5 else "black")
        ax.set_xticks(range(len(xs)), [f"{x:g}" for x in xs])
        ax.set_yticks(range(len(ys)), [f"{y:g}" for y in ys])
        ax.set_xlabel(grid[1])
        ax.set_ylabel(grid[0])
        ax.set_title(method)
        ax.grid(False)
    fig.colorbar(im, ax=list(axes[0]), label=f"final {_LABEL.get(col, col)}, mean over trials", shrink=0.9)
    return fig, list(axes[0])


def plot_stored(table: pd.DataFrame, path, *, metric: str = "test_loss", title: str = "") -> Path:
    """Draw a stored sweep's table to ``path`` (.png or .pdf, written atomically); returns the path.

    A grid of two fields gets heat maps of the final values; otherwise ``test_loss`` gets one
    panel per swept value and ``A_error`` one panel against the value. A real-data table (a
    ``phase`` column; ``metric`` left at ``test_loss``) gets the figure of ``loraml realdata``:
    test accuracy against the fine-tuning images (convai: hits@1 against the LoRA rank)."""
    path = check_plot_path(path)
    if not isinstance(table, pd.DataFrame) or table.empty:
        raise ValueError("The 'table' parameter of plot_stored must be a non-empty stored sweep table.")
    if metric not in ("test_loss", "A_error"):
        raise ValueError(f"The 'metric' parameter of plot_stored must be 'test_loss' or 'A_error'. Got {metric!r}.")
    if "phase" in table.columns:
        if metric != "test_loss":
            raise ValueError(f"--metric {metric}: a real-data table holds test accuracy, not {metric}; leave "
                             f"--metric out to draw the accuracy.")
        return _plot_real(table, path, title)
    col = _metric_column(table, metric)
    grid = grid_fields(table)
    with plt.rc_context(RC):
        if len(grid) == 2:
            fig, axes = _heatmap(table, col, grid)
        elif col == "A_error" and not grid:
            fig, axes = _against_value(table, col)
        else:
            if "step" not in table.columns:
                raise ValueError(f"--metric {metric}: the stored table has no 'step' column to draw against.")
            fig, axes = _panels(table, col, grid)
        handles, labels = legend_entries(axes)
        if handles:
            fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 4), frameon=False,
                       bbox_to_anchor=(0.5, -0.02), fontsize=7)
        if title:
            fig.suptitle(title, fontsize=8)
        if len(grid) != 2:
            fig.tight_layout(rect=(0, 0.07 if handles else 0, 1, 1))
        return _save(fig, path)


def _plot_real(table: pd.DataFrame, path: Path, title: str) -> Path:
    """A real-data table drawn as ``loraml realdata`` draws it (digits/vision: accuracy against the
    fine-tuning images; convai: hits@1 against the LoRA rank), to ``path`` alone."""
    from .realdata import plot_convai, plot_realdata

    convai = "persona" in table.columns
    summary = sims.convai_summary(table) if convai else sims.realdata_summary(table)
    path.parent.mkdir(parents=True, exist_ok=True)
    # The real-data plots write a PNG (and a PDF beside it): draw in a temporary folder beside
    # ``path`` and move the one file asked for into place (atomic, nothing else left behind).
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=f".{path.stem}-") as tmp:
        pdf = path.suffix.lower() == ".pdf"
        files = (plot_convai if convai else plot_realdata)(summary, Path(tmp) / "figure.png", title=title, pdf=pdf)
        os.chmod(files[-1], 0o644)
        os.replace(files[-1], path)
    return path


def _save(fig, path: Path) -> Path:
    png = path.suffix.lower() == ".png"
    try:
        return sims.atomic_write(path, lambda tmp: fig.savefig(
            tmp, format=path.suffix.lower()[1:], bbox_inches="tight",
            metadata={"Software": None} if png else {"Creator": None, "Producer": None, "CreationDate": None}))
    finally:
        plt.close(fig)
