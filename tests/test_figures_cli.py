"""The figure scripts and the command line, run end to end at reduced size."""

import subprocess
import sys

import matplotlib.image as mpimg
import numpy as np

from loraml.cli import main


def test_reproduce_theory_figures_fast(tmp_path):
    assert main(["reproduce", "--only", "theory", "--fast", "--out", str(tmp_path)]) == 0
    for name in ("retraining-samples",):
        png = tmp_path / "theory" / f"{name}.png"
        assert png.stat().st_size > 10_000
        img = mpimg.imread(png)
        assert img.shape[0] > 300 and img.shape[1] > 400
        assert np.std(img) > 0.05            # not blank
    assert not list((tmp_path / "theory").glob(".*"))   # no temporary files left behind


def test_cli_rejects_bad_options_with_one_line():
    proc = subprocess.run([sys.executable, "-m", "loraml.cli", "reproduce", "--only", "nope"],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert "invalid choice: 'nope'" in proc.stderr


def test_cli_help_explains_options():
    proc = subprocess.run([sys.executable, "-m", "loraml.cli", "reproduce", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0
    for option in ("--only", "--out", "--fast"):
        assert option in proc.stdout


def test_cli_knows_every_figure_group():
    from loraml.cli import GROUP_NAMES
    from loraml.figures import GROUPS

    assert tuple(GROUPS) == GROUP_NAMES


def test_reproduce_linear_figures_fast(tmp_path):
    assert main(["reproduce", "--only", "linear", "--fast", "--out", str(tmp_path / "figs"),
                 "--store", str(tmp_path / "results"), "--executor", "serial", "--quiet"]) == 0
    for folder in ("linear", "linear-clean"):
        for vary in "TnNdk":
            img = mpimg.imread(tmp_path / "figs" / folder / f"vary-{vary}.png")
            assert img.shape[1] > 600 and np.std(img) > 0.05
    assert len(list((tmp_path / "results").glob("linear-*"))) == 10


def test_reproduce_shallow_figures_fast(tmp_path):
    import pandas as pd

    assert main(["reproduce", "--only", "shallow", "--fast", "--out", str(tmp_path / "figs"),
                 "--store", str(tmp_path / "results"), "--executor", "serial", "--quiet"]) == 0
    for vary in ("d", "T"):
        img = mpimg.imread(tmp_path / "figs" / "shallow" / f"vary-{vary}.png")
        assert img.shape[1] > 600 and np.std(img) > 0.05
    table = pd.read_csv(tmp_path / "figs" / "shallow" / "table.csv")
    assert set(table.method) == {"LoRA-ML", "SR"}
    assert len(table) == 2 * (3 + 4) + 2          # every setting and method, plus rank 3k at T = 2
    assert (table.range_lo <= table["median"]).all() and (table["median"] <= table.range_hi).all()
    assert "| T | 2 | LoRA-ML | 3 |" in (tmp_path / "figs" / "shallow" / "table.md").read_text()


def test_reproduce_overlaps_groups_but_returns_paths_in_group_order(tmp_path, monkeypatch):
    """With workers to feed, the sweeps run in a background thread while this process draws the other
    groups: the paths still come back in group order (linear before theory, as asked), the sweeps'
    store is complete, and an error in the background thread reaches the caller instead of being
    lost (or hanging the pool)."""
    import concurrent.futures as cf

    import pytest

    import sims
    from loraml.figures import reproduce

    lines = []
    with cf.ThreadPoolExecutor(2) as ex:
        paths = reproduce(tmp_path / "figs", only=["linear", "theory"], fast=True, store=tmp_path / "results",
                          executor=ex, progress=False, report=lines.append)
    groups = [p.parent.name for p in paths]
    assert groups.index("theory") > max(i for i, g in enumerate(groups) if g.startswith("linear"))
    assert all(p.exists() for p in paths) and len(list((tmp_path / "results").glob("linear-*"))) == 10
    assert sum(line.startswith("sweeps: 10 configs") for line in lines) == 1

    def broken(*args, **kwargs):
        raise RuntimeError("engine failed")

    monkeypatch.setattr(sims, "run_many", broken)
    with cf.ThreadPoolExecutor(2) as ex, pytest.raises(RuntimeError, match="engine failed"):
        reproduce(tmp_path / "figs2", only=["linear", "theory"], fast=True, store=tmp_path / "r2", executor=ex,
                  progress=False, report=None)


def test_reproduce_finishes_a_started_group_after_the_sweep_groups(tmp_path, monkeypatch):
    """The landscape group is started (everything but the phase diagram drawn, the phase diagram's
    cells submitted from a thread) and finished after the sweep groups have plotted, so this process
    plots them while the pool runs the cells: its report line comes after the linear group's
    (drawing it in place, before the sweeps, reverses them), the linear group plots in this process
    rather than on the pool, its paths still come in group order, and every figure of both groups
    is written."""
    import concurrent.futures as cf
    import functools

    from loraml import figures
    from loraml.figures import reproduce

    lines, executors = [], []
    make_linear = figures.GROUPS["linear"]

    @functools.wraps(make_linear)            # the same signature: reproduce passes what it accepts
    def linear(*args, **kwargs):
        executors.append(kwargs["executor"])
        return make_linear(*args, **kwargs)

    monkeypatch.setitem(figures.GROUPS, "linear", linear)
    with cf.ThreadPoolExecutor(2) as ex:
        paths = reproduce(tmp_path / "figs", only=["landscape", "linear"], fast=True, store=tmp_path / "results",
                          executor=ex, progress=False, report=lines.append)
    # the sweep group plots in this process: pool jobs would wait behind the phase diagram's cells
    assert executors == ["serial"]
    done = [line.split(":")[0] for line in lines if not line.startswith(" ")]
    assert done.index("sweeps") < done.index("linear") < done.index("landscape")
    groups = [p.parent.name for p in paths]
    assert max(i for i, g in enumerate(groups) if g == "landscape") < groups.index("linear")
    assert all(p.exists() for p in paths)
    assert {p.name for p in paths if p.parent.name == "landscape" and p.suffix == ".png"} == \
        {"saddle-slice.png", "critical-spectra.png", "rate.png", "recovery-phase.png"}


def test_reproduce_offpaper_figures_fast(tmp_path):
    """The off-paper group (issue 17) through `loraml reproduce`: one non-blank figure per knob and the table,
    every setting's row present (rules out a knob figure that silently drops settings)."""
    import pandas as pd

    from loraml.figures.offpaper import OFFPAPER_SETTINGS

    assert main(["reproduce", "--only", "offpaper", "--fast", "--out", str(tmp_path / "figs"),
                 "--store", str(tmp_path / "results"), "--executor", "serial", "--quiet"]) == 0
    for knob in OFFPAPER_SETTINGS:
        img = mpimg.imread(tmp_path / "figs" / "off-paper" / f"{knob}.png")
        assert img.shape[1] > 600 and np.std(img) > 0.05
    table = pd.read_csv(tmp_path / "figs" / "off-paper" / "table.csv")
    assert len(table) == sum(len(v) for v in OFFPAPER_SETTINGS.values())
    assert table["P4 floor"].gt(0).all() and table["P6 prediction"].gt(0).all()
