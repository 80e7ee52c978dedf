"""The shallow-network check of spec §5.2 as a batched torch program with hand-written gradients.

Model (one task t):  y = cᵀ sigmoid((A* + U*_t U*_tᵀ) x) + ε,  ε ~ N(0, 0.1²), A* and U*_t iid
N(0, 1) (A* not symmetrised), c ~ N(0, I_d), a new ground truth per trial.
Learner:  f(x) = cᵀ sigmoid((A + B_t C_t) x) with A and c shared, per-task asymmetric LoRA
(C_t Kaiming-uniform, B_t zero), no biases; SR is f(x) = cᵀ sigmoid(A x) on the pooled tasks.
Retraining: AdamW (lr 1e-3, weight decay 0.01), full batch, all parameters jointly; the loss is
the mean over tasks of each task's mean squared error. Fine-tuning: A and c frozen, a new
rank-r adapter (r = k, and also 3k when T = 2) trained by AdamW on the n test samples; the metric
is the mean squared error against the clean labels on those n inputs.

Every trial of a chunk trains at once: parameters carry a leading trial axis, one step updates
all trials, and since AdamW is elementwise each trial follows exactly the trajectory it would
follow alone (tested against a one-trial-at-a-time loop). Gradients are written by hand — the
model is small — so a step is a handful of batched matmuls and fused elementwise kernels, with
no autograd graph (tested in float64 against an autograd + torch.optim.AdamW program, to 1e-10).
Randomness is drawn per trial with numpy from its own SeedSequence stream, so the numbers do not
depend on the chunking or the device beyond rounding.

Kernel layout (`_Blocks`). SR is LoRA-ML's loss with W_t = A_sr for every task (each task has N
samples, so the mean of the per-task means is the pooled mean), so one loop retrains both: each
data block X_t (d × N, features major, samples minor) meets the stacked weights
[A + B_t C_t; A_sr] (2d × d), and the data is read once for both methods. A step is six kernels
over the (B·T, 2d, N) pre-activations — Z = W X (bmm), σ in place, s = (2/TN)(cᵀH − y) (one
baddbmm), dL/dc = s Hᵀ (a (1 × N)·(N × d) bmm: MKL runs the H·s form 20× slower), H ← σ'(Z) ⊙ s in
place (sigmoid_backward with s broadcast, no c ⊗ s array; the factor c is applied to the d × d
result), X Hᵀ (bmm, measured 20 % faster than H Xᵀ) — plus about a dozen kernels on
parameter-sized tensors and one fused AdamW kernel on the flat parameter vector
[A, c of both methods, B_t, C_t]. Buffers are allocated once; the loss is evaluated only at the
last step. Fine-tuning stacks a trial's two bases against its test inputs the same way, and its
recorded metric reuses the step's forward pass.

Measured with benchmarks/shallow_engine.py against d33ccab (separate LoRA-ML and SR loops, an
H·s gemv, per-step torch.cat and loss, an eight-kernel AdamW), one chunk of 5 trials, 4000 + 1500
steps, float32, one thread, old and new alternating in one run on the shared 2-core AMD EPYC
development machine (best of 3 each; d, T: old → new seconds per chunk; two runs):
10, 3: 3.17 → 1.46 s (2.2×) and 5.16 → 2.26 s (2.3×); 20, 3: 6.75 → 3.32 s (2.0×) and
6.81 → 3.56 s (1.9×); 10, 10: 8.45 → 4.33 s (2.0×) and 8.81 → 4.55 s (1.9×); the ratios of the
medians were 2.0–2.4×. The time is now mostly the two d-sized bmm's (≈ 40–100 GFLOP/s with MKL
at these shapes, X Hᵀ the slower) and the sigmoid; the fixed cost of a step (≈ 45 µs of kernel
launches) is about 12 % at d = 10, T = 3. Same tables up to float32 rounding (final medians within 4e-6 relative at
2000 + 1000 steps, both sweeps, 4 trials). Running the pass in
L2-sized groups of blocks gained nothing measurable on that AMD machine, but 10–17 % on a 2-core
Xeon (AVX-512, 2 MB of L2 per core) at the settings whose pre-activations exceed 1.6 MB (d = 20
or T ≥ 5 with 5 trials), with the same table bit for bit, so the pass is split there
(`_group_blocks`). Tried and not kept: a pooled
(d, T·N) layout for the base products (bmm no faster, and LoRA-ML's per-task gradients would
need extra passes). torch.compile is not used (it needs a compiler at run time).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import pandas as pd

from theory import sample_ground_truth
from theory.validation import MAX_COUNT, MAX_DIM, check_choice, check_entries, check_int, check_memory, check_real

from ._config import MAX_STEPS, SweepConfig
from ._peftml import _check_device

__all__ = ["ShallowConfig", "shallow_sweep", "simulate_shallow_chunk", "SHALLOW_SWEEPS", "default_device"]

#: The two sweeps of spec §5.2.
SHALLOW_SWEEPS = {"d": (5, 10, 20), "T": (2, 3, 5, 10)}


def _torch():
    try:
        import torch
    except ImportError as err:  # pragma: no cover - torch is a declared dependency of the test extra
        raise ImportError("the shallow-network engine needs torch: pip install 'loraml[torch]' "
                          "(torch==2.13.0)") from err
    return torch


def default_device() -> str:
    """'cuda' when a GPU is visible to torch, else 'cpu'.

    Examples
    --------
    >>> import numpy as np
    >>> import sims
    >>> sims.default_device() in ('cpu', 'cuda')
    True
    """
    torch = _torch()
    return "cuda" if torch.cuda.is_available() else "cpu"


@dataclass(frozen=True)
class ShallowConfig(SweepConfig):
    """One shallow-network sweep, frozen and validated; its content hash names its results.

    Examples
    --------
    >>> import numpy as np
    >>> import sims
    >>> cfg = sims.shallow_sweep('d', values=(4,), trials=2, N=40, n=12, retrain_steps=30, ft_steps=20, record_every=10)
    >>> type(cfg).__name__, cfg.vary, cfg.values, cfg.trials
    ('ShallowConfig', 'd', (4,), 2)
    >>> cfg.chunks()                       # (value index, trials) of each stored chunk
    [(0, (0, 1))]
    >>> print(cfg.describe().splitlines()[0])
    vary: the swept parameter: d or T
    """

    #: 2: LoRA-ML and SR in one loop, fused AdamW (99cee6b): the same numbers up to float32 rounding.
    #: 3: subnormals flushed to zero on the CPU (`_flush_denormals`): rounding-level changes.
    engine_version: ClassVar[int] = 3

    vary: str = field(metadata={"doc": "the swept parameter: d or T"})
    values: tuple = field(metadata={"doc": "its values"})
    trials: int = field(default=10, metadata={"doc": "independent trials per value (new ground truth each)"})
    seed: int = field(default=0, metadata={"doc": "root of every random stream (SeedSequence)"})
    d: int = field(default=10, metadata={"doc": "input dimension (hidden width = d, output scalar)"})
    T: int = field(default=3, metadata={"doc": "number of retraining tasks"})
    k: int = field(default=1, metadata={"doc": "rank of the ground-truth and retraining adapters"})
    N: int = field(default=1000, metadata={"doc": "samples per retraining task"})
    n: int = field(default=100, metadata={"doc": "samples of the test task"})
    noise: float = field(default=0.1, metadata={"doc": "label noise standard deviation"})
    retrain_steps: int = field(default=40000, metadata={"doc": "AdamW steps of retraining (full batch)"})
    ft_steps: int = field(default=15000, metadata={"doc": "AdamW steps of fine-tuning"})
    lr: float = field(default=1e-3, metadata={"doc": "AdamW learning rate (both phases)"})
    weight_decay: float = field(default=0.01, metadata={"doc": "AdamW decoupled weight decay"})
    record_every: int = field(default=50, metadata={"doc": "record the test metric every this many steps"})
    dtype: str = field(default="float32", metadata={"doc": "'float32' or 'float64'"})
    chunk_trials: int = field(default=0, metadata={"doc": "trials per stored chunk (0: all in one)"})

    def __post_init__(self):
        func = "ShallowConfig"
        check_choice(self.vary, "vary", func, tuple(SHALLOW_SWEEPS))
        check_choice(self.dtype, "dtype", func, ("float32", "float64"))
        if isinstance(self.values, (str, bytes)) or not hasattr(self.values, "__iter__") or not tuple(self.values):
            raise ValueError(f"The 'values' parameter of {func} must be a non-empty sequence of ints. "
                             f"Got {self.values!r}.")
        low, high = {"d": (1, MAX_DIM), "T": (2, MAX_COUNT)}[self.vary]
        object.__setattr__(self, "values", tuple(check_int(v, "values", func, low=low, high=high)
                                                 for v in self.values))
        if len(set(self.values)) != len(self.values):
            raise ValueError(f"The 'values' parameter of {func} must not repeat. Got {self.values!r}.")
        for name, lo, hi in (("trials", 1, MAX_COUNT), ("seed", 0, 2**63 - 1), ("d", 1, MAX_DIM), ("T", 2, MAX_COUNT),
                             ("k", 1, MAX_DIM), ("N", 1, MAX_COUNT), ("n", 1, MAX_COUNT),
                             ("retrain_steps", 0, MAX_STEPS), ("ft_steps", 0, MAX_STEPS), ("record_every", 1, None),
                             ("chunk_trials", 0, MAX_COUNT)):
            object.__setattr__(self, name, check_int(getattr(self, name), name, func, low=lo, high=hi))
        for name in ("lr", "weight_decay"):
            object.__setattr__(self, name, check_real(getattr(self, name), name, func, low=0.0))
        # The label noise std, as theory.draw_noise's: every draw stays finite.
        object.__setattr__(self, "noise", check_real(self.noise, "noise", func, low=0.0, high=1e100))
        for v in self.values:
            p = self.params(v)
            if max(self.ft_ranks(v)) > p["d"]:
                raise ValueError(f"{func}: at {self.vary} = {v} the fine-tuning rank {max(self.ft_ranks(v))} "
                                 f"exceeds d = {p['d']}.")
            self._check_size(v, func)
        self.check_work([self._trial_steps(v) for v in self.values],
                        "'trials', 'values', 'retrain_steps' and 'ft_steps'", func)

    def _trial_steps(self, value) -> int:
        """AdamW steps of one trial: retraining, then fine-tuning at each rank."""
        return self.retrain_steps + self.ft_steps * len(self.ft_ranks(value))

    def _check_size(self, value, func):
        """Steps of one trial, the arrays of one trial and the memory of one chunk, at one value."""
        self.check_steps(self._trial_steps(value), "'retrain_steps' and 'ft_steps'",
                         "retrain_steps + ft_steps per fine-tuning rank", func)
        p = self.params(value)
        check_entries(max((p["T"] + 1) * p["d"] ** 2, p["T"] * p["N"] * p["d"], p["n"] * p["d"]),
                      "'T', 'N', 'n' and 'd'", func)
        # The chunk's draws in float64 (inputs, labels and weights of every trial; three copies at the
        # peak: the draws, their stack and the device's) and its table (about 200 bytes a row).
        block = min(self.block, self.runs)
        entries = block * (p["T"] * p["N"] * (p["d"] + 1) + (p["T"] + 1) * p["d"] ** 2 + p["n"] * (p["d"] + 2))
        rows = block * 2 * len(self.ft_ranks(value)) * (self.ft_steps // self.record_every + 2)
        check_memory(24 * entries + 200 * rows, f"'trials', 'chunk_trials', 'T', 'N', 'd', 'ft_steps' and "
                                                f"'record_every' at {self.vary} = {value}", func)

    def params(self, value) -> dict:
        p = {name: getattr(self, name) for name in ("d", "T", "k", "N", "n")}
        p[self.vary] = int(value)
        return p

    def ft_ranks(self, value) -> tuple[int, ...]:
        """Fine-tuning ranks: k, and also 3k when T = 2 (spec §5.2)."""
        p = self.params(value)
        return (p["k"], 3 * p["k"]) if p["T"] == 2 else (p["k"],)

    @property
    def runs(self) -> int:
        """Trials per value (the name the store and runner use)."""
        return self.trials

    def chunk_key(self, value_index: int, trials) -> str:
        """A chunk's numbers depend only on the parameters at its value, the other fields and its
        trials' seed streams (``SeedSequence(seed).spawn(...)[value_index * trials + t]``), not on
        the sweep it belongs to: shallow d = 10 and T = 3 (both at index 1) share their chunks."""
        fields = self.to_dict()
        for name in ("vary", "values", "chunk_trials"):
            fields.pop(name)
        fields.update(self.params(self.values[value_index]))
        fields["streams"] = [int(value_index) * self.trials + int(t) for t in trials]
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:24]

    def chunk_cost(self, value_index: int, trials) -> float:
        """Rough single-core seconds: per step, the passes over the (B·T·N, d) hidden layer plus a
        fixed launch overhead (fitted to chunks of 5 trials at d, T = 5..20, 2..10: e.g. d = 10,
        T = 3 measured 1.46 s for 4000 + 1500 steps)."""
        p = self.params(self.values[value_index])
        B, width = len(trials), p["d"] * (p["d"] + 8) * 1.1e-10
        retrain = B * p["T"] * p["N"] * width + 4.5e-5
        finetune = B * 2 * len(self.ft_ranks(self.values[value_index])) * p["n"] * width + 4.5e-5
        return self.retrain_steps * retrain + self.ft_steps * finetune


def shallow_sweep(vary, values=None, *, trials=10, seed=0, **overrides) -> ShallowConfig:
    """The frozen config of one of the paper's shallow-network sweeps (d or T).

    Parameters
    ----------
    vary : {"d", "T"}
        The swept field.
    values : sequence of int, optional
        Its values (default: the paper's, d ∈ (5, 10, 20) or T ∈ (2, 3, 5, 10)).
    trials : int
        Trials per value.
    seed : int
        The root seed.
    **overrides
        Any other :class:`ShallowConfig` field (e.g. ``N``, ``retrain_steps``, ``ft_steps``).

    Examples
    --------
    >>> shallow_sweep("T").values
    (2, 3, 5, 10)
    """
    check_choice(vary, "vary", "shallow_sweep", tuple(SHALLOW_SWEEPS))
    names = {f.name for f in dataclasses.fields(ShallowConfig)} - {"vary", "values", "trials", "seed"}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise ValueError(f"shallow_sweep got unknown option(s) {', '.join(map(repr, unknown))}; "
                         f"allowed: {', '.join(sorted(names))}.")
    return ShallowConfig(vary=vary, values=SHALLOW_SWEEPS[vary] if values is None else values,
                         trials=trials, seed=seed, **overrides)


# ------------------------------------------------------------------------------------------------
# Randomness (numpy, per trial) and the torch kernels


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def _kaiming_uniform(rng, shape, fan_in):
    """torch.nn.init.kaiming_uniform_(a=√5), the default of nn.Linear and PEFT's lora_A."""
    bound = 1.0 / np.sqrt(fan_in)
    return rng.uniform(-bound, bound, size=shape)


def _draw_trial(config: ShallowConfig, value, rng) -> dict:
    p = config.params(value)
    d, T, k, N, n = p["d"], p["T"], p["k"], p["N"], p["n"]
    truth = sample_ground_truth(d, k, T, rng=rng, symmetric_base=False)   # spec 5.2: A* not symmetrised
    A_star, U_star = truth.A_star, truth.U_star
    c_star = rng.standard_normal(d)
    W = A_star + U_star @ np.swapaxes(U_star, -1, -2)
    X = rng.standard_normal((T, N, d))
    y = _sigmoid(X @ np.swapaxes(W[:T], -1, -2)) @ c_star + config.noise * rng.standard_normal((T, N))
    X_test = rng.standard_normal((n, d))
    y_clean = _sigmoid(X_test @ W[T].T) @ c_star
    y_test = y_clean + config.noise * rng.standard_normal(n)
    draw = {
        "X": X, "y": y, "X_test": X_test, "y_test": y_test, "y_clean": y_clean,
        # LoRA-ML learner: A, c like nn.Linear; C_t Kaiming-uniform, B_t zero.
        "A0": _kaiming_uniform(rng, (d, d), d), "c0": _kaiming_uniform(rng, (d,), d),
        "C0": _kaiming_uniform(rng, (T, k, d), d),
        # SR learner: its own A, c.
        "A0_sr": _kaiming_uniform(rng, (d, d), d), "c0_sr": _kaiming_uniform(rng, (d,), d),
    }
    for r in config.ft_ranks(value):
        draw[f"Cft{r}"] = _kaiming_uniform(rng, (2, r, d), d)   # one per base (LoRA-ML, SR)
    return draw


@contextlib.contextmanager
def _flush_denormals(device):
    """Flush subnormal floats to zero (the CPU's FTZ/DAZ modes) in this thread while training on
    the CPU; the previous mode is restored afterwards.

    Late in retraining some pre-activations reach |z| ≈ 100–800, so a few hundred of the
    σ(z) and σ'(z)·s entries are subnormal (below 1.2e-38 in float32). On Intel cores every
    multiply that reads one takes a microcode assist, and the X Hᵀ product reads each d times:
    measured on a 2-core Xeon (AVX-512), a d = 10, T = 3 chunk of 5 trials, 40000 retraining
    steps, took 21.0 s without and 16.7 s with flushing, and produced the same table bit for bit
    (a subnormal entry is below the rounding unit of almost every sum it enters). Over both
    sweeps of `make reproduce` the shallow group went from 584 to 353 CPU-seconds; a few
    trajectories moved at rounding level (retraining losses by at most 2.2e-8, and the chaotic
    fine-tuning trajectories by at most 1.3e-3 relative), hence engine version 3. The engine runs
    one torch thread, so the mode of this thread is the one that matters.
    """
    torch = _torch()
    if torch.device(device).type != "cpu":
        yield
        return
    tiny = torch.tensor(torch.finfo(torch.float32).tiny, dtype=torch.float32)
    was_on = bool((tiny * 0.5) == 0)          # the product is subnormal unless flushing is on
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(was_on)


class _AdamW:
    """torch.optim.AdamW's update (decoupled weight decay, bias correction, eps outside the square
    root), on one flat tensor.

    One step is torch's own fused AdamW kernel — the one ``torch.optim.AdamW(fused=True)`` calls —,
    a single pass over the parameters instead of eight elementwise kernels; where that kernel is
    missing (another torch build or device) the same update is written out as separate ops.
    """

    def __init__(self, params, lr, weight_decay, betas=(0.9, 0.999), eps=1e-8):
        torch = _torch()
        self.p, self.lr, self.wd, (self.b1, self.b2), self.eps = params, lr, weight_decay, betas, eps
        self.m = torch.zeros_like(params)
        self.v = torch.zeros_like(params)
        self.t = 0
        # the step count as torch.optim keeps it for the fused kernel: a float32 scalar on the device
        self._step = torch.zeros((), dtype=torch.float32, device=params.device)
        self._fused = hasattr(torch, "_fused_adamw_")

    def step(self, grad):
        torch = _torch()
        self.t += 1
        if self._fused:
            self._step.add_(1)
            try:
                torch._fused_adamw_([self.p], [grad], [self.m], [self.v], [], [self._step], lr=self.lr,
                                    beta1=self.b1, beta2=self.b2, weight_decay=self.wd, eps=self.eps,
                                    amsgrad=False, maximize=False)
                return
            except (NotImplementedError, RuntimeError):   # pragma: no cover - no fused kernel here
                if self.t > 1:
                    raise
                self._fused = False
        self.p.mul_(1 - self.lr * self.wd)
        self.m.lerp_(grad, 1 - self.b1)
        self.v.mul_(self.b2).addcmul_(grad, grad, value=1 - self.b2)
        c1 = 1 - self.b1**self.t
        c2 = 1 - self.b2**self.t
        denom = (self.v.sqrt() / c2**0.5).add_(self.eps)
        self.p.addcdiv_(self.m, denom, value=-self.lr / c1)


class _Blocks:
    """Workspace of one forward/backward pass over L data blocks, each shared by S weight matrices.

    ``Xf`` (L, d, N) is features-major data (a block: one task of one trial), ``yf`` (L, 1, N) its
    labels, ``c_src`` a view broadcasting the output weights to L·S rows of d (any shape; a view of
    the parameters, so it follows their in-place updates). The caller writes ``W`` (L, S·d, d): the
    S weight matrices that see the same block — LoRA-ML's W_t and SR's A in retraining, the two
    bases' A + B C in fine-tuning —, stacked so the data is read once for both and every product
    has S·d rows. Pre-activations are (L, S·d, N), i.e. L·S blocks (d, N). Buffers are allocated
    once: a training loop makes no allocation of the size of the data.
    """

    def __init__(self, Xf, yf, c_src, S, scale):
        torch = _torch()
        L, d, N = Xf.shape
        opts = {"dtype": Xf.dtype, "device": Xf.device}
        self.L, self.S, self.d, self.N, self.scale = L, S, d, N, scale
        self.X, self.yf, self.c_src = Xf, yf.view(L, 1, N), c_src
        self.yS = yf.view(L, 1, 1, N).expand(L, S, 1, N).reshape(L * S, 1, N)   # labels per (block, matrix)
        self.W = torch.empty((L, S * d, d), **opts)
        self.H = torch.empty((L, S * d, N), **opts)   # σ(W X), then σ'(W X) ⊙ s in place
        self.H3 = self.H.view(L * S, d, N)
        self.r = torch.empty((L * S, 1, N), **opts)   # prediction / residual, then s = dL/dpred
        self.ce = torch.empty(c_src.shape, **opts)    # c per block, as bmm wants it
        self.ce3 = self.ce.view(L * S, 1, d)
        self.gWsT = torch.empty((L, d, S * d), **opts)
        # gWs[l, s] = Σ_n σ'(Z) s xᵀ of block l, matrix s; the gradient of W is c[:, None] ⊙ gWs
        self.gWs = self.gWsT.view(L, d, S, d).permute(0, 2, 3, 1)
        self.gcT = torch.empty((L, S, 1, d), **opts)  # dL/dc per block
        self.gcT3 = self.gcT.view(L * S, 1, d)
        # The pass runs over groups of consecutive blocks whose pre-activations fit in a core's
        # L2 cache, so the five sweeps over H (σ, cᵀH, s Hᵀ, σ' ⊙ s, X Hᵀ) after the first read
        # it from L2 rather than from L3 or memory; small problems stay one group (each group
        # costs five more kernel launches).
        span = _group_blocks(L, S * d * N * Xf.element_size(), Xf.device)
        self.groups = [self._views(g, min(g + span, L)) for g in range(0, L, span)]

    def _views(self, a, b):
        """The buffers' slices of blocks a..b-1 (contiguous views: the kernels write through them)."""
        S = self.S
        return (self.W[a:b], self.X[a:b], self.H[a:b], self.H3[S * a:S * b], self.yS[S * a:S * b],
                self.ce3[S * a:S * b], self.r[S * a:S * b], self.gcT3[S * a:S * b], self.gWsT[a:b])

    def forward(self):
        """H = σ(W X) and r = cᵀH, the prediction."""
        torch = _torch()
        self.ce.copy_(self.c_src)
        for W, X, H, H3, _, ce3, r, _, _ in self.groups:
            torch.bmm(W, X, out=H).sigmoid_()
            torch.bmm(ce3, H3, out=r)

    def step(self, want_gc=True):
        """One pass: s = scale · (cᵀσ(W X) − y) into r (one kernel), then as `backward`."""
        torch = _torch()
        self.ce.copy_(self.c_src)
        for group in self.groups:
            W, X, H, H3, yS, ce3, r = group[:7]
            torch.bmm(W, X, out=H).sigmoid_()
            torch.baddbmm(yS, ce3, H3, beta=-self.scale, alpha=self.scale, out=r)
            self._back_group(group, want_gc)

    def backward(self, want_loss=False, want_gc=True):
        """From the prediction in r (after `forward`): the per-block loss (L, S) if asked, s =
        scale · residual, dL/dc per block into gcT (if asked), then H ← σ'(Z) ⊙ s in place and gWs.
        Returns the loss or None."""
        r = self.r.view(self.L, self.S, self.N)
        r.sub_(self.yf)
        loss = r.square().mean(2) if want_loss else None
        r.mul_(self.scale)
        self._back(want_gc)
        return loss

    def _back(self, want_gc):
        for group in self.groups:
            self._back_group(group, want_gc)

    @staticmethod
    def _back_group(group, want_gc):
        torch = _torch()
        _, X, H, H3, _, _, r, gcT3, gWsT = group
        if want_gc:
            torch.bmm(r, H3.transpose(1, 2), out=gcT3)   # (1, N)·(N, d): 20× faster than H·s
        torch.ops.aten.sigmoid_backward.grad_input(r.expand(H3.shape), H3, grad_input=H3)
        # X (σ'⊙s)ᵀ rather than (σ'⊙s) Xᵀ: measured 20 % faster with MKL at d = 10, 20
        torch.bmm(X, H.transpose(1, 2), out=gWsT)


#: Pre-activation bytes of one group of blocks (see `_Blocks`), and the size below which a pass
#: is not split. Measured on a 2-core Xeon (AVX-512, 2 MB of L2 per core), one step of 5 trials:
#: d = 10, T = 10 1464 → 1120 µs in groups of 5 blocks (400 kB), d = 10, T = 5 660 → 559 µs,
#: d = 20, T = 3 1096 → 964 µs in groups of 2 (320 kB); d = 10, T = 3 (1.2 MB in all) was
#: slower split (300 → 338 µs).
_GROUP_BYTES = 400_000
_SPLIT_ABOVE = 1_600_000


def _group_blocks(L, block_bytes, device):
    """Blocks per group: all L on a GPU or when the whole pass is small, else as many as fit in
    `_GROUP_BYTES` (at least one)."""
    if device.type != "cpu" or L * block_bytes <= _SPLIT_ABOVE:
        return L
    return max(1, _GROUP_BYTES // block_bytes)


def _grad_W(X, y, W, c):
    """Loss mean_t mean_n (cᵀσ(W_t x) − y)² and its gradients w.r.t. W_t and c.

    X (B, T, d, N) — features major, samples minor —, y (B, T, N), W (B, T, d, d), c (B, d).
    Returns (loss (B,), gW (B, T, d, d), gc (B, d)). The training loops use `_Blocks` directly;
    this is one pass of it with S = 1 and fresh buffers (the tests check it against autograd).
    """
    B, T, d, N = X.shape
    blocks = _Blocks(X.reshape(B * T, d, N), y.reshape(B * T, 1, N),
                     c[:, None, None, None, :].expand(B, T, 1, 1, d).reshape(B * T, 1, 1, d), 1, 2.0 / (T * N))
    blocks.W.copy_(W.reshape(B * T, d, d))
    blocks.forward()
    loss = blocks.backward(want_loss=True).view(B, T).mean(1)
    gW = blocks.gWs.reshape(B, T, d, d) * c[:, None, :, None]
    return loss, gW, blocks.gcT.view(B, T, d).sum(1)


def _retrain(X, y, A0, c0, C0, A0_sr, c0_sr, config, steps):
    """LoRA-ML and SR retraining in one loop; returns (A (B, 2, d, d), c (B, 2, d), final loss
    (B, 2)), index 0 LoRA-ML, 1 SR.

    LoRA-ML: joint AdamW on (A, c, B_t, C_t). SR: AdamW on (A, c) with the tasks pooled, which is
    the same loss with W_t = A for every task (each task has N samples, so the mean over tasks of
    the per-task means is the pooled mean). Both therefore run on the per-task blocks, stacked:
    W (B, T, 2, d, d) = [A + B_t C_t, A_sr] against X_t. The flat parameter vector is
    [A (B, 2, d, d), c (B, 2, d), B_t (B, T, d, k), C_t (B, T, k, d)] and its gradient has the same
    layout, so one AdamW kernel updates both methods; AdamW is elementwise, so each trial's update
    is the one it would get alone. The loss returned is the one of the last step (before its
    update), as before.
    """
    torch = _torch()
    B, T, d, N = X.shape
    k = C0.shape[-2]
    BT = B * T
    opts = {"dtype": X.dtype, "device": X.device}
    theta = torch.cat([torch.stack([A0, A0_sr], 1).reshape(-1), torch.stack([c0, c0_sr], 1).reshape(-1),
                       torch.zeros(BT * d * k, **opts), C0.reshape(-1)])
    grad = torch.zeros_like(theta)
    sizes = [B * 2 * d * d, B * 2 * d, BT * d * k, BT * k * d]
    shapes = [(B, 2, d, d), (B, 2, d), (BT, d, k), (BT, k, d)]
    A, c, Bt, Ct = (v.view(shape) for v, shape in zip(torch.split(theta, sizes), shapes))
    gA, gc, gB, gC = (v.view(shape) for v, shape in zip(torch.split(grad, sizes), shapes))
    opt = _AdamW(theta, config.lr, config.weight_decay)
    blocks = _Blocks(X.view(BT, d, N), y.view(BT, 1, N), c[:, None, :, None, :].expand(B, T, 2, 1, d), 2,
                     2.0 / (T * N))
    W = blocks.W.view(B, T, 2, d, d)
    W_ml, A_rep = W[:, :, 0], A[:, None].expand(B, T, 2, d, d)
    BC = torch.empty((BT, d, d), **opts)
    BC4 = BC.view(B, T, d, d)
    gWs5 = blocks.gWs.view(B, T, 2, d, d)
    gW_ml = torch.empty((BT, d, d), **opts)
    c_ml, c_col = c[:, None, 0, :, None], c[:, :, :, None]
    Ct_T, Bt_T = Ct.transpose(1, 2), Bt.transpose(1, 2)
    loss = None
    for step in range(steps + (steps == 0)):
        W.copy_(A_rep)
        torch.bmm(Bt, Ct, out=BC)
        W_ml.add_(BC4)
        if step >= steps - 1:                  # the last step (or none): also the loss
            blocks.forward()
            loss = blocks.backward(want_loss=True)
        else:
            blocks.step()
        if steps == 0:
            break
        torch.sum(gWs5, 1, out=gA).mul_(c_col)
        torch.sum(blocks.gcT.view(B, T, 2, d), 1, out=gc)
        torch.mul(gWs5[:, :, 0], c_ml, out=gW_ml.view(B, T, d, d))
        torch.bmm(gW_ml, Ct_T, out=gB)
        torch.bmm(Bt_T, gW_ml, out=gC)
        opt.step(grad)
    return A.clone(), c.clone(), loss.view(B, T, 2).mean(1)


def _finetune(A, c, X, y, y_clean, C0, config, steps):
    """AdamW on new adapters (B zero, C given) with the bases A, c frozen; records the clean test MSE.

    A (B, 2, d, d) and c (B, 2, d): both bases of each trial, stacked against the same test
    inputs; X (B, d, n) features-major, y and y_clean (B, n), C0 (B, 2, r, d). Returns the
    recorded steps and the metric (B, 2, steps). The recorded metric reuses the forward pass of the
    step (the prediction cᵀσ((A + B C) x) before that step's update)."""
    torch = _torch()
    Bn, d, n = X.shape
    r = C0.shape[-2]
    L2 = 2 * Bn
    opts = {"dtype": X.dtype, "device": X.device}
    theta = torch.cat([torch.zeros(L2 * d * r, **opts), C0.reshape(-1)])
    grad = torch.zeros_like(theta)
    Bf, Cf = theta[:L2 * d * r].view(L2, d, r), theta[L2 * d * r:].view(L2, r, d)
    gB, gC = grad[:L2 * d * r].view(L2, d, r), grad[L2 * d * r:].view(L2, r, d)
    opt = _AdamW(theta, config.lr, config.weight_decay)
    blocks = _Blocks(X, y[:, None], c[:, :, None, :], 2, 2.0 / n)
    clean = y_clean[:, None]
    record = list(range(0, steps + 1, config.record_every))
    if record[-1] != steps:
        record.append(steps)
    out = torch.empty((Bn, 2, len(record)), **opts)
    W, A3 = blocks.W.view(L2, d, d), A.reshape(L2, d, d)
    c_col = c.reshape(L2, d, 1)
    gW = torch.empty((L2, d, d), **opts)
    gWs = blocks.gWs
    Cf_T, Bf_T = Cf.transpose(1, 2), Bf.transpose(1, 2)
    j = 0
    for step in range(steps + 1):
        torch.bmm(Bf, Cf, out=W).add_(A3)
        if step == record[j]:
            blocks.forward()
            torch.mean((blocks.r.view(Bn, 2, n) - clean).square_(), 2, out=out[:, :, j])
            j += 1
            if step == steps:
                break
            blocks.backward(want_gc=False)
        else:
            blocks.step(want_gc=False)
        torch.mul(gWs, c_col.view(Bn, 2, d, 1), out=gW.view(Bn, 2, d, d))
        torch.bmm(gW, Cf_T, out=gB)
        torch.bmm(Bf_T, gW, out=gC)
        opt.step(grad)
    return np.array(record), out


def simulate_shallow_chunk(config: ShallowConfig, value_index: int, trials, device: str | None = None) -> pd.DataFrame:
    """Train the trials of one chunk (one swept value) at once; return the tidy table.

    Columns: method ("LoRA-ML", "SR"), vary, value, trial, rank, step, test_mse, retrain_loss.

    Parameters
    ----------
    config : ShallowConfig
        The sweep.
    value_index : int
        Index of the swept value in ``config.values``.
    trials : sequence of int
        Distinct trials, each below ``config.trials``.
    device : str, optional
        Torch device ("cpu", "cuda", ...); None: CUDA when available, else the CPU.

    Examples
    --------
    >>> import numpy as np
    >>> import sims
    >>> cfg = sims.shallow_sweep('d', values=(4,), trials=2, N=40, n=12, retrain_steps=30, ft_steps=20, record_every=10)
    >>> table = sims.simulate_shallow_chunk(cfg, 0, (0, 1), device='cpu')
    >>> sorted(table['method'].unique()), sorted(int(t) for t in table['trial'].unique())
    (['LoRA-ML', 'SR'], [0, 1])
    >>> bool((table['test_mse'] > 0).all())
    True
    """
    torch = _torch()
    func = "simulate_shallow_chunk"
    value_index, trials = ShallowConfig.check_chunk(config, value_index, trials, func)
    device = _check_device(default_device() if device is None else device, func)
    threads = torch.get_num_threads()
    # One thread per process: at these sizes (d ≤ 20) intra-op threading costs more than it
    # gives (measured 2× slower with 2 threads on 2 cores); scale out with processes instead.
    torch.set_num_threads(1)
    try:
        return _simulate(config, value_index, trials, device)
    finally:
        torch.set_num_threads(threads)


def _simulate(config, value_index, trials, device):
    torch = _torch()
    dtype = getattr(torch, config.dtype)
    trials = tuple(int(t) for t in trials)
    value = config.values[value_index]
    children = np.random.SeedSequence(config.seed).spawn(len(config.values) * config.trials)
    draws = [_draw_trial(config, value, np.random.default_rng(children[value_index * config.trials + t]))
             for t in trials]
    st = {key: torch.as_tensor(np.stack([dr[key] for dr in draws]), dtype=dtype, device=device) for key in draws[0]}
    st["X"] = st["X"].transpose(-1, -2).contiguous()              # (B, T, d, N): features-major
    st["X_test"] = st["X_test"].transpose(-1, -2).contiguous()    # (B, d, n)

    # (B, 2, ...): each trial's LoRA-ML and SR, retrained in one loop and fine-tuned in one loop
    with _flush_denormals(device):
        A2, c2, loss2 = _retrain(st["X"], st["y"], st["A0"], st["c0"], st["C0"], st["A0_sr"], st["c0_sr"], config,
                                 config.retrain_steps)
        tuned = [(r, *_finetune(A2, c2, st["X_test"], st["y_test"], st["y_clean"], st[f"Cft{r}"], config,
                                config.ft_steps)) for r in config.ft_ranks(value)]
    B = len(trials)
    frames = []
    retrain = loss2.T.cpu().numpy()
    for r, steps, mse in tuned:
        mse = mse.transpose(0, 1).cpu().numpy()
        K = len(steps)
        for m, method in enumerate(("LoRA-ML", "SR")):
            frames.append(pd.DataFrame({
                "method": method, "vary": config.vary, "value": np.int64(value),
                "trial": np.repeat(np.asarray(trials, dtype=np.int64), K), "rank": np.int64(r),
                "step": np.tile(steps.astype(np.int64), B), "test_mse": mse[m].reshape(-1).astype(np.float64),
                "retrain_loss": np.repeat(retrain[m].astype(np.float64), K),
            }))
    frame = pd.concat(frames, ignore_index=True)
    frame["method"] = pd.Categorical(frame["method"], categories=["LoRA-ML", "SR"])
    return frame
