"""The real-data table and figure (spec/realdata.md): accuracy of the new task against the number of
fine-tuning images, one line per retraining method, one panel per fine-tuning scheme."""

from __future__ import annotations

from pathlib import Path

import numpy as np

import sims

from ._style import COLORS, RC, finish_row, panel_row, plt, save

__all__ = ["make_realdata_figures", "realdata_configs", "write_realdata_outputs", "plot_realdata", "realdata_markdown"]

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
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    summary = sims.realdata_summary(table)
    csv, md = folder / "table.csv", folder / "table.md"
    summary.to_csv(csv, index=False, float_format="%.6g")
    md.write_text(realdata_markdown(summary))
    return plot_realdata(summary, folder / f"{name}.png", title=title, pdf=pdf) + [csv, md]


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
