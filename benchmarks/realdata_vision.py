"""One epoch of paper-size vision retraining on the CPU: LoRA-ML beside SR, in images per second.

Run:  .venv/bin/python benchmarks/realdata_vision.py [--methods LoRA-ML SR] [--per-task 10000]

Writes a random data set in the CIFAR-10 python-pickle format (50,000 + 10,000 images) to a
temporary folder, reads it back through ``sims.read_cifar10`` (the path a user's files take) and
times one retraining epoch of each method on the 4 × ``--per-task`` images of the retraining tasks
(paper size: 4 × 10,000 = 40,000), with the paper's Mixer (width 512, patch 4), batch 256, crop
and flip. Validation uses 256 images per task so that the epoch's time is training; fine-tuning is
skipped. Images per second = 4 × per-task / (retraining wall time − the two validation passes,
which are timed separately and subtracted).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import sims


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--methods", nargs="+", default=["LoRA-ML", "SR"], choices=sims.RETRAINING_METHODS)
    p.add_argument("--per-task", type=int, default=10000, help="retraining images per task (paper: 10000)")
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    import torch

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        root = sims.write_cifar10(tmp, 50000, 10000, rng=0)
        print(f"wrote 60,000 CIFAR-format images in {time.perf_counter() - t0:.1f} s; torch threads "
              f"{torch.get_num_threads()}, {os.cpu_count()} cores, device {args.device}")
        base = dict(seeds=(0,), data_root=str(root), train_per_task=args.per_task, val_per_task=256, ft_epochs=0,
                    finetuning=("last-layer",), ft_val=100, test_size=256)
        results = {}
        for method in args.methods:
            cfg0 = sims.realdata_sweep("vision", values=(method,), retrain_epochs=0, reptile_epochs=0, **base)
            cfg1 = sims.realdata_sweep("vision", values=(method,), retrain_epochs=1, reptile_epochs=1, **base)
            t0, t1 = {}, {}
            sims.simulate_realdata_chunk(cfg0, 0, (0,), device=args.device, timings=t0)
            sims.simulate_realdata_chunk(cfg1, 0, (0,), device=args.device, timings=t1)
            key = f"retrain {method} seed 0"
            epoch = t1[key] - t0[key]            # the epoch-0 evaluation and setup cancel
            images = 4 * args.per_task
            results[method] = images / epoch
            print(f"{method:14s} one epoch of {images} images: {epoch:7.1f} s  -> {images / epoch:7.1f} images/s")
        if "SR" in results:
            for m, v in results.items():
                print(f"{m}: {v / results['SR']:.2f} x SR's throughput")


if __name__ == "__main__":
    main()
