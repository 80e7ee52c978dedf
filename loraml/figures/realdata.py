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


def realdata_markdown(summary) -> str:
    """The summary as a Markdown table: mean ± SE (median) of last-epoch and best-epoch accuracy in %."""
    lines = ["| fine-tuning | n | retraining | last epoch: mean ± SE (median) | best epoch (val): mean ± SE (median) |",
             "|---|---|---|---|---|"]
    for r in summary.itertuples():
        cells = []
        for which in ("last", "best"):
            mean, se, med = (getattr(r, f"{which}_{k}") for k in ("mean", "se", "median"))
            se_text = "–" if not np.isfinite(se) else f"{100 * se:.1f}"
            cells.append(f"{100 * mean:.1f} ± {se_text} ({100 * med:.1f})")
        lines.append(f"| {r.finetuning} | {r.n_finetune} | {r.retraining} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines) + "\n"


def plot_realdata(summary, path: Path, *, title: str, pdf: bool = True) -> list[Path]:
    schemes = [s for s in sims.FINETUNING_SCHEMES if s in set(summary["finetuning"])]
    with plt.rc_context(RC):
        fig, axes = panel_row(len(schemes), width=3.2, height=2.9)
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
            if sub["n_finetune"].nunique() > 1:
                ax.set_xscale("log")
                ticks = sorted(sub["n_finetune"].unique())
                ax.set_xticks(ticks, [str(t) for t in ticks])
                ax.minorticks_off()
            ax.set_title(_SCHEME_TITLE[scheme])
            ax.set_xlabel("fine-tuning images of the new task")
        axes[0].set_ylabel("test accuracy, last epoch (%)")
        finish_row(fig, axes, title)
        return save(fig, path, pdf=pdf)


def write_realdata_outputs(table, folder: Path, *, title: str, name: str = "accuracy", pdf: bool = True) -> list[Path]:
    """table.csv, table.md and the figure of one real-data run under ``folder``."""
    return _write_outputs(sims.realdata_summary(table), folder, realdata_markdown,
                          lambda summary, png: plot_realdata(summary, png, title=title, pdf=pdf), f"{name}.png")


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
        title = (f"Digits 8/9 after retraining on 0/1, 2/3, 4/5, 6/7 (tiny Mixer, {cfg.preset} preset; "
                 f"mean ± SE over {len(cfg.seeds)} seeds)")
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
