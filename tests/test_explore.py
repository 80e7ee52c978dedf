"""Sweep anything, plot any stored sweep, print it in any format (issue 17).

| test | checks | rules out |
|------|--------|-----------|
| a swept field is an override | chunk i of a sweep of F over values equals, in every number, chunk i of a sweep of another field whose value i is its default, with F set to the same value | a point config that leaves the swept field at its default, or reads it only in some stages (retraining, fine-tuning, noise) |
| a grid point is an override | grid point i equals chunk i of a 1-D sweep of the same length with the other field set | a grid that crosses its values the wrong way round, or labels points with the wrong values |
| validation | unknown field, impossible value, a grid of one field, a grid with vary: ValueError naming it | work started on a config that cannot run |
| CLI | sweep --grid, show --format csv/json/md round-trip the summary; plot writes PNG/PDF | formats that drop rows or digits; a plot that silently draws nothing |
"""

from __future__ import annotations

import json
from io import StringIO

import matplotlib.image as mpimg
import numpy as np
import pandas as pd
import pytest

import sims
from loraml import cli
from loraml.figures.explore import final_values, format_summary, plot_stored

TINY = dict(runs=2, d=4, N=30, n=12, outer_steps=5, inner_steps=2, ft_steps=6, exact_reference=True)
NUMBERS = ["step", "test_loss", "A_error", "optimum", "optimum_exact", "retrain_loss"]


def _numbers(frame):
    return frame.sort_values(["method", "trial", "step"])[NUMBERS].to_numpy()


@pytest.mark.parametrize(("field", "values"), [
    ("sigma", (0.05, 0.4)), ("lr_U", (0.003, 0.01)), ("ft_steps", (4, 9)), ("n", (12, 15)), ("init_scale", (0.1, 0.3)),
    ("k_fit", (1, 2)), ("norm_ratio", (1.0, 3.0)),
])
def test_a_swept_field_is_an_override(field, values):
    """Sweeping F over (a, b): chunk 1 is, number for number, chunk 1 of an outer_steps sweep over
    (6, 5) (same streams: value index 1 of 2; the same shared truth of the paper preset, drawn at the
    sweep's largest sizes) with F = b. Preset clean and paper both."""
    for preset in ("clean", "paper"):
        swept = sims.linear_sweep(field, values, preset=preset, **{k: v for k, v in TINY.items() if k != field})
        other = sims.linear_sweep("outer_steps", (6, 5), preset=preset,
                                  **{**{k: v for k, v in TINY.items() if k != "outer_steps"}, field: values[1]})
        a = sims.simulate_chunk(swept, 1, range(2))
        b = sims.simulate_chunk(other, 1, range(2))
        np.testing.assert_array_equal(_numbers(a), _numbers(b))
        assert (a["vary"] == field).all() and (a["value"] == values[1]).all()
        assert a["value"].dtype == (np.int64 if field in sims.INT_FIELDS else np.float64)


def test_a_grid_point_is_an_override():
    """Grid σ ∈ (0.1, 0.2) × n ∈ (12, 15), point 3 = (0.2, 15): equal to chunk 3 of a 4-value σ sweep
    whose fourth value is 0.2, with n = 15; labelled by its index and one column per field."""
    grid = sims.linear_sweep(grid={"sigma": (0.1, 0.2), "n": (12, 15)}, preset="clean",
                             **{k: v for k, v in TINY.items() if k != "n"})
    assert grid.vary == ("sigma", "n") and grid.values == ((0.1, 12), (0.1, 15), (0.2, 12), (0.2, 15))
    line = sims.linear_sweep("sigma", (0.3, 0.4, 0.5, 0.2), preset="clean", **{**TINY, "n": 15})
    a = sims.simulate_chunk(grid, 3, range(2))
    b = sims.simulate_chunk(line, 3, range(2))
    np.testing.assert_array_equal(_numbers(a), _numbers(b))
    assert (a["value"] == 3).all() and (a["sigma"] == 0.2).all() and (a["n"] == 15).all()
    assert (a["vary"] == "sigma,n").all()


@pytest.mark.parametrize(("kwargs", "name"), [
    (dict(vary="bogus", values=(1,)), "vary"),
    (dict(vary="runs", values=(1, 2)), "vary"),
    (dict(vary="sigma"), "values"),
    (dict(vary="sigma", values=(0.1, -1.0)), "sigma"),
    (dict(vary="k", values=(1, 20)), "ranks exceed"),
    (dict(grid={"sigma": (0.1, 0.2)}), "grid"),
    (dict(grid={"sigma": (0.1,), "bogus": (1,)}), "grid"),
    (dict(grid={"sigma": (0.1,), "n": ()}), "grid"),
    (dict(grid={"sigma": (0.1,), "n": (5, 0)}), "values"),
    (dict(vary="T", grid={"sigma": (0.1,), "n": (5,)}), "grid"),
])
def test_sweep_validation_names_the_problem(kwargs, name):
    with pytest.raises(ValueError, match=name):
        sims.linear_sweep(**kwargs)


def test_keys_of_the_papers_sweeps_are_unchanged():
    """The content hashes of the paper's ten figure configs are those of the engine before issue 17
    (their stored results stay valid): recorded from cfbf78b."""
    keys = {(c.preset, c.vary): c.key for c in (sims.linear_sweep(v, preset=p) for p in ("paper", "clean")
                                                for v in ("T", "n", "N", "d", "k"))}
    assert keys == {("paper", "T"): "47b1f9f812b45a36", ("paper", "n"): "69f527403d45f9f0",
                    ("paper", "N"): "90b800f9846b82e6", ("paper", "d"): "3e9bdde2cb2571cb",
                    ("paper", "k"): "a35c5a28ef4428b5", ("clean", "T"): "d8a5d0550102852d",
                    ("clean", "n"): "f7530e985960ac3f", ("clean", "N"): "75f8de9fdf59950a",
                    ("clean", "d"): "d55f3cbdfe46efab", ("clean", "k"): "4550679ad400151e"}


@pytest.fixture(scope="module")
def grid_store(tmp_path_factory):
    store = tmp_path_factory.mktemp("store")
    code = cli.main(["sweep", "linear", "--grid", "sigma=0.05,0.2", "n=12,15", "--runs", "2", "--set", "d=4",
                     "--set", "N=30", "--steps", "6", "--outer-steps", "5", "--store", str(store), "--executor",
                     "serial", "--quiet"])
    assert code == 0
    return next(store.iterdir())


def test_show_formats_round_trip(grid_store, capsys):
    """csv and json carry every row and the full float64 value of the summary; md one row per line."""
    table = sims.read_store(grid_store)
    summary = cli.summarize(table).reset_index()
    assert cli.main(["show", str(grid_store), "--format", "csv"]) == 0
    csv = pd.read_csv(StringIO(capsys.readouterr().out))
    assert len(csv) == len(summary) == 8
    np.testing.assert_array_equal(csv["final_mean"].to_numpy(), summary["final_mean"].to_numpy())
    assert list(csv[["sigma", "n"]].drop_duplicates().itertuples(index=False, name=None)) == \
        [(0.05, 12), (0.05, 15), (0.2, 12), (0.2, 15)]
    assert cli.main(["show", str(grid_store), "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 8 and rows[0]["method"] == "LoRA-ML"
    np.testing.assert_allclose([r["final_mean"] for r in rows], summary["final_mean"], rtol=1e-14)
    assert cli.main(["show", str(grid_store), "--format", "md"]) == 0
    md = capsys.readouterr().out.strip().splitlines()
    assert len(md) == 2 + 8 and md[0].startswith("| value | sigma | n | method |")
    assert format_summary(cli.summarize(table), "table").startswith(" " * 3)  # the default text table


def test_final_values_match_the_summary(grid_store):
    """The heat map's numbers are the summary's final means (same last step per point, mean over trials)."""
    table = sims.read_store(grid_store)
    fin = final_values(table).set_index(["value", "sigma", "n", "method"])["mean"]
    np.testing.assert_allclose(fin.to_numpy(), cli.summarize(table)["final_mean"].to_numpy(), rtol=1e-15)


@pytest.mark.parametrize(("suffix", "metric"), [(".png", "test_loss"), (".pdf", "A_error")])
def test_plot_a_grid(grid_store, tmp_path, suffix, metric, capsys):
    out = tmp_path / f"g{suffix}"
    assert cli.main(["plot", str(grid_store), "-o", str(out), "--metric", metric]) == 0
    assert out.stat().st_size > 5000
    if suffix == ".png":
        img = mpimg.imread(out)
        assert img.shape[0] > 200 and img.std() > 0.05          # something drawn, not a blank canvas


def test_plot_a_sweep_panels_and_against_value(tmp_path):
    cfg = sims.linear_sweep("sigma", (0.05, 0.2, 0.5), preset="clean", **TINY)
    table = pd.concat([sims.simulate_chunk(cfg, i, range(2)) for i in range(3)])
    for metric in ("test_loss", "A_error"):
        path = plot_stored(table, tmp_path / f"{metric}.png", metric=metric, title="t")
        assert mpimg.imread(path).std() > 0.05
    with pytest.raises(ValueError, match="output"):
        plot_stored(table, tmp_path / "x.svg")
    with pytest.raises(ValueError, match="metric"):
        plot_stored(table, tmp_path / "x.png", metric="accuracy")


@pytest.mark.parametrize("preset", ["paper", "clean"])
def test_linear_truth_is_the_engines(preset):
    """sims.linear_truth redraws the ground truth the engine used (its test weight is the engine's target,
    its base the engine's A*), with the knob's adapter scales: rules out predictions computed next to a
    table from another truth (another stream, the shared truth unsliced, scales missing)."""
    from sims._linear import _draw_trial, _shared_truth, _trial_streams

    cfg = sims.linear_sweep("norm_ratio", (1.0, 3.0), preset=preset, **TINY)
    for vi, value in enumerate(cfg.values):
        for trial in range(cfg.runs):
            truth = sims.linear_truth(cfg, vi, trial)
            draw = _draw_trial(cfg, value, _trial_streams(cfg, vi, [trial])[0],
                               _shared_truth(cfg) if preset == "paper" else None)
            np.testing.assert_array_equal(truth.A_star, draw["A_star"])
            np.testing.assert_array_equal(truth.test_weight, draw["target"])
            norms = np.linalg.norm(truth.U_star[:-1], axis=(1, 2))
            if value == 3.0 and preset == "paper":      # shared truth: compare with the unscaled slice
                base = sims.linear_truth(cfg, 0, trial).U_star[:-1]
                np.testing.assert_allclose(norms / np.linalg.norm(base, axis=(1, 2)), [1, 3**0.5, 3])
