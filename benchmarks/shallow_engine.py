"""Shallow-network engine: all trials batched vs one trial at a time, measured in one run.

Run:  .venv/bin/python benchmarks/shallow_engine.py [--steps 400] [--device cpu]

Times the retraining + fine-tuning of the 10 trials of the default setting (d = 10, T = 3,
N = 1000, n = 100) for ``--steps`` AdamW steps of each phase, on the same machine in one run:
(a) batched (one chunk of 10 trials, hand-written gradients);
(b) the same engine called one trial at a time;
(c) the straightforward port, one trial at a time: nn-style parameters, autograd and
    torch.optim.AdamW on samples-major data, as the authors' code is written;
and extrapolates them to the full protocol (40000 + 15000 steps; cost is linear in the steps). It also prints the per-step cost of
every setting of the two sweeps and the projected wall time of both sweeps on this machine.
"""

from __future__ import annotations

import argparse
import time

import sims


def _time(cfg, trials, device):
    t0 = time.perf_counter()
    for block in trials:
        sims.simulate_shallow_chunk(cfg, 0, block, device=device)
    return time.perf_counter() - t0


def _autograd_trial(d, T, N, n, k, steps, seed=0):
    """(c): one trial, autograd + torch.optim.AdamW, retraining LoRA-ML and SR, then fine-tuning both."""
    import torch

    g = torch.Generator().manual_seed(seed)
    X = torch.randn(T, N, d, generator=g)
    y = torch.randn(T, N, generator=g)
    Xt, yt = torch.randn(n, d, generator=g), torch.randn(n, generator=g)
    bound = d**-0.5

    def uniform(*shape):
        return (torch.rand(*shape, generator=g) * 2 - 1) * bound

    def fit(params, loss_fn, steps):
        opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.01)
        for _ in range(steps):
            opt.zero_grad()
            loss_fn().backward()
            opt.step()

    A, c = uniform(d, d).requires_grad_(), uniform(d).requires_grad_()
    Bt, Ct = torch.zeros(T, d, k, requires_grad=True), uniform(T, k, d).requires_grad_()
    fit([A, c, Bt, Ct], lambda: sum(((torch.sigmoid(X[t] @ (A + Bt[t] @ Ct[t]).T) @ c - y[t]) ** 2).mean()
                                    for t in range(T)) / T, steps)
    As, cs = uniform(d, d).requires_grad_(), uniform(d).requires_grad_()
    Xp, yp = X.reshape(-1, d), y.reshape(-1)
    fit([As, cs], lambda: ((torch.sigmoid(Xp @ As.T) @ cs - yp) ** 2).mean(), steps)
    for base, cb in ((A.detach(), c.detach()), (As.detach(), cs.detach())):
        Bf, Cf = torch.zeros(d, k, requires_grad=True), uniform(k, d).requires_grad_()
        fit([Bf, Cf], lambda: ((torch.sigmoid(Xt @ (base + Bf @ Cf).T) @ cb - yt) ** 2).mean(), steps)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=400, help="AdamW steps per phase for the timing (default 400)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    args = p.parse_args(argv)
    device = args.device or sims.default_device()
    s = args.steps
    full = 40000 + 15000
    cfg = sims.shallow_sweep("T", (3,), retrain_steps=s, ft_steps=s)
    sims.simulate_shallow_chunk(cfg, 0, (0,), device=device)       # warm-up
    tb = _time(cfg, [tuple(range(10))], device)
    to = _time(cfg, [(t,) for t in range(10)], device)
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)          # as the engine runs
    t0 = time.perf_counter()
    for trial in range(10):
        _autograd_trial(10, 3, 1000, 100, 1, s, seed=trial)
    ta = time.perf_counter() - t0
    torch.set_num_threads(threads)
    print(f"device {device}; default setting, 10 trials, {s} + {s} steps: (a) batched {tb:.2f} s, "
          f"(b) same engine one trial at a time {to:.2f} s -> {to / tb:.1f}x, "
          f"(c) autograd + torch.optim.AdamW one trial at a time {ta:.2f} s -> {ta / tb:.1f}x")
    print(f"  full protocol (40000 + 15000 steps): (a) ~{tb * full / (2 * s) / 60:.1f} min, "
          f"(b) ~{to * full / (2 * s) / 60:.1f} min, (c) ~{ta * full / (2 * s) / 60:.1f} min")
    total = 0.0
    for vary, values in sims.SHALLOW_SWEEPS.items():
        for value in values:
            c = sims.shallow_sweep(vary, (value,), retrain_steps=s, ft_steps=s)
            t = _time(c, [tuple(range(10))], device) * full / (2 * s)
            total += t
            print(f"  {vary} = {value:2d}: ~{t / 60:.1f} min for 10 trials at full settings")
    print(f"both sweeps, full settings: ~{total / 60:.1f} min serial, ~{total / 120:.1f} min on 2 processes")


if __name__ == "__main__":
    main()
