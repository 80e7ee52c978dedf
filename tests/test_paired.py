"""Paired differences against a baseline method over seeds (sims.paired_differences).

Oracles: scipy.stats.ttest_rel's confidence interval of the mean paired difference (an
implementation of the paired t interval independent of ours), and the best epoch picked by hand.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

import sims

METHODS = ("SR", "LoRA-ML", "last-layer-ML", "Reptile")


def _table(acc, val=None, epochs=3):
    """A fine-tuning table from ``acc[method][scheme][n]`` = test accuracy per seed (array) at the
    last epoch; earlier epochs hold 0.5. ``val`` (same layout) is the validation accuracy of the
    last epoch (default: 1, so best = last)."""
    rows = []
    for m, by_scheme in acc.items():
        for s, by_n in by_scheme.items():
            for n, values in by_n.items():
                for seed, a in enumerate(values):
                    for e in range(epochs):
                        last = e == epochs - 1
                        v = (1.0 if val is None else val[m][s][n][seed]) if last else 0.6
                        rows += [{"phase": "finetune", "retraining": m, "finetuning": s, "n_finetune": n,
                                  "seed": seed, "epoch": e, "split": "val", "accuracy": v},
                                 {"phase": "finetune", "retraining": m, "finetuning": s, "n_finetune": n,
                                  "seed": seed, "epoch": e, "split": "test", "accuracy": a if last else 0.5}]
    return pd.DataFrame(rows)


def _random_acc(rng, k, schemes=("lora", "last-layer"), ns=(10, 40)):
    return {m: {s: {n: rng.uniform(0.5, 1.0, k) for n in ns} for s in schemes} for m in METHODS}


def test_matches_ttest_rel_interval():
    """Mean difference and the 95 % interval equal scipy's paired t interval (ttest_rel) per method,
    scheme and n; rules out a normal quantile (1.96 instead of t_{0.975, 6} = 2.447: 20 % narrower),
    ddof 0 (8 % narrower at k = 7), an unpaired SE, and a sign flip."""
    rng = np.random.default_rng(0)
    acc = _random_acc(rng, 7)
    d = sims.paired_differences(_table(acc))
    assert len(d) == 3 * 2 * 2 and set(d["retraining"]) == set(METHODS[1:]) and (d["seeds"] == 7).all()
    for r in d.itertuples():
        a, b = acc[r.retraining][r.finetuning][r.n_finetune], acc["SR"][r.finetuning][r.n_finetune]
        res = stats.ttest_rel(a, b)
        ci = res.confidence_interval(0.95)
        np.testing.assert_allclose([r.last_diff, r.last_lo, r.last_hi], [np.mean(a - b), ci.low, ci.high],
                                   rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(r.last_sd, np.std(a - b, ddof=1), rtol=1e-12)
        # every validation accuracy is 1 at the last epoch: the best epoch is the last
        assert (r.best_diff, r.best_lo, r.best_hi) == (r.last_diff, r.last_lo, r.last_hi)


def test_best_uses_the_validation_epoch():
    """``best`` takes the test accuracy at the epoch of highest validation accuracy: where the last
    epoch's validation (0.55) is below the earlier epochs' (0.6), best is the earlier test accuracy
    (0.5) for every seed, so the difference there is 0 exactly while ``last`` is not."""
    rng = np.random.default_rng(1)
    acc = {m: {"lora": {10: rng.uniform(0.7, 1.0, 4)}} for m in ("SR", "LoRA-ML")}
    val = {m: {"lora": {10: np.full(4, 0.55)}} for m in ("SR", "LoRA-ML")}
    d = sims.paired_differences(_table(acc, val))
    assert d["best_diff"].iloc[0] == 0.0 and d["best_sd"].iloc[0] == 0.0
    assert d["last_diff"].iloc[0] == pytest.approx(np.mean(acc["LoRA-ML"]["lora"][10] - acc["SR"]["lora"][10]))


def test_pairing_narrows_the_interval():
    """Seeds move every method together (a common offset of SD 10 points), LoRA-ML beats SR by
    2 points on each seed ± 0.2: the unpaired standard errors of the summary are about
    10/√8 = 3.5 points each, so the two means lie within one unpaired SE of each other, while the
    paired interval is 2 ± t·0.2/√8 ≈ 2 ± 0.17 points and excludes 0. A pairing by position in a
    shuffled order, or an unpaired SE, would give an interval wider than 5 points."""
    rng = np.random.default_rng(2)
    k = 8
    seed_effect = 0.10 * rng.standard_normal(k)
    sr = 0.75 + seed_effect
    ml = sr + 0.02 + 0.002 * rng.standard_normal(k)
    table = _table({"SR": {"lora": {10: sr}}, "LoRA-ML": {"lora": {10: ml}}})
    summary = sims.realdata_summary(table).set_index("retraining")
    unpaired = np.hypot(summary.loc["SR", "last_se"], summary.loc["LoRA-ML", "last_se"])
    assert unpaired > 0.025                       # the means alone cannot tell the methods apart
    d = sims.paired_differences(table).iloc[0]
    assert d["last_hi"] - d["last_lo"] < 0.005 and d["last_lo"] > 0.01
    # the rows of a method in another order than the baseline's still pair by seed
    shuffled = table.sample(frac=1.0, random_state=0)
    assert sims.paired_differences(shuffled).iloc[0]["last_lo"] == pytest.approx(d["last_lo"], rel=1e-12)


def test_options_baseline_and_level():
    """``baseline`` chooses what is subtracted (LoRA-ML as baseline: SR's row is the negated
    LoRA-ML row); ``level`` sets the t quantile (level 0.5: half-width t_{0.75, k-1}·sd/√k,
    about a quarter of the 95 % one at k = 5)."""
    rng = np.random.default_rng(3)
    acc = _random_acc(rng, 5, schemes=("lora",), ns=(20,))
    table = _table(acc)
    d = sims.paired_differences(table).set_index("retraining")
    e = sims.paired_differences(table, baseline="LoRA-ML").set_index("retraining")
    assert "LoRA-ML" not in e.index and "SR" in e.index
    assert e.loc["SR", "last_diff"] == pytest.approx(-d.loc["LoRA-ML", "last_diff"], rel=1e-12)
    assert e.loc["SR", "last_lo"] == pytest.approx(-d.loc["LoRA-ML", "last_hi"], rel=1e-12)
    h = sims.paired_differences(table, level=0.5).set_index("retraining")
    half = (h["last_hi"] - h["last_lo"]) / 2
    expected = stats.t.ppf(0.75, 4) * d["last_sd"] / np.sqrt(5)
    np.testing.assert_allclose(half.to_numpy(), expected.to_numpy(), rtol=1e-12)


def test_only_shared_seeds_pair():
    """A seed the baseline lacks (or the method lacks) is left out: seeds counts the pairs, and
    with one pair the interval is undefined (NaN), never a zero-width interval."""
    acc = {"SR": {"lora": {10: np.array([0.6, 0.7, 0.8])}}, "LoRA-ML": {"lora": {10: np.array([0.7, 0.9, 0.9])}}}
    table = _table(acc)
    table = table[~((table["retraining"] == "SR") & (table["seed"] == 2))]
    d = sims.paired_differences(table).iloc[0]
    assert d["seeds"] == 2 and d["last_diff"] == pytest.approx(0.15)
    one = table[table["seed"] == 0]
    d1 = sims.paired_differences(one).iloc[0]
    assert d1["seeds"] == 1 and np.isnan(d1["last_lo"]) and np.isnan(d1["last_sd"])


def test_refuses_an_absent_baseline_and_mixed_presets():
    """A baseline without rows, a level outside (0, 1), and the tables of two presets together
    (each seed would pair, and pick the best epoch of, two presets' runs at once) are refused."""
    two = _table({m: {"lora": {10: np.array([0.7, 0.9])}} for m in ("SR", "LoRA-ML")})
    mixed = pd.concat([two.assign(preset="paper"), two.assign(preset="clean")], ignore_index=True)
    for func in (sims.paired_differences, sims.realdata_summary):
        with pytest.raises(ValueError, match="'table' parameter of .* must hold one preset"):
            func(mixed)
    acc = {"LoRA-ML": {"lora": {10: np.array([0.7, 0.9])}}}
    with pytest.raises(ValueError, match="'baseline' parameter of paired_differences.*LoRA-ML"):
        sims.paired_differences(_table(acc))
    with pytest.raises(ValueError, match="'level' parameter of paired_differences must be a float in \\(0, 1\\)"):
        sims.paired_differences(_table(acc), baseline="LoRA-ML", level=1.0)


def test_seeds_pair_the_draws_of_every_method():
    """What makes the difference paired: a seed fixes the data split, the initial model and the
    fine-tuning draws of every method. With no retraining epoch, SR's and LoRA-ML's bases are both
    the seed's initial Mixer (LoRA-ML's adapters are dropped), so their fine-tuning histories are
    identical number for number; a method-dependent stream anywhere (split, init, loader order,
    adapter init, dropout) would make them differ."""
    cfg = sims.realdata_sweep("digits", seeds=(3,), values=("SR", "LoRA-ML"), retrain_epochs=0, ft_epochs=3,
                              ft_lr=0.1, width=16, n_finetune=(40,), finetuning=("lora",))
    a, b = (sims.simulate_realdata_chunk(cfg, v, (0,), device="cpu") for v in (0, 1))
    fa, fb = (t[t["phase"] == "finetune"].reset_index(drop=True) for t in (a, b))
    test = fa.loc[fa["split"] == "test", "accuracy"]
    assert test.nunique() > 2                     # fine-tuning moves the predictions (dropout on)
    pd.testing.assert_series_equal(fa["accuracy"], fb["accuracy"])
    d = sims.paired_differences(pd.concat([a, b], ignore_index=True)).iloc[0]
    assert (d["last_diff"], d["best_diff"]) == (0.0, 0.0)


def test_realdata_outputs_carry_the_paired_table(tmp_path):
    """The table writer adds the paired table (points, the interval bold where it excludes 0) and
    paired.csv; without pairs the Markdown has no paired table."""
    from loraml.figures.realdata import realdata_markdown, write_realdata_outputs

    acc = {"SR": {"lora": {10: np.array([0.60, 0.70, 0.80]), 20: np.array([0.7, 0.8, 0.9])}},
           "LoRA-ML": {"lora": {10: np.array([0.70, 0.81, 0.89]), 20: np.array([0.6, 0.9, 0.8])}}}
    paths = write_realdata_outputs(_table(acc), tmp_path / "a", title="t", name="digits", pdf=False)
    assert {p.name for p in paths} == {"digits.png", "table.csv", "table.md", "paired.csv"}
    md = (tmp_path / "a" / "table.md").read_text()
    # n = 10: d = 10, 11, 9 points, sd 1, half-width t_{0.975,2}/√3 = 2.484: [+7.5, +12.5]
    assert "| lora | 10 | LoRA-ML | 3 | **+10.0 [+7.5, +12.5]** |" in md
    assert "| lora | 20 | LoRA-ML | 3 | -3.3 [" in md                 # d = -10, 10, -10: not bold
    paired = pd.read_csv(tmp_path / "a" / "paired.csv")
    assert paired["last_lo"].iloc[0] == pytest.approx(0.10 - stats.t.ppf(0.975, 2) * 0.01 / np.sqrt(3), abs=1e-6)
    alone = sims.realdata_summary(_table({"SR": acc["SR"]}))
    assert "minus SR" not in realdata_markdown(alone) and "minus SR" in md
