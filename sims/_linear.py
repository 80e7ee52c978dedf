"""The paper's linear experiments (spec §5.1) as a batched engine.

A :class:`LinearConfig` describes one sweep: one parameter (T, n, N, d or k) takes several
values, the others stay at their defaults. The sweep expands into **chunks** — one swept value ×
a block of trials — and every trial draws its randomness from its own stream
``SeedSequence(seed).spawn(len(values) * runs)[value_index * runs + trial]``, so a trial's
numbers never depend on which chunk, batch, process or order computed it.

All trials of one value share their array shapes and advance together: retraining by the
paper's alternating gradient descent (:func:`theory.paper_gd`) on per-task sufficient statistics,
SR in closed form or by the paper's gradient descent with stray adapters, then LoRA fine-tuning
of U Vᵀ by gradient descent for both bases at once. Python loops run over optimisation steps
only.

Those loops cost NumPy's per-call overhead more than arithmetic (d = 10), so
:func:`simulate_chunks` runs several chunks, of one config or of many, in one batch wherever
their shapes agree, with the same numbers bit for bit: for the ten configs of the linear figures
(five sweeps × two presets, 30 chunks) 7 retraining calls instead of 30 and about half the CPU.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import pandas as pd

from theory import (
    COVARIANCES,
    GroundTruth,
    NOISE_LAWS,
    adapter_scales,
    draw_inputs,
    draw_noise,
    fit_loraml_from_statistics,
    input_covariance,
    paper_gd,
    reduced_rank_regression,
    sample_ground_truth,
    standard_retraining_from_statistics,
)
from theory.validation import MAX_COUNT, MAX_DIM, check_choice, check_int, check_memory, check_real

from ._config import MAX_STEPS, SweepConfig

__all__ = [
    "KNOBS",
    "LinearConfig",
    "VARIABLE",
    "linear_sweep",
    "linear_truth",
    "PRESETS",
    "SWEEPS",
    "simulate_chunk",
    "simulate_chunks",
    "METHODS",
]

METHODS = ("LoRA-ML", "SR")

#: The paper's five sweeps: swept values and fine-tuning steps (spec §5.1).
SWEEPS = {
    "T": {"values": (2, 3, 5), "ft_steps": 10000},
    "n": {"values": (100, 1000, 10000), "ft_steps": 1000},
    "N": {"values": (100, 1000, 10000), "ft_steps": 1000},
    "d": {"values": (5, 10, 20), "ft_steps": 1400},
    "k": {"values": (1, 2, 3), "ft_steps": 10000},
}

#: Protocol switches of the two presets (spec §5.1, quirks Q1–Q4; both presets are seeded, Q5).
PRESETS = {
    "paper": {"noise": "sigma_squared", "sr": "stray_adapters", "truth": "shared", "metric": "in_sample_sum"},
    "clean": {"noise": "sigma", "sr": "closed_form", "truth": "per_trial", "metric": "excess_risk"},
}


#: Fields a sweep may vary (``vary``): every numeric field but the bookkeeping ones (runs, seed,
#: record_every, chunk_trials). Integers are swept as ints, the rest as floats.
INT_FIELDS = ("d", "k", "T", "N", "n", "outer_steps", "inner_steps", "ft_steps", "ft_rank_factor_T2", "k_fit")
REAL_FIELDS = ("sigma", "lr_A", "lr_U", "init_scale", "ft_lr", "condition", "rho", "nu", "norm_ratio")
VARIABLE = INT_FIELDS + REAL_FIELDS

#: The assumption knobs (issue 17) and their defaults, the paper's model. A config at these defaults
#: leaves them out of its dict and content hash, so its key (and stored results) are today's.
KNOBS = {"covariance": "isotropic", "condition": 10.0, "rho": 0.5, "noise_law": "gaussian", "nu": 5.0,
         "k_fit": 0, "norm_ratio": 1.0}


@dataclass(frozen=True)
class LinearConfig(SweepConfig):
    """One linear sweep, frozen and validated. Its content hash names its results.

    ``vary`` names one numeric field (a sweep over ``values``) or, as a tuple of two or more
    names, a grid: ``values`` then holds one tuple per grid point (see :func:`linear_sweep`'s
    ``grid``). ``point(value)`` is the config at one value, every field set.

    Examples
    --------
    >>> cfg = LinearConfig(vary="T", values=(2, 3), runs=2, d=6, N=200, n=30)
    >>> cfg.noise, cfg.sr, cfg.chunks()          # set by the paper preset; one chunk per value
    ('sigma_squared', 'stray_adapters', [(0, (0, 1)), (1, (0, 1))])
    >>> cfg.point(3).T, cfg.ft_rank(2)           # fine-tuning rank 3k when T = 2 (the paper's choice)
    (3, 3)
    """

    #: 2: fine-tuning in preallocated buffers and the affine stray-adapter SR step (d065523): the
    #: same numbers up to float64 rounding (≤ 2.5e-12 relative on the ten figure configs).
    #: Unchanged by issue 17: every knob at its default draws and computes today's numbers.
    engine_version: ClassVar[int] = 2

    vary: str | tuple = field(metadata={"doc": "the swept field (any numeric field: T, n, N, d, k, sigma, lr_A, ...), "
                                               "or a tuple of two or more for a grid"})
    values: tuple = field(metadata={"doc": "the values it takes (for a grid: one tuple per point)"})
    preset: str = field(default="paper", metadata={"doc": "'paper' (quirks Q1–Q4) or 'clean'"})
    runs: int = field(default=5, metadata={"doc": "independent trials per value"})
    seed: int = field(default=0, metadata={"doc": "root of every random stream (SeedSequence)"})
    d: int = field(default=10, metadata={"doc": "input and output dimension"})
    k: int = field(default=1, metadata={"doc": "adapter rank of the ground truth and of retraining"})
    T: int = field(default=3, metadata={"doc": "number of retraining tasks"})
    N: int = field(default=5000, metadata={"doc": "samples per retraining task"})
    n: int = field(default=100, metadata={"doc": "samples of the test task (fine-tuning)"})
    sigma: float = field(default=0.1, metadata={"doc": "noise level σ (Q1: the paper preset uses std σ²)"})
    outer_steps: int = field(default=3000, metadata={"doc": "retraining outer iterations (A steps)"})
    inner_steps: int = field(default=10, metadata={"doc": "adapter steps per outer iteration"})
    lr_A: float = field(default=0.03, metadata={"doc": "retraining step size of the base A"})
    lr_U: float = field(default=0.003, metadata={"doc": "retraining step size of the adapters U_t"})
    init_scale: float = field(default=0.1, metadata={"doc": "std of the random adapter initialisation"})
    ft_steps: int = field(default=10000, metadata={"doc": "fine-tuning gradient steps"})
    ft_lr: float = field(default=0.005, metadata={"doc": "fine-tuning step size"})
    ft_rank_factor_T2: int = field(default=3, metadata={"doc": "fine-tuning rank is this × k when T = 2"})
    record_every: int = field(default=0, metadata={"doc": "record the test loss every this many steps "
                                                           "(0: about 500 points per curve)"})
    chunk_trials: int = field(default=0, metadata={"doc": "trials per stored chunk (0: all runs in one)"})
    exact_reference: bool = field(default=True, metadata={"doc": "also retrain with the exact solvers (LoRA-ML: "
                                                                 "Levenberg–Marquardt; SR: pooled least squares) "
                                                                 "and score their Lemma 1 fine-tuning "
                                                                 "(column optimum_exact)"})
    noise: str = field(default="", metadata={"doc": "'sigma' or 'sigma_squared' (Q1); set by the preset"})
    sr: str = field(default="", metadata={"doc": "'closed_form' or 'stray_adapters' (Q2); set by the preset"})
    truth: str = field(default="", metadata={"doc": "'per_trial' or 'shared' (Q3); set by the preset"})
    metric: str = field(default="", metadata={"doc": "'excess_risk' or 'in_sample_sum' (Q4); set by the preset"})
    covariance: str = field(default="isotropic", metadata={"doc": "knob: inputs N(0, Σ), Σ 'isotropic' (the paper), "
                                                                  "'spiked' (I + (condition − 1) e1 e1ᵀ) or 'toeplitz' "
                                                                  "(rho^|i−j|); excess_risk is then tr(E Σ Eᵀ)"})
    condition: float = field(default=10.0, metadata={"doc": "knob: the spiked covariance's condition number (>= 1)"})
    rho: float = field(default=0.5, metadata={"doc": "knob: the Toeplitz covariance's correlation, in [0, 0.999]"})
    noise_law: str = field(default="gaussian", metadata={"doc": "knob: noise law of variance std², 'gaussian' (the "
                                                                "paper), 'student_t' (nu dof) or 'heteroscedastic' "
                                                                "(std × x1/√Σ11 × N(0, 1))"})
    nu: float = field(default=5.0, metadata={"doc": "knob: Student-t degrees of freedom (> 2)"})
    k_fit: int = field(default=0, metadata={"doc": "knob: adapter rank of retraining and fine-tuning (0: the true k)"})
    norm_ratio: float = field(default=1.0, metadata={"doc": "knob: retraining adapter t scaled by "
                                                            "norm_ratio^(t/(T−1)), the test task's by 1 (1: the paper)"})

    def __post_init__(self):
        func = "LinearConfig"
        grid = isinstance(self.vary, (tuple, list))
        names = tuple(self.vary) if grid else (self.vary,)
        if grid and len(names) < 2:
            raise ValueError(f"The 'vary' parameter of {func} must be one field name or a tuple of two or more "
                             f"(a grid). Got {self.vary!r}.")
        for name in names:
            check_choice(name, "vary", func, VARIABLE)
        if len(set(names)) != len(names):
            raise ValueError(f"The 'vary' parameter of {func} must not repeat a field. Got {self.vary!r}.")
        object.__setattr__(self, "vary", names if grid else names[0])
        check_choice(self.preset, "preset", func, tuple(PRESETS))
        if isinstance(self.values, (str, bytes)) or not hasattr(self.values, "__iter__"):
            raise ValueError(f"The 'values' parameter of {func} must be a sequence of numbers. Got {self.values!r}.")
        values = tuple(self.values)
        if not values:
            raise ValueError(f"The 'values' parameter of {func} must be non-empty without repeats. Got {values!r}.")
        if grid:
            for v in values:
                if isinstance(v, (str, bytes)) or not hasattr(v, "__iter__") or len(tuple(v)) != len(names):
                    raise ValueError(f"The 'values' parameter of {func} must hold one tuple of {len(names)} numbers "
                                     f"({', '.join(names)}) per grid point. Got {v!r}.")
            values = tuple(tuple(_check_value(x, name, func) for x, name in zip(v, names)) for v in values)
        else:
            values = tuple(_check_value(v, names[0], func) for v in values)
        if len(set(values)) != len(values):
            raise ValueError(f"The 'values' parameter of {func} must be non-empty without repeats. Got {values!r}.")
        object.__setattr__(self, "values", values)
        self._check_fields(func)
        points = [_point(self, v) for v in values]   # every point is a valid config (ranks, knobs), else one line
        self.check_work([c.outer_steps * (c.inner_steps + 1) + c.ft_steps for c in points],
                        "'runs', 'values', 'outer_steps', 'inner_steps' and 'ft_steps'", func)

    def _check_fields(self, func):
        """Validate (and normalise) every field but ``vary`` and ``values``."""
        for name, low, high in (("runs", 1, MAX_COUNT), ("d", 1, MAX_DIM), ("k", 1, MAX_DIM), ("T", 2, MAX_COUNT),
                                ("N", 1, MAX_COUNT), ("n", 1, MAX_COUNT), ("outer_steps", 0, MAX_STEPS),
                                ("inner_steps", 0, MAX_STEPS), ("ft_steps", 0, MAX_STEPS),
                                ("ft_rank_factor_T2", 1, MAX_DIM),
                                ("record_every", 0, None), ("chunk_trials", 0, MAX_COUNT), ("seed", 0, 2**63 - 1),
                                ("k_fit", 0, MAX_DIM)):
            object.__setattr__(self, name, check_int(getattr(self, name), name, func, low=low, high=high))
        if not isinstance(self.exact_reference, (bool, np.bool_)):
            raise ValueError(f"The 'exact_reference' parameter of {func} must be a bool. Got {self.exact_reference!r}.")
        for name in ("sigma", "lr_A", "lr_U", "ft_lr"):
            object.__setattr__(self, name, check_real(getattr(self, name), name, func, low=0.0))
        # Adapters start as init_scale × N(0, 1) draws, which must be finite.
        object.__setattr__(self, "init_scale", check_real(self.init_scale, "init_scale", func, low=0.0, high=1e100))
        object.__setattr__(self, "condition", check_real(self.condition, "condition", func, low=1.0, high=1e12))
        object.__setattr__(self, "rho", check_real(self.rho, "rho", func, low=0.0, high=0.999))
        object.__setattr__(self, "nu", check_real(self.nu, "nu", func, low=2.0, low_open=True, high=1e6))
        object.__setattr__(self, "norm_ratio", check_real(self.norm_ratio, "norm_ratio", func, low=0.0,
                                                          low_open=True, high=1e6))
        check_choice(self.covariance, "covariance", func, COVARIANCES)
        check_choice(self.noise_law, "noise_law", func, NOISE_LAWS)
        for switch, choices in (("noise", ("sigma", "sigma_squared")), ("sr", ("closed_form", "stray_adapters")),
                                ("truth", ("per_trial", "shared")), ("metric", ("excess_risk", "in_sample_sum"))):
            if getattr(self, switch) == "":
                object.__setattr__(self, switch, PRESETS[self.preset][switch])
            check_choice(getattr(self, switch), switch, func, choices)
        # The noise std, sigma or sigma² (quirk Q1), must stay within theory.draw_noise's 1e100.
        if self.noise == "sigma_squared" and self.sigma > 1e50:
            raise ValueError(f"The 'sigma' parameter of {func} must be a finite real number in [0, 1e+50] with "
                             f"noise='sigma_squared' (the paper preset's noise std is sigma², at most 1e+100). "
                             f"Got {self.sigma!r} instead.")
        check_real(self.sigma, "sigma", func, low=0.0, high=1e100)

    def _check_point(self, func):
        """The cross-field rules at one point (every field set)."""
        for name, law_field, law in (("condition", "covariance", "spiked"), ("rho", "covariance", "toeplitz"),
                                     ("nu", "noise_law", "student_t")):
            if getattr(self, name) != KNOBS[name] and getattr(self, law_field) != law:
                raise ValueError(f"The '{name}' parameter of {func} applies only with {law_field}={law!r} "
                                 f"(got {law_field}={getattr(self, law_field)!r}); leave it at {KNOBS[name]!r}.")
        if self.k > self.d or self.fit_rank > self.d or self.ft_rank() > self.d:
            point = ", ".join(f"{n} = {getattr(self, n)}" for n in self.vary_names)
            raise ValueError(
                f"{func}: at {point} the ranks exceed d = {self.d} (k = {self.k}, fitted rank {self.fit_rank}, "
                f"fine-tuning rank {self.ft_rank()}); choose k, k_fit <= d (and 3k <= d when T = 2)."
            )

    def _check_size(self, func):
        """The work of one trial and the memory of one chunk's table, at one point (every field
        set); the message names the fields, a swept one included."""
        self.check_steps(self.outer_steps * (self.inner_steps + 1) + self.ft_steps,
                         "'outer_steps', 'inner_steps' and 'ft_steps'", "outer_steps x (inner_steps + 1) + ft_steps",
                         func)
        rows = min(self.block, self.runs) * len(METHODS) * (self.ft_steps // self.stride + 1)
        # A chunk's table: about 90 bytes a row, twice while its pieces are joined.
        check_memory(200 * rows, f"'runs', 'chunk_trials', 'ft_steps' and 'record_every' ({rows:,} table rows "
                                 f"per chunk)", func)

    def to_dict(self) -> dict:
        """The fields, without the knobs that sit at their defaults (so a config of the paper's model
        keeps the dict, content hash and store folder it had before the knobs existed)."""
        out = dataclasses.asdict(self)
        for name, default in KNOBS.items():
            if out[name] == default and type(out[name]) is type(default):
                del out[name]
        return out

    @property
    def is_grid(self) -> bool:
        return isinstance(self.vary, tuple)

    @property
    def vary_names(self) -> tuple:
        """The swept fields, as a tuple (one name for a plain sweep)."""
        return self.vary if self.is_grid else (self.vary,)

    def point(self, value) -> LinearConfig:
        """This config at one of its ``values``: every swept field set to it (validated)."""
        return _point(self, value)

    def batch_key(self, value_index: int):
        """Chunks with equal keys share one retraining call in :func:`simulate_chunks` (the shapes
        and step sizes of :func:`theory.paper_gd`); the scheduler packs them together."""
        c = self.point(self.values[value_index])
        return (c.d, c.T, c.fit_rank, c.outer_steps, c.inner_steps, c.lr_A, c.lr_U)

    def chunk_cost(self, value_index: int, trials) -> float:
        """Rough single-core seconds: NumPy's per-call cost over the retraining and fine-tuning steps,
        growing with the stacked problem size (0.3-0.6 s per 5-trial chunk at the paper's settings)."""
        c = self.point(self.values[value_index])
        calls = c.outer_steps * (c.inner_steps + 1) + c.ft_steps
        return 1e-5 * calls * (1 + len(trials) * c.T * c.d ** 2 / 1500)

    def relabel_chunk(self, frame, value_index: int):
        frame = frame.copy()
        frame["vary"] = self.vary_label
        if self.is_grid:
            frame["value"] = np.int64(value_index)
            for name, x in zip(self.vary, self.values[value_index]):
                frame[name] = x
        else:
            frame["value"] = np.asarray(self.values[value_index]).astype(frame["value"].dtype)
        return frame

    # -- derived quantities -----------------------------------------------------------------
    @property
    def vary_label(self) -> str:
        """The ``vary`` column of the tables: the field, or the grid's fields joined by commas."""
        return ",".join(self.vary_names)

    def params(self, value) -> dict:
        """(d, k, T, N, n) at one swept value."""
        c = self.point(value)
        return {name: getattr(c, name) for name in ("d", "k", "T", "N", "n")}

    @property
    def fit_rank(self) -> int:
        """The adapter rank retraining fits (``k_fit``, or the true k when 0)."""
        return self.k_fit or self.k

    def ft_rank(self, value=None) -> int:
        """Fine-tuning rank at one value (at this config's own fields when ``value`` is None):
        the fitted rank, × ``ft_rank_factor_T2`` when T = 2."""
        c = self if value is None else self.point(value)
        return c.fit_rank * (c.ft_rank_factor_T2 if c.T == 2 else 1)

    @property
    def noise_std(self) -> float:
        return self.sigma**2 if self.noise == "sigma_squared" else self.sigma

    @property
    def input_cov(self):
        """Σ of the covariance knob, or None for the paper's isotropic inputs."""
        if self.covariance == "isotropic":
            return None
        return input_covariance(self.d, self.covariance, condition=self.condition, rho=self.rho)

    @property
    def stride(self) -> int:
        return self.record_every or max(1, self.ft_steps // 500)


def _check_value(v, name, func):
    """One swept value of field ``name``: an int or a real in the field's range (checked again,
    with the cross-field rules, on the point config)."""
    if name in INT_FIELDS:
        return check_int(v, "values", func, low=0)
    return check_real(v, "values", func)


@functools.lru_cache(maxsize=4096)
def _point(config: LinearConfig, value) -> LinearConfig:
    point = object.__new__(LinearConfig)
    for f in dataclasses.fields(LinearConfig):
        object.__setattr__(point, f.name, getattr(config, f.name))
    names = config.vary_names
    for name, x in zip(names, value if config.is_grid else (value,)):
        object.__setattr__(point, name, x)
    try:
        point._check_fields("LinearConfig")
        point._check_point("LinearConfig")
    except ValueError as err:
        if config.is_grid or config.vary in ("condition", "rho", "nu", "k_fit"):
            at = ", ".join(f"{name} = {x!r}" for name, x in zip(names, value if config.is_grid else (value,)))
            raise ValueError(f"The 'values' parameter of LinearConfig is impossible at {at}: {err}") from None
        if "ranks exceed" in str(err):
            raise
        raise ValueError(f"The 'values' parameter of LinearConfig is impossible for {names[0]!r}: {err}") from None
    point._check_size("LinearConfig")
    return point


def linear_sweep(vary=None, values=None, *, grid=None, preset="paper", runs=5, seed=0, **overrides) -> LinearConfig:
    """The frozen config of one linear sweep: one of the paper's, any numeric field, or a grid.

    Parameters
    ----------
    vary : str
        The swept field: one of the paper's five (T, n, N, d, k) or any other numeric field of
        :class:`LinearConfig` (sigma, lr_A, ft_steps, the knobs condition, rho, nu, k_fit,
        norm_ratio, ...). Leave it out when ``grid`` is given.
    values : sequence of numbers, optional
        Its values (default: the paper's, spec §5.1; required for a field the paper did not sweep).
    grid : dict {field: sequence of values}, optional
        A grid instead: two or more fields, every combination of their values (the first field
        varies slowest).
    preset : {"paper", "clean"}
        ``paper`` reproduces the authors' protocol with quirks Q1–Q4; ``clean`` fixes them.
    runs, seed : int
        Trials per value and the root seed.
    **overrides
        Any other :class:`LinearConfig` field (e.g. ``ft_steps``, ``outer_steps``, ``sigma``, or a
        knob: ``covariance``, ``noise_law``, ``k_fit``, ``norm_ratio``, ...).

    Examples
    --------
    >>> cfg = linear_sweep("T")
    >>> cfg.values, cfg.ft_steps, cfg.noise
    ((2, 3, 5), 10000, 'sigma_squared')
    >>> linear_sweep("sigma", (0.1, 0.3)).values
    (0.1, 0.3)
    >>> g = linear_sweep(grid={"sigma": (0.1, 0.3), "n": (100, 1000)})
    >>> g.vary, g.values[:2]
    (('sigma', 'n'), ((0.1, 100), (0.1, 1000)))
    """
    func = "linear_sweep"
    if grid is not None:
        if vary is not None or values is not None:
            raise ValueError(f"The 'grid' parameter of {func} replaces 'vary' and 'values'; give one or the other. "
                             f"Got vary={vary!r}, values={values!r} with a grid.")
        if not isinstance(grid, dict) or len(grid) < 2:
            raise ValueError(f"The 'grid' parameter of {func} must be a dict of two or more fields, each with a "
                             f"sequence of values. Got {grid!r}.")
        for name, vals in grid.items():
            check_choice(name, "grid", func, VARIABLE)
            if isinstance(vals, (str, bytes)) or not hasattr(vals, "__iter__") or len(tuple(vals)) == 0:
                raise ValueError(f"The 'grid' parameter of {func} must give each field a non-empty sequence of "
                                 f"values. Got {name}={vals!r}.")
        vary = tuple(grid)
        values = tuple(itertools.product(*(tuple(v) for v in grid.values())))
    elif vary is None:
        raise ValueError(f"{func} needs 'vary' (one field) or 'grid' (two or more fields with their values).")
    else:
        check_choice(vary, "vary", func, VARIABLE)
        if values is None and vary not in SWEEPS:
            raise ValueError(f"The 'values' parameter of {func} is required when sweeping {vary!r} (the paper "
                             f"swept only {', '.join(SWEEPS)}).")
    names = {f.name for f in dataclasses.fields(LinearConfig)} - {"vary", "values", "preset", "runs", "seed"}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise ValueError(f"linear_sweep got unknown option(s) {', '.join(map(repr, unknown))}; "
                         f"allowed: {', '.join(sorted(names))}.")
    spec = SWEEPS.get(vary) if isinstance(vary, str) else None
    kwargs = {"ft_steps": spec["ft_steps"], **overrides} if spec else dict(overrides)
    return LinearConfig(vary=vary, values=spec["values"] if values is None else values, preset=preset,
                        runs=runs, seed=seed, **kwargs)


# ------------------------------------------------------------------------------------------------
# The engine


def _trial_streams(config: LinearConfig, value_index: int, trials) -> list[np.random.Generator]:
    children = np.random.SeedSequence(config.seed).spawn(len(config.values) * config.runs)
    return [np.random.default_rng(children[value_index * config.runs + t]) for t in trials]


def linear_truth(config: LinearConfig, value_index: int, trial: int):
    """The ground truth of one trial (A*, and U* with the knob's adapter scales; index T is the test
    task), redrawn from the trial's stream exactly as the engine draws it: for predictions (P2's
    R̄*, P4's floor, P6's basis) next to a stored table.

    Parameters
    ----------
    config : LinearConfig
        The sweep.
    value_index : int
        Index of the swept value in ``config.values``.
    trial : int
        The trial, below ``config.runs``.

    Examples
    --------
    >>> cfg = linear_sweep("T", (2, 3), runs=2)
    >>> linear_truth(cfg, 1, 0).U_star.shape
    (4, 10, 1)
    """
    func = "linear_truth"
    if isinstance(config, LinearConfig):
        check_int(trial, "trial", func, low=0, high=config.runs - 1)
    value_index, trials = LinearConfig.check_chunk(config, value_index, (trial,), func)
    c = config.point(config.values[value_index])
    if c.truth == "shared":
        A_full, U_full = _shared_truth(config)
        A = A_full[:c.d, :c.d]
        U = np.concatenate([U_full[:c.T, :c.d, :c.k], U_full[-1:, :c.d, :c.k]])
        if c.norm_ratio != 1.0:
            U = U * adapter_scales(c.T, c.norm_ratio)[:, None, None]
        return GroundTruth(A_star=A, U_star=U)
    rng = _trial_streams(config, value_index, trials)[0]
    return sample_ground_truth(c.d, c.k, c.T, rng=rng, norm_ratio=c.norm_ratio)


def _shared_truth(config: LinearConfig):
    """Q3: one ground truth drawn at the largest sizes of the sweep, sliced for every value."""
    dmax = max(config.point(v).d for v in config.values)
    kmax = max(config.point(v).k for v in config.values)
    Tmax = max(config.point(v).T for v in config.values)
    rng = np.random.default_rng(np.random.SeedSequence(config.seed, spawn_key=(2**31 - 1,)))
    truth = sample_ground_truth(dmax, kmax, Tmax, rng=rng)
    return truth.A_star, truth.U_star


def _draw_trial(config: LinearConfig, value, rng, shared, *, keep_data: bool = False):
    """Everything random about one trial, drawn in a fixed order from its own stream.

    The engine keeps only the sufficient statistics; ``keep_data`` also returns the full
    retraining matrices ``X``, ``Y`` (for the per-run reference implementation). The knobs act
    here only (inputs, noise, adapter norms; the fitted rank sets the initial adapters' shapes);
    at their defaults the calls on ``rng`` are exactly the paper's."""
    c = config.point(value)
    d, k, T, N, n = c.d, c.k, c.T, c.N, c.n
    r = c.ft_rank()
    if c.truth == "shared":
        A_full, U_full = shared
        A_star = A_full[:d, :d]
        U_star = np.concatenate([U_full[:T, :d, :k], U_full[-1:, :d, :k]])  # the test task is the last one
        if c.norm_ratio != 1.0:
            U_star = U_star * adapter_scales(T, c.norm_ratio)[:, None, None]
    else:
        truth = sample_ground_truth(d, k, T, rng=rng, norm_ratio=c.norm_ratio)
        A_star, U_star = truth.A_star, truth.U_star
    W = A_star + U_star @ np.swapaxes(U_star, -1, -2)
    std = c.noise_std
    Sigma = c.input_cov
    X = draw_inputs(rng, (T, N, d), Sigma)
    Y = X @ np.swapaxes(W[:T], -1, -2) + draw_noise(rng, (T, N, d), std, c.noise_law, X=X, covariance=Sigma, nu=c.nu)
    S = np.swapaxes(X, -1, -2) @ X / N
    C = np.swapaxes(np.swapaxes(X, -1, -2) @ Y, -1, -2) / N
    X_test = draw_inputs(rng, (n, d), Sigma)
    Y_test = X_test @ W[T].T + draw_noise(rng, (n, d), std, c.noise_law, X=X_test, covariance=Sigma, nu=c.nu)
    extra = {"X": X, "Y": Y} if keep_data else {}
    kf = c.fit_rank
    return {
        **extra,
        "A_star": A_star, "target": W[T], "S": S, "C": C, "X_test": X_test, "Y_test": Y_test,
        "U0": c.init_scale * rng.standard_normal((T, d, kf)),
        "U_stray": c.init_scale * rng.standard_normal((T, d, kf)),
        "ft_U": c.init_scale * rng.standard_normal((len(METHODS), d, r)),
        "ft_V": c.init_scale * rng.standard_normal((len(METHODS), d, r)),
    }


def _sr_gd(S, C, U_stray, config: LinearConfig):
    """Q2: the authors' SR learner. T untrained adapters ride in the forward pass on the pooled
    data, so A's gradient is a sum of T copies: A ← A − lr_A Σ_t ((A + R_t) S̄ − C̄).

    The step is affine in A, A ← A M + b with M = I − lr_A T S̄ and b = lr_A (T C̄ − Σ_t R_t S̄),
    so each of the ``outer_steps`` iterations is one product and one sum, in place."""
    S_bar, C_bar = S.mean(axis=-3), C.mean(axis=-3)
    R = U_stray @ np.swapaxes(U_stray, -1, -2)
    T = S.shape[-3]
    shift = R.sum(axis=-3) @ S_bar
    M = np.eye(S_bar.shape[-1]) - config.lr_A * T * S_bar
    b = config.lr_A * (T * C_bar - shift)
    A = np.zeros(S_bar.shape)
    AM = np.empty_like(A)
    for _ in range(config.outer_steps):
        np.matmul(A, M, out=AM)
        np.add(AM, b, out=A)
    return A


def _metric(E, S_test, n, metric, Sigma=None):
    """The test metric of an error E = target − Â − Δ: excess risk ‖E‖² (tr(E Σ Eᵀ) under the
    covariance knob), or the paper's in-sample sum."""
    if metric == "excess_risk":
        if Sigma is not None:
            return np.sum((E @ Sigma) * E, axis=(-2, -1))
        return np.sum(E * E, axis=(-2, -1))
    return n * np.sum((E @ S_test) * E, axis=(-2, -1))   # ‖E Xᵀ‖² = n tr(E S Eᵀ)


def _finetune(bases, target, X_test, Y_test, U, V, config: LinearConfig):
    """GD on (1/2n)‖Y − X(Â + UVᵀ)ᵀ‖² for a batch of bases; returns the recorded test losses.

    The gradient in Δ = UVᵀ is G = (Â + UVᵀ) S − C = P + U (Vᵀ S) with S, C the test task's
    statistics and P = Â S − C fixed, so a step is d×d work whatever n is. U and V live in one
    buffer Z = [U, V] and advance together: Z ← Z − [G̃ V, G̃ᵀ U] with G̃ = lr G, one product of
    the stacked [G̃, G̃ᵀ] with the stacked [V, U] (a view of Z reversed). Every array is allocated
    once; the loop runs six in-place NumPy calls per step. The metric is computed at recorded
    steps only (``config.stride``)."""
    n = X_test.shape[-2]
    Sigma = config.input_cov
    S = np.swapaxes(X_test, -1, -2) @ X_test / n           # (B, d, d)
    C = np.swapaxes(np.swapaxes(X_test, -1, -2) @ Y_test, -1, -2) / n
    S, C, target = S[None], C[None], target[None]           # broadcast over the method axis
    lr = config.ft_lr
    lrP = lr * (bases @ S - C)                              # lr × gradient at Δ = 0
    lrS = np.broadcast_to(lr * S, bases.shape).copy()
    E0 = target - bases
    stride = config.stride
    steps = list(range(0, config.ft_steps + 1, stride))
    if steps[-1] != config.ft_steps:
        steps.append(config.ft_steps)
    out = np.empty(bases.shape[:-2] + (len(steps),))
    swap = lambda M: np.swapaxes(M, -1, -2)  # noqa: E731

    Z = np.stack([U, V]).astype(float, copy=False)         # (2, method, trial, d, r): [U, V]
    Zu, Zv, Zrev = Z[0], Z[1], Z[::-1]                      # views, valid for the whole loop
    Vt = swap(Zv)
    GG = np.empty(Z.shape[:-1] + (Z.shape[-2],))            # [G̃, G̃ᵀ]  (2, method, trial, d, d)
    G, Gt = GG[0], GG[1]
    Gt_from = swap(G)
    VtS = np.empty(Vt.shape)                                # lr Vᵀ S   (method, trial, r, d)
    D = np.empty_like(Z)
    j = 0
    for step in range(config.ft_steps + 1):
        if step == steps[j]:
            out[..., j] = _metric(E0 - Zu @ Vt, S, n, config.metric, Sigma)
            j += 1
            if j == len(steps):
                break
        np.matmul(Vt, lrS, out=VtS)
        np.matmul(Zu, VtS, out=G)
        np.add(G, lrP, out=G)                               # G̃ = lr (P + U Vᵀ S)
        np.copyto(Gt, Gt_from)
        np.matmul(GG, Zrev, out=D)                          # [G̃ V, G̃ᵀ U]
        np.subtract(Z, D, out=Z)
    return np.array(steps), out


def simulate_chunk(config: LinearConfig, value_index: int, trials) -> pd.DataFrame:
    """Run the trials of one chunk (one swept value) as one batch; return the tidy table.

    Columns: method, vary, value, trial, step, test_loss, A_error (‖Â − A*‖²), optimum (the
    Lemma 1 fine-tuning optimum in the same metric), optimum_exact (the same from the exact
    retraining solvers; NaN if ``exact_reference`` is off), retrain_loss (the LoRA-ML / SR
    training objective at the end, without its constant), preset.

    Parameters
    ----------
    config : LinearConfig
        The sweep.
    value_index : int
        Index of the swept value in ``config.values``.
    trials : sequence of int
        Distinct trials, each below ``config.runs``.

    Examples
    --------
    >>> cfg = linear_sweep("T", (2, 3), runs=2, d=6, N=200, n=30, outer_steps=20, ft_steps=20)
    >>> table = simulate_chunk(cfg, 1, (0, 1))               # T = 3, trials 0 and 1
    >>> sorted(table["method"].unique()), table["trial"].unique().tolist(), table["value"].unique().tolist()
    (['LoRA-ML', 'SR'], [0, 1], [3])
    """
    value_index, trials = LinearConfig.check_chunk(config, value_index, trials, "simulate_chunk")
    return simulate_chunks([(config, value_index, trials)])[0]


def simulate_chunks(jobs) -> list[pd.DataFrame]:
    """Several chunks ``(config, value_index, trials)``, possibly of different configs, at once.

    Returns the same tables as :func:`simulate_chunk` on each job, bit for bit: every trial is a
    separate matrix problem in a batch, and NumPy computes each matrix of a stacked product
    alike whatever else is in the batch. What it saves is NumPy's per-call cost, which dominates
    at these sizes (d = 10: one call of the retraining loop costs about the same for 5 problems
    as for 15): chunks whose retraining has the same shapes and step sizes (d, T, k, outer and
    inner steps, lr_A, lr_U; e.g. the default point, which nine of the fifteen values of a preset
    share) run one :func:`theory.paper_gd` call between them, and chunks whose fine-tuning has the
    same shapes and schedule (d, rank, n, steps, step size, stride, metric) one fine-tuning loop.

    Parameters
    ----------
    jobs : sequence of (LinearConfig, int, sequence of int)
        ``(config, value_index, trials)`` triples, each as :func:`simulate_chunk` takes them.

    Examples
    --------
    >>> cfg = linear_sweep("T", (2, 3), runs=2, d=6, N=200, n=30, outer_steps=20, ft_steps=20)
    >>> first, second = simulate_chunks([(cfg, 0, (0,)), (cfg, 1, (0, 1))])
    >>> second.equals(simulate_chunk(cfg, 1, (0, 1)))         # the same table as alone, bit for bit
    True
    """
    checked = LinearConfig.check_chunks(jobs, "jobs", "simulate_chunks")
    jobs = [_prepare(config, value_index, trials) for config, value_index, trials in checked]
    with np.errstate(over="ignore", invalid="ignore"):     # a diverging run (off the paper's setting) ends as inf/NaN
        return _simulate_prepared(jobs)


def _simulate_prepared(jobs) -> list[pd.DataFrame]:

    for members in _groups(jobs, _retrain_key):
        cfg, p = jobs[members[0]]["config"], jobs[members[0]]["p"]
        S, C, U0 = (np.concatenate([jobs[i]["stack"][name] for i in members]) for name in ("S", "C", "U0"))
        A_ml, U_ml = paper_gd(S, C, np.zeros((len(S), p["d"], p["d"])), U0,
                              outer_steps=cfg.outer_steps, inner_steps=cfg.inner_steps,
                              lr_A=cfg.lr_A, lr_U=cfg.lr_U)
        for i, A_i, U_i in zip(members, *_split(jobs, members, A_ml, U_ml)):
            jobs[i]["A_ml"], jobs[i]["U_ml"] = A_i, U_i

    for job in jobs:
        config, stack = job["config"], job["stack"]
        S, C = stack["S"], stack["C"]
        job["A_pooled"] = standard_retraining_from_statistics(S, C)
        A_sr = job["A_pooled"] if config.sr == "closed_form" else _sr_gd(S, C, stack["U_stray"], config)
        job["A_sr"] = A_sr
        job["bases"] = np.stack([job["A_ml"], A_sr])       # (method, trial, d, d)

    for members in _groups(jobs, _finetune_key):
        cfg = jobs[members[0]]["config"]
        cat = lambda name: np.concatenate([jobs[i]["stack"][name] for i in members])  # noqa: E731
        U = np.swapaxes(cat("ft_U"), 0, 1)                  # (method, trial, d, r)
        V = np.swapaxes(cat("ft_V"), 0, 1)
        bases = np.concatenate([jobs[i]["bases"] for i in members], axis=1)
        steps, losses = _finetune(bases, cat("target"), cat("X_test"), cat("Y_test"), U, V, cfg)
        for i, losses_i in zip(members, *_split(jobs, members, np.swapaxes(losses, 0, 1))):
            jobs[i]["steps"], jobs[i]["losses"] = steps, np.swapaxes(losses_i, 0, 1)

    return [_finish(job) for job in jobs]


def _prepare(config: LinearConfig, value_index: int, trials) -> dict:
    """A chunk's draws, stacked over its trials."""
    trials = tuple(int(t) for t in trials)
    value = config.values[value_index]
    point = config.point(value)
    p = config.params(value)
    shared = _shared_truth(config) if config.truth == "shared" else None
    draws = [_draw_trial(config, value, rng, shared) for rng in _trial_streams(config, value_index, trials)]
    stack = {key: np.stack([dr[key] for dr in draws]) for key in draws[0]}
    return {"config": point, "label": config, "value_index": value_index, "trials": trials, "value": value, "p": p,
            "stack": stack}


def _retrain_key(job):
    cfg, p = job["config"], job["p"]
    return (p["d"], p["T"], cfg.fit_rank, cfg.outer_steps, cfg.inner_steps, cfg.lr_A, cfg.lr_U)


def _finetune_key(job):
    cfg, p = job["config"], job["p"]
    return (p["d"], cfg.ft_rank(), p["n"], cfg.ft_steps, cfg.ft_lr, cfg.stride, cfg.metric,
            cfg.covariance, cfg.condition, cfg.rho)


def _groups(jobs, key) -> list[list[int]]:
    """Indices of the jobs with equal ``key``, in order of first appearance."""
    groups: dict = {}
    for i, job in enumerate(jobs):
        groups.setdefault(key(job), []).append(i)
    return list(groups.values())


def _split(jobs, members, *arrays):
    """Each array (trials of ``members`` concatenated on axis 0) cut back into the members' parts."""
    cuts = np.cumsum([len(jobs[i]["trials"]) for i in members])[:-1]
    return [np.split(a, cuts) for a in arrays]


def _finish(job) -> pd.DataFrame:
    """Scores, Lemma 1 optima and the tidy table of one chunk, from its bases and curves."""
    config, stack, p, value, trials = job["config"], job["stack"], job["p"], job["value"], job["trials"]
    label = job["label"]
    S, C = stack["S"], stack["C"]
    A_ml, U_ml, A_sr, A_pooled, bases = job["A_ml"], job["U_ml"], job["A_sr"], job["A_pooled"], job["bases"]
    steps, losses = job["steps"], job["losses"]

    # Retraining objectives (without the constant): LoRA-ML's F̂ and SR's pooled loss.
    def quad(W):
        return np.mean(0.5 * np.sum((W @ S) * W, axis=(-2, -1)) - np.sum(W * C, axis=(-2, -1)), axis=-1)
    retrain = np.stack([quad(A_ml[:, None] + U_ml @ np.swapaxes(U_ml, -1, -2)), quad(A_sr[:, None])])

    # Lemma 1: the optimal rank-r update on the test data, scored with the same metric.
    r = config.ft_rank()
    Sigma = config.input_cov
    X_test, Y_test, target = stack["X_test"], stack["Y_test"], stack["target"]
    n = X_test.shape[-2]
    S_test = np.swapaxes(X_test, -1, -2) @ X_test / n

    def lemma1(base):
        ok = np.all(np.isfinite(base), axis=(-2, -1))
        if not ok.all():       # gradient descent diverged (a knob beyond the paper's step sizes): NaN there
            return np.where(ok, lemma1(np.where(ok[..., None, None], base, 0.0)), np.nan)
        delta = reduced_rank_regression(X_test, Y_test - X_test @ np.swapaxes(base, -1, -2), r)
        return _metric(target - base - delta, S_test, n, config.metric, Sigma)

    optimum = np.stack([lemma1(bases[m]) for m in range(len(METHODS))])
    if config.exact_reference:
        # The exact solver fits one problem at a time (tens of ms); it shows what LoRA-ML's optimum
        # does where the paper's 3000 GD iterations have not converged (spec §5.1, k = 3).
        A_exact = np.stack([fit_loraml_from_statistics(S[b], C[b], config.fit_rank, rng=0, n_starts=1).A
                            for b in range(len(trials))])
        optimum_exact = np.stack([lemma1(A_exact), lemma1(A_pooled)])
    else:
        optimum_exact = np.full_like(optimum, np.nan)
    A_error = np.sum((bases - stack["A_star"][None]) ** 2, axis=(-2, -1))

    M, B, K = len(METHODS), len(trials), len(steps)
    idx_m = np.repeat(np.arange(M), B * K)
    idx_t = np.tile(np.repeat(np.arange(B), K), M)
    columns = {
        "method": pd.Categorical(np.asarray(METHODS)[idx_m], categories=list(METHODS)),
        "vary": label.vary_label,
        "value": np.int64(job["value_index"]) if label.is_grid else _value_scalar(label.vary, value),
        "trial": np.asarray(trials, dtype=np.int64)[idx_t],
        "step": np.tile(steps.astype(np.int64), M * B),
        "test_loss": losses.reshape(-1),
        "A_error": A_error[idx_m, idx_t],
        "optimum": optimum[idx_m, idx_t],
        "optimum_exact": optimum_exact[idx_m, idx_t],
        "retrain_loss": retrain[idx_m, idx_t],
        "preset": config.preset,
    }
    if label.is_grid:                                       # a grid: the point index and one column per field
        columns.update({name: _value_scalar(name, x) for name, x in zip(label.vary, value)})
    return pd.DataFrame(columns)


def _value_scalar(name, x):
    """A swept value as the table stores it: int64 for integer fields, float64 otherwise."""
    return np.int64(x) if name in INT_FIELDS else np.float64(x)
