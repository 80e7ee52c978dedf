"""Seeds fine-tuned as one stacked pass (sims._seedstack) against the loop, seed by seed.

With dropout 0 nothing random happens after the networks are built, so a seed's stacked result
must be its looped one up to float32 rounding: the accuracy histories equal (a rounding change
of a logit flips a prediction only at an exact tie) and the trained parameters within 1e-5.
Why 1e-5: the stacked and the looped gradients differ by summation order only (relative ~1e-7
per product, ~1e-6 after the sums of a layer); Adam's step is at most about lr = 1e-2 per
coordinate and moves by the same relative amount, so 8 steps differ by ~1e-7, far below 1e-5;
a wrong gradient scale (the mean over seeds instead of the sum: weight decay weighs S = 3 times
more) or another seed's initialisation moves parameters by 1e-3 or more.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

import sims
from sims._seedstack import SeedStack, finetune_seeds

S = 3


def _data(seed, n):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 8, 8, generator=g)
    return x, (x.mean((1, 2, 3)) > 0).long()


def _setup(n_train=(30, 30, 30)):
    bases, trains, vals, tests = [], [], [], []
    for s in range(S):
        torch.manual_seed(100 + s)
        bases.append(sims.MLPMixer(image_size=8, channels=1, patch_size=2, dim=8, dropout=0.0))
        trains.append(sims.BatchLoader(*_data(s, n_train[s]), 8, shuffle=True,
                                       generator=torch.Generator().manual_seed(7 + s)))
        vals.append(sims.BatchLoader(*_data(10 + s, 20), 512))
        tests.append(sims.BatchLoader(*_data(20 + s, 25), 512))
    return bases, trains, vals, tests


def _reseed(trains):
    for s, ld in enumerate(trains):
        ld.generator.manual_seed(7 + s)


@pytest.mark.parametrize("scheme", ["lora", "last-layer"])
def test_stacked_fine_tuning_equals_the_loop_per_seed(scheme):
    """Per seed: the same history and parameters as ``finetune`` with that seed, with the options
    that change the start (an initial adapter and head, V2; biases ignored, V1) taken per seed."""
    bases, trains, vals, tests = _setup()
    optim = sims.OptimSpec(epochs=2, lr=1e-2, weight_decay=1e-3)
    lora = sims.LoraSpec(ignore_bias=scheme == "lora")
    heads = [torch.nn.Linear(8, 2) for _ in range(S)]
    options = [{"init_head": heads[s]} if scheme == "last-layer" else
               {"init_adapter": None, "fresh_head": s == 1} for s in range(S)]
    _reseed(trains)
    loop = [sims.finetune(bases[s], trains[s], scheme=scheme, val=vals[s], test=tests[s], lora=lora, optim=optim,
                          seed=s, **options[s]) for s in range(S)]
    _reseed(trains)
    stacked = finetune_seeds(bases, trains, vals=vals, tests=tests, seeds=list(range(S)), scheme=scheme, lora=lora,
                             optim=optim, options=options)
    for a, b in zip(loop, stacked):
        pd.testing.assert_frame_equal(a.history, b.history)
        assert a.trainable == b.trainable
        pa, pb = dict(a.model.named_parameters()), dict(b.model.named_parameters())
        assert pa.keys() == pb.keys()
        for k in pa:
            np.testing.assert_allclose(pb[k].detach().numpy(), pa[k].detach().numpy(), rtol=0, atol=1e-5, err_msg=k)
    # the seeds really differ (else equality would not show that each seed got its own draws)
    assert not loop[0].history["accuracy"].equals(loop[1].history["accuracy"])


def test_loaders_out_of_step_fall_back_to_the_loop():
    """Seeds whose training sets differ in size cannot run batch by batch together: the loop runs,
    with the same result as ``finetune`` (and no error)."""
    bases, trains, vals, tests = _setup(n_train=(30, 30, 21))
    optim = sims.OptimSpec(epochs=1, lr=1e-2)
    _reseed(trains)
    loop = [sims.finetune(bases[s], trains[s], scheme="last-layer", val=vals[s], test=tests[s], optim=optim, seed=s)
            for s in range(S)]
    _reseed(trains)
    out = finetune_seeds(bases, trains, vals=vals, tests=tests, seeds=list(range(S)), scheme="last-layer",
                         optim=optim)
    for a, b in zip(loop, out):
        pd.testing.assert_frame_equal(a.history, b.history)


def test_seed_stack_sums_the_seeds_mean_losses():
    """The stacked output's mean loss backpropagates as the sum of the seeds' mean losses: each
    seed's gradient is its own network's (not 1/S of it)."""
    torch.manual_seed(0)
    nets = [torch.nn.Linear(3, 2) for _ in range(2)]
    stack = SeedStack(nets)
    x, y = torch.randn(2, 4, 3), torch.tensor([0, 1, 1, 0, 1, 1, 0, 0])
    torch.nn.functional.cross_entropy(stack(x), y).backward()
    for s, net in enumerate(nets):
        torch.nn.functional.cross_entropy(net(x[s]), y[4 * s:4 * s + 4]).backward()
        torch.testing.assert_close(stack.params["weight"].grad[s], net.weight.grad, rtol=1e-6, atol=1e-7)


def _tiny(preset="paper", dropout=0.0, **kw):
    base = dict(seeds=(0, 1), dropout=dropout, width=8, retrain_epochs=1, reptile_epochs=1, ft_epochs=2,
                n_finetune=(10,))
    return sims.realdata_sweep("digits", preset=preset, **{**base, **kw})


@pytest.mark.parametrize("preset,method", [("paper", "LoRA-ML"), ("paper", "last-layer-ML")])
def test_stacked_chunk_equals_the_looped_chunk(preset, method):
    """A chunk of two seeds, stacked, gives the looped chunk's table number for number (dropout 0):
    the stacked driver hands every fine-tuning its seed's base, loaders, seed and options (V2's
    adapter 0 and head 0 under ``paper``; a fresh head per seed is the unit test's)."""
    cfg = _tiny(preset, values=(method,))
    loop = sims.simulate_realdata_chunk(cfg, 0, (0, 1), device="cpu", amp=False, stacked=False)
    stacked = sims.simulate_realdata_chunk(cfg, 0, (0, 1), device="cpu", amp=False, stacked=True)
    pd.testing.assert_frame_equal(loop, stacked)


def test_stacked_seeds_stay_paired_across_methods():
    """With dropout on, a stacked pass draws its masks from one generator seeded by the stack's
    seeds: every method's chunk of the same seeds gets the same draws. With no retraining epoch SR's
    and LoRA-ML's bases are the seeds' initial Mixers, so their fine-tuning tables are identical;
    a generator seeded otherwise (per call, per method) would make them differ, since the draws
    matter here (the same chunk with dropout 0 gives other accuracies)."""
    kw = dict(values=("SR", "LoRA-ML"), retrain_epochs=0, finetuning=("lora",), width=16, ft_lr=0.1, ft_epochs=3,
              n_finetune=(40,))
    cfg = _tiny("clean", dropout=0.1, **kw)
    a, b = (sims.simulate_realdata_chunk(cfg, v, (0, 1), device="cpu", amp=False, stacked=True) for v in (0, 1))
    fa, fb = (t[t["phase"] == "finetune"].reset_index(drop=True) for t in (a, b))
    pd.testing.assert_series_equal(fa["accuracy"], fb["accuracy"])
    off = sims.simulate_realdata_chunk(_tiny("clean", dropout=0.0, **kw), 0, (0, 1), device="cpu", stacked=True)
    assert not off.loc[off["phase"] == "finetune", "accuracy"].reset_index(drop=True).equals(fa["accuracy"])
    # stacked=True is honoured: the loop draws each seed's masks from its own generator
    loop = sims.simulate_realdata_chunk(cfg, 0, (0, 1), device="cpu", amp=False, stacked=False)
    assert not loop.loc[loop["phase"] == "finetune", "accuracy"].reset_index(drop=True).equals(fa["accuracy"])


def test_cpu_chunks_loop_so_chunking_leaves_the_numbers_alone():
    """On the CPU a chunk of several seeds loops (the stacked pass is no faster there), so with
    dropout on a chunk of seeds 0 and 1 gives what chunks of one seed each give: the store's key
    leaves the chunking out. A stacked default would draw the masks from the stack's generator."""
    cfg = _tiny("clean", dropout=0.1, values=("SR",), finetuning=("last-layer",), width=16, ft_lr=0.1,
                n_finetune=(40,))
    both = sims.simulate_realdata_chunk(cfg, 0, (0, 1), device="cpu")
    apart = pd.concat([sims.simulate_realdata_chunk(cfg, 0, (t,), device="cpu") for t in (0, 1)], ignore_index=True)
    pd.testing.assert_frame_equal(both, apart)


def _amp_setup(overflowing):
    """S seeds' bases and unshuffled loaders (4 batches of 8): batch 0 of the seeds in
    ``overflowing`` has a row times 1e6, which overflows float16 (not float32) in the patch embedding."""
    bases, trains, vals, tests = _setup(n_train=(32, 32, 32))
    for s in range(S):
        x, y = trains[s].x.clone(), trains[s].y
        if s in overflowing:
            x[0] *= 1e6
        trains[s] = sims.BatchLoader(x, y, 8)
    return bases, trains, vals, tests


def _steps(run):
    from torch.optim.optimizer import register_optimizer_step_pre_hook

    steps = []
    handle = register_optimizer_step_pre_hook(lambda opt, args, kwargs: steps.append(opt))
    try:
        out = run()
    finally:
        handle.remove()
    return out, [sum(o is p for o in steps) for p in dict.fromkeys(steps)]


def test_stacked_amp_skips_as_every_seeds_own_scaler_and_falls_back_on_a_split_overflow(monkeypatch):
    """float16 autocast with one GradScaler for the stack, against each seed's own scaler in the loop.
    Every seed overflows on batch 0: the stack skips that step for all (one optimiser, 4 − 1 = 3
    steps in the epoch), as each seed's loop does (3 steps each), and every seed's weights are its
    looped ones up to float16 rounding: the two runs take the same steps on gradients that differ by
    rounding only, each of relative size ≲ 30u (u = 2**-11, the float16 roundoff; see
    test_protocol), and Adam's step moves by at most about twice that times lr = 1e-2, so 3 steps
    differ by ≤ 6 · 30u · 1e-2 ≈ 1e-3; an update skipped in one run and taken in the other moves
    weights by about lr = 1e-2 or more. Only seed 0 overflowing: the stack cannot skip one seed's
    step (its scaler skips it for all: 3 stacked steps), so it falls back to the loop (then 3, 4 and 4
    looped steps), whose results the seeds get bit for bit; without the fallback seeds 1 and 2 would
    lose a step. The stack's evaluations run in float32, as finetune's do (spec §2: an autocast
    evaluation could flip a prediction that the loop's float32 one does not)."""
    from sims import _seedstack

    casts = []
    real = _seedstack._autocast
    monkeypatch.setattr(_seedstack, "_autocast", lambda device, amp: casts.append(amp) or real(device, amp))
    optim = sims.OptimSpec(epochs=1, lr=1e-2)
    kw = dict(scheme="lora", optim=optim, amp=True)
    for overflowing, stack_steps in (((0, 1, 2), [3]), ((0,), [3, 3, 4, 4])):
        bases, trains, vals, tests = _amp_setup(overflowing)
        loop, loop_steps = _steps(lambda: [sims.finetune(bases[s], trains[s], val=vals[s], test=tests[s], seed=s, **kw)
                                           for s in range(S)])
        assert loop_steps == [3 if s in overflowing else 4 for s in range(S)]
        stacked, steps = _steps(lambda: finetune_seeds(bases, trains, vals=vals, tests=tests, seeds=list(range(S)),
                                                       **kw))
        assert steps == stack_steps
        for a, b in zip(loop, stacked):
            pa, pb = dict(a.model.named_parameters()), dict(b.model.named_parameters())
            for k in pa:
                if len(overflowing) == S:
                    np.testing.assert_allclose(pb[k].detach().numpy(), pa[k].detach().numpy(), rtol=0, atol=1e-3)
                else:
                    assert torch.equal(pa[k], pb[k]), k
            if len(overflowing) < S:
                pd.testing.assert_frame_equal(a.history, b.history)
    assert len(casts) == 2 * 2 * 2 and not any(casts)          # (epochs 0, 1) x (val, test) per stacked pass
