"""Every notebook in notebooks/ runs top to bottom in a real Jupyter kernel with LORAML_FAST=1, writes
its figures and displays at least one of them (a PNG output: the documentation site shows the
notebook's outputs, and a figure that is only written to a file never reaches the page)."""

import os
import sys
from pathlib import Path

import pytest

jupytext = pytest.importorskip("jupytext")
nbclient = pytest.importorskip("nbclient")

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.py"))


def _kernel_name():
    """The venv's own kernel if one is registered, else register it (sys.prefix) once."""
    from jupyter_client.kernelspec import KernelSpecManager

    ksm = KernelSpecManager()
    specs = ksm.get_all_specs()
    for name, spec in specs.items():
        argv = spec["spec"]["argv"]
        if argv and Path(argv[0]).resolve() == Path(sys.executable).resolve():
            return name
    if "python3" in specs:
        return "python3"
    from ipykernel.kernelspec import install

    install(prefix=sys.prefix)
    return "python3"


def test_every_notebook_is_here():
    assert [p.name for p in NOTEBOOKS] == ["01-two-task-landscape.py", "02-recovery-three-or-more-tasks.py",
                                           "03-adaptation-rate.py", "04-lora-one-meets-lora-ml.py",
                                           "05-off-the-paper.py"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_executes(path, tmp_path, monkeypatch):
    monkeypatch.setenv("LORAML_FAST", "1")
    monkeypatch.setenv("PYTHONPATH", str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    nb = jupytext.read(path)
    client = nbclient.NotebookClient(nb, kernel_name=_kernel_name(), timeout=120,
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()   # raises CellExecutionError on the first failing cell
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
    assert list(tmp_path.glob("figures-notebook/*.png"))
    shown = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert shown, f"{path.name} displays no figure"
