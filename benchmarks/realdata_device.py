"""The paper-size vision protocol (spec/realdata.md §2) for one seed on a GPU, with a time budget.

Run:  PYTHONPATH=. python3 benchmarks/realdata_device.py --out DIR [--budget 360] [--device cuda]
Tiny check on a CPU:  ... --out DIR --size 500 --test-size 200 --width 16 --epochs 1 --ft-epochs 1

Writes random images in the CIFAR-10 python-pickle format (``--size`` training + ``--test-size``
test images; paper size 50,000 + 10,000) to a temporary folder, then for each retraining method
(SR, LoRA-ML, last-layer-ML, Reptile) runs one chunk of ``sims.realdata_sweep("vision")``: retraining
with the paper's schedules (100 epochs, Reptile 5), fine-tuning with LoRA and with a new head (100
epochs each) on the 9,000 + 1,000 ship/truck images, float16 mixed precision with a GradScaler on
CUDA. The budget (seconds of training, all methods together) is shared evenly by the methods still
to run; inside a method, retraining stops after the epoch that passes half its share and each
fine-tuning after its equal part of the rest — so the script ends cleanly in time and says how far
each phase got (epochs done of epochs planned) and what the whole protocol would take at the
measured rate.

Files written to ``--out`` (4): ``report.txt`` (what is printed), ``timings.json`` (wall time of
every phase), ``table.csv`` (the tidy table), ``summary.md`` (last/best-epoch test accuracy).
Accuracies on random images are chance level; the point is the time.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import sims


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True, help="folder for the result files")
    p.add_argument("--size", type=int, default=50000, help="training images generated (paper: 50000)")
    p.add_argument("--test-size", type=int, default=10000, help="test images generated (paper: 10000)")
    p.add_argument("--epochs", type=int, default=100, help="retraining epochs (paper: 100)")
    p.add_argument("--reptile-epochs", type=int, default=5, help="Reptile outer epochs (paper: 5)")
    p.add_argument("--ft-epochs", type=int, default=100, help="fine-tuning epochs (paper: 100)")
    p.add_argument("--width", type=int, default=512, help="Mixer width (paper: 512)")
    p.add_argument("--budget", type=float, default=360.0,
                   help="seconds of training for everything (default 360: with data generation, reading and "
                        "start-up the script ends within about 7 minutes)")
    p.add_argument("--device", default=None, help="torch device (default: cuda when available)")
    p.add_argument("--preset", choices=("paper", "clean"), default="paper")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--methods", nargs="+", default=list(sims.RETRAINING_METHODS), choices=sims.RETRAINING_METHODS)
    args = p.parse_args(argv)
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    args.out.mkdir(parents=True, exist_ok=True)
    lines = []

    def say(text):
        print(text, flush=True)
        lines.append(text)

    name = torch.cuda.get_device_name(0) if device.startswith("cuda") else "cpu"
    say(f"device {device} ({name}), torch {torch.__version__}, budget {args.budget:.0f} s, preset {args.preset}")
    timings, tables = {}, []
    t_all = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        root = sims.write_cifar10(Path(tmp) / "cifar", args.size, args.test_size, rng=args.seed)
        timings["generate data"] = time.perf_counter() - t0
        say(f"generated {args.size} + {args.test_size} CIFAR-format images in {timings['generate data']:.1f} s")
        ft_val = min(1000, max(1, args.size // 50))
        cfg_all = sims.realdata_sweep("vision", preset=args.preset, seeds=(args.seed,), data_root=str(root),
                                      values=tuple(args.methods), retrain_epochs=args.epochs,
                                      reptile_epochs=args.reptile_epochs, ft_epochs=args.ft_epochs, width=args.width,
                                      ft_val=ft_val)
        start = time.perf_counter()
        for i, method in enumerate(cfg_all.values):
            left = args.budget - (time.perf_counter() - start)
            share = max(left, 0.0) / (len(cfg_all.values) - i)
            t0 = time.perf_counter()
            phase = {}
            table = sims.simulate_realdata_chunk(cfg_all, i, (0,), device=device, budget=share, timings=phase)
            wall = time.perf_counter() - t0
            timings.update(phase)
            timings[f"chunk {method}"] = wall
            tables.append(table)
            planned_r = args.reptile_epochs if method == "Reptile" else args.epochs
            r = table[table["phase"] == "retrain"]
            done_r = int(r["epoch"].max())
            rt = phase[f"retrain {method} seed {args.seed}"]
            say(f"{method}: {wall:.1f} s (share {share:.0f} s); retraining {done_r}/{planned_r} epochs in {rt:.1f} s"
                f" ({rt / max(done_r, 1):.2f} s/epoch -> {planned_r * rt / max(done_r, 1):.0f} s for all)")
            f = table[table["phase"] == "finetune"]
            for scheme, g in f.groupby("finetuning", observed=True):
                done = int(g["epoch"].max())
                ft = sum(v for k, v in phase.items() if k.startswith(f"finetune {method} {scheme} "))
                say(f"  fine-tuning {scheme}: {done}/{args.ft_epochs} epochs in {ft:.1f} s "
                    f"({ft / max(done, 1):.2f} s/epoch -> {args.ft_epochs * ft / max(done, 1):.0f} s for all)")
    import pandas as pd

    table = pd.concat(tables, ignore_index=True)
    total = time.perf_counter() - t_all
    timings["total"] = total
    projected = 0.0
    for method in cfg_all.values:
        sub = table[table["retraining"] == method]
        planned_r = args.reptile_epochs if method == "Reptile" else args.epochs
        r_done = max(int(sub[sub["phase"] == "retrain"]["epoch"].max()), 1)
        projected += timings[f"retrain {method} seed {args.seed}"] * planned_r / r_done
        for scheme, g in sub[sub["phase"] == "finetune"].groupby("finetuning", observed=True):
            ft = sum(v for k, v in timings.items() if k.startswith(f"finetune {method} {scheme} "))
            projected += ft * args.ft_epochs / max(int(g["epoch"].max()), 1)
    if device.startswith("cuda"):
        say(f"peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")
    say(f"total {total:.1f} s; the whole protocol for one seed at these rates: {projected:.0f} s "
        f"({projected / 60:.1f} min; 5 seeds {5 * projected / 60:.1f} min)")
    summary = sims.realdata_summary(table)
    say(summary.to_string(index=False, float_format=lambda x: f"{x:.3f}"))
    table.to_csv(args.out / "table.csv", index=False)
    (args.out / "summary.md").write_text(summary.to_markdown(index=False) if _has_tabulate() else summary.to_string())
    (args.out / "timings.json").write_text(json.dumps(timings, indent=2))
    (args.out / "report.txt").write_text("\n".join(lines) + "\n")
    return table


def _has_tabulate() -> bool:
    try:
        import tabulate  # noqa: F401
    except ImportError:
        return False
    return True


if __name__ == "__main__":
    main()
