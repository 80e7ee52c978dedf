"""The documentation site (docs/, `make docs`) and the docstrings it is generated from.

| test | what it checks | rules out |
|------|----------------|-----------|
| every public name has an example | each callable or class in ``__all__`` of theory, theory.landscape, theory.loraone, theory.validation and sims has a numpydoc Examples section with a ``>>>`` line (pytest's ``--doctest-modules`` runs it), unless EXAMPLES_PENDING lists it | a new public name without an example |
| the pending list is not stale | every EXAMPLES_PENDING entry is a public name, defined in the file it is listed under, and still lacks an example | an entry left behind after its example was written, or listed under the wrong file |
| the site builds | ``sphinx-build -E -W --keep-going`` of the whole site (notebooks from the execution cache, executed once when the cache lacks them) | a stale cross-reference, a test that moved or was renamed, a public name without a docstring, a broken internal link, a notebook that fails |
| the built pages | the landing page states P1–P10 and L1–L6; every claim has a test link and an API link; the CLI page has every subcommand; the gallery every PNG; the notebook pages their outputs | a claim dropped from the landing page, a CLI page written by hand, a gallery missing figures, notebooks rendered without outputs |
| what a reader sees | the built HTML, parsed (html.parser, the article of each page only): every notebook page shows an image; no ``<em>``/``<strong>`` of running text holds ``_``, ``*`` or ``{``; the CLI page keeps ``--`` in every option and has an anchor and an "On this page" entry per command; the module anchors exist; the page of every public function that takes parameters has a Parameters section; P6's constant reads the same on the landing page, its claim, notebook 03's title and the P6 test | figures saved and closed but never displayed; a formula that Markdown turned into italics (``σ_i²(A*_{T+1} − Â_SR)``); ``--store`` printed as ``–store``; commands as rubrics (no anchor, no table of contents); ``.. module::`` placed where its id is dropped (``#module-theory.landscape``); "See identifiability_batch" instead of parameters; a page that drifts back to the spec's σ²k(2d−k)/(n−d−1) |
| emphasis check of the build | ``loraml_docs.swallowed_emphasis`` on Markdown parsed by MyST, and the two-line project built with -W | a formula turned into italics that the build lets through |
| a broken reference fails | a two-line project with a stale ``:test:`` reference, a missing API name and an emphasis holding ``_``, built with -W | a build that would pass whatever the references say, or whatever Markdown did to a formula |
"""

import importlib.util
import inspect
import re
import subprocess
import sys
from html.parser import HTMLParser
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
    # The emphasis stands for what Markdown makes of σ_i²(A*_{T+1} − Â_SR) (reStructuredText, which
    # this project parses without MyST's second of start-up, needs it spelled out).
    (tmp_path / "index.rst").write_text("Title\n=====\n\n:test:`test_model.py::test_no_such_test`\n\n"
                                        ":func:`theory.no_such_function`\n\nσ_i²(A*{T+1} *− Â_SR)*\n")
    proc = _build(tmp_path, tmp_path / "html")
    assert proc.returncode != 0
    assert "test_no_such_test" in proc.stderr and "theory.no_such_function" in proc.stderr
    assert "'− Â_SR)' holds '_'" in proc.stderr and "[loraml.emphasis]" in proc.stderr


def _myst_doctree(text):
    from docutils.core import publish_doctree
    from myst_parser.parsers.docutils_ import Parser

    return publish_doctree(text, parser=Parser(), settings_overrides={"report_level": 5})


@pytest.mark.parametrize("markdown, flagged", [
    ("A floor Σ_{i>k} σ_i²(A*_{T+1} − Â_SR). In population Σ_{i>k} σ_i²(R*_{T+1} − R̄*).", True),  # _ {
    ("with M = R*₁ − R*₂, the difference.", True),                        # R<em>₁ − R</em>₂: inside words
    ("**The solver lands on A* even where A* is not the only answer.** At", True),   # nested, stray **
    ("**Lands on A\\* even where A\\* is not unique.** At", True),       # escaped, but a * in bold text
    ("Each statement is tagged *paper*, *code* or *derived*; **Claim.** It holds.", False),
    ("A* is *identified* when Δ = 0, and R*_t = U*_t U*_tᵀ.", False),
    ("**Tests**: a list, with A\\*\\_{T+1} escaped.", False),
])
def test_swallowed_emphasis_flags_formulas_not_italics(markdown, flagged):
    """The build's emphasis check (loraml_docs.swallowed_emphasis, run on every page at
    doctree-resolved) flags the three ways Markdown ate a formula on this site, and leaves the
    italics and bold leads the writers meant alone."""
    assert bool(EXT.swallowed_emphasis(_myst_doctree(markdown))) == flagged


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


# ----------------------------------------------------------------------- what a reader sees


class _Article(HTMLParser):
    """The elements of a page's article (``<article class="bd-article">``): for each, its tag,
    attributes, text and the (tag, attributes) of its ancestors. The standard library's parser on
    the article alone reads the 200 pages in a fraction of a second (BeautifulSoup takes seconds)."""

    VOID = {"br", "img", "hr", "meta", "link", "input", "col", "wbr", "source"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.stack, self.text, self.elements = [], [], []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag in self.VOID:
            self.elements.append((tag, attrs, "", [(t, a) for t, a, _ in self.stack]))
        else:
            self.stack.append((tag, attrs, len(self.text)))

    def handle_endtag(self, tag):
        if not any(t == tag for t, _, _ in self.stack):
            return
        while True:
            t, attrs, start = self.stack.pop()
            if t == tag:
                break
        self.elements.append((tag, attrs, "".join(self.text[start:]), [(t, a) for t, a, _ in self.stack]))

    def handle_data(self, data):
        self.text.append(data)


def _article_html(page: Path) -> str:
    m = re.search(r'<article class="bd-article">(.*)</article>', page.read_text(), re.S)
    assert m, f"{page} has no article"
    return m.group(1)


def _elements(page: Path):
    parser = _Article()
    parser.feed(_article_html(page))
    return parser.elements


def _pages(site):
    """Every page a reader reaches from the navigation (not the generated indices or copies)."""
    skip = {"genindex.html", "py-modindex.html", "search.html"}
    return [p for p in sorted(site.rglob("*.html"))
            if p.relative_to(site).parts[0] not in ("_source", "_modules", "_static", "_images")
            and p.name not in skip]


def _classes(attrs) -> list[str]:
    return (attrs.get("class") or "").split()


def test_every_notebook_page_shows_a_figure(site):
    """Rules out figures written to a file and closed (loraml.figures.save), never displayed:
    notebooks 01, 02, 03 and 05 rendered without a single image."""
    pages = sorted((site / "notebooks").glob("0*.html"))
    assert len(pages) == len(list((ROOT / "notebooks").glob("0*.py")))
    for page in pages:
        images = [attrs for tag, attrs, _, _ in _elements(page) if tag == "img"]
        assert images, f"{page.name} shows no figure"


def _is_a_name(tag, attrs, ancestors) -> bool:
    """Emphasis that Sphinx sets around names, not running text: a signature's parameters
    (``<em class="sig-param">``) and a numpydoc parameter name (``<dt><strong>n_iter</strong>``)."""
    if "sig-param" in _classes(attrs) or any("sig" in _classes(a) for t, a in ancestors if t == "dt"):
        return True
    return tag == "strong" and ancestors and ancestors[-1][0] == "dt"


def test_no_emphasis_swallowed_a_formula(site):
    """No <em>/<strong> of running text holds '_', '*' or '{': rules out a formula that Markdown
    read as emphasis (P4's σ_i²(A*_{T+1} − Â_SR) in italics with its underscores gone, a bold lead
    holding A*). The build's own check (loraml_docs.check_emphasis) also catches emphasis that
    starts inside a word (R*₁ − R*₂); this test reads what the reader gets."""
    bad = []
    for page in _pages(site):
        for tag, attrs, text, ancestors in _elements(page):
            if tag in ("em", "strong") and set(text) & set("_*{") and not _is_a_name(tag, attrs, ancestors):
                bad.append(f"{page.relative_to(site)}: <{tag}> {text[:60]!r}")
    assert not bad, "\n".join(bad)


def test_cli_options_keep_their_hyphens(site):
    """No option on the CLI page contains an en dash: rules out smart quotes turning the "--store"
    of a command's description into "–store". Checks every literal and the running text (an
    en dash that starts a word; "log–log" and "P1–P10" are dashes between words)."""
    page = site / "guide" / "cli.html"
    elements = _elements(page)
    literals = [text for tag, _, text, _ in elements if tag in ("code", "pre")]
    prose = " ".join(text for tag, _, text, _ in elements if tag == "p")
    assert not [t for t in literals if "–" in t]
    assert not re.findall(r"(?<!\w)–\w+", prose), re.findall(r"(?<!\w)–\w+", prose)
    assert any(t.startswith("--store") for t in literals), "the descriptions' options are not set as literals"


def test_cli_page_has_an_anchor_and_a_contents_entry_per_command(site):
    """Every command and subcommand is a section (#loraml-sweep-linear) listed under "On this
    page": rules out commands set as rubrics, which have neither."""
    from loraml.cli import _parser

    html = (site / "guide" / "cli.html").read_text()
    toc = re.search(r'<nav id="pst-page-toc-nav".*?</nav>', html, re.S)
    assert toc, "no 'On this page' list"
    progs = [prog for prog, _ in EXT._walk(_parser(), "loraml")]
    assert len(progs) > 6
    for prog in progs:
        anchor = prog.replace(" ", "-")
        assert re.search(rf'<section id="{anchor}">', html), prog
        assert f'href="#{anchor}"' in toc.group(0), prog


def test_module_anchors_exist(site):
    """Each API page carries its module's anchor, and every link to a module anchor lands on one:
    rules out a ``.. module::`` whose id an autosummary table swallowed (the links to
    #module-theory.landscape and #module-theory.validation led nowhere)."""
    ids = {}
    for mod_name in EXT.API_MODULES:
        page = site / "api" / f"{mod_name}.html"
        ids[page] = set(re.findall(r'id="([^"]+)"', page.read_text()))
        assert f"module-{mod_name}" in ids[page], mod_name
    for page in _pages(site):
        for href in re.findall(r'href="([^"#]*api/[\w.]+\.html)#(module-[\w.]+)"', page.read_text()):
            target = (page.parent / href[0]).resolve()
            assert href[1] in ids.get(target, set()), f"{page.relative_to(site)} links to {href[0]}#{href[1]}"


def test_api_pages_of_functions_with_parameters_have_a_parameters_section(site):
    """The page of every public function that takes parameters lists each of them under
    Parameters: rules out a docstring that sends the reader elsewhere ("See identifiability_batch
    for the parameters"), says nothing about its arguments, or leaves some out (numpydoc drops the
    words of a compact "X : (N, d); Y : (N, m)" line from the list)."""
    missing = []
    for qual, name, obj in _public_callables():
        if inspect.isclass(obj):
            continue
        params = [p for p in inspect.signature(obj).parameters if p not in ("self", "cls")]
        if not params:
            continue
        home = EXT.home_module(qual.rsplit(".", 1)[0], obj)
        html = _article_html(site / "api" / "generated" / f"{home}.{name}.html")
        m = re.search(r'<dt class="field-\w+">Parameters<span class="colon">:</span></dt>(.*?)'
                      r'(?=<dt class="field-\w+">|</dl>\s*</dd>\s*</dl>)', html, re.S)
        if not m:
            missing.append(f"{home}.{name}: no Parameters section")
            continue
        listed = {n.strip().lstrip("*") for names in re.findall(r"<dt><strong>(.*?)</strong>", m.group(1))
                  for n in names.split(",")}
        if set(params) - listed:
            missing.append(f"{home}.{name}: {', '.join(p for p in params if p not in listed)}")
    assert not missing, "API pages whose Parameters section lacks parameters:\n" + "\n".join(missing)


P6_RATE = "σ²k[d/(n−d−1)+(d−k)/(n−k−1)]≈σ²k(2d−k)/n"


def _squeezed(text: str) -> str:
    return re.sub(r"\s+", "", text)


def test_p6_constant_reads_the_same_everywhere(site):
    """P6's constant is stated as σ²k[d/(n−d−1) + (d−k)/(n−k−1)] ≈ σ²k(2d−k)/n on the landing page,
    the P6 claim, notebook 03's title and the P6 test: rules out a page that drifts back to the
    specification's σ²k(2d−k)/(n−d−1) (19 % high at (d, k, n) = (6, 1, 16))."""
    claims = _article_html(site / "claims" / "loraml.html")
    p6 = claims[claims.index('<section id="p6-'):]
    p6 = p6[:p6.index("</section>")]
    title = re.search(r"<h1>(.*?)<", _article_html(site / "notebooks" / "03-adaptation-rate.html"), re.S)
    sources = {"landing page": _article_html(site / "index.html"), "P6 claim": p6, "notebook 03 title": title.group(1),
               "P6 test": (ROOT / "tests" / "test_retraining.py").read_text()}
    for where, text in sources.items():
        assert P6_RATE in _squeezed(text), where
