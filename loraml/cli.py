"""The ``loraml`` command line."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def _parser() -> argparse.ArgumentParser:
    from .figures import GROUPS

    p = argparse.ArgumentParser(
        prog="loraml",
        description="Executable theory of low-rank meta-learning: reproduce figures, run sweeps.",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    r = sub.add_parser("reproduce", help="regenerate every figure (or one group) into --out",
                       description="Regenerate the toolkit's figures. Existing PNG/PDF files are overwritten.")
    r.add_argument("--only", choices=sorted(GROUPS), action="append",
                   help="regenerate only this figure group (repeatable); default: all groups")
    r.add_argument("--out", type=Path, default=Path("figures"),
                   help="folder the figure groups are written under (default: ./figures)")
    r.add_argument("--fast", action="store_true",
                   help="fewer repetitions, for a quick look (not the committed figures)")
    return p


def main(argv=None) -> int:
    from .figures import GROUPS

    args = _parser().parse_args(argv)
    if args.command == "reproduce":
        groups = args.only or list(GROUPS)
        for name in groups:
            t0 = time.perf_counter()
            paths = GROUPS[name](args.out, fast=args.fast)
            print(f"{name}: {len(paths)} files in {time.perf_counter() - t0:.1f} s")
            for path in paths:
                print(f"  {path}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
