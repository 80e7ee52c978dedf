"""`make reproduce` on a fresh clone and an empty store: this tree against an earlier revision,
timed back to back in one run, with the largest relative difference of every stored table.

Run:  .venv/bin/python benchmarks/reproduce.py [--base d33ccab] [--only shallow ...] [--fast]

For each of the base revision and this working tree (committed or not), a fresh copy of the
sources is made in a temporary folder (``git archive`` for the revision, ``git ls-files`` for the
tree) and ``loraml reproduce`` — the command ``make reproduce`` runs — is timed there with an
empty store, using this checkout's virtual environment (same libraries for both; installing them
is not what is measured). Then every config stored by both is compared: for each table the
largest relative difference of its float columns (0 where only scheduling changed; float32
rounding where a kernel changed).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parent.parent


def _export_revision(rev: str, dest: Path) -> None:
    blob = subprocess.run(["git", "-C", str(REPO), "archive", rev], check=True, capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(blob)) as tar:
        tar.extractall(dest, filter="data")


def _export_tree(dest: Path) -> None:
    files = subprocess.run(["git", "-C", str(REPO), "ls-files", "-co", "--exclude-standard"], check=True,
                           capture_output=True, text=True).stdout.split()
    for name in files:
        src = REPO / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            (dest / name).write_bytes(src.read_bytes())


def _reproduce(src: Path, args) -> tuple[float, str]:
    cmd = [sys.executable, "-c", "import sys; from loraml.cli import main; sys.exit(main(sys.argv[1:]))",
           "reproduce", "--out", str(src / "figures-out"), "--store", str(src / "results"), "--quiet"]
    for group in args.only or ():
        cmd += ["--only", group]
    if args.fast:
        cmd.append("--fast")
    env = {"PYTHONPATH": str(src), "PATH": "/usr/bin:/bin", "HOME": str(src), "MPLBACKEND": "Agg"}
    t0 = time.perf_counter()
    out = subprocess.run(cmd, cwd=src, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if out.returncode != 0:
        raise SystemExit(f"reproduce failed in {src}:\n{out.stderr[-3000:]}")
    return wall, out.stdout


def _tables(root: Path) -> dict[str, pd.DataFrame]:
    """Every stored table of a fresh store, its chunk files read as they are: the base revision's
    engines may have other versions, which sims.read_store rightly leaves out, and each store here
    was filled once, in one chunking, so no trial is stored twice."""
    tables = {}
    for folder in sorted((root / "results").glob("*-*")):
        files = sorted(folder.glob("chunk-*.parquet"))
        if files:
            table = pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)
            keys = [c for c in ("method", "value", "trial", "step") if c in table.columns]
            tables[folder.name] = table.sort_values(keys, kind="stable").reset_index(drop=True)
    return tables


def _max_rel_diff(a: pd.DataFrame, b: pd.DataFrame) -> float:
    if len(a) != len(b):
        return float("nan")
    worst = 0.0
    if list(a.columns) != list(b.columns):
        return float("nan")
    for col in a.columns:
        if not pd.api.types.is_float_dtype(a[col]) and not a[col].equals(b[col]):
            return float("nan")           # a label column differs: the rows do not correspond
        if pd.api.types.is_float_dtype(a[col]):
            x, y = a[col].to_numpy(), b[col].to_numpy()
            both = np.isfinite(x) & np.isfinite(y)
            if not np.array_equal(np.isfinite(x), np.isfinite(y)):
                return float("inf")
            scale = np.maximum(np.abs(x[both]), np.abs(y[both]))
            rel = np.abs(x[both] - y[both]) / np.where(scale > 0, scale, 1.0)
            worst = max(worst, float(rel.max(initial=0.0)))
    return worst


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", default="d33ccab", help="the revision to compare against (default d33ccab)")
    p.add_argument("--only", action="append", help="figure groups to reproduce (default: all)")
    p.add_argument("--fast", action="store_true", help="loraml reproduce --fast (a smoke test of this script)")
    p.add_argument("--keep", type=Path, help="work in this new folder and keep it (figures, stores) afterwards")
    args = p.parse_args(argv)
    if args.keep is not None:
        args.keep.mkdir(parents=True)
    with (contextlib.nullcontext(str(args.keep)) if args.keep is not None else tempfile.TemporaryDirectory()) as tmp:
        base, tree = Path(tmp) / "base", Path(tmp) / "tree"
        base.mkdir()
        tree.mkdir()
        _export_revision(args.base, base)
        _export_tree(tree)
        walls = {}
        for name, src in (("base", base), ("tree", tree)):
            walls[name], log = _reproduce(src, args)
            groups = "; ".join(line for line in log.splitlines() if not line.startswith(" "))
            print(f"{name:5s} {walls[name]:7.1f} s  ({groups})", flush=True)
        print(f"speed-up base/tree: {walls['base'] / walls['tree']:.2f}x")
        a, b = _tables(base), _tables(tree)
        print("largest relative difference per stored table (base vs tree):")
        for key in sorted(set(a) | set(b)):
            if key in a and key in b:
                print(f"  {key:30s} {len(a[key]):7d} rows  {_max_rel_diff(a[key], b[key]):.3g}")
            else:
                print(f"  {key:30s} only in {'base' if key in a else 'tree'} (config or key changed)")


if __name__ == "__main__":
    main()
