"""Seeds of one small model trained as one (spec/realdata.md; DESIGN: seeds are batched like trials).

S networks of one structure (the seeds' fine-tuning networks, each built exactly as
:func:`sims.finetune` builds it, from its own seed) have their parameters stacked along a new
leading axis (``torch.func.stack_module_state``); one ``vmap`` of ``torch.func.functional_call``
runs all of them on a stack of batches, one batch per seed (dropout: ``randomness="different"``).
The loss is the sum over seeds of each seed's mean loss, so the gradient of a seed's parameters is
that seed's own gradient; Adam with coupled L2 decay and the cosine schedule act elementwise, so
one optimiser over the stacked parameters takes, for every seed, the step its own optimiser would
take. The epochs are those of :func:`sims.finetune` (the same function runs them); only the
network, the loaders and the recording differ.

What a seed gets is its looped result up to rounding, except for dropout: under ``vmap`` the masks
of all seeds come from one generator (seeded from the seeds of the stack), so with dropout > 0 a
seed's draws depend on which seeds share its stack. Loaders that cannot run in step (different
batch counts or sizes), a deadline, or another objective fall back to the loop.

Mixed precision (float16): one GradScaler scales the stack's loss, so every seed's gradient is
scaled by the one scale that each seed's own scaler would hold, as long as the seeds agree on
every overflow: a step whose gradients overflow in every seed is skipped for all (as each seed's
loop skips it), one that overflows in none is taken by all. A step that overflows in some seeds
only cannot be skipped for those alone (one optimiser, one step count), so the stacked pass
records it on the device and, if it happened, the seeds are fine-tuned again by the loop.
"""

from __future__ import annotations

import copy
import functools

import numpy as np
import pandas as pd

from ._peftml import (BatchLoader, FineTuned, LoraSpec, OptimSpec, _amp, _autocast, _finetune_net, _epochs, _inner,
                      _optimizer, _scaler, _seeded, _targets, _torch, finetune, trainable_count)


@functools.lru_cache(maxsize=1)
def _scale_grad():
    torch = _torch()

    class ScaleGrad(torch.autograd.Function):
        """Identity forward; the gradient times ``factor`` backward (a mean over S seeds' rows
        becomes the sum over seeds of each seed's mean)."""

        @staticmethod
        def forward(ctx, x, factor):
            ctx.factor = factor
            return x.view_as(x)

        @staticmethod
        def backward(ctx, grad):
            return grad * ctx.factor, None

    return ScaleGrad


class SeedStack:
    """S modules of one structure as one: ``stack(x)`` with ``x`` of shape (S, B, ...) runs module
    s on ``x[s]`` and returns the outputs as one (S·B, ...) tensor whose mean loss backpropagates
    as the sum of the seeds' mean losses. ``params`` are the stacked parameters (those that train
    require grad); :meth:`unstack` copies them back into the modules."""

    def __init__(self, nets):
        torch = _torch()
        from torch.func import functional_call, stack_module_state, vmap

        self.nets = list(nets)
        self.S = len(self.nets)
        self.params, self.buffers = stack_module_state(self.nets)
        self.template = copy.deepcopy(self.nets[0]).to("meta")
        self.trainable = [p for p in self.params.values() if p.requires_grad]

        def one(params, buffers, x):
            return functional_call(self.template, (params, buffers), (x,))

        self._run = vmap(one, randomness="different")
        self._torch = torch

    @property
    def training(self) -> bool:
        return self.template.training

    def set(self, flag: bool) -> None:
        """Train (dropout on) or eval mode for every seed (the ``_Modes`` interface)."""
        self.template.train(flag)

    def __call__(self, x):
        out = self._run(self.params, self.buffers, x)
        out = out.reshape(-1, *out.shape[2:])
        if self._torch.is_grad_enabled() and out.requires_grad:
            out = _scale_grad().apply(out, float(self.S))
        return out

    def unstack(self) -> None:
        """Copy the stacked parameters and buffers back into each seed's module."""
        torch = self._torch
        with torch.no_grad():
            for s, net in enumerate(self.nets):
                own = dict(net.named_parameters())
                own.update(dict(net.named_buffers()))
                for name, value in {**self.params, **self.buffers}.items():
                    own[name].copy_(value[s])


class _StackScaler:
    """The GradScaler of a stack (see the module docstring): ``step`` unscales the stacked
    gradients, notes on the device whether the seeds disagree on an overflow (``split``), then
    steps (or skips) as the scaler decides for the whole stack."""

    def __init__(self, scaler, params, S):
        self.scaler, self.params, self.S = scaler, params, S
        self.split = None

    def scale(self, loss):
        return self.scaler.scale(loss)

    def step(self, opt):
        torch = _torch()
        self.scaler.unscale_(opt)
        finite = None
        for p in self.params:
            if p.grad is not None:
                ok = torch.isfinite(p.grad.reshape(self.S, -1)).all(1)
                finite = ok if finite is None else finite & ok
        if finite is not None:
            split = finite.any() & ~finite.all()
            self.split = split if self.split is None else self.split | split
        self.scaler.step(opt)

    def update(self):
        self.scaler.update()

    def disagreed(self) -> bool:
        return self.split is not None and bool(self.split)


class _InStep:
    """The seeds' loaders run in step: batch i of every seed, stacked (S, B, ...); labels flat
    (S·B,) to match :class:`SeedStack`'s output. Each loader draws its own order and transform."""

    def __init__(self, loaders):
        self.loaders = loaders

    def __len__(self):
        return len(self.loaders[0])

    def __iter__(self):
        torch = _torch()
        for batches in zip(*self.loaders):
            yield torch.stack([b[0] for b in batches]), torch.cat([b[1] for b in batches])


def _in_step(loaders) -> bool:
    """Whether the loaders give batches of equal sizes in equal numbers (every seed's batch i the
    same size), so they can run in step."""
    first = loaders[0]
    return all(type(ld) is BatchLoader and len(ld) == len(first) and len(ld.x) == len(first.x)
               and ld.batch_size == first.batch_size and ld.drop_last == first.drop_last
               and tuple(ld.x.shape[1:]) == tuple(first.x.shape[1:]) for ld in loaders)


def _stack_accuracy(stack, loaders, device, amp) -> np.ndarray:
    """Accuracy of each seed's network on its own loader (eval mode; the mode is restored)."""
    torch = _torch()
    was = stack.training
    stack.set(False)
    right = None
    total = 0
    with torch.inference_mode():
        for x, y in _InStep(loaders):
            x, y = x.to(device), y.to(device)
            with _autocast(device, amp):
                out = stack(x)
            hits = (out.argmax(-1) == y).reshape(stack.S, -1).sum(1)
            right = hits if right is None else right + hits
            total += len(y) // stack.S
    stack.set(was)
    return right.cpu().numpy() / max(total, 1)


def finetune_seeds(bases, trains, *, vals, tests, seeds, scheme, head="head", lora=None, optim=None, device="cpu",
                   amp=False, options=None, deadline=None, objective="classify", micro_batch=None,
                   amp_dtype="float16") -> list:
    """:func:`sims.finetune` of several seeds' bases, each on its own loaders with its own seed:
    one stacked pass when the loaders run in step (see the module docstring), else the loop.
    Returns one :class:`FineTuned` per seed, in order. ``options``: per seed, the keyword
    arguments ``init_adapter``, ``init_head``, ``fresh_head``, ``train_head`` of ``finetune``;
    ``amp``, ``amp_dtype``: as in ``finetune`` (one GradScaler for the stack)."""
    torch = _torch()
    S = len(bases)
    options = [dict(o) for o in options] if options is not None else [{} for _ in range(S)]
    kw = {k: v for k, v in (("lora", lora), ("optim", optim)) if v is not None}
    stackable = (S > 1 and deadline is None and objective == "classify" and micro_batch is None
                 and _in_step(trains) and _in_step(vals) and _in_step(tests))

    def loop():
        return [finetune(bases[s], trains[s], scheme=scheme, val=vals[s], test=tests[s], head=head, seed=seeds[s],
                         device=device, amp=amp, deadline=deadline, objective=objective, micro_batch=micro_batch,
                         amp_dtype=amp_dtype, **kw, **options[s]) for s in range(S)]

    if not stackable:
        return loop()
    trains_state = [ld.generator.get_state() if getattr(ld, "generator", None) is not None else None
                    for ld in trains]
    lora = LoraSpec() if lora is None else lora
    optim = OptimSpec() if optim is None else optim
    device = torch.device(device)
    mixed = _amp(amp, amp_dtype)
    nets, trainable = [], []
    for s in range(S):
        targets = _targets(bases[s], lora, "finetune_seeds") if scheme == "lora" else ()
        o = options[s]
        with _seeded(int(seeds[s]), device):
            net, _, params = _finetune_net(bases[s], scheme, head, lora, targets, device, o.get("init_adapter"),
                                           o.get("init_head"), bool(o.get("fresh_head", False)),
                                           bool(o.get("train_head", False)))
        nets.append(net)
        trainable.append(trainable_count(params))
    inner = [_inner(net) for net in nets]
    # Parameters that train in one seed's network train in all (the same scheme and options).
    stack = SeedStack(inner)
    rows = [[] for _ in range(S)]

    same = all(v is t for v, t in zip(vals, tests))     # one loader as both splits: evaluated once, as finetune does

    def record(epoch):
        acc = None
        for split, lds in (("val", vals), ("test", tests)):
            # in float32, as finetune evaluates (spec §2)
            acc = acc if same and acc is not None else _stack_accuracy(stack, lds, device, False)
            for s in range(S):
                rows[s].append({"epoch": epoch, "split": split, "accuracy": float(acc[s])})

    # Dropout masks of the whole stack from one generator, seeded from the seeds of the stack.
    stack_seed = int(np.random.SeedSequence([int(v) for v in seeds]).generate_state(1)[0])
    with _seeded(stack_seed, device):
        opt, sched = _optimizer(stack.trainable, optim, len(trains[0]))
        scaler = _scaler(device, mixed)
        scaler = None if scaler is None else _StackScaler(scaler, stack.trainable, S)
        _epochs(stack, _InStep(trains), opt, sched, stack, record, optim.epochs, None, device, mixed, objective, None,
                scaler)
    if scaler is not None and scaler.disagreed():
        # some seeds overflowed where others did not: the loop, from the loaders' starting states
        for ld, state in zip(trains, trains_state):
            if state is not None:
                ld.generator.set_state(state)
        return loop()
    stack.unstack()
    out = []
    for s in range(S):
        nets[s].eval()
        out.append(FineTuned(model=nets[s], history=pd.DataFrame(rows[s]), trainable=trainable[s]))
    return out
