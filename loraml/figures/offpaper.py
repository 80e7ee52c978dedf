"""Off the paper's assumptions (issue 17): which predictions survive each relaxed assumption.

One figure per knob (``figures/off-paper/<knob>.png``) and one table (``table.md``, ``table.csv``).
Every setting is a clean-preset run of the linear protocol (d = 10, k = 1 unless said, T = 3,
N = 5000, n = 100, σ = 0.1, the paper's gradient descent for retraining; 10 trials), with the knob
changed and nothing else. Each figure has two panels:

- base error ‖Â − A*‖² of LoRA-ML (the paper's GD) and SR (P5/P10: LoRA-ML recovers A*; P2: SR
  tends to A* + R̄*, its prediction ‖R̄*‖² drawn as a tick);
- test-task excess risk after the best rank-r fine-tuning (Lemma 1) from each base, LoRA-ML from
  the paper's GD and from the exact solver, and SR, with the P6 prediction for LoRA-ML
  (``theory.rate_prediction_general``, the covariance- and noise-aware constant) and the P4 floor
  for SR, Σ_{i>r} σ_i²((R*_{T+1} − R̄*) Σ^{1/2}) (the floor in the excess risk tr(E Σ Eᵀ)).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

import sims
import theory as th

from ._style import COLORS, RC, plt, save

__all__ = ["OFFPAPER_SETTINGS", "offpaper_configs", "offpaper_table", "plot_offpaper", "make_offpaper_figures"]

#: knob -> [(label, overrides)]: the settings each figure compares (the first is the paper's).
OFFPAPER_SETTINGS = {
    "covariance": [("isotropic", {}),
                   ("spiked κ=4", dict(covariance="spiked", condition=4.0)),
                   ("spiked κ=12", dict(covariance="spiked", condition=12.0)),
                   ("Toeplitz ρ=0.5", dict(covariance="toeplitz", rho=0.5)),
                   ("Toeplitz ρ=0.8", dict(covariance="toeplitz", rho=0.8))],
    "noise": [("Gaussian", {}),
              ("Student-t ν=10", dict(noise_law="student_t", nu=10.0)),
              ("Student-t ν=4", dict(noise_law="student_t", nu=4.0)),
              ("Student-t ν=2.5", dict(noise_law="student_t", nu=2.5)),
              ("heteroscedastic", dict(noise_law="heteroscedastic"))],
    "rank": [("k_fit=1 < k", dict(k=2, k_fit=1)),
             ("k_fit=k=2", dict(k=2)),
             ("k_fit=3 > k", dict(k=2, k_fit=3)),
             ("k_fit=4 > k", dict(k=2, k_fit=4))],
    "heterogeneity": [("equal norms", {}),
                      ("ratio 2", dict(norm_ratio=2.0)),
                      ("ratio 4", dict(norm_ratio=4.0)),
                      ("ratio 8", dict(norm_ratio=8.0))],
}


def offpaper_configs(*, fast: bool = False) -> list:
    """One single-value config per (knob, setting), in the order of ``OFFPAPER_SETTINGS``."""
    base = dict(preset="clean", runs=3 if fast else 10, ft_steps=60 if fast else 1000)
    if fast:
        base.update(outer_steps=150, N=1000)
    return [sims.linear_sweep("n", (100,), **base, **overrides)
            for settings in OFFPAPER_SETTINGS.values() for _, overrides in settings]


def _predictions(cfg) -> pd.DataFrame:
    """Per trial: ‖R̄*‖² (P2), the P4 floor of SR at the fine-tuning rank (in tr(EΣEᵀ)), the P6 rate."""
    c = cfg.point(cfg.values[0])
    Sigma = c.input_cov
    root = np.eye(c.d) if Sigma is None else np.linalg.cholesky(Sigma)     # Σ = L Lᵀ: ‖E L‖² = tr(E Σ Eᵀ)
    rows = []
    for trial in range(cfg.runs):
        truth = sims.linear_truth(cfg, 0, trial)
        M = (truth.R_star[-1] - truth.R_bar) @ root
        s = np.linalg.svd(M, compute_uv=False)
        r = c.ft_rank()
        rate = float(th.rate_prediction_general(c.n, c.noise_std, truth.U_star[-1], covariance=Sigma,
                                                noise=c.noise_law, metric="risk"))
        rows.append({"trial": trial, "R_bar_sq": float(np.sum(truth.R_bar**2)), "P4_floor": float(np.sum(s[r:] ** 2)),
                     "P6_rate": rate})
    return pd.DataFrame(rows)


def offpaper_table(configs, tables) -> pd.DataFrame:
    """One row per (knob, setting): measured means and the predictions beside them."""
    rows = []
    it = iter(zip(configs, tables))
    for knob, settings in OFFPAPER_SETTINGS.items():
        for label, _ in settings:
            cfg, table = next(it)
            last = table[table["step"] == table["step"].max()]
            per = {m: last[last["method"] == m].sort_values("trial") for m in ("LoRA-ML", "SR")}
            pred = _predictions(cfg)
            ml, sr = per["LoRA-ML"], per["SR"]
            rows.append({
                "knob": knob, "setting": label,
                "LoRA-ML A_error": ml["A_error"].mean(), "SR A_error": sr["A_error"].mean(),
                "SR A_error / |R_bar|^2 (P2)": (sr["A_error"].to_numpy() / pred["R_bar_sq"].to_numpy()).mean(),
                "LoRA-ML GD + Lemma 1": ml["optimum"].mean(), "LoRA-ML exact + Lemma 1": ml["optimum_exact"].mean(),
                "P6 prediction": pred["P6_rate"].mean(),
                "exact / P6": ml["optimum_exact"].mean() / pred["P6_rate"].mean(),
                "SR + Lemma 1": sr["optimum"].mean(), "P4 floor": pred["P4_floor"].mean(),
                "SR / P4 floor": sr["optimum"].mean() / pred["P4_floor"].mean(),
                "LoRA-ML GD diverged": f"{int(ml['A_error'].isna().sum())}/{len(ml)}",
                "_ml": ml, "_sr": sr, "_pred": pred,
            })
    return pd.DataFrame(rows)


def plot_offpaper(rows: pd.DataFrame, path: Path, *, title: str, pdf: bool = True) -> list[Path]:
    """Two panels over the settings of one knob: base errors, and fine-tuned excess risks."""
    x = np.arange(len(rows))
    with plt.rc_context(RC):
        fig, (a, b) = plt.subplots(1, 2, figsize=(9.0, 3.3))

        def dots(ax, series, dx, color, marker, label):
            means = np.array([s.mean() for s in series])
            lo = np.array([s.min() for s in series])
            hi = np.array([s.max() for s in series])
            ax.errorbar(x + dx, means, yerr=[means - lo, hi - means], fmt=marker, color=color, ms=4.5, capsize=2,
                        lw=1, label=label)

        dots(a, [r["_ml"]["A_error"] for _, r in rows.iterrows()], -0.08, COLORS["LoRA-ML"], "o", "LoRA-ML (paper GD)")
        dots(a, [r["_sr"]["A_error"] for _, r in rows.iterrows()], 0.08, COLORS["SR"], "s", "SR")
        a.plot(x + 0.08, [r["_pred"]["R_bar_sq"].mean() for _, r in rows.iterrows()], "_", color="k", ms=14, mew=1.5,
               label=r"P2: SR $\to\|\bar R^*\|_F^2$")
        for i, (_, r) in enumerate(rows.iterrows()):
            bad = int(r["_ml"]["A_error"].isna().sum())
            if bad:
                a.annotate(f"GD diverged\n{bad}/{len(r['_ml'])}", (i - 0.08, 0.04), xycoords=("data", "axes fraction"),
                           ha="center", fontsize=6.5, color=COLORS["LoRA-ML"])
        a.set_ylabel(r"$\|\hat A-A^*\|_F^2$ (mean, min–max)")
        a.set_title("retrained base (P5/P10 vs P2)")

        dots(b, [r["_ml"]["optimum"] for _, r in rows.iterrows()], -0.12, COLORS["LoRA-ML"], "o",
             "LoRA-ML (paper GD) + Lemma 1")
        dots(b, [r["_ml"]["optimum_exact"] for _, r in rows.iterrows()], 0.0, COLORS["exact"], "D",
             "LoRA-ML (exact) + Lemma 1")
        dots(b, [r["_sr"]["optimum"] for _, r in rows.iterrows()], 0.12, COLORS["SR"], "s", "SR + Lemma 1")
        b.plot(x, rows["P6 prediction"], "_", color="k", ms=16, mew=1.5, label="P6 rate (covariance/noise-aware)")
        b.plot(x + 0.12, rows["P4 floor"], "_", color=COLORS["SR"], ms=16, mew=1.5, alpha=0.6,
               label=r"P4 floor $\sum_{i>r}\sigma_i^2((R^*_{T+1}-\bar R^*)\Sigma^{1/2})$")
        b.set_ylabel("test-task excess risk tr(EΣEᵀ)")
        b.set_title("fine-tuned test task (P6 vs P4)")
        for ax in (a, b):
            ax.set_yscale("log")
            ax.set_xticks(x, rows["setting"], rotation=20, ha="right", fontsize=7.5)
            ax.set_xlim(-0.5, len(rows) - 0.5)
        handles, labels = [], []
        for ax in (a, b):
            for h, lab in zip(*ax.get_legend_handles_labels()):
                handles.append(h)
                labels.append(lab)
        fig.legend(handles, labels, loc="lower center", ncol=4, frameon=False, fontsize=7, bbox_to_anchor=(0.5, -0.1))
        fig.suptitle(title, fontsize=9)
        fig.tight_layout(rect=(0, 0.08, 1, 1))
        return save(fig, path, pdf=pdf)


_TITLES = {
    "covariance": "Input covariance x ~ N(0, Σ)",
    "noise": "Noise law (variance σ² throughout)",
    "rank": "Fitted adapter rank k_fit vs the true k = 2 (fine-tuning rank k_fit)",
    "heterogeneity": "Unequal adapter norms: retraining task t scaled by ratio^(t/(T−1)), test task 1",
}

_COLUMNS = ["knob", "setting", "LoRA-ML A_error", "SR A_error", "SR A_error / |R_bar|^2 (P2)", "LoRA-ML GD + Lemma 1",
            "LoRA-ML exact + Lemma 1", "P6 prediction", "exact / P6", "SR + Lemma 1", "P4 floor", "SR / P4 floor",
            "LoRA-ML GD diverged"]


def offpaper_markdown(rows: pd.DataFrame) -> str:
    def cell(v):
        return f"{v:.3g}" if isinstance(v, (float, np.floating)) else str(v)
    lines = ["| " + " | ".join(_COLUMNS) + " |", "|" + "---|" * len(_COLUMNS)]
    lines += ["| " + " | ".join(cell(r[c]) for c in _COLUMNS) + " |" for _, r in rows.iterrows()]
    return "\n".join(lines) + "\n"


def make_offpaper_figures(out: Path, *, fast: bool = False, store="results", executor="processes",
                          progress: bool = True) -> list[Path]:
    """Regenerate ``<out>/off-paper/<knob>.png`` (and PDFs), ``table.md`` and ``table.csv``."""
    configs = offpaper_configs(fast=fast)
    tables = sims.run_many(configs, executor=executor, store=store, progress=progress)
    rows = offpaper_table(configs, tables)
    folder = Path(out) / "off-paper"
    settings = "; ".join(f"{k}={v}" for k, v in dict(d=configs[0].d, T=configs[0].T, N=configs[0].N,
                                                      n=configs[0].n, sigma=configs[0].sigma,
                                                      runs=configs[0].runs).items())
    paths = []
    for knob in OFFPAPER_SETTINGS:
        sub = rows[rows["knob"] == knob].reset_index(drop=True)
        paths += plot_offpaper(sub, folder / f"{knob}.png", title=f"{_TITLES[knob]} (clean preset; {settings})",
                               pdf=not fast)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "table.md").write_text(offpaper_markdown(rows))
    rows[_COLUMNS].to_csv(folder / "table.csv", index=False)
    return paths + [folder / "table.md", folder / "table.csv"]
