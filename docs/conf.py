"""Sphinx configuration of the loraml documentation site (``make docs``).

Generated at configuration time, never edited by hand and not in git (see .gitignore):

- ``docs/api/*.rst``: one page per public package, listing every name of its ``__all__``;
  autosummary writes one entry per name under ``docs/api/generated/``;
- ``docs/notebooks/*.py``: copies of ``notebooks/*.py`` (jupytext percent format), which myst-nb
  reads as notebooks and executes with ``LORAML_FAST=1`` (the size tests/test_notebooks.py uses),
  caching the outputs in ``docs/_build/.jupyter_cache``;
- ``docs/_build/_extra/_source/tests/*.html``: the tests' source with one anchor per line, the
  targets of the ``:test:`` role.

``LORAML_DOCS_EXECUTE=off`` builds without executing the notebooks (their pages then show code only).
"""

import os
import shutil
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(DOCS / "_ext"))

# The notebooks run at the reduced size of tests/test_notebooks.py, in a kernel that imports this tree.
os.environ["LORAML_FAST"] = "1"
os.environ["PYTHONPATH"] = str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")
os.environ.setdefault("MPLBACKEND", "Agg")

import loraml_docs  # noqa: E402

project = "loraml"
author = "the loraml authors"
copyright = "2026, the loraml authors"
release = version = "0.1.0"

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.viewcode",
    "sphinx.ext.mathjax",
    "numpydoc",
    "myst_nb",
    "sphinx_copybutton",
    "loraml_docs",
]

exclude_patterns = ["_build", "_ext", "conf.py", "**/.ipynb_checkpoints", "api/generated/*.py"]
templates_path = ["_templates"]
html_theme = "pydata_sphinx_theme"
html_title = "loraml"
html_static_path = ["_static"]
html_theme_options = {
    "navigation_depth": 2,
    "show_toc_level": 2,
    "secondary_sidebar_items": ["page-toc"],
    "footer_start": ["copyright"],
    "footer_end": [],
}
html_css_files = ["custom.css"]
# Pages without children get no (empty) section navigation.
html_sidebars = {"index": [], "claims/*": [], "gallery": []}

# A reference to a missing target is a warning (an error under -W).
nitpicky = True
nitpick_ignore_regex_unused = [
    # numpydoc "Parameters" types written in words or array shapes, not cross-reference targets
    (r"py:class", r".*"),
]
# References in docstrings of files this site's author could not edit (issue 16); each names a
# method of the SweepConfig mixin without its class. Remove an entry once its docstring is fixed.
nitpick_ignore = [
    ("py:meth", "chunk_key"),                  # sims/_run.py: run_many
    ("py:meth", "RealDataConfig.share_key"),   # sims/_realdata.py: simulate_realdata_chunks
    ("py:mod", "sims._store"),                 # sims/_run.py: run_many names a private module
    ("py:class", "_PSDRelaxation"),            # sims/_landscape.py: solve_psd_relaxation returns a private type
]

# Smart quotes, but no dashes: the sources write their en dashes, and "--" is a command-line option
# ("--store"), never a dash.
smartquotes_action = "qe"

# Some docstrings write absolute values as |x|, which reStructuredText reads as a substitution;
# these definitions print them as written.
_ABSOLUTE_VALUES = ("⟨U*, e⟩", "⟨U*, g⟩", "μ₋")
rst_prolog = "\n".join(f".. |{x}| replace:: \\|{x}\\|" for x in _ABSOLUTE_VALUES) + "\n"

# --- API reference -------------------------------------------------------------------------------
autosummary_generate = True
autosummary_imported_members = True
autodoc_default_options = {"members": False}
autodoc_typehints = "none"
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
numpydoc_xref_param_type = False
add_module_names = False

API_PAGES = {
    "theory": ("theory", "The model, the estimators, the solvers and the metrics on numpy arrays."),
    "theory.landscape": ("theory.landscape",
                         "The population LoRA-ML objective: values, derivatives, critical points, identifiability "
                         "and the batched exact solver."),
    "theory.loraone": ("theory.loraone", "LoRA-One, vanilla LoRA and LoRA-GA in the linear model."),
    "theory.validation": ("theory.validation", "The argument checks every public function runs first."),
    "sims": ("sims", "Experiments on top of theory: sweeps, the scheduler, the store and PEFT-ML on torch models."),
}


def _write_if_changed(path: Path, text: str):
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists() or path.read_text() != text:
        path.write_text(text)


def _api_pages():
    """One page per package: an entry for every name of its ``__all__`` defined there; names it
    re-exports from another package link to that package's entry; subpackages link to their page."""
    import importlib
    import inspect

    pages = set()
    for mod_name, (title, blurb) in API_PAGES.items():
        mod = importlib.import_module(mod_name)
        own, elsewhere, subpackages = [], [], []
        for name in mod.__all__:
            obj = getattr(mod, name)
            if inspect.ismodule(obj):
                subpackages.append(obj.__name__)
            elif loraml_docs.home_module(mod_name, obj) == mod_name:
                own.append(name)
            else:
                elsewhere.append(f"{loraml_docs.home_module(mod_name, obj)}.{name}")
        # The module target comes first: docutils moves its id (#module-theory.landscape) onto the
        # next element, which an autosummary table would drop.
        lines = [f"``{title}``", "=" * (len(title) + 4), "", f".. module:: {mod_name}", "", blurb, ""]
        if subpackages:
            lines += ["Subpackages: " + ", ".join(f":doc:`{m} <{m}>`" for m in subpackages) + ".", ""]
        if elsewhere:
            lines += [f"Also exported by ``{mod_name}`` and documented with their own package: "
                      + ", ".join(f":obj:`~{target}`" for target in elsewhere) + ".", ""]
        lines += [".. autosummary::", "   :toctree: generated", ""] + [f"   {name}" for name in own]
        _write_if_changed(DOCS / "api" / f"{mod_name}.rst", "\n".join(lines) + "\n")
        pages.update(f"{mod_name}.{name}" for name in own)
    # A name no longer exported leaves its page behind (autosummary only writes): remove it, or the
    # build warns that the page is in no toctree.
    for p in (DOCS / "api" / "generated").glob("*.rst"):
        if p.stem not in pages:
            p.unlink()


def _notebook_copies():
    dest = DOCS / "notebooks"
    dest.mkdir(exist_ok=True)
    wanted = {p.name for p in (ROOT / "notebooks").glob("*.py")}
    for p in dest.glob("*.py"):
        if p.name not in wanted:
            p.unlink()
    for name in sorted(wanted):
        src, dst = ROOT / "notebooks" / name, dest / name
        if not dst.exists() or dst.read_bytes() != src.read_bytes():
            shutil.copy2(src, dst)


GALLERY_GROUPS = {
    "theory": "Theory core", "linear": "The paper's linear experiments, `paper` preset",
    "linear-clean": "The linear experiments, `clean` preset", "landscape": "Landscape (P5–P9)",
    "loraone": "LoRA-One (L1–L6)", "shallow": "Shallow network", "realdata": "Real models (digits)",
}


def _gallery():
    """docs/gallery.md: every figures/**/*.png, grouped by folder, captioned from figures/README.md."""
    import re

    captions = {}
    for line in (ROOT / "figures" / "README.md").read_text().splitlines():
        m = re.match(r"\|\s*!\[\]\(([^)]+)\)[^|]*\|\s*([^|]+?)\s*\|", line)
        if m:
            captions[m.group(1)] = m.group(2)
    pngs = sorted(p.relative_to(ROOT / "figures").as_posix() for p in (ROOT / "figures").rglob("*.png"))
    lines = ["# Figure gallery", "",
             "Every committed figure under `figures/`, as `make reproduce` (`loraml reproduce`) regenerates it;",
             "the captions are those of `figures/README.md`. This page is generated when the site is built.", ""]
    groups = {}
    for rel in pngs:
        groups.setdefault(rel.split("/")[0], []).append(rel)
    for group, rels in groups.items():
        lines += [f"## {GALLERY_GROUPS.get(group, group)}", ""]
        for rel in rels:
            lines += ["```{figure} " + f"../figures/{rel}", ":width: 100%", "",
                      f"`figures/{rel}`: {captions.get(rel, '')}".rstrip(": "), "```", ""]
    _write_if_changed(DOCS / "gallery.md", "\n".join(lines))


_api_pages()
_notebook_copies()
_gallery()
loraml_docs.write_source_pages(DOCS / "_build" / "_extra")
html_extra_path = [str(DOCS / "_build" / "_extra")]

# --- notebooks -----------------------------------------------------------------------------------
nb_custom_formats = {".py": ["jupytext.reads", {"fmt": "py:percent"}]}
nb_execution_mode = os.environ.get("LORAML_DOCS_EXECUTE", "cache")
nb_execution_cache_path = str(DOCS / "_build" / ".jupyter_cache")
nb_execution_in_temp = True          # the notebooks write figures-notebook/ into a temporary folder
nb_execution_timeout = 300
nb_execution_raise_on_error = True   # a failing cell fails the build
nb_merge_streams = True
nb_output_stderr = "remove"          # progress bars and library warnings, not results
myst_enable_extensions = ["dollarmath", "colon_fence"]
myst_heading_anchors = 3
source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".py": "myst-nb"}
