"""Figures: how the plots look and where they land. They read tables from ``sims``."""

from ._style import COLORS as COLORS
from .theory_checks import make_theory_figures as make_theory_figures

#: Every figure group `loraml reproduce` knows, in order.
GROUPS = {"theory": make_theory_figures}

__all__ = ["COLORS", "GROUPS", "make_theory_figures"]
