"""One look for every figure: colours fixed per method, paper-size fonts, atomic saving."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

import sims  # noqa: E402

COLORS = {
    "LoRA-ML": "#1f77b4",
    "SR": "#d62728",
    "prediction": "#222222",
    "exact": "#2ca02c",
}

RC = {
    "figure.dpi": 110,
    "savefig.dpi": 160,
    "font.size": 9,
    "axes.titlesize": 9,
    "axes.labelsize": 9,
    "legend.fontsize": 7.5,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "svg.hashsalt": "loraml",
}


def save(fig, path: Path, *, pdf: bool = True) -> list[Path]:
    """Write ``fig`` to ``path`` (PNG) and a PDF beside it, each atomically (temp file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    out = []
    # The tight bounding box, found once (savefig's bbox_inches="tight" draws the figure an extra
    # time for every file it writes).
    fig.canvas.draw()
    tight = fig.get_tightbbox(fig.canvas.get_renderer()).padded(plt.rcParams["savefig.pad_inches"])
    for suffix in [".png"] + ([".pdf"] if pdf else []):
        metadata = {"Software": None} if suffix == ".png" else {"Creator": None, "Producer": None, "CreationDate": None}
        out.append(sims.atomic_write(path.with_suffix(suffix), lambda tmp: fig.savefig(
            tmp, format=suffix[1:], bbox_inches=tight, metadata=metadata)))
    plt.close(fig)
    return out


def plot_many(plot, jobs, executor="serial") -> list:
    """``[plot(*job) for job in jobs]``, on a local process pool's workers when ``executor`` is one
    ("processes" or a ``concurrent.futures.ProcessPoolExecutor``: they share this file system),
    else here (dask workers may be other machines; files must land where the driver runs)."""
    import concurrent.futures as cf

    jobs = list(jobs)
    local = (isinstance(executor, str) and executor == "processes") or isinstance(executor, cf.ProcessPoolExecutor)
    if not local or len(jobs) < 2:
        return [plot(*job) for job in jobs]
    out = [None] * len(jobs)
    with sims.Pool(executor, "plot_many") as pool:
        for i, result in pool.map_unordered(plot, jobs):
            out[i] = result
    return out


def panel_row(n: int, width: float = 2.5, height: float = 2.7):
    """A row of ``n`` panels sharing the y-axis, one per swept value."""
    fig, axes = plt.subplots(1, n, figsize=(width * n + 0.7, height), sharey=True)
    return fig, np.atleast_1d(axes)


def legend_entries(axes) -> tuple[list, list]:
    """(handles, labels) of every panel in ``axes``, each label once, in first-seen order."""
    handles, labels = [], []
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    return handles, labels


def finish_row(fig, axes, title: str, *, fontsize: float | None = None) -> None:
    """One legend below the row (each label once, across panels), a suptitle, a tight layout."""
    handles, labels = legend_entries(axes)
    kw = {} if fontsize is None else {"fontsize": fontsize}
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), frameon=False,
               bbox_to_anchor=(0.5, -0.03), handlelength=2.2, columnspacing=1.2, **kw)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
