"""The real-data table and figure (spec/realdata.md): accuracy of the new task against the number of
fine-tuning images, one line per retraining method, one panel per fine-tuning scheme."""

from __future__ import annotations

from pathlib import Path

import numpy as np

import sims

from ._style import COLORS, RC, finish_row, panel_row, plt, save

__all__ = ["make_realdata_figures", "realdata_configs", "write_realdata_outputs", "plot_realdata", "realdata_markdown",
           "convai_markdown", "plot_convai", "write_convai_outputs"]

_COLORS = {"SR": COLORS["SR"], "LoRA-ML": COLORS["LoRA-ML"], "last-layer-ML": "#2ca02c", "Reptile": "#9467bd"}
_SCHEME_TITLE = {"lora": "LoRA fine-tuning (base frozen)", "last-layer": "last-layer fine-tuning (new head)"}


def realdata_markdown(summary, paired=None) -> str:
    """The summary as a Markdown table: mean ± SE (median) of last-epoch and best-epoch accuracy in %;
    with ``paired`` (:func:`sims.paired_differences`), a second table of each method minus SR with
    its 95 % confidence interval, in accuracy points."""
    lines = ["| fine-tuning | n | retraining | last epoch: mean ± SE (median) | best epoch (val): mean ± SE (median) |",
             "|---|---|---|---|---|"]
    for r in summary.itertuples():
        cells = []
        for which in ("last", "best"):
            mean, se, med = (getattr(r, f"{which}_{k}") for k in ("mean", "se", "median"))
            se_text = "–" if not np.isfinite(se) else f"{100 * se:.1f}"
            cells.append(f"{100 * mean:.1f} ± {se_text} ({100 * med:.1f})")
        lines.append(f"| {r.finetuning} | {r.n_finetune} | {r.retraining} | {cells[0]} | {cells[1]} |")
    if paired is not None and len(paired):
        lines += ["", "Each method minus SR, paired over seeds (the same seed: the same data split and order, "
                  "initialisation and fine-tuning draws), accuracy points: mean difference [95 % t interval]", "",
                  "| fine-tuning | n | retraining | seeds | last epoch − SR | best epoch (val) − SR |",
                  "|---|---|---|---|---|---|"]
        for r in paired.itertuples():
            cells = [_interval(*(getattr(r, f"{which}_{k}") for k in ("diff", "lo", "hi"))) for which in ("last", "best")]
            lines.append(f"| {r.finetuning} | {r.n_finetune} | {r.retraining} | {r.seeds} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines) + "\n"


def _interval(diff, lo, hi) -> str:
    """``+2.1 [+0.3, +3.9]`` in points; a bold cell where the interval excludes 0."""
    if not np.isfinite(lo):
        return f"{100 * diff:+.1f} [–]"
    text = f"{100 * diff:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}]"
    return f"**{text}**" if lo > 0 or hi < 0 else text


def plot_realdata(summary, path: Path, *, title: str, pdf: bool = True, paired=None) -> list[Path]:
    """Accuracy against the number of fine-tuning images (mean ± SE band), one panel per scheme;
    with ``paired``, a second row: each method minus SR, paired over seeds, with 95 % interval bars."""
    schemes = [s for s in sims.FINETUNING_SCHEMES if s in set(summary["finetuning"])]
    rows = 1 if paired is None or not len(paired) else 2
    with plt.rc_context(RC):
        fig, grid = plt.subplots(rows, len(schemes), figsize=(3.2 * len(schemes) + 0.7, 2.9 * rows),
                                 sharey="row", squeeze=False)
        axes = grid[0]
        for ax, scheme in zip(axes, schemes):
            sub = summary[summary["finetuning"] == scheme]
            for method in sims.RETRAINING_METHODS:
                g = sub[sub["retraining"] == method].sort_values("n_finetune")
                if g.empty:
                    continue
                n, mean = g["n_finetune"].to_numpy(), 100 * g["last_mean"].to_numpy()
                se = 100 * np.nan_to_num(g["last_se"].to_numpy())
                ax.plot(n, mean, "o-", ms=3, lw=1.3, color=_COLORS[method], label=method)
                ax.fill_between(n, mean - se, mean + se, color=_COLORS[method], alpha=0.15, lw=0)
            _n_axis(ax, sub)
            ax.set_title(_SCHEME_TITLE[scheme])
            ax.set_xlabel("fine-tuning images of the new task")
        axes[0].set_ylabel("test accuracy, last epoch (%)\nmean ± SE over seeds")
        if rows == 2:
            methods = [m for m in sims.RETRAINING_METHODS if m in set(paired["retraining"])]
            for ax, scheme in zip(grid[1], schemes):
                sub = paired[paired["finetuning"] == scheme]
                ax.axhline(0.0, color=_COLORS["SR"], lw=1.0, ls="--")
                for i, method in enumerate(methods):
                    g = sub[sub["retraining"] == method].sort_values("n_finetune")
                    if g.empty:
                        continue
                    # methods side by side around each n (a factor on the log axis)
                    n = g["n_finetune"].to_numpy() * 1.09 ** (i - (len(methods) - 1) / 2)
                    diff = 100 * g["last_diff"].to_numpy()
                    err = 100 * np.nan_to_num(np.stack([g["last_diff"] - g["last_lo"], g["last_hi"] - g["last_diff"]]))
                    ax.errorbar(n, diff, yerr=err, fmt="o", ms=3, lw=1.1, capsize=2, color=_COLORS[method],
                                label=method)
                _n_axis(ax, summary[summary["finetuning"] == scheme])
                ax.set_title(f"{_SCHEME_TITLE[scheme].split(' (')[0]}: paired difference from SR")
                ax.set_xlabel("fine-tuning images of the new task")
            seeds = int(paired["seeds"].min())
            grid[1][0].set_ylabel(f"method − SR, last epoch\n(accuracy points; 95 % CI, {seeds} seeds)")
        finish_row(fig, axes, title)
        return save(fig, path, pdf=pdf)


def _n_axis(ax, sub):
    """A log axis of the sample sizes, ticked at each."""
    if sub["n_finetune"].nunique() > 1:
        ax.set_xscale("log")
        ticks = sorted(sub["n_finetune"].unique())
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.minorticks_off()


def write_realdata_outputs(table, folder: Path, *, title: str, name: str = "accuracy", pdf: bool = True) -> list[Path]:
    """table.csv (the summary), paired.csv (each method minus SR, paired over seeds, when SR and
    another method are in ``table``), table.md and the figure of one real-data run under ``folder``."""
    summary = sims.realdata_summary(table)
    methods = set(summary["retraining"])
    paired = sims.paired_differences(table) if "SR" in methods and len(methods) > 1 else None
    paths = _write_outputs(summary, folder, lambda s: realdata_markdown(s, paired),
                           lambda s, png: plot_realdata(s, png, title=title, pdf=pdf, paired=paired), f"{name}.png")
    if paired is not None:
        csv = Path(folder) / "paired.csv"
        paired.to_csv(csv, index=False, float_format="%.6g")
        paths.append(csv)
    return paths


def _write_outputs(summary, folder, markdown, plot, png_name) -> list[Path]:
    """``summary`` as folder/table.csv and folder/table.md (``markdown``), and ``plot(summary, png)``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    csv, md = folder / "table.csv", folder / "table.md"
    summary.to_csv(csv, index=False, float_format="%.6g")
    md.write_text(markdown(summary))
    return plot(summary, folder / png_name) + [csv, md]


def realdata_configs(*, fast: bool = False, preset: str = "both") -> list:
    """The digits configs of the README table: the clean preset, then the paper preset."""
    overrides = dict(retrain_epochs=2, reptile_epochs=1, ft_epochs=2, n_finetune=(10, 40)) if fast else {}
    return [sims.realdata_sweep("digits", preset=name, seeds=(0, 1) if fast else (0, 1, 2, 3, 4), **overrides)
            for name in (("clean", "paper") if preset == "both" else (preset,))]


def make_realdata_figures(out: Path, *, fast: bool = False, store="results", executor="processes",
                          progress: bool = True, device: str | None = None, preset: str = "both") -> list[Path]:
    """The offline digits table of the README (5 seeds): the clean preset under ``out/realdata``, the
    paper preset (quirks V1-V3) under ``out/realdata/paper``."""
    configs = realdata_configs(fast=fast, preset=preset)
    tables = sims.run_many(configs, executor=executor, store=store, progress=progress, device=device or "cpu")
    paths = []
    for cfg, table in zip(configs, tables):
        title = (f"Digits 8/9 after retraining on 0/1, 2/3, 4/5, 6/7 (tiny Mixer, {cfg.preset} preset, "
                 f"{len(cfg.seeds)} seeds)")
        folder = Path(out) / "realdata" / ("paper" if cfg.preset == "paper" else "")
        paths += write_realdata_outputs(table, folder, title=title, name="digits", pdf=not fast)
    return paths


# ------------------------------------------------------------------------------------------------
# The language experiment (ConvAI2, spec realdata §3)

_LORA_METHODS = ("LoRA-ML", "SR", "Reptile")
_HEAD_METHODS = ("last-layer-ML", "SR", "Reptile")


def _cell(mean, se):
    se_text = "–" if not np.isfinite(se) else f"{100 * se:.1f}"
    return f"{100 * mean:.1f} ± {se_text}"


def convai_markdown(summary) -> str:
    """The averaged ConvAI2 tables in Markdown: hits@1 (%) mean ± SE over seeds, last epoch and best
    epoch (chosen on the validation dialogues). LoRA: rank × {LoRA-ML, SR, Reptile}; last layer:
    {last-layer-ML, SR, Reptile}. Per-persona numbers are in the CSV."""
    avg = summary[summary["persona"] == "average"]
    lines = []
    lora = avg[avg["finetuning"] == "lora"]
    if not lora.empty:
        methods = [m for m in _LORA_METHODS if m in set(lora["retraining"])]
        lines += ["LoRA fine-tuning, hits@1 (%) averaged over the test personas: last epoch / best epoch", "",
                  "| rank | " + " | ".join(methods) + " |", "|---" * (len(methods) + 1) + "|"]
        for r, g in lora.groupby("rank", sort=True):
            cells = []
            for m in methods:
                row = g[g["retraining"] == m]
                cells.append("–" if row.empty else
                             f"{_cell(row['last_mean'].iloc[0], row['last_se'].iloc[0])} / "
                             f"{_cell(row['best_mean'].iloc[0], row['best_se'].iloc[0])}")
            lines.append(f"| {r} | " + " | ".join(cells) + " |")
        lines.append("")
    head = avg[avg["finetuning"] == "last-layer"]
    if not head.empty:
        lines += ["Last-layer fine-tuning, hits@1 (%) averaged over the test personas", "",
                  "| retraining | last epoch | best epoch |", "|---|---|---|"]
        for m in _HEAD_METHODS:
            row = head[head["retraining"] == m]
            if not row.empty:
                lines.append(f"| {m} | {_cell(row['last_mean'].iloc[0], row['last_se'].iloc[0])} | "
                             f"{_cell(row['best_mean'].iloc[0], row['best_se'].iloc[0])} |")
        lines.append("")
    return "\n".join(lines)


def plot_convai(summary, path: Path, *, title: str, pdf: bool = True) -> list[Path]:
    """Average hits@1 against the LoRA rank, one line per retraining method (last epoch, then best
    epoch); the last-layer fine-tuning results as dashed horizontal lines of the same colours."""
    avg = summary[summary["persona"] == "average"]
    lora, head = avg[avg["finetuning"] == "lora"], avg[avg["finetuning"] == "last-layer"]
    with plt.rc_context(RC):
        fig, axes = panel_row(2, width=3.2, height=2.9)
        for ax, which in zip(axes, ("last", "best")):
            for method in sims.RETRAINING_METHODS:
                g = lora[lora["retraining"] == method].sort_values("rank")
                if not g.empty:
                    r, mean = g["rank"].to_numpy(), 100 * g[f"{which}_mean"].to_numpy()
                    se = 100 * np.nan_to_num(g[f"{which}_se"].to_numpy())
                    ax.plot(r, mean, "o-", ms=3, lw=1.3, color=_COLORS[method], label=f"{method} (LoRA)")
                    ax.fill_between(r, mean - se, mean + se, color=_COLORS[method], alpha=0.15, lw=0)
                h = head[head["retraining"] == method]
                if not h.empty:
                    ax.axhline(100 * h[f"{which}_mean"].iloc[0], color=_COLORS[method], ls="--", lw=1.0,
                               label=f"{method} (last layer)")
            if not lora.empty:
                ranks = sorted(lora["rank"].unique())
                ax.set_xticks(ranks, [str(r) for r in ranks])
            ax.set_xlabel("LoRA rank r")
            ax.set_title(f"{which} epoch" + (" (chosen on validation)" if which == "best" else ""))
        axes[0].set_ylabel("average hits@1 of 20 (%)")
        finish_row(fig, axes, title)
        return save(fig, path, pdf=pdf)


def write_convai_outputs(table, folder: Path, *, title: str, pdf: bool = True) -> list[Path]:
    """table.csv (every persona and the average), table.md (the averaged tables) and the figure of
    one ConvAI2 run under ``folder``."""
    return _write_outputs(sims.convai_summary(table), folder, convai_markdown,
                          lambda summary, png: plot_convai(summary, png, title=title, pdf=pdf), "convai.png")
