"""Sphinx helpers of the loraml site (a local extension, loaded by docs/conf.py).

- ``:test:`test_retraining.py::test_P6_log_log_slope_is_minus_one``` links to the test's line in a
  highlighted copy of the test file (``_source/tests/<file>.html#L-<line>``); a test that no longer
  exists is a warning, so ``-W`` fails on a stale reference.
- ``.. loraml-cli::`` renders ``loraml.cli._parser()``: the help text of the command and of every
  subcommand, generated from the parser itself.
- ``public_names()`` lists every public name the API reference documents; ``check_docstrings`` warns
  on a public name without a docstring, or without an Examples section unless ``EXAMPLES_PENDING``
  names it.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import inspect
import re
from pathlib import Path

from docutils import nodes
from docutils.parsers.rst import Directive
from sphinx.util import logging

ROOT = Path(__file__).resolve().parents[2]
logger = logging.getLogger(__name__)

#: The packages whose ``__all__`` the API reference documents, one page each.
API_MODULES = ("theory", "theory.landscape", "theory.loraone", "theory.validation", "sims")

#: Public names whose docstring has no Examples section yet, keyed by the defining file (none now:
#: every public name of theory and sims has one). A name listed here is exempt from the build's
#: check; tests/test_docs.py fails once a listed name gains an example (so that the entry goes).
EXAMPLES_PENDING: dict[str, tuple[str, ...]] = {}


def public_names():
    """[(module, name, object)] for every name in ``__all__`` of ``API_MODULES``."""
    out = []
    for mod_name in API_MODULES:
        mod = importlib.import_module(mod_name)
        for name in mod.__all__:
            out.append((mod_name, name, getattr(mod, name)))
    return out


def defining_file(obj) -> str | None:
    """The repository-relative path of the file that defines ``obj`` (None for plain values)."""
    try:
        path = inspect.getsourcefile(inspect.unwrap(obj))
    except TypeError:
        return None
    if path is None:
        return None
    try:
        return str(Path(path).resolve().relative_to(ROOT))
    except ValueError:
        return None


def home_module(mod_name: str, obj) -> str:
    """The API page that documents ``obj``: the package of ``API_MODULES`` whose folder holds its
    defining file most specifically (``theory.landscape`` for theory/landscape/_critical.py), or
    ``mod_name`` for plain values. A name several packages export is documented once, there."""
    path = defining_file(obj)
    if path is None:
        return mod_name
    dotted = path.removesuffix(".py").replace("/", ".")
    best = max((m for m in API_MODULES if dotted == m or dotted.startswith(m + ".")), key=len, default=None)
    return best or mod_name


def aliases() -> dict[str, str]:
    """{exported name: documented name} for every re-export (``theory.identifiability`` ->
    ``theory.landscape.identifiability``)."""
    out = {}
    for mod_name, name, obj in public_names():
        if inspect.ismodule(obj):
            continue
        home = home_module(mod_name, obj)
        if home != mod_name:
            out[f"{mod_name}.{name}"] = f"{home}.{name}"
    return out


def resolve_alias(app, env, node, contnode):
    """A reference to a re-exported name resolves to the entry of its home page."""
    if node.get("refdomain") != "py":
        return None
    target = node.get("reftarget", "")
    table = env.loraml_aliases if hasattr(env, "loraml_aliases") else None
    if table is None:
        table = env.loraml_aliases = aliases()
    candidates = [target]
    if node.get("py:module") and "." not in target:
        candidates.insert(0, f"{node['py:module']}.{target}")
    for name in candidates:
        if name in table:
            return env.get_domain("py").resolve_xref(env, node["refdoc"], app.builder, node["reftype"],
                                                  table[name], node, contnode)
    return None


def has_examples(obj) -> bool:
    """Whether the docstring of ``obj`` has a numpydoc Examples section with at least one ``>>>``."""
    doc = inspect.getdoc(obj) or ""
    m = re.search(r"^Examples\n-{3,}\n(.*?)(?=^\S[^\n]*\n-{3,}\n|\Z)", doc, re.S | re.M)
    return bool(m) and ">>>" in m.group(1)


def pending_names() -> set[str]:
    return {f"{path}:{name}" for path, names in EXAMPLES_PENDING.items() for name in names}


def documented(obj) -> bool:
    """Callables and classes carry a docstring; constants and type aliases are documented by value."""
    return inspect.isclass(obj) or inspect.isroutine(obj) or callable(obj)


def check_docstrings(app):
    pending = pending_names()
    seen = set()
    for mod_name, name, obj in public_names():
        if not documented(obj) or id(obj) in seen:
            continue
        seen.add(id(obj))
        qual = f"{mod_name}.{name}"
        listed = EXAMPLES_PENDING.get(defining_file(obj) or "", ())
        if not (inspect.getdoc(obj) or "").strip():
            logger.warning(f"public name {qual} has no docstring", type="loraml", subtype="docstring")
        elif not has_examples(obj) and name not in listed:
            logger.warning(f"public name {qual} ({defining_file(obj)}) has no Examples section with a doctest",
                           type="loraml", subtype="examples")
    if pending:
        logger.info(f"loraml: {len(pending)} public names still lack an Examples section "
                    f"(EXAMPLES_PENDING in docs/_ext/loraml_docs.py): {', '.join(sorted(pending))}")


# ------------------------------------------------------------------ links to the tests' source lines

def test_lines(path: Path) -> dict[str, int]:
    """{function name: line} for every (possibly nested in a class) test function of a test file."""
    tree = ast.parse(path.read_text())
    out = {}
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            line = min([node.lineno] + [d.lineno for d in node.decorator_list])
            out.setdefault(node.name, line)
    return out


def write_source_pages(dest: Path):
    """Highlighted copies of tests/*.py with one anchor per line (``#L-<n>``), into ``dest/_source/tests``."""
    from pygments import highlight
    from pygments.formatters import HtmlFormatter
    from pygments.lexers import PythonLexer

    out = dest / "_source" / "tests"
    out.mkdir(parents=True, exist_ok=True)
    fmt = HtmlFormatter(linenos="inline", lineanchors="L", anchorlinenos=True, full=True,
                        style="default", title="", encoding="utf-8")
    for path in sorted((ROOT / "tests").glob("*.py")):
        fmt.title = f"tests/{path.name}"
        html = highlight(path.read_text(), PythonLexer(), fmt)
        html = html.decode("utf-8") if isinstance(html, bytes) else html
        target = out / f"{path.name}.html"
        if not target.exists() or target.read_text() != html:
            target.write_text(html)


def test_role(name, rawtext, text, lineno, inliner, options=None, content=None):
    """``:test:`file.py::function``` -> a link to that function's line in the test file's source page."""
    env = inliner.document.settings.env
    file_name, _, func = text.partition("::")
    path = ROOT / "tests" / file_name
    label = f"tests/{file_name}" + (f"::{func}" if func else "")
    if not path.exists():
        msg = inliner.reporter.warning(f"test file {path} does not exist", line=lineno)
        return [nodes.literal(rawtext, label)], [msg]
    anchor = ""
    if func:
        lines = test_lines(path)
        if func not in lines:
            msg = inliner.reporter.warning(f"no test {func!r} in tests/{file_name} (stale reference)", line=lineno)
            return [nodes.literal(rawtext, label)], [msg]
        anchor = f"#L-{lines[func]}"
        label += f" (line {lines[func]})"
    env.note_dependency(str(path))
    depth = env.docname.count("/")
    uri = "../" * depth + f"_source/tests/{file_name}.html{anchor}"
    ref = nodes.reference(rawtext, "", refuri=uri, internal=False)
    ref += nodes.literal(label, label)
    return [ref], []


# ------------------------------------------------------------------ the command-line reference

def _subparsers(parser: argparse.ArgumentParser):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            yield from action.choices.items()


def _walk(parser, prefix):
    yield prefix, parser
    for name, sub in _subparsers(parser):
        yield from _walk(sub, f"{prefix} {name}")


#: A command-line option in running text (``--store``); the CLI page sets it as a literal, so that
#: neither smart quotes nor a reader's eye turns its two hyphens into a dash.
OPTION = re.compile(r"(?<![\w-])(--[A-Za-z][\w-]*)")


def prose_with_options(text: str) -> nodes.paragraph:
    """A paragraph of ``text`` whose option names are inline literals."""
    para = nodes.paragraph(text, "")
    for i, part in enumerate(OPTION.split(text)):
        if part:
            para += nodes.literal(part, part) if i % 2 else nodes.Text(part)
    return para


class CliDirective(Directive):
    """One section per command of ``loraml.cli._parser()`` (``#loraml-sweep-linear``): its
    description and its ``--help``. Subcommands are sections too, so that the page's table of
    contents lists every command; a subcommand's own subcommands nest inside its section."""

    has_content = False

    def run(self):
        from loraml.cli import _parser

        env = self.state.document.settings.env
        env.note_dependency(str(ROOT / "loraml" / "cli.py"))
        root = _parser()
        return [self._section("loraml", root, nested=False)] + [
            self._section(f"loraml {name}", sub) for name, sub in _subparsers(root)]

    def _section(self, prog, parser, nested=True):
        section = nodes.section(ids=[nodes.make_id(prog)], names=[nodes.fully_normalize_name(prog)])
        self.state.document.note_implicit_target(section, section)
        title = nodes.title(prog, "")
        title += nodes.literal(prog, prog)
        section += title
        if parser.description:
            section += prose_with_options(parser.description)
        parser.prog = prog
        help_text = parser.format_help()
        block = nodes.literal_block(help_text, help_text, classes=["loraml-cli-help"])
        block["language"] = "text"
        section += block
        if nested:
            for name, sub in _subparsers(parser):
                section += self._section(f"{prog} {name}", sub)
        return section


# ------------------------------------------------------------------ emphasis that swallowed a formula

#: Characters that Markdown reads as emphasis delimiters or that open a subscript group: an
#: emphasis whose text holds one, or that starts or ends inside a word, came from a formula
#: (``σ_i²(A*_{T+1} − Â_SR)``, ``R*₁ − R*₂``), not from a writer who meant italics.
SWALLOWED = set("_*{")


def _in_name(node) -> bool:
    """Emphasis the writers of this site do not type: a numpydoc parameter name (``**n_iter**``,
    the strong first child of a definition-list term)."""
    return isinstance(node.parent, nodes.term) and node.parent.index(node) == 0


def _neighbours(node):
    parent = node.parent
    i = parent.index(node)
    before = parent[i - 1].astext() if i > 0 else ""
    after = parent[i + 1].astext() if i + 1 < len(parent) else ""
    return before, after


def swallowed_emphasis(doctree) -> list[str]:
    """One line per emphasis or strong node of ``doctree`` that looks like a formula Markdown ate:
    its text holds ``_``, ``*`` or ``{``; it starts right after or ends right before a letter or
    digit (``R<em>₁ − R</em>₂``); it nests in another emphasis; or the text beside it still holds
    a ``**`` whose partner was used up."""
    found = []
    for node in doctree.findall(lambda n: isinstance(n, (nodes.emphasis, nodes.strong))):
        if _in_name(node):
            continue
        text = node.astext()
        before, after = _neighbours(node)
        why = None
        if SWALLOWED & set(text):
            why = "holds " + ", ".join(repr(c) for c in sorted(SWALLOWED & set(text)))
        elif (before[-1:].isalnum() and text[:1].strip()) or (after[:1].isalnum() and text[-1:].strip()):
            why = "starts or ends inside a word"
        elif isinstance(node.parent, (nodes.emphasis, nodes.strong)):
            why = "is nested in another emphasis"
        elif "**" in before[-40:] or "**" in after[:40]:
            why = "sits beside a stray '**'"
        if why:
            found.append(f"<{'em' if isinstance(node, nodes.emphasis) else 'strong'}> {text[:60]!r} {why}")
    return found


def check_emphasis(app, doctree, docname):
    """``doctree-resolved``: a warning (an error under ``-W``) per emphasis that swallowed a formula."""
    for line in swallowed_emphasis(doctree):
        logger.warning(f"{line}: escape the Markdown characters (\\*, \\_) of the formula",
                       location=docname, type="loraml", subtype="emphasis")


def setup(app):
    app.add_role("test", test_role)
    app.add_directive("loraml-cli", CliDirective)
    app.connect("builder-inited", check_docstrings)
    app.connect("missing-reference", resolve_alias)
    app.connect("doctree-resolved", check_emphasis)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
