"""The documentation site (docs/, `make docs`) and the docstrings it is generated from.

| test | what it checks | rules out |
|------|----------------|-----------|
| every public name has an example | each callable or class in ``__all__`` of theory, theory.landscape, theory.loraone, theory.validation and sims has a numpydoc Examples section with a ``>>>`` line (pytest's ``--doctest-modules`` runs it), unless EXAMPLES_PENDING lists it | a new public name without an example |
| the pending list is not stale | every EXAMPLES_PENDING entry is a public name, defined in the file it is listed under, and still lacks an example | an entry left behind after its example was written, or listed under the wrong file |
| the site builds | ``sphinx-build -E -W --keep-going`` of the whole site (notebooks from the execution cache, executed once when the cache lacks them) | a stale cross-reference, a test that moved or was renamed, a public name without a docstring, a broken internal link, a notebook that fails |
| the built pages | the landing page states P1–P10 and L1–L6; every claim has a test link and an API link; the CLI page has every subcommand; the gallery every PNG; the notebook pages their outputs | a claim dropped from the landing page, a CLI page written by hand, a gallery missing figures, notebooks rendered without outputs |
| a broken reference fails | a two-line project with a stale ``:test:`` reference and a missing API name, built with -W | a build that would pass whatever the references say |
"""

import importlib.util
import inspect
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("sphinx")
pytest.importorskip("myst_nb")

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
HTML = DOCS / "_build" / "html"


def _ext():
    spec = importlib.util.spec_from_file_location("loraml_docs", DOCS / "_ext" / "loraml_docs.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


EXT = _ext()


def _public_callables():
    seen, out = set(), []
    for mod_name, name, obj in EXT.public_names():
        if EXT.documented(obj) and not inspect.ismodule(obj) and id(obj) not in seen:
            seen.add(id(obj))
            out.append((f"{mod_name}.{name}", name, obj))
    return out


def test_every_public_name_has_an_example():
    missing = []
    for qual, name, obj in _public_callables():
        if EXT.has_examples(obj):
            continue
        if name in EXT.EXAMPLES_PENDING.get(EXT.defining_file(obj), ()):
            continue
        missing.append(f"{qual} ({EXT.defining_file(obj)})")
    assert not missing, "public names without an Examples section:\n" + "\n".join(missing)


def test_pending_examples_list_is_not_stale():
    by_name = {}
    for _, name, obj in _public_callables():
        by_name.setdefault(name, []).append(obj)
    for path, names in EXT.EXAMPLES_PENDING.items():
        for name in names:
            objs = [o for o in by_name.get(name, []) if EXT.defining_file(o) == path]
            assert objs, f"{name} is listed under {path} but no public name of that file is called so"
            assert not any(EXT.has_examples(o) for o in objs), f"{name} ({path}) has an example now: unlist it"


def test_has_examples_needs_a_doctest_in_the_examples_section():
    def with_example():
        """Do it.

        Examples
        --------
        >>> 1 + 1
        2
        """

    def prose_only():
        """Do it.

        Examples
        --------
        Call it with no arguments.

        Notes
        -----
        >>> 1
        1
        """

    assert EXT.has_examples(with_example)
    assert not EXT.has_examples(prose_only)


def test_test_lines_find_decorated_tests():
    lines = EXT.test_lines(Path(__file__))
    src = Path(__file__).read_text().splitlines()
    assert src[lines["test_every_public_name_has_an_example"] - 1].startswith("def test_every_public_name")


def _build(src: Path, out: Path, *extra) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sphinx", "-E", "-W", "--keep-going", "-q", "-b", "html",
                           *extra, str(src), str(out)], capture_output=True, text=True, cwd=ROOT)


def test_a_broken_reference_fails_the_build(tmp_path):
    (tmp_path / "conf.py").write_text(
        f"import sys\nsys.path[:0] = [{str(DOCS / '_ext')!r}, {str(ROOT)!r}]\n"
        "extensions = ['sphinx.ext.autodoc', 'loraml_docs']\nnitpicky = True\n"
        )
    (tmp_path / "index.rst").write_text("Title\n=====\n\n:test:`test_model.py::test_no_such_test`\n\n"
                                        ":func:`theory.no_such_function`\n")
    proc = _build(tmp_path, tmp_path / "html")
    assert proc.returncode != 0
    assert "test_no_such_test" in proc.stderr and "theory.no_such_function" in proc.stderr


@pytest.fixture(scope="module")
def site():
    proc = _build(DOCS, HTML, "-d", str(DOCS / "_build" / "doctrees"))
    assert proc.returncode == 0, proc.stderr[-4000:]
    return HTML


def test_the_site_builds_with_warnings_as_errors(site):
    assert (site / "index.html").exists()


def test_landing_page_states_every_claim(site):
    text = (site / "index.html").read_text()
    for claim in [f"P{i}" for i in range(1, 11)] + [f"L{i}" for i in range(1, 7)]:
        assert re.search(rf">{claim}<", text), claim


@pytest.mark.parametrize("page, claims", [("claims/loraml.html", [f"p{i}" for i in range(1, 11)]),
                                          ("claims/loraone.html", [f"l{i}" for i in range(1, 7)])])
def test_every_claim_links_its_test_and_its_code(site, page, claims):
    html = (site / page).read_text()
    sections = re.split(r'<section id="', html)[1:]
    found = {}
    for sec in sections:
        ident = sec.split('"', 1)[0]
        m = re.match(r"([pl]\d+)-", ident)
        if m:
            found[m.group(1)] = sec
    assert sorted(found) == sorted(claims)
    for claim, sec in found.items():
        assert "_source/tests/test_" in sec and "#L-" in sec, claim
        assert "api/generated/" in sec, claim


def test_test_links_point_at_the_test_definition(site):
    html = (site / "claims" / "loraml.html").read_text()
    links = re.findall(r'href="\.\./_source/tests/(test_\w+\.py)\.html#L-(\d+)"><code[^>]*><span class="pre">'
                       r'tests/test_\w+\.py::(\w+)', html)
    assert len(links) > 20
    for file_name, line, func in links:
        src = (ROOT / "tests" / file_name).read_text().splitlines()
        window = "\n".join(src[int(line) - 1:int(line) + 12])
        assert f"def {func}(" in window
        assert (site / "_source" / "tests" / f"{file_name}.html").exists()


def test_cli_reference_is_generated_from_the_parser(site):
    from loraml.cli import _parser

    text = (site / "guide" / "cli.html").read_text()
    parser = _parser()
    for action in parser._subparsers._group_actions:
        for name, sub in action.choices.items():
            assert f"loraml {name}" in text
            for opt in sub._option_string_actions:
                if opt.startswith("--"):
                    assert opt in text, (name, opt)


def test_gallery_has_every_committed_figure(site):
    text = (site / "gallery.html").read_text()
    for png in (ROOT / "figures").rglob("*.png"):
        rel = png.relative_to(ROOT).as_posix()
        assert rel in text, rel


def test_notebook_pages_have_outputs(site):
    pages = sorted((site / "notebooks").glob("0*.html"))
    assert [p.stem for p in pages] == [p.stem for p in sorted((ROOT / "notebooks").glob("0*.py"))]
    for page in pages:
        assert "cell_output" in page.read_text(), page.name


def test_api_pages_have_an_entry_for_every_public_name(site):
    for qual, name, obj in _public_callables():
        mod_name = qual.rsplit(".", 1)[0]
        home = EXT.home_module(mod_name, obj)
        assert (site / "api" / "generated" / f"{home}.{name}.html").exists(), qual
