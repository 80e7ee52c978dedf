"""The public surface: what crosses package boundaries, how packages are named, result equality.

- `sims`, `loraml`, the notebooks and the benchmarks import only public names of `theory` and
  `sims` (DESIGN: "figures and notebooks only call the two public APIs"). The scan below fails on a
  private module or name reached across a package boundary (`from theory._x import`,
  `theory.landscape._solver`, `import sims._landscape as land`, `sims._run._executor`, …); a
  package's own private modules (`from ._x import` inside `sims/`) are fine.
- Docstrings name the packages as they are imported: `theory` and `sims` (there is no
  `loraml.theory`).
- Every result type of `theory` compares with `==` without raising, field by field.
"""

import ast
import dataclasses
import re
from pathlib import Path

import numpy as np
import pytest

import theory as th
from theory import landscape as L
from theory import loraone as lo

ROOT = Path(__file__).resolve().parents[1]


def _sources(*folders):
    for folder in folders:
        yield from sorted((ROOT / folder).rglob("*.py"))


def _private(dotted: str) -> bool:
    return any(part.startswith("_") and not part.startswith("__") for part in dotted.split("."))


def _violations(path: Path, packages):
    """Private names of ``packages`` reached from the file at ``path``: in import statements, and as
    attributes of a name bound to one of their modules (``import theory.landscape as L; L._gram``)."""
    tree = ast.parse(path.read_text())
    found, aliases = [], set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] in packages:
                    if _private(a.name):
                        found.append(f"import {a.name}")
                    aliases.add(a.asname or a.name.split(".")[0])
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module.split(".")[0] in packages:
            for a in node.names:
                dotted = f"{node.module}.{a.name}"
                if _private(dotted):
                    found.append(f"from {node.module} import {a.name}")
                aliases.add(a.asname or a.name)
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _private(node.attr):
            base = node.value
            while isinstance(base, ast.Attribute):
                base = base.value
            if isinstance(base, ast.Name) and base.id in aliases:
                found.append(f"{ast.unparse(node)}")
    return found


def test_the_scan_catches_private_imports(tmp_path):
    """The scanner itself: each of these lines must be flagged, and the public forms must not."""
    bad = ["from theory._retraining import _Quadratic", "import sims._landscape as land",
           "from theory.landscape._solver import x", "import sims\nx = sims._run._executor",
           "from sims import _landscape", "from theory.landscape import _gram",
           "from theory import landscape as L\nL._gram(1)", "import theory\ntheory.landscape._solver._gram"]
    good = ["from theory.validation import check_int", "import sims", "from theory import landscape as L",
            "from ._linear import simulate_chunk"]
    for line in bad:
        (tmp_path / "m.py").write_text(line + "\n")
        assert _violations(tmp_path / "m.py", ("theory", "sims")), line
    for line in good:
        (tmp_path / "m.py").write_text(line + "\n")
        assert not _violations(tmp_path / "m.py", ("theory", "sims")), line


@pytest.mark.parametrize(("folders", "packages"), [
    (("sims",), ("theory",)),
    (("loraml", "notebooks", "benchmarks"), ("theory", "sims")),
])
def test_packages_cross_only_through_public_names(folders, packages):
    bad = {str(p.relative_to(ROOT)): v for p in _sources(*folders) if (v := _violations(p, packages))}
    assert not bad, f"private names used across packages: {bad}"


def test_docstrings_name_the_packages_as_imported():
    bad = [str(p.relative_to(ROOT)) for p in _sources("theory", "sims", "loraml", "notebooks", "benchmarks", "tests")
           if re.search(r"loraml\.(theory|sims)\b", p.read_text()) and p.name != "test_api.py"]
    bad += ["README.md"] if re.search(r"loraml\.(theory|sims)\b", (ROOT / "README.md").read_text()) else []
    assert not bad


def _results():
    """One instance of every public result type, built by the functions that return it."""
    truth = th.sample_ground_truth(4, 1, 3, rng=0)
    data = th.sample_tasks(truth, 40, 12, 0.1, rng=1)
    U = truth.U_star[:3]
    X, Y = data.X_test, data.Y_test
    A0, B0 = lo.spectral_init(lo.one_step_gradient(X, Y, np.zeros((4, 4))), 1)
    point = L.sr_saddle(truth)
    return [
        truth, data,
        th.fit_loraml(data.X, data.Y, 1, rng=0),
        th.loraml_objective(truth.A_star, U, truth=truth),
        L.landscape_objective(truth, truth.A_star, U),
        point,
        L.hessian_min_eigenpair(truth, point.A, point.U),
        L.classify_critical_point(truth, point.A, point.U),
        L.reduced_gradient_descent(truth, U, step=0.01, n_steps=2, record_every=1),
        L.fit_population_batch(truth.task_weights[None, :3], 1, rng=0),
        lo.lora_objective(X, Y, np.zeros((4, 4)), A0, B0),
        lo.finetune(X, Y, np.zeros((4, 4)), A0, B0, lr=0.1, max_iter=2),
    ]


def test_result_types_compare_without_raising():
    """A frozen dataclass's generated == on array fields raises ("truth value of an array is
    ambiguous"); every result type compares field by field instead."""
    for a, b in zip(_results(), _results()):
        assert a == b, type(a).__name__                 # same inputs, same result
        assert not (a != b)
        first = dataclasses.fields(a)[0].name
        value = getattr(a, first)
        changed = value + 1 if isinstance(value, (np.ndarray, float, int)) else None
        if changed is not None:
            if isinstance(a, th.GroundTruth):
                other = th.GroundTruth(A_star=changed, U_star=a.U_star)
            else:
                other = dataclasses.replace(a, **{first: changed})
            assert a != other, type(a).__name__        # a changed field makes them differ
        assert a != object()
