"""PEFT-ML on any torch model: the four retraining methods and the two fine-tuning schemes of
spec/realdata.md §1, with LoRA from Hugging Face ``peft``.

A model is any ``torch.nn.Module`` whose output layer is a submodule named by ``head`` (a dotted
path such as ``"head"``); a data set is a list of per-task loaders, each a re-iterable of
``(inputs, labels)`` batches with a ``len`` (a :class:`BatchLoader`, or a torch ``DataLoader``).

Retraining (:func:`retrain`):

- ``"SR"``: one model; each step takes one batch of every task (or a batch of the ``pooled``
  loader when one is given) and one optimiser step on the summed loss.
- ``"LoRA-ML"``: one peft adapter per task (``task0``, ``task1``, …, ``LoraConfig(r, lora_alpha,
  lora_dropout, target_modules)``), the base trainable beside them; a step activates each task's
  adapter in turn on one batch of that task, back-propagates (the base and that adapter get
  gradients), and then steps the optimiser once on the base and all adapters (``step="round"``,
  max_t len_t rounds per epoch, a shorter task's loader starting over), or steps after every task
  batch (``step="task"``: round-robin over the tasks that still have batches, Σ_t len_t steps per
  epoch).
- ``"last-layer-ML"``: T copies of the head (fresh initialisations), one body; same step.
- ``"Reptile"``: per task a copy of θ takes ``inner_steps`` SGD steps, then the outer optimiser
  steps once on the pseudo-gradient ``sign · (θ − θ_t) / T`` (``sign = +1`` moves θ toward θ_t;
  the authors' code has ``sign = −1``, quirk V3). One outer epoch visits every task once: T
  outer steps.

The checkpoint with the best mean validation accuracy over tasks (each task evaluated with its own
adapter or head; SR and Reptile with the base) is returned, never one chosen on a test set: the
running best starts at 0 and only a strict rise replaces it.

Fine-tuning (:func:`finetune`): a deep copy of θ̂ is frozen and gets a fresh peft adapter
(``"lora"``: every targeted Linear layer, head included when it is targeted) or a new trainable
head (``"last-layer"``). Accuracy on the ``val`` and ``test`` loaders is recorded before training
(epoch 0) and after every epoch; :func:`best_and_last` reads the last-epoch and the best-epoch
(chosen on ``val``) test accuracy.

Randomness: data order comes from the loaders' ``torch.Generator``; initialisations (heads, peft's
``lora_A``) and dropout masks come from torch's default generator, which every public function
here seeds from its ``seed`` argument inside ``torch.random.fork_rng`` — the caller's global
state is restored on return, and the same seed gives the same numbers on the CPU.

What peft could not do directly (so it is done around it, not by a home-made adapter layer):
peft freezes the base when it wraps a model and ``set_adapter`` marks only the active adapter
trainable; LoRA-ML sets the base trainable again after wrapping and collects every adapter's
parameters into the optimiser once (``set_adapter`` does not touch the base's flags, and a
parameter whose ``requires_grad`` is off keeps the gradient it already holds). peft's
``"all-linear"`` leaves the output layer out, so targets are named explicitly
(:func:`linear_names`). Ignoring biases in the adapted forward pass (quirk V1) is done by zeroing
and freezing the targeted layers' biases before wrapping.
"""

from __future__ import annotations

import contextlib
import copy
import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from theory.validation import check_bool, check_choice, check_int, check_real, check_seed, check_values

__all__ = [
    "RETRAINING_METHODS", "FINETUNING_SCHEMES", "LoraSpec", "OptimSpec", "ReptileSpec", "BatchLoader",
    "Retrained", "FineTuned", "retrain", "finetune", "attach_lora", "best_and_last", "linear_names", "trainable_count",
    "OBJECTIVES",
]

#: The four retraining methods and the two fine-tuning schemes of spec §1.
RETRAINING_METHODS = ("SR", "LoRA-ML", "last-layer-ML", "Reptile")
FINETUNING_SCHEMES = ("lora", "last-layer")
#: What a batch's output is scored by (see :func:`_loss` and :func:`_accuracy`):
#: ``"classify"``: output (B, classes), labels (B,): cross-entropy, argmax accuracy.
#: ``"pairs"``: output (B, C, 2), two class logits for each of C (context, candidate) pairs, labels
#: (B,) the index of the true candidate: cross-entropy over the 2 classes of every pair (true
#: candidate class 1, the others class 0; the binary cross-entropy of the logit difference), mean
#: over the B·C pairs; accuracy = hits@1, the candidate with the largest class-1 logit is the true one.
OBJECTIVES = ("classify", "pairs")


def _torch():
    try:
        import torch
    except ImportError as err:  # pragma: no cover - torch is a declared dependency of the extras
        raise ImportError("PEFT-ML needs torch and peft: pip install 'loraml[torch]'") from err
    return torch


# ------------------------------------------------------------------------------------------------
# Options


def _check_name(value, name, func):
    if not isinstance(value, str):
        raise ValueError(f"The {name!r} parameter of {func} must be (or hold) module names (str). "
                         f"Got {value!r} instead.")
    return value


def _check_module(model, name, func):
    torch = _torch()
    if not isinstance(model, torch.nn.Module):
        raise ValueError(f"The {name!r} parameter of {func} must be a torch.nn.Module. Got {type(model).__name__}.")
    return model


def _check_spec(value, cls, name, func):
    if not isinstance(value, cls):
        raise ValueError(f"The {name!r} parameter of {func} must be a {cls.__name__}. Got {type(value).__name__}.")
    return value


def _check_device(device, func):
    torch = _torch()
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"The 'device' parameter of {func} must be a torch device such as 'cpu' or 'cuda'. "
                         f"Got {device!r} instead.") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"The 'device' parameter of {func} is {device!r}, but CUDA is not available here.")
    return dev


def _check_common(func, *, seed, device, amp, deadline, amp_dtype="float16"):
    """The arguments retrain and finetune share; returns (seed, torch device)."""
    seed = check_seed(seed, "seed", func)
    if not isinstance(amp, (bool, np.bool_)):
        raise ValueError(f"The 'amp' parameter of {func} must be a bool. Got {amp!r} instead.")
    check_choice(amp_dtype, "amp_dtype", func, AMP_DTYPES)
    if deadline is not None:
        check_real(deadline, "deadline", func)
    return seed, _check_device(device, func)


@dataclass(frozen=True)
class LoraSpec:
    """peft's LoRA options. ``target_modules``: full dotted names of Linear layers (empty: every
    Linear of the model, the output layer included). ``ignore_bias``: zero and freeze the targeted
    layers' biases (the authors' adapted forward pass drops them, quirk V1).

    Examples
    --------
    >>> spec = LoraSpec(r=2, lora_alpha=4.0)          # peft scales the adapter by lora_alpha / r = 2
    >>> spec.r, spec.lora_alpha / spec.r, spec.target_modules
    (2, 2.0, ())
    """

    r: int = 1
    lora_alpha: float = 1.0
    lora_dropout: float = 0.0
    target_modules: tuple = ()
    ignore_bias: bool = False

    def __post_init__(self):
        check_int(self.r, "r", "LoraSpec", low=1)
        check_real(self.lora_alpha, "lora_alpha", "LoraSpec", low=0.0, low_open=True)
        check_real(self.lora_dropout, "lora_dropout", "LoraSpec", low=0.0, high=1.0)
        object.__setattr__(self, "target_modules", check_values(
            self.target_modules, "target_modules", "LoraSpec", lambda n: _check_name(n, "target_modules", "LoraSpec"),
            least=0))
        if not isinstance(self.ignore_bias, (bool, np.bool_)):
            raise ValueError(f"The 'ignore_bias' parameter of LoraSpec must be a bool. "
                             f"Got {self.ignore_bias!r} instead.")


@dataclass(frozen=True)
class OptimSpec:
    """Optimiser and schedule of one phase: Adam with L2 weight decay (``"adam"``) or AdamW,
    learning rate on a cosine schedule over ``epochs`` (stepped per epoch), constant, or stepped
    after every optimiser step:

    - ``"linear"``: step ``s`` (0-based) runs at ``lr·(s + 1)/w`` for ``s < w``, then at
      ``lr·(S − s)/(S − w)``, where ``S`` is the real number of steps (``epochs`` × steps per
      epoch) and ``w = round(warmup · S)``: it ends one step short of 0.
    - ``"steps"``: transformers' linear schedule with warm-up as the authors' language code steps
      it (after the optimiser): step ``s`` runs at ``lr·s/max(1, w)`` for ``s < w``, then at
      ``lr·max(0, (Z − s)/max(1, Z − w))``, with ``w = warmup_steps`` and ``Z = total_steps`` given
      in steps, whatever the real number of steps; the first step runs at lr 0.

    Examples
    --------
    >>> OptimSpec(epochs=3, lr=1e-2, optimizer="adamw", schedule="linear", warmup=0.1).schedule
    'linear'
    >>> OptimSpec(epochs=3, schedule="steps", warmup_steps=10, total_steps=667).total_steps
    667.0
    """

    epochs: int = 10
    lr: float = 1e-3
    weight_decay: float = 0.0
    optimizer: str = "adam"
    schedule: str = "cosine"
    warmup: float = 0.0
    warmup_steps: float = 0.0
    total_steps: float = 0.0

    def __post_init__(self):
        check_int(self.epochs, "epochs", "OptimSpec", low=0)
        check_real(self.lr, "lr", "OptimSpec", low=0.0)
        check_real(self.weight_decay, "weight_decay", "OptimSpec", low=0.0)
        check_choice(self.optimizer, "optimizer", "OptimSpec", ("adam", "adamw"))
        check_choice(self.schedule, "schedule", "OptimSpec", ("cosine", "constant", "linear", "steps"))
        check_real(self.warmup, "warmup", "OptimSpec", low=0.0, high=1.0)
        for name in ("warmup_steps", "total_steps"):
            object.__setattr__(self, name, check_real(getattr(self, name), name, "OptimSpec", low=0.0))


@dataclass(frozen=True)
class ReptileSpec:
    """Reptile's inner loop: ``inner_steps`` steps of ``inner_optimizer`` (``"sgd"``, or
    ``"adamw"`` with ``inner_weight_decay``, a fresh optimiser state per task) at ``inner_lr`` on a
    copy per task; the outer pseudo-gradient is ``sign · (θ − θ_t) / T`` (+1 correct, −1 the
    authors' vision code, quirk V3). Each epoch visits every task once (T outer steps). A task's
    batches come from an iterator that wraps around: made once and kept across visits and epochs
    (``persistent``, the vision code) or made afresh every epoch (the language code).

    Examples
    --------
    >>> ReptileSpec(inner_steps=5, sign=-1).sign      # the paper preset's wrong-signed outer step
    -1
    """

    inner_steps: int = 20
    inner_lr: float = 1e-2
    sign: int = 1
    inner_optimizer: str = "sgd"
    inner_weight_decay: float = 0.0
    persistent: bool = False

    def __post_init__(self):
        check_bool(self.persistent, "persistent", "ReptileSpec")
        check_int(self.inner_steps, "inner_steps", "ReptileSpec", low=0)
        check_real(self.inner_lr, "inner_lr", "ReptileSpec", low=0.0)
        check_choice(self.inner_optimizer, "inner_optimizer", "ReptileSpec", ("sgd", "adamw"))
        check_real(self.inner_weight_decay, "inner_weight_decay", "ReptileSpec", low=0.0)
        # an int first: `array in (1, -1)` raises numpy's own ambiguity error instead of naming 'sign'
        if isinstance(self.sign, (bool, np.bool_)) or not isinstance(self.sign, (int, np.integer)) \
                or self.sign not in (1, -1):
            raise ValueError(f"The 'sign' parameter of ReptileSpec must be 1 or -1. Got {self.sign!r} instead.")


# ------------------------------------------------------------------------------------------------
# Data


class BatchLoader:
    """Batches of in-memory tensors, shuffled by a ``torch.Generator``.

    ``x`` and ``y`` live on their device (the GPU for fast training); the permutation is drawn on
    the CPU from ``generator`` so the order does not depend on the device. ``transform(x,
    generator)`` turns a raw batch into model input (augmentation, normalisation) as batched
    tensor operations.

    Examples
    --------
    >>> import torch
    >>> x, y = torch.arange(10.0)[:, None], torch.arange(10) % 2
    >>> loader = BatchLoader(x, y, 4, shuffle=True, generator=torch.Generator().manual_seed(0))
    >>> len(loader), [len(yb) for _, yb in loader]          # the last batch is partial
    (3, [4, 4, 2])
    >>> sorted(int(v) for xb, _ in loader for v in xb[:, 0]) == list(range(10))   # each row once per epoch
    True
    """

    def __init__(self, x, y, batch_size: int, *, shuffle: bool = False, generator=None, transform=None,
                 drop_last: bool = False):
        func = "BatchLoader"
        torch = _torch()
        for name, v in (("x", x), ("y", y)):
            if not isinstance(v, torch.Tensor) or v.ndim < 1:
                raise ValueError(f"The {name!r} parameter of {func} must be a torch.Tensor with a leading batch axis. "
                                 f"Got {type(v).__name__} instead.")
        if len(x) != len(y):
            raise ValueError(f"The 'y' parameter of {func} must have as many rows as 'x' ({len(x)}). Got {len(y)}.")
        if len(x) == 0:
            raise ValueError(f"The 'x' parameter of {func} must hold at least one example (an empty task). Got 0.")
        self.x, self.y = x, y
        self.batch_size = check_int(batch_size, "batch_size", func, low=1)
        self.shuffle, self.generator, self.transform, self.drop_last = shuffle, generator, transform, drop_last

    def __len__(self) -> int:
        n = len(self.x)
        return max(1, n // self.batch_size) if self.drop_last else -(-n // self.batch_size)

    def __iter__(self):
        torch = _torch()
        n = len(self.x)
        order = torch.randperm(n, generator=self.generator) if self.shuffle else torch.arange(n)
        order = order.to(self.x.device)
        for i in range(len(self)):
            idx = order[i * self.batch_size:(i + 1) * self.batch_size]
            xb = self.x[idx]
            if self.transform is not None:
                xb = self.transform(xb, self.generator)
            yield xb, self.y[idx]

    @classmethod
    def pooled(cls, loaders, batch_size: int | None = None) -> BatchLoader:
        """One loader over the union of several (the pooled data of SR)."""
        torch = _torch()
        first = loaders[0]
        return cls(torch.cat([ld.x for ld in loaders]), torch.cat([ld.y for ld in loaders]),
                   batch_size or first.batch_size, shuffle=first.shuffle, generator=first.generator,
                   transform=first.transform, drop_last=first.drop_last)


def _cycle(loader):
    while True:
        yield from loader


# ------------------------------------------------------------------------------------------------
# Model helpers


def linear_names(model) -> tuple[str, ...]:
    """Full dotted names of every ``nn.Linear`` of ``model`` (peft targets; the output layer included).

    Parameters
    ----------
    model : torch.nn.Module
        The network.

    Examples
    --------
    >>> import torch
    >>> from sims import MLPMixer
    >>> model = MLPMixer(image_size=4, channels=1, patch_size=2, dim=4)      # a tiny Mixer, head 4 -> 2
    >>> linear_names(model)
    ('patch', 'blocks.0.token_mlp.fc1', 'blocks.0.token_mlp.fc2', 'blocks.0.channel_mlp.fc1', \
'blocks.0.channel_mlp.fc2', 'head')
    """
    torch = _torch()
    _check_module(model, "model", "linear_names")
    return tuple(name for name, m in model.named_modules() if isinstance(m, torch.nn.Linear))


def trainable_count(params) -> int:
    """Number of scalars in the parameters an optimiser updates.

    Parameters
    ----------
    params : iterable of torch.nn.Parameter
        The parameters (those an optimiser updates).

    Examples
    --------
    >>> import torch
    >>> from sims import MLPMixer
    >>> model = MLPMixer(image_size=4, channels=1, patch_size=2, dim=4)      # a tiny Mixer, head 4 -> 2
    >>> trainable_count(model.head.parameters())           # 4 x 2 weights and 2 biases
    10
    """
    torch = _torch()
    if isinstance(params, (str, bytes, torch.Tensor)) or not hasattr(params, "__iter__"):
        raise ValueError(f"The 'params' parameter of trainable_count must be an iterable of torch tensors. "
                         f"Got {type(params).__name__} instead.")
    params = list(params)
    for p in params:
        if not isinstance(p, torch.Tensor):
            raise ValueError(f"The 'params' parameter of trainable_count must hold torch tensors. "
                             f"Got an item of type {type(p).__name__}.")
    return int(sum(p.numel() for p in params))


def _get(model, name):
    return model.get_submodule(name)


def _set(model, name, module):
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, module)


def _reset(module):
    for m in module.modules():
        if hasattr(m, "reset_parameters"):
            m.reset_parameters()


def _targets(model, lora: LoraSpec, func: str) -> tuple[str, ...]:
    torch = _torch()
    names = lora.target_modules or linear_names(model)
    modules = dict(model.named_modules())
    for name in names:
        m = modules.get(name)
        if not isinstance(m, torch.nn.Linear):
            raise ValueError(f"The 'target_modules' parameter of {func} must name Linear layers of the model. "
                             f"Got {name!r}, which is {'missing' if m is None else type(m).__name__}.")
        cap = min(m.in_features, m.out_features)
        if lora.r > cap:
            raise ValueError(f"The 'r' parameter of {func} must be an int in [1, {cap}] (the smallest side of "
                             f"layer {name!r}, {m.out_features} x {m.in_features}). Got {lora.r} instead.")
    return tuple(names)


def _lora_config(lora: LoraSpec, targets):
    from peft import LoraConfig

    return LoraConfig(r=lora.r, lora_alpha=lora.lora_alpha, lora_dropout=lora.lora_dropout,
                      target_modules=list(targets), bias="none")


def _drop_biases(model, targets):
    torch = _torch()
    with torch.no_grad():
        for name in targets:
            b = _get(model, name).bias
            if b is not None:
                b.zero_()
                b.requires_grad_(False)


def _wrap(model, lora: LoraSpec, targets, names):
    """peft model with one adapter per name (the first active)."""
    from peft import get_peft_model

    cfg = _lora_config(lora, targets)
    pm = get_peft_model(model, cfg, adapter_name=names[0])
    for name in names[1:]:
        pm.add_adapter(name, cfg)
    return pm


def attach_lora(model, lora: LoraSpec, n_adapters: int):
    """Wrap ``model`` (in place) with peft: adapters ``task0`` … ``task{n-1}`` on the targeted Linear
    layers, ``task0`` active, and the base trainable beside them (LoRA-ML retraining).

    Returns (peft model, the parameters the optimiser updates: the base's trainable ones and every
    adapter's). ``net.set_adapter(f"task{t}")`` activates task t's adapter.

    Parameters
    ----------
    model : torch.nn.Module
        The network to adapt.
    lora : LoraSpec
        Rank, scaling, dropout and target layers of the adapters.
    n_adapters : int >= 1
        One adapter per retraining task.

    Raises
    ------
    ValueError
        ``n_adapters`` < 1, a rank ≤ 0 or above a targeted layer's smallest side, a target that is
        not a Linear layer.

    Examples
    --------
    >>> import torch
    >>> from sims import MLPMixer
    >>> model = MLPMixer(image_size=4, channels=1, patch_size=2, dim=4)      # a tiny Mixer, head 4 -> 2
    >>> base = trainable_count(model.parameters())
    >>> net, params = attach_lora(model, LoraSpec(r=1, target_modules=("head",)), n_adapters=3)
    >>> net.active_adapter, trainable_count(params) - base   # three rank-1 adapters on the 4 -> 2 head
    ('task0', 18)
    """
    check_int(n_adapters, "n_adapters", "attach_lora", low=1, high=10_000)
    _check_module(model, "model", "attach_lora")
    _check_spec(lora, LoraSpec, "lora", "attach_lora")
    return _attach(model, lora, _targets(model, lora, "attach_lora"), n_adapters)


def _attach(model, lora, targets, T):
    if lora.ignore_bias:
        _drop_biases(model, targets)
    frozen = {id(p) for p in model.parameters() if not p.requires_grad}
    net = _wrap(model, lora, targets, [f"task{t}" for t in range(T)])
    for n, p in net.named_parameters():
        if "lora_" not in n and id(p) not in frozen:
            p.requires_grad_(True)          # the base trains beside the active adapter
    params = [p for n, p in net.named_parameters() if "lora_" in n or id(p) not in frozen]
    return net, params


def _adapter_params(pm, name):
    return [p for n, p in pm.named_parameters() if f".{name}." in n and "lora_" in n]


def _adapter_switch(pm, names):
    """``activate(t)``: what ``pm.set_adapter(names[t])`` does for a LoRA model without auxiliary
    modules (each tuner layer's active adapter, the adapters' ``requires_grad`` flags, the tuner's
    ``active_adapter``), from lists made once instead of a walk over the module tree per call."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    layers = [m for m in pm.modules() if isinstance(m, BaseTunerLayer)]
    if any(m.merged or m.frozen_peft_weight_names for m in layers) or pm.peft_config[names[0]].is_prompt_learning:
        def activate(t):                                 # pragma: no cover - not a configuration used here
            pm.set_adapter(names[t])
        return activate
    own = {name: [] for name in names}
    for m in layers:
        for layer_name in m.adapter_layer_names:
            for key, sub in getattr(m, layer_name).items():
                if key in own:
                    own[key].extend(sub.parameters() if isinstance(sub, _torch().nn.Module) else [sub])
    pm.set_adapter(names[0])
    state = {"active": names[0]}

    def activate(t):
        name = names[t]
        if name == state["active"]:
            return
        for p in own[state["active"]]:
            p.requires_grad_(False)
        for p in own[name]:
            p.requires_grad_(True)
        for m in layers:
            m._active_adapter = [name]
        pm.base_model.active_adapter = name
        pm.active_adapter = name
        state["active"] = name

    return activate


def _adapter_state(pm, name) -> dict:
    """{layer name: (lora_A weight, lora_B weight)} of one adapter, detached copies."""
    out = {}
    for mod_name, m in pm.base_model.model.named_modules():
        if hasattr(m, "lora_A") and name in m.lora_A:
            out[mod_name] = (m.lora_A[name].weight.detach().clone(), m.lora_B[name].weight.detach().clone())
    return out


def _load_adapter(pm, name, state) -> None:
    torch = _torch()
    modules = dict(pm.base_model.model.named_modules())
    with torch.no_grad():
        for mod_name, (A, B) in state.items():
            m = modules[mod_name]
            m.lora_A[name].weight.copy_(A)
            m.lora_B[name].weight.copy_(B)


class _Schedule:
    """The learning-rate schedule of one phase: ``epoch()`` after every epoch (cosine), ``batch()``
    after every optimiser step (linear warm-up and decay over ``epochs × steps_per_epoch`` steps)."""

    def __init__(self, sched, per_step):
        self.sched, self.per_step = sched, per_step

    def batch(self):
        if self.per_step:
            self.sched.step()

    def epoch(self):
        if self.sched is not None and not self.per_step:
            self.sched.step()


def _optimizer(params, optim: OptimSpec, steps_per_epoch: int = 1):
    torch = _torch()
    cls = torch.optim.Adam if optim.optimizer == "adam" else torch.optim.AdamW
    # One fused kernel per step on CUDA (the models are small: launches, not flops, set the pace).
    fused = bool(params) and all(p.is_cuda for p in params)
    # On the CPU, foreach runs the single-tensor update's very ops tensor by tensor in C++ (the
    # same numbers, bit for bit) without a Python loop over parameters.
    foreach = bool(params) and all(p.device.type == "cpu" for p in params)
    opt = cls(params, lr=optim.lr, weight_decay=optim.weight_decay,
              **({"fused": True} if fused else {"foreach": True} if foreach else {}))
    if optim.schedule == "cosine" and optim.epochs > 0:
        return opt, _Schedule(torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=optim.epochs), False)
    if optim.schedule == "steps" and optim.epochs > 0:
        warm, end = optim.warmup_steps, optim.total_steps

        def factor(step):
            if step < warm:
                return step / max(1.0, warm)
            return max(0.0, (end - step) / max(1.0, end - warm))

        return opt, _Schedule(torch.optim.lr_scheduler.LambdaLR(opt, factor), True)
    if optim.schedule == "linear" and optim.epochs > 0:
        total = max(1, optim.epochs * steps_per_epoch)
        warm = int(round(optim.warmup * total))

        def factor(step):
            if step < warm:
                return (step + 1) / warm
            return max(0.0, (total - step) / max(1, total - warm))

        return opt, _Schedule(torch.optim.lr_scheduler.LambdaLR(opt, factor), True)
    return opt, _Schedule(None, False)


@contextlib.contextmanager
def _seeded(seed: int, device):
    """torch's default generators seeded inside fork_rng: the caller's state comes back on exit."""
    torch = _torch()
    devices = [torch.device(device).index or 0] if torch.device(device).type == "cuda" else []
    with torch.random.fork_rng(devices=devices, device_type="cuda" if devices else "cpu"):
        torch.manual_seed(seed)
        yield


#: Autocast types of ``amp``: float16 (with a GradScaler, the vision protocol of spec §2) or bfloat16.
AMP_DTYPES = ("float16", "bfloat16")


def _amp(amp: bool, amp_dtype: str):
    """The internal form of (``amp``, ``amp_dtype``): False (float32) or the autocast type's name."""
    return str(amp_dtype) if amp else False


def _autocast(device, amp):
    """Autocast on ``device``'s type when ``amp`` is on: ``amp`` is :func:`_amp`'s, False or a name
    of :data:`AMP_DTYPES`."""
    torch = _torch()
    if not amp:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=getattr(torch, amp))


def _scaler(device, amp):
    """A ``torch.amp.GradScaler`` for float16 autocast (default settings: scale 2**16 at first,
    halved on a step whose gradients hold an inf or nan, which is then skipped, doubled after 2000
    finite steps in a row); None otherwise (float32, or bfloat16, whose range is float32's). ``amp``
    is :func:`_amp`'s."""
    torch = _torch()
    if amp == "float16":
        return torch.amp.GradScaler(torch.device(device).type)
    return None


def _step(opt, scaler):
    """One optimiser step on the gradients of the last backward passes: through ``scaler`` (which
    unscales them and skips the step if any is inf or nan), or plainly."""
    if scaler is None:
        opt.step()
    else:
        scaler.step(opt)
        scaler.update()


def _inner(net):
    """The module a plain ``PeftModel`` calls in its forward (the base model with the adapter layers
    injected): peft's wrapper adds nothing to a forward without peft-specific arguments, so calling
    the inner module is the same computation without the wrapper's per-call overhead."""
    try:
        from peft import PeftModel
    except ImportError:                                 # pragma: no cover - peft is a dependency
        return net
    return net.get_base_model() if type(net) is PeftModel else net


def _loss(model, batch, device, amp, objective="classify"):
    torch = _torch()
    x, y = batch
    x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
    with _autocast(device, amp):
        out = model(x)
    if objective == "pairs":                      # out (B, C, 2), y (B,): one binary label per pair
        target = torch.nn.functional.one_hot(y, out.shape[1]).reshape(-1)
        return torch.nn.functional.cross_entropy(out.float().reshape(-1, out.shape[-1]), target)
    return torch.nn.functional.cross_entropy(out.float(), y)


def _right(out, y, objective):
    """Right answers in a batch: argmax class, or (pairs) argmax over candidates of the class-1 logit."""
    if objective == "pairs":
        return (out[..., 1].argmax(-1) == y).sum()
    return (out.argmax(-1) == y).sum()


def _backward(model, batch, device, amp, objective, micro_batch, scaler=None):
    """Backpropagate the batch's mean loss and return it (detached, unscaled). With ``micro_batch``
    (an int), the batch is cut into slices of that many rows whose losses, weighted by their share
    of the rows, are backpropagated one after another: the same mean and gradient up to rounding
    (and other dropout draws), with the activations of one slice in memory at a time. ``scaler``:
    a GradScaler whose scale multiplies the loss before the backward pass."""
    x, y = batch
    n = len(y)
    if micro_batch is None or n <= micro_batch:
        loss = _loss(model, batch, device, amp, objective)
        (loss if scaler is None else scaler.scale(loss)).backward()
        return loss.detach()
    total = 0.0
    for i in range(0, n, micro_batch):
        part = (x[i:i + micro_batch], y[i:i + micro_batch])
        loss = _loss(model, part, device, amp, objective) * (len(part[1]) / n)
        (loss if scaler is None else scaler.scale(loss)).backward()
        total = total + loss.detach()
    return total


class _Modes:
    """``model.train(flag)`` without walking the module tree each time: the modules are listed once
    (plus ``extra`` modules that get swapped in, such as last-layer-ML's task heads). Only for
    models whose modules do not override ``train`` (checked; otherwise ``Module.train`` is called)."""

    def __init__(self, model, extra=()):
        torch = _torch()
        self.model = model
        mods = list(model.modules())
        seen = {id(m) for m in mods}
        for e in extra:
            for m in e.modules():
                if id(m) not in seen:
                    seen.add(id(m))
                    mods.append(m)
        plain = torch.nn.Module.train
        self.mods = mods if all(type(m).train is plain for m in mods) else None

    def set(self, flag: bool) -> None:
        if self.mods is None:
            self.model.train(flag)
        else:
            for m in self.mods:
                m.__dict__["training"] = flag       # what Module.train sets, without Module.__setattr__


def _accuracy(model, loader, device, amp, modes=None, cache=None, objective="classify") -> float:
    """Accuracy of ``model`` on ``loader`` in eval mode (the mode is restored). ``modes``: a
    :class:`_Modes` of ``model``. ``cache``: a :class:`_HeadCache` (frozen body: only the head runs
    once the inputs to the head are recorded)."""
    torch = _torch()
    was = model.training
    if modes is None:
        model.eval()
    else:
        modes.set(False)
    right, total = 0, 0
    with torch.inference_mode():
        if cache is not None and cache.ready(loader):
            for h, y in cache.batches[id(loader)]:
                with _autocast(device, amp):
                    out = cache.head(h)
                right = right + _right(out, y, objective)
                total += len(y)
        else:
            record = cache is not None and cache.start(loader)
            for x, y in loader:
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                with _autocast(device, amp):
                    out = model(x)
                if record:
                    cache.add(loader, out, y)
                right = right + _right(out, y, objective)        # stays on the device until the end
                total += len(y)
            if record:
                cache.finish(loader)
    if modes is None:
        model.train(was)
    else:
        modes.set(was)
    return int(right) / max(total, 1)


class _HeadCache:
    """Evaluation of a model whose body is frozen and has no buffers (last-layer fine-tuning): the
    first pass over an (unshuffled, untransformed-at-random) evaluation loader records the input of
    the ``head`` module per batch; later passes only run the head on those inputs. The same batches
    through the same head give the same outputs bit for bit. Used only when the model's output is
    the head's output (checked per batch: the very tensor the head returned)."""

    def __init__(self, head):
        self.head = head
        self.batches, self._pending, self._bad = {}, None, set()
        self._last, self._calls = None, 0
        self._handle = head.register_forward_hook(self._hook)

    def close(self):
        self._handle.remove()

    def _hook(self, module, args, output):
        if self._pending is not None:
            self._calls += 1
            self._last = (args[0].detach() if len(args) == 1 and not isinstance(args[0], tuple) else None, output)

    def ready(self, loader) -> bool:
        return id(loader) in self.batches

    def start(self, loader) -> bool:
        # Only loaders that give the same batches every pass: in-memory, in order, no transform.
        if id(loader) in self._bad or not (isinstance(loader, BatchLoader) and not loader.shuffle
                                          and loader.transform is None):
            return False
        self._pending, self._last, self._calls = [], None, 0
        return True

    def add(self, loader, out, y):
        if self._pending is None:
            return
        last, calls, self._last, self._calls = self._last, self._calls, None, 0
        if calls != 1 or last is None or last[0] is None or last[1] is not out:
            self._pending = None
            self._bad.add(id(loader))
            return
        self._pending.append((last[0], y))

    def finish(self, loader):
        if self._pending is not None:
            self.batches[id(loader)] = self._pending
        self._pending = None


def _check_loader(ld, name, func, where=""):
    """A loader: a non-empty re-iterable with a len. A list or tuple of batches must hold (inputs,
    labels) pairs of tensors of one length (its first batch is looked at, so a list of arrays or
    strings is refused up front); a BatchLoader checked its tensors when it was made. Nothing is
    iterated: drawing a batch from a shuffling loader would advance its generator and change the
    run's numbers."""
    torch = _torch()
    if isinstance(ld, (str, bytes)) or not hasattr(ld, "__len__") or not hasattr(ld, "__iter__"):
        raise ValueError(f"The {name!r} parameter of {func} must {'hold' if where else 'be'} loaders (re-iterables "
                         f"of (inputs, labels) batches with a len){where}; got a {type(ld).__name__}.")
    if len(ld) == 0:
        raise ValueError(f"The {name!r} parameter of {func} must not {'hold' if where else 'be'} an empty "
                         f"task (no batches){where}.")
    if isinstance(ld, np.ndarray) or isinstance(ld, torch.Tensor):
        raise ValueError(f"The {name!r} parameter of {func} must {'hold' if where else 'be'} loaders (re-iterables "
                         f"of (inputs, labels) batches), not a bare array{where}.")
    if not isinstance(ld, (list, tuple)):
        return
    first = ld[0]
    if not (isinstance(first, (tuple, list)) and len(first) == 2 and all(isinstance(b, torch.Tensor) for b in first)
            and first[0].ndim >= 1 and first[1].ndim >= 1 and len(first[0]) == len(first[1])):
        raise ValueError(f"The {name!r} parameter of {func} must yield (inputs, labels) pairs of tensors of one "
                         f"length{where}; its first batch is {type(first).__name__}.")


def _check_tasks(loaders, name, func, *, least=1):
    if isinstance(loaders, (str, bytes)) or not hasattr(loaders, "__len__") or len(loaders) < least:
        raise ValueError(f"The {name!r} parameter of {func} must be a list of at least {least} per-task loader(s). "
                         f"Got {type(loaders).__name__} of length {len(loaders) if hasattr(loaders, '__len__') else '?'}.")
    for t, ld in enumerate(loaders):
        _check_loader(ld, name, func, f" (task {t})")


# ------------------------------------------------------------------------------------------------
# Retraining


@dataclass(frozen=True, eq=False)
class Retrained:
    """The outcome of :func:`retrain`.

    ``model``: θ̂ (adapters and task heads dropped; for last-layer-ML the body with head 0 in
    place); ``history``: epoch, mean validation accuracy over tasks, mean training loss;
    ``best_epoch``: the chosen checkpoint (0 = initialisation); ``adapter0``: task 0's adapter at
    that checkpoint (LoRA-ML); ``heads``: the T task heads at that checkpoint (last-layer-ML);
    ``trainable``: scalars the optimiser updated.

    Examples
    --------
    >>> import torch
    >>> from sims import MLPMixer
    >>> model = MLPMixer(image_size=4, channels=1, patch_size=2, dim=4)      # a tiny Mixer, head 4 -> 2
    >>> g = torch.Generator().manual_seed(0)
    >>> def task(shift):                           # a separable binary task of 40 4x4 images
    ...     x = torch.randn(40, 1, 4, 4, generator=g) + shift
    ...     return BatchLoader(x, (x.mean((1, 2, 3)) > shift).long(), 20)
    >>> res = retrain(model, [task(0.0), task(1.0)], method="last-layer-ML", optim=OptimSpec(epochs=1))
    >>> len(res.heads), 0 <= res.best_epoch <= 1       # a head per task, and the checkpoint chosen
    (2, True)
    """

    model: object
    history: pd.DataFrame
    best_epoch: int
    trainable: int
    adapter0: dict | None = None
    heads: tuple = field(default=())


def retrain(model, train, *, method: str, head: str = "head", val=None, pooled=None, lora: LoraSpec = LoraSpec(),
            optim: OptimSpec = OptimSpec(), reptile: ReptileSpec = ReptileSpec(), seed: int = 0,
            device="cpu", amp: bool = False, select: str = "best", deadline=None, objective: str = "classify",
            task_heads: bool = False, step: str = "round", micro_batch: int | None = None,
            amp_dtype: str = "float16") -> Retrained:
    """Retrain ``model`` on T tasks with one of the four methods (spec §1); ``model`` is not modified.

    Parameters
    ----------
    model : torch.nn.Module
        The base θ; its output layer is the submodule ``head``.
    head : str
        Dotted name of the output layer in ``model``.
    train, val : lists of per-task loaders
        Training batches and validation batches of each task (``val`` defaults to ``train``).
    method : "SR", "LoRA-ML", "last-layer-ML" or "Reptile"
    pooled : loader, optional
        SR only: batches of the pooled data (otherwise one batch of every task per step).
    lora, optim, reptile : LoraSpec, OptimSpec, ReptileSpec
    seed : int
        Seeds initialisations and dropout (inside ``torch.random.fork_rng``).
    device : str or torch.device
        Where to train.
    amp : bool
        Mixed precision: autocast to ``amp_dtype`` for training and validation, and (float16) a
        ``torch.amp.GradScaler`` around every optimiser step of training, Reptile's inner steps
        included (one scaler for the run; a step whose scaled gradients overflow is skipped).
        Reptile's outer step, on a pseudo-gradient of parameter differences, is not scaled.
    amp_dtype : "float16" or "bfloat16"
        The autocast type of ``amp`` (spec §2: float16 with a GradScaler; bfloat16 runs without one).
    select : "best" (validation accuracy) or "last"
    deadline : float, optional
        A ``time.perf_counter()`` value; training stops after the epoch that passes it.
    objective : "classify" or "pairs"
        How outputs are scored (:data:`OBJECTIVES`).
    task_heads : bool
        LoRA-ML: per-task heads beside the per-task adapters (the language protocol); last-layer-ML
        always has them.
    step : "round" or "task"
        LoRA-ML and last-layer-ML (and SR without ``pooled``): one optimiser step after a batch of
        every task (``"round"``, vision: max_t len_t rounds per epoch) or after every task batch
        (``"task"``, language: round-robin over the tasks that still have batches, Σ_t len_t
        steps per epoch).
    micro_batch : int, optional
        Backpropagate each batch in slices of this many rows (gradient accumulation: the same
        step up to rounding and dropout draws, a slice's activations in memory at a time);
        ``None``: the whole batch at once.

    Raises
    ------
    ValueError
        Unknown method, an empty task, a rank ≤ 0 or above a targeted layer's smallest side.

    Examples
    --------
    >>> import torch
    >>> from sims import MLPMixer
    >>> model = MLPMixer(image_size=4, channels=1, patch_size=2, dim=4)      # a tiny Mixer, head 4 -> 2
    >>> g = torch.Generator().manual_seed(0)
    >>> def task(shift):                           # a separable binary task of 40 4x4 images
    ...     x = torch.randn(40, 1, 4, 4, generator=g) + shift
    ...     return BatchLoader(x, (x.mean((1, 2, 3)) > shift).long(), 20)
    >>> res = retrain(model, [task(0.0), task(1.0)], method="LoRA-ML", optim=OptimSpec(epochs=2), seed=0)
    >>> res.history.columns.tolist(), len(res.history), sorted(res.adapter0)[0]   # epochs 0 (init), 1, 2
    (['epoch', 'val_accuracy', 'train_loss'], 3, 'blocks.0.channel_mlp.fc1')
    >>> type(res.model).__name__                     # θ̂: the adapters are unloaded, the model is plain again
    'Mixer'
    """
    torch = _torch()
    func = "retrain"
    check_choice(method, "method", func, RETRAINING_METHODS)
    check_choice(select, "select", func, ("best", "last"))
    check_choice(objective, "objective", func, OBJECTIVES)
    check_choice(step, "step", func, ("round", "task"))
    if micro_batch is not None:
        micro_batch = check_int(micro_batch, "micro_batch", func, low=1)
    if not isinstance(task_heads, (bool, np.bool_)):
        raise ValueError(f"The 'task_heads' parameter of {func} must be a bool. Got {task_heads!r} instead.")
    _check_name(head, "head", func)
    _check_spec(lora, LoraSpec, "lora", func)
    _check_spec(optim, OptimSpec, "optim", func)
    _check_spec(reptile, ReptileSpec, "reptile", func)
    seed, device = _check_common(func, seed=seed, device=device, amp=amp, deadline=deadline, amp_dtype=amp_dtype)
    amp = _amp(amp, amp_dtype)
    _check_tasks(train, "train", func)
    val = train if val is None else val
    _check_tasks(val, "val", func)
    if len(val) != len(train):
        raise ValueError(f"The 'val' parameter of {func} must hold one loader per task ({len(train)}). Got {len(val)}.")
    if not isinstance(model, torch.nn.Module):
        raise ValueError(f"The 'model' parameter of {func} must be a torch.nn.Module. Got {type(model).__name__}.")
    try:
        _get(model, head)
    except AttributeError:
        raise ValueError(f"The 'head' parameter of {func} must name a submodule of the model. Got {head!r}.") from None
    targets = _targets(model, lora, func) if method == "LoRA-ML" else ()
    T = len(train)
    with _seeded(seed, device):
        model = copy.deepcopy(model).to(device)
        return _retrain(model, train, val, pooled, method, head, lora, targets, optim, reptile, T, device, amp,
                        select, deadline, objective, bool(task_heads), step, micro_batch)


def _task_heads(model, head, T):
    torch = _torch()
    heads = torch.nn.ModuleList([copy.deepcopy(_get(model, head)) for _ in range(T)])
    for h in heads:
        _reset(h)
    return heads


def _retrain(model, train, val, pooled, method, head, lora, targets, optim, reptile, T, device, amp, select,
             deadline, objective="classify", task_heads=False, step="round", micro_batch=None):
    torch = _torch()
    heads = None
    if method == "LoRA-ML" and task_heads:
        heads = _task_heads(model, head, T)
        _set(model, head, heads[0])
        net, params = _attach(model, lora, targets, T)
        switch = _adapter_switch(net, [f"task{t}" for t in range(T)])
        params = [p for p in params if not any(p is q for q in heads[0].parameters())] + list(heads.parameters())

        def activate(t):
            switch(t)
            _set(model, head, heads[t])
    elif method == "LoRA-ML":
        net, params = _attach(model, lora, targets, T)
        activate = _adapter_switch(net, [f"task{t}" for t in range(T)])
    elif method == "last-layer-ML":
        net = model
        heads = _task_heads(model, head, T)
        body = [p for n, p in model.named_parameters() if not (n == head or n.startswith(head + "."))]
        params = body + list(heads.parameters())

        def activate(t):
            _set(net, head, heads[t])
    else:
        net = model
        params = list(model.parameters())

        def activate(t):
            pass
    if method != "LoRA-ML":     # peft's set_adapter switches inactive adapters' flags off; keep them all
        params = [p for p in params if p.requires_grad]
    trainable = trainable_count(params)
    if method == "Reptile":
        per_epoch = T                                  # one outer step per task and epoch
    elif method == "SR" and pooled is not None:
        per_epoch = len(pooled)
    elif step == "task":
        per_epoch = sum(len(ld) for ld in train)       # every task batch once, round-robin
    else:
        per_epoch = max(len(ld) for ld in train)
    # Reptile's per-task batch iterators: kept across epochs (persistent) or made afresh per epoch
    reptile_iters = [_cycle(ld) for ld in train] if method == "Reptile" and reptile.persistent else None
    opt, sched = _optimizer(params, optim, per_epoch)
    scaler = _scaler(device, amp)

    modes = _Modes(net, extra=heads if heads is not None else ())
    fwd = _inner(net)

    def evaluate():
        accs = []
        for t in range(T):
            activate(t)
            accs.append(_accuracy(fwd, val[t], device, amp, modes=modes, objective=objective))
        return float(np.mean(accs))

    def snapshot():
        state = {"net": copy.deepcopy(net.state_dict())}
        if heads is not None:
            state["heads"] = copy.deepcopy(heads.state_dict())
        return state

    rows = [{"epoch": 0, "val_accuracy": evaluate(), "train_loss": float("nan")}]
    # the running best starts at 0 and a strict rise replaces it: the untrained model is returned
    # only when no epoch beats 0
    best, best_epoch, best_state = 0.0, 0, snapshot()
    modes.set(True)
    for epoch in range(1, optim.epochs + 1):
        losses = []
        if method == "Reptile":
            _reptile_epoch(net, train, opt, reptile, T, device, amp, losses, objective, sched, micro_batch,
                           reptile_iters, scaler)
        elif method == "SR" and pooled is not None:
            for batch in pooled:
                opt.zero_grad(set_to_none=True)
                loss = _backward(fwd, batch, device, amp, objective, micro_batch, scaler)
                _step(opt, scaler)
                sched.batch()
                losses.append(loss.detach())
        elif step == "task":
            # round-robin over the tasks that still have batches, until each task's are used once
            iters = [iter(ld) for ld in train]
            counts = [len(ld) for ld in train]
            for r in range(max(counts)):
                for t in range(T):
                    if r >= counts[t]:
                        continue
                    opt.zero_grad(set_to_none=True)
                    activate(t)
                    loss = _backward(fwd, next(iters[t]), device, amp, objective, micro_batch, scaler)
                    _step(opt, scaler)
                    sched.batch()
                    losses.append(loss.detach())
        else:
            iters = [_cycle(ld) for ld in train]
            for _ in range(max(len(ld) for ld in train)):
                opt.zero_grad(set_to_none=True)
                total = 0.0
                for t in range(T):
                    activate(t)
                    total = total + _backward(fwd, next(iters[t]), device, amp, objective, micro_batch, scaler)
                _step(opt, scaler)
                sched.batch()
                losses.append(total / T)
        sched.epoch()
        acc = evaluate()
        # losses stay on the device until the epoch ends (no host sync per step)
        mean_loss = float(torch.stack(losses).mean()) if losses else float("nan")
        rows.append({"epoch": epoch, "val_accuracy": acc, "train_loss": mean_loss})
        if select == "last" or acc > best:
            best, best_epoch, best_state = acc, epoch, snapshot()
        if deadline is not None and time.perf_counter() > deadline:
            break
    net.load_state_dict(best_state["net"])
    adapter0, head_states = None, ()
    if method == "LoRA-ML":
        net.set_adapter(f"task{T - 1}")     # peft's own bookkeeping, as the last evaluation left it
        adapter0 = _adapter_state(net, "task0")
        if heads is not None:
            heads.load_state_dict(best_state["heads"])
            head_states = tuple(copy.deepcopy(h) for h in heads)
            _set(model, head, copy.deepcopy(heads[0]))
        base = net.unload()
    elif method == "last-layer-ML":
        heads.load_state_dict(best_state["heads"])
        head_states = tuple(copy.deepcopy(h) for h in heads)
        _set(net, head, copy.deepcopy(heads[0]))
        base = net
    else:
        base = net
    for p in base.parameters():
        p.requires_grad_(True)
    base.eval()
    return Retrained(model=base, history=pd.DataFrame(rows), best_epoch=best_epoch, trainable=trainable,
                     adapter0=adapter0, heads=head_states)


def _reptile_epoch(net, train, opt, reptile: ReptileSpec, T, device, amp, losses, objective="classify",
                   sched=None, micro_batch=None, iters=None, scaler=None):
    """One outer epoch: each task visited once (``inner_steps`` inner steps on a copy, one outer
    step); ``iters``: per-task batch iterators kept across epochs (None: made afresh here);
    ``scaler``: the GradScaler of the inner steps (the outer step's pseudo-gradient is a difference
    of parameters, not a scaled backward pass, so it goes to the optimiser as it is)."""
    torch = _torch()
    m = reptile.inner_steps
    iters = [_cycle(ld) for ld in train] if iters is None else iters
    params = [p for p in net.parameters() if p.requires_grad]
    # One copy of θ per epoch, reset to θ in place before each task but the first (what a fresh
    # deep copy per task held: the same values, train mode, a stateless SGD).
    inner = copy.deepcopy(net)
    inner.train()
    inner_params = [p for p in inner.parameters() if p.requires_grad]
    state = list(net.parameters()) + list(net.buffers())
    inner_state = list(inner.parameters()) + list(inner.buffers())
    for t in range(T):
        if t > 0:
            with torch.no_grad():
                for a, b in zip(inner_state, state):
                    a.copy_(b)
        if reptile.inner_optimizer == "adamw":
            sgd = torch.optim.AdamW(inner_params, lr=reptile.inner_lr, weight_decay=reptile.inner_weight_decay)
        else:
            sgd = torch.optim.SGD(inner_params, lr=reptile.inner_lr)
        for _ in range(m):
            sgd.zero_grad(set_to_none=True)
            loss = _backward(inner, next(iters[t]), device, amp, objective, micro_batch, scaler)
            _step(sgd, scaler)
            losses.append(loss)
        opt.zero_grad(set_to_none=True)
        with torch.no_grad():
            for p, q in zip(params, inner_params):
                p.grad = reptile.sign * (p.detach() - q.detach()) / T
        opt.step()
        if sched is not None:
            sched.batch()


# ------------------------------------------------------------------------------------------------
# Fine-tuning


@dataclass(frozen=True, eq=False)
class FineTuned:
    """The outcome of :func:`finetune`: the fine-tuned model, the accuracy history (epoch, split,
    accuracy; epoch 0 before training) and the number of trainable scalars.

    Examples
    --------
    >>> import torch
    >>> from sims import MLPMixer
    >>> model = MLPMixer(image_size=4, channels=1, patch_size=2, dim=4)      # a tiny Mixer, head 4 -> 2
    >>> g = torch.Generator().manual_seed(0)
    >>> def task(shift):                           # a separable binary task of 40 4x4 images
    ...     x = torch.randn(40, 1, 4, 4, generator=g) + shift
    ...     return BatchLoader(x, (x.mean((1, 2, 3)) > shift).long(), 20)
    >>> ld = task(0.0)
    >>> ft = finetune(model, ld, scheme="lora", val=ld, test=ld, optim=OptimSpec(epochs=1))
    >>> ft.trainable                    # rank-1 adapters on the six Linear layers: Σ (in + out)
    66
    """

    model: object
    history: pd.DataFrame
    trainable: int


def finetune(base, train, *, scheme: str, val, test, head: str = "head", lora: LoraSpec = LoraSpec(),
             optim: OptimSpec = OptimSpec(), seed: int = 0, device="cpu", amp: bool = False, init_adapter=None,
             init_head=None, fresh_head: bool = False, deadline=None, objective: str = "classify",
             train_head: bool = False, micro_batch: int | None = None, amp_dtype: str = "float16") -> FineTuned:
    """Fine-tune a frozen copy of ``base`` on one new task; ``base`` is not modified.

    Parameters
    ----------
    base : torch.nn.Module
        θ̂ with an output layer at ``head``.
    train, val, test : loaders of the new task
        ``val`` chooses the best epoch (see :func:`best_and_last`); ``test`` is only reported.
    scheme : "lora" or "last-layer"
        ``"lora"``: a fresh peft adapter on the targeted Linear layers, everything else frozen.
        ``"last-layer"``: a new head (a fresh initialisation of ``head``) trains, the body is frozen.
    head : str
        Dotted name of the output layer in ``base``.
    lora : LoraSpec
        The adapter of ``"lora"`` (rank, scaling, dropout, target layers).
    optim : OptimSpec
        Epochs, learning rate, weight decay, optimiser and schedule.
    seed : int >= 0
        Seeds the fresh adapter or head and dropout (inside ``torch.random.fork_rng``).
    device : str or torch.device
        Where to train.
    amp : bool
        Mixed precision for training: autocast to ``amp_dtype`` and (float16) a
        ``torch.amp.GradScaler`` around every optimiser step; the evaluations run in float32.
    amp_dtype : "float16" or "bfloat16"
        The autocast type of ``amp`` (spec §2: float16 with a GradScaler; bfloat16 runs without one).
    init_adapter : dict, optional
        ``"lora"``: start the adapter from these (lora_A, lora_B) weights per layer (quirk V2).
    init_head : torch.nn.Module, optional
        Use a copy of this module as the head (quirk V2 for ``"last-layer"``; for ``"lora"`` the
        frozen head under the adapter).
    fresh_head : bool
        ``"lora"``: a freshly initialised head instead of ``base``'s.
    deadline : float, optional
        A ``time.perf_counter()`` value; training stops after the epoch that passes it.
    train_head : bool
        ``"lora"``: the head trains beside the adapter (the language protocol); otherwise frozen.
    objective : "classify" or "pairs"
        How outputs are scored (:data:`OBJECTIVES`).
    micro_batch : int, optional
        Backpropagate each batch in slices of this many rows (as in :func:`retrain`).

    Raises
    ------
    ValueError
        Unknown scheme, an empty loader, a rank ≤ 0 or above a targeted layer's smallest side.

    Examples
    --------
    >>> import torch
    >>> from sims import MLPMixer
    >>> model = MLPMixer(image_size=4, channels=1, patch_size=2, dim=4)      # a tiny Mixer, head 4 -> 2
    >>> g = torch.Generator().manual_seed(0)
    >>> def task(shift):                           # a separable binary task of 40 4x4 images
    ...     x = torch.randn(40, 1, 4, 4, generator=g) + shift
    ...     return BatchLoader(x, (x.mean((1, 2, 3)) > shift).long(), 20)
    >>> ld = task(0.0)
    >>> ft = finetune(model, ld, scheme="last-layer", val=ld, test=ld, optim=OptimSpec(epochs=2), seed=0)
    >>> ft.history.groupby("split").size().to_dict(), ft.trainable    # epochs 0-2 per split; the head: 4·2 + 2
    ({'test': 3, 'val': 3}, 10)
    """
    _torch()                                # a clear ImportError without torch
    func = "finetune"
    check_choice(scheme, "scheme", func, FINETUNING_SCHEMES)
    _check_name(head, "head", func)
    _check_module(base, "base", func)
    _check_spec(lora, LoraSpec, "lora", func)
    _check_spec(optim, OptimSpec, "optim", func)
    seed, device = _check_common(func, seed=seed, device=device, amp=amp, deadline=deadline, amp_dtype=amp_dtype)
    amp = _amp(amp, amp_dtype)
    check_choice(objective, "objective", func, OBJECTIVES)
    if micro_batch is not None:
        micro_batch = check_int(micro_batch, "micro_batch", func, low=1)
    for name, flag in (("fresh_head", fresh_head), ("train_head", train_head)):
        if not isinstance(flag, (bool, np.bool_)):
            raise ValueError(f"The {name!r} parameter of {func} must be a bool. Got {flag!r} instead.")
    for name, ld in (("train", train), ("val", val), ("test", test)):
        _check_loader(ld, name, func)
    try:
        _get(base, head)
    except AttributeError:
        raise ValueError(f"The 'head' parameter of {func} must name a submodule of the model. Got {head!r}.") from None
    targets = _targets(base, lora, func) if scheme == "lora" else ()
    with _seeded(seed, device):
        net, model, params = _finetune_net(base, scheme, head, lora, targets, device, init_adapter, init_head,
                                           fresh_head, train_head)
        trainable = trainable_count(params)
        opt, sched = _optimizer(params, optim, len(train))
        rows = []
        modes = _Modes(net)
        fwd = _inner(net)
        # last-layer: the body is frozen, so (without buffers that training could move) the head's
        # inputs on the evaluation loaders are the same every epoch; only the head is re-run.
        cache = _HeadCache(_get(model, head)) if scheme == "last-layer" and next(model.buffers(), None) is None \
            else None

        def record(epoch):
            acc = {}
            for split, ld in (("val", val), ("test", test)):
                if id(ld) not in acc:            # one loader as both splits is evaluated once
                    # in float32, also when training runs under autocast (spec §2)
                    acc[id(ld)] = _accuracy(fwd, ld, device, False, modes=modes, cache=cache, objective=objective)
                rows.append({"epoch": epoch, "split": split, "accuracy": acc[id(ld)]})

        try:
            _epochs(fwd, train, opt, sched, modes, record, optim.epochs, deadline, device, amp, objective, micro_batch,
                    _scaler(device, amp))
        finally:
            if cache is not None:
                cache.close()
        net.eval()
        return FineTuned(model=net, history=pd.DataFrame(rows), trainable=trainable)


def _finetune_net(base, scheme, head, lora, targets, device, init_adapter, init_head, fresh_head, train_head):
    """The network that :func:`finetune` trains (a frozen copy of ``base`` with a fresh adapter or
    head, drawn from torch's default generator) and its trainable parameters: ``(net, model,
    params)``, ``model`` being the plain module inside ``net``."""
    model = copy.deepcopy(base).to(device)
    for p in model.parameters():
        p.requires_grad_(False)
    if init_head is not None:
        _set(model, head, copy.deepcopy(init_head).to(device))
    elif scheme == "last-layer" or fresh_head:
        _reset(_get(model, head))
    if scheme == "lora":
        if lora.ignore_bias:
            _drop_biases(model, targets)
        net = _wrap(model, lora, targets, ["finetune"])
        if init_adapter is not None:
            _load_adapter(net, "finetune", init_adapter)
        params = _adapter_params(net, "finetune")
        if train_head:
            params = params + list(_get(model, head).parameters())
    else:
        net = model
        params = list(_get(model, head).parameters())
    for p in params:
        p.requires_grad_(True)
    return net, model, params


def _epochs(fwd, train, opt, sched, modes, record, epochs, deadline, device, amp, objective, micro_batch, scaler):
    """The fine-tuning epochs: ``record(0)``, then per epoch one optimiser step per batch of
    ``train`` and ``record(epoch)``; stops after the epoch that passes ``deadline``. ``fwd`` and
    ``train`` are one network and its loader, or (sims._seedstack) a stack of seeds' networks and
    their loaders in step. ``scaler``: the GradScaler of the steps (:func:`_scaler`), or None."""
    record(0)
    modes.set(True)
    for epoch in range(1, epochs + 1):
        for batch in train:
            opt.zero_grad(set_to_none=True)
            _backward(fwd, batch, device, amp, objective, micro_batch, scaler)
            _step(opt, scaler)
            sched.batch()
        sched.epoch()
        record(epoch)
        if deadline is not None and time.perf_counter() > deadline:
            break


def _check_history(table, name, func, columns):
    if not isinstance(table, pd.DataFrame):
        raise ValueError(f"The {name!r} parameter of {func} must be a pandas DataFrame. Got {type(table).__name__}.")
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise ValueError(f"The {name!r} parameter of {func} must have the columns {', '.join(columns)}; "
                         f"{', '.join(missing)} missing.")
    if name == "history" and not {"val", "test"} <= set(table["split"]):
        raise ValueError(f"The {name!r} parameter of {func} must hold 'val' and 'test' rows. Got none of one of them.")


def best_and_last(history: pd.DataFrame) -> dict:
    """Last-epoch test accuracy and the test accuracy at the epoch of best validation accuracy
    (the earliest on ties) of one fine-tuning history. The best epoch is one of the training
    epochs: the evaluation before training (epoch 0) is a candidate only when no epoch follows it.

    Parameters
    ----------
    history : pandas.DataFrame
        One fine-tuning history, with columns ``epoch``, ``split`` ("val", "test") and ``accuracy``.

    Examples
    --------
    >>> history = pd.DataFrame({"epoch": [0, 0, 1, 1, 2, 2], "split": ["val", "test"] * 3,
    ...                         "accuracy": [0.5, 0.5, 0.9, 0.7, 0.9, 0.8]})
    >>> best_and_last(history)          # validation peaks first at epoch 1
    {'last': 0.8, 'best': 0.7, 'best_epoch': 1, 'epochs': 2}
    >>> best_and_last(history.assign(accuracy=[0.95, 0.9, 0.9, 0.7, 0.6, 0.8]))   # epoch 0 is no candidate
    {'last': 0.8, 'best': 0.7, 'best_epoch': 1, 'epochs': 2}
    """
    _check_history(history, "history", "best_and_last", ("epoch", "split", "accuracy"))
    val = history[history["split"] == "val"].set_index("epoch")["accuracy"]
    test = history[history["split"] == "test"].set_index("epoch")["accuracy"]
    trained = val[val.index > 0]
    best = int((trained if len(trained) else val).idxmax())
    return {"last": float(test.iloc[-1]), "best": float(test.loc[best]), "best_epoch": best,
            "epochs": int(test.index.max())}
