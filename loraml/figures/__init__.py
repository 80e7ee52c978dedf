"""Figures: how the plots look and where they land. They read tables from ``sims``."""

from ._style import COLORS as COLORS
from .landscape import make_landscape_figures as make_landscape_figures
from .linear import make_linear_figures as make_linear_figures
from .loraone import make_loraone_figures as make_loraone_figures
from .realdata import make_realdata_figures as make_realdata_figures
from .shallow import make_shallow_figures as make_shallow_figures
from .theory_checks import make_theory_figures as make_theory_figures

#: Every figure group `loraml reproduce` knows, in order. Each is called as
#: ``make(out, fast=..., **options)`` and returns the paths it wrote.
GROUPS = {
    "theory": make_theory_figures,
    "linear": make_linear_figures,
    "landscape": make_landscape_figures,
    "loraone": make_loraone_figures,
    "shallow": make_shallow_figures,
    "realdata": make_realdata_figures,
}

__all__ = ["COLORS", "GROUPS", "make_landscape_figures", "make_linear_figures", "make_loraone_figures",
           "make_realdata_figures", "make_shallow_figures",
           "make_theory_figures"]
