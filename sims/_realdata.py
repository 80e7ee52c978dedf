"""The paper's real-data experiments (spec/realdata.md §2, §4) as sweeps: an MLP-Mixer, a reader of
the CIFAR-10 python-pickle batches, scikit-learn's digits as an offline stand-in, and a frozen
config whose chunks are one retraining method × one seed.

Tasks (both data sets): label = class mod 2 within a pair; retraining tasks 0/1, 2/3, 4/5, 6/7,
test task 8/9.

- ``"vision"``: CIFAR-10 from ``data_root``. Retraining: a task's training images (10,000), its
  test images (2,000) as validation. Fine-tuning: ship/truck training images, of which
  ``ft_val`` are held out as the validation split that chooses the best epoch under ``clean``;
  accuracy on their 2,000 test images. RandomCrop(32, padding 4) and horizontal flips as batched
  tensor operations, per-channel normalisation with the authors' constants.
- ``"digits"``: ``sklearn.datasets.load_digits`` (8×8, 1,797 images). Each retraining task is
  split 75 % / 25 % into training and validation; the 8/9 images (354) are split per seed into a
  fine-tuning pool (120), a validation split (60) and a test split (the rest); fine-tuning uses
  the first ``n`` images of the pool for each ``n`` in ``n_finetune``. The same model family (a
  tiny Mixer, patch 2) and protocol; no augmentation.

Presets (``paper`` / ``clean``): quirk V1 (biases ignored in the LoRA-adapted forward pass: the
targeted layers' biases are zeroed and frozen), V2 (fine-tuning LoRA-ML and last-layer-ML bases
starts from adapter 0 / head 0), V3 (Reptile's outer step has the wrong sign), V4 (the fine-tuning
epochs are scored on the test split, so "best" is the best test accuracy; CIFAR-10 fine-tunes on
every training image of the new task) and V6 (one crop-and-flip of the training images, drawn from
``data_seed``, in place of fresh ones per batch) are on in ``paper`` and off in ``clean``. V5
(unwired flags) is fixed in both. Both presets: Reptile visits each task once per epoch (T outer
steps), its per-task batch iterators kept across visits and epochs; the retraining checkpoint is
the best validation accuracy, the running best starting at 0.

Table (one row per retraining method × fine-tuning scheme × seed × n_finetune × epoch × split):
``dataset, preset, phase, retraining, finetuning, seed, n_finetune, epoch, split, accuracy``.
Retraining rows (``phase == "retrain"``, ``finetuning == "none"``, ``split == "val"``) hold the
mean validation accuracy over tasks per epoch.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib.util
import json
import os
import pickle
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
import pandas as pd

from theory.validation import (MAX_COUNT, MAX_DIM, check_choice, check_entries, check_int, check_real, check_rng,
                               check_values)

from ._config import SweepConfig
from ._fingerprint import check_manifest, record_manifest
from ._peftml import (
    FINETUNING_SCHEMES,
    RETRAINING_METHODS,
    BatchLoader,
    LoraSpec,
    OptimSpec,
    ReptileSpec,
    _check_device,
    _check_history,
    _seeded,
    _torch,
    best_and_last,
    finetune,
    retrain,
)

__all__ = ["MLPMixer", "RealDataConfig", "realdata_sweep", "simulate_realdata_chunk", "simulate_realdata_chunks",
           "read_cifar10",
           "realdata_summary", "paired_differences", "REALDATA_PRESETS", "CIFAR10_HELP", "write_cifar10", "crop_flip"]

REALDATA_PRESETS = ("paper", "clean")
PAIRS = ((0, 1), (2, 3), (4, 5), (6, 7))
TEST_PAIR = (8, 9)
CIFAR10_HELP = ("download the CIFAR-10 python version (cifar-10-python.tar.gz) from "
                "https://www.cs.toronto.edu/~kriz/cifar.html and unpack it; --data-root is the folder "
                "holding data_batch_1 ... data_batch_5 and test_batch")
_DIGITS_POOL = 120          # digits: 8/9 images that fine-tuning draws its n from (then 60 validation, the rest test)
_CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
_CIFAR_STD = (0.2023, 0.1994, 0.2010)          # the authors' constants (spec §2)


# ------------------------------------------------------------------------------------------------
# The model


@functools.lru_cache(maxsize=1)
def _mixer_module():
    torch = _torch()
    nn = torch.nn

    class FeedForward(nn.Module):
        def __init__(self, dim, hidden, dropout):
            super().__init__()
            self.fc1 = nn.Linear(dim, hidden)
            self.fc2 = nn.Linear(hidden, dim)
            self.drop = nn.Dropout(dropout)

        def forward(self, x):
            h = nn.functional.gelu(self.fc1(x))
            if not self.drop.training or self.drop.p == 0:      # identity (and no random draw): skip the call
                return self.fc2(h)
            return self.drop(self.fc2(self.drop(h)))

    class MixerBlock(nn.Module):
        def __init__(self, tokens, dim, token_hidden, channel_hidden, dropout):
            super().__init__()
            self.norm1 = nn.LayerNorm(dim)
            self.token_mlp = FeedForward(tokens, token_hidden, dropout)
            self.norm2 = nn.LayerNorm(dim)
            self.channel_mlp = FeedForward(dim, channel_hidden, dropout)

        def forward(self, x):                                   # x (B, tokens, dim)
            x = x + self.token_mlp(self.norm1(x).transpose(1, 2)).transpose(1, 2)
            return x + self.channel_mlp(self.norm2(x))

    class Mixer(nn.Module):
        """MLP-Mixer: Linear patch embedding, ``depth`` blocks (token MLP across patches, channel MLP
        across features, pre-LayerNorm, residuals), LayerNorm, mean over tokens, Linear head. Every
        mixing layer is an ``nn.Linear``, so LoRA can adapt all of them (the head included)."""

        def __init__(self, *, image_size=32, channels=3, patch_size=4, dim=512, depth=1, num_classes=2,
                     token_expansion=4.0, channel_expansion=0.5, dropout=0.1):
            super().__init__()
            if image_size % patch_size:
                raise ValueError(f"The 'patch_size' parameter of MLPMixer must divide image_size ({image_size}). "
                                 f"Got {patch_size} instead.")
            self.patch_size = patch_size
            tokens = (image_size // patch_size) ** 2
            self.patch = nn.Linear(channels * patch_size * patch_size, dim)
            self.blocks = nn.ModuleList([
                MixerBlock(tokens, dim, max(1, int(tokens * token_expansion)), max(1, int(dim * channel_expansion)),
                           dropout) for _ in range(depth)])
            self.norm = nn.LayerNorm(dim)
            self.head = nn.Linear(dim, num_classes)

        def forward(self, x):                                   # x (B, C, H, W)
            B, C, H, W = x.shape
            p = self.patch_size
            x = x.reshape(B, C, H // p, p, W // p, p).permute(0, 2, 4, 3, 5, 1).reshape(B, (H // p) * (W // p), p * p * C)
            x = self.patch(x)
            for block in self.blocks:
                x = block(x)
            return self.head(self.norm(x).mean(dim=1))

    return Mixer


def MLPMixer(**options):
    """The MLP-Mixer of spec §2 (defaults: image 32, patch 4, width 512, depth 1, token MLP ×4,
    channel MLP ×0.5, dropout 0.1, GELU, LayerNorm, mean pooling, Linear(512 → 2)); its output layer
    is ``head``. Initialised from torch's default generator (seed it, e.g. inside ``fork_rng``).

    Parameters
    ----------
    **options
        Any of ``image_size`` (32), ``channels`` (3), ``patch_size`` (4, a divisor of ``image_size``),
        ``dim`` (512), ``depth`` (1), ``num_classes`` (2), ``token_expansion`` (4.0),
        ``channel_expansion`` (0.5) and ``dropout`` (0.1).

    Examples
    --------
    >>> import torch
    >>> MLPMixer(image_size=8, channels=1, patch_size=2, dim=8)(torch.zeros(3, 1, 8, 8)).shape
    torch.Size([3, 2])
    """
    func = "MLPMixer"
    ints = {"image_size": (1, MAX_DIM), "channels": (1, 4096), "patch_size": (1, MAX_DIM), "dim": (1, 65536),
            "depth": (1, 1000), "num_classes": (1, 10**6)}
    reals = {"token_expansion": (0.0, 1000.0), "channel_expansion": (0.0, 1000.0), "dropout": (0.0, 1.0)}
    unknown = sorted(set(options) - set(ints) - set(reals))
    if unknown:
        raise ValueError(f"The {unknown[0]!r} parameter of {func} is not an option; allowed: "
                         f"{', '.join(sorted(ints) + sorted(reals))}.")
    for name, (lo, hi) in ints.items():
        if name in options:
            options[name] = check_int(options[name], name, func, low=lo, high=hi)
    for name, (lo, hi) in reals.items():
        if name in options:
            options[name] = check_real(options[name], name, func, low=lo, high=hi, low_open=name != "dropout")
    image, patch = options.get("image_size", 32), options.get("patch_size", 4)
    if image % patch:
        raise ValueError(f"The 'patch_size' parameter of {func} must divide image_size ({image}). Got {patch} instead.")
    dim, depth = options.get("dim", 512), options.get("depth", 1)
    check_entries(_mixer_entries(image, patch, dim, depth, options.get("token_expansion", 4.0),
                                 options.get("channels", 3)),
                  "'image_size', 'patch_size', 'dim' and 'depth'", func)
    return _mixer_module()(**options)


def _mixer_entries(image, patch, dim, depth, token_expansion, channels) -> int:
    """Weights of the Mixer's largest layers: token MLPs, channel MLPs and the patch embedding."""
    tokens = (image // patch) ** 2
    return int(depth * (tokens * tokens * token_expansion + dim * dim) + dim * channels * patch * patch)


# ------------------------------------------------------------------------------------------------
# CIFAR-10 python-pickle batches


def read_cifar10(root) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Read the CIFAR-10 python version from ``root``: (x_train (50000, 3, 32, 32) uint8, y_train,
    x_test, y_test); any number of rows per file is accepted (for small generated sets).

    Parameters
    ----------
    root : str or pathlib.Path
        The folder with ``data_batch_1`` … ``data_batch_5`` and ``test_batch``.

    Raises
    ------
    ValueError
        ``root`` is missing or lacks a batch file, or a file is not a CIFAR-10 batch (labels
        included: each must be a class 0-9); the message names the file and says how to get the
        data set.

    Examples
    --------
    >>> import tempfile
    >>> tmp = tempfile.TemporaryDirectory()          # removed when the example ends
    >>> root = write_cifar10(tmp.name, n_train=50, n_test=20)
    >>> [a.shape for a in read_cifar10(root)]
    [(50, 3, 32, 32), (50,), (20, 3, 32, 32), (20,)]
    """
    files = _cifar_files(root)
    root = Path(root)
    parts = []
    for n, path in files:
        try:
            with open(path, "rb") as fh:
                d = pickle.load(fh, encoding="bytes")
            x = np.asarray(d[b"data"], dtype=np.uint8)
            y = np.asarray(d[b"labels"])
            if x.ndim != 2 or x.shape[1] != 3072 or y.ndim != 1 or len(y) != len(x) or \
                    (len(y) and y.dtype.kind not in "iu"):
                raise ValueError
        except Exception:
            raise ValueError(f"--data-root (the 'root' parameter of read_cifar10) {root}: {n} is not a CIFAR-10 "
                             f"python batch: {CIFAR10_HELP}.") from None
        outside = np.flatnonzero((y < 0) | (y > 9))
        if outside.size:
            raise ValueError(f"--data-root (the 'root' parameter of read_cifar10) {root}: {n} holds label "
                             f"{int(y[outside[0]])} (row {int(outside[0])}); CIFAR-10 labels are 0-9 (the tasks "
                             f"are the class pairs {', '.join(f'{a}/{b}' for a, b in PAIRS + (TEST_PAIR,))}).")
        parts.append((x.reshape(-1, 3, 32, 32), y.astype(np.int64)))
    x_train = np.concatenate([p[0] for p in parts[:5]])
    y_train = np.concatenate([p[1] for p in parts[:5]])
    return x_train, y_train, parts[5][0], parts[5][1]


_CIFAR_FILES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch",)


def _cifar_files(root, param: str = "the 'root' parameter of read_cifar10"):
    """``[(name, path)]`` of the six batch files under ``root``, or the ValueError that names
    ``--data-root`` (and ``param``) and says how to get the data set."""
    if root is not None and not isinstance(root, (str, os.PathLike)):
        raise ValueError(f"The 'root' parameter of read_cifar10 (--data-root) must be a path. Got {root!r} instead.")
    root = Path(root) if root is not None else None
    if root is None or not root.is_dir():
        raise ValueError(f"--data-root ({param}) {root} is not a folder with the CIFAR-10 batches: {CIFAR10_HELP}.")
    missing = [n for n in _CIFAR_FILES if not (root / n).is_file()]
    if missing:
        raise ValueError(f"--data-root ({param}) {root} lacks {', '.join(missing)}: {CIFAR10_HELP}.")
    return [(n, root / n) for n in _CIFAR_FILES]


def write_cifar10(root, n_train: int = 50000, n_test: int = 10000, *, rng=0) -> Path:
    """Write a random data set in the CIFAR-10 python-pickle format (5 training batches and a test
    batch; uniform random pixels, balanced labels) under ``root`` — for tests and benchmarks.

    Parameters
    ----------
    root : str or pathlib.Path
        The folder to write (created if missing).
    n_train : int >= 0
        Training images, spread over the five training batches.
    n_test : int >= 0
        Test images.
    rng : numpy.random.Generator, int or None
        Source of the pixels and labels.

    Examples
    --------
    >>> import tempfile
    >>> tmp = tempfile.TemporaryDirectory()          # removed when the example ends
    >>> root = write_cifar10(tmp.name, n_train=50, n_test=20, rng=1)
    >>> sorted(p.name for p in root.iterdir())
    ['data_batch_1', 'data_batch_2', 'data_batch_3', 'data_batch_4', 'data_batch_5', 'test_batch']
    """
    func = "write_cifar10"
    if not isinstance(root, (str, os.PathLike)):
        raise ValueError(f"The 'root' parameter of {func} must be a path. Got {root!r} instead.")
    n_train = check_int(n_train, "n_train", func, low=0, high=MAX_COUNT)
    n_test = check_int(n_test, "n_test", func, low=0, high=MAX_COUNT)
    check_entries(max(n_train // 5 + 1, n_test) * 3072, "'n_train' and 'n_test'", func)
    rng = check_rng(rng, func)
    root = Path(root)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ValueError(f"The 'root' parameter of {func} must be a folder that can be created and written. "
                         f"Got {str(root)!r}: {err.strerror}.") from None
    sizes = [n_train // 5 + (i < n_train % 5) for i in range(5)]
    for name, n in [(f"data_batch_{i + 1}", s) for i, s in enumerate(sizes)] + [("test_batch", n_test)]:
        labels = (np.arange(n) % 10)[rng.permutation(n)]
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        with open(root / name, "wb") as fh:
            pickle.dump({b"data": data, b"labels": labels.tolist(), b"batch_label": name.encode()}, fh)
    return root


# ------------------------------------------------------------------------------------------------
# The config


def _doc(text, default=dataclasses.MISSING):
    return field(default=default, metadata={"doc": text})


@dataclass(frozen=True)
class RealDataConfig(SweepConfig):
    """One real-data experiment, frozen and validated; chunks are one retraining method × one seed.

    Build it with :func:`realdata_sweep`, which fills in a data set's protocol.

    Examples
    --------
    >>> cfg = RealDataConfig(dataset="digits", seeds=(0, 1), image_size=8, patch_size=2, width=32)
    >>> cfg.vary, cfg.values, len(cfg.chunks())          # 4 methods x 2 seeds
    ('retraining', ('SR', 'LoRA-ML', 'last-layer-ML', 'Reptile'), 8)
    >>> cfg.share_key(0, (0,)) == RealDataConfig(**{**cfg.to_dict(), "preset": "paper"}).share_key(0, (0,))
    True
    """

    #: 2: the spec's protocol (std constants, Reptile's one round per epoch, V4 and V6 under paper,
    #: the running best starting at 0): numbers changed
    engine_version: ClassVar[int] = 2

    dataset: str = _doc("'digits' (offline, scikit-learn) or 'vision' (CIFAR-10 from data_root)")
    preset: str = _doc("'paper' (quirks V1-V4 and V6 of spec §2) or 'clean'", "clean")
    values: tuple = _doc("retraining methods (a subset of SR, LoRA-ML, last-layer-ML, Reptile)", RETRAINING_METHODS)
    seeds: tuple = _doc("seeds, one chunk per method and seed", (0, 1, 2, 3, 4))
    finetuning: tuple = _doc("fine-tuning schemes ('lora', 'last-layer')", FINETUNING_SCHEMES)
    n_finetune: tuple = _doc("fine-tuning sample sizes (0: every fine-tuning image)", (0,))
    data_root: str = _doc("vision: folder of the CIFAR-10 python batches (not part of the key: the files' "
                          "fingerprint is)", "")
    train_per_task: int = _doc("vision: retraining images per task (0: all 10,000)", 0)
    val_per_task: int = _doc("vision: validation images per task (0: all 2,000)", 0)
    ft_val: int = _doc("vision, clean: fine-tuning images held out for validation (paper: none, every image "
                       "fine-tunes and the best epoch is the best test accuracy, V4)", 1000)
    data_seed: int = _doc("vision, paper: seed of the one fixed crop-and-flip of the training images (V6), "
                          "independent of the run seeds", 0)
    test_size: int = _doc("vision: test images of the new task (0: all 2,000)", 0)
    image_size: int = _doc("image side (32 CIFAR, 8 digits)", 32)
    patch_size: int = _doc("Mixer patch side", 4)
    width: int = _doc("Mixer width", 512)
    depth: int = _doc("Mixer blocks", 1)
    dropout: float = _doc("Mixer dropout", 0.1)
    augment: bool = _doc("random crop (padding 4) and horizontal flip of the training images: drawn afresh "
                         "per batch (clean) or once, from data_seed (paper, V6)", True)
    r: int = _doc("LoRA rank (retraining adapters and fine-tuning adapter)", 1)
    lora_alpha: float = _doc("LoRA alpha (scaling alpha / r)", 1.0)
    lora_dropout: float = _doc("LoRA dropout", 0.0)
    batch_size: int = _doc("retraining batch size (per task for LoRA-ML / last-layer-ML)", 256)
    retrain_epochs: int = _doc("retraining epochs (SR, LoRA-ML, last-layer-ML)", 100)
    retrain_lr: float = _doc("retraining Adam learning rate (cosine)", 1e-4)
    retrain_wd: float = _doc("retraining Adam L2 weight decay", 1e-5)
    reptile_epochs: int = _doc("Reptile outer epochs", 5)
    reptile_lr: float = _doc("Reptile outer Adam learning rate", 1e-5)
    reptile_inner_steps: int = _doc("Reptile inner SGD steps per task", 20)
    reptile_inner_lr: float = _doc("Reptile inner SGD learning rate", 1e-2)
    ft_epochs: int = _doc("fine-tuning epochs", 100)
    ft_lr: float = _doc("fine-tuning Adam learning rate (cosine)", 5e-4)
    ft_wd: float = _doc("fine-tuning Adam L2 weight decay", 1e-5)
    ft_batch_size: int = _doc("fine-tuning batch size", 256)
    chunk_trials: int = _doc("seeds per stored chunk (1: one chunk per method and seed)", 1)
    fingerprint: str = _doc("digest of the names, sizes and SHA-256 hashes of the data files read (vision: the "
                            "CIFAR-10 batches; digits: scikit-learn's digits.csv.gz), computed when the config is "
                            "made (a value passed in is replaced); part of the key", "")
    data_files: tuple = _doc("(name, size, SHA-256, mtime_ns) of each data file, computed with the fingerprint; "
                             "a chunk refuses to run when a file no longer matches (not part of the key)", ())

    def __post_init__(self):
        func = "RealDataConfig"
        check_choice(self.dataset, "dataset", func, ("digits", "vision"))
        check_choice(self.preset, "preset", func, REALDATA_PRESETS)
        for name, allowed in (("values", RETRAINING_METHODS), ("finetuning", FINETUNING_SCHEMES)):
            items = getattr(self, name)
            items = (items,) if isinstance(items, str) else tuple(items)
            if not items or len(set(items)) != len(items):
                raise ValueError(f"The {name!r} parameter of {func} must be a non-empty sequence without repeats. "
                                 f"Got {items!r}.")
            for item in items:
                check_choice(item, name, func, allowed)
            object.__setattr__(self, name, items)
        for name in ("seeds", "n_finetune"):
            items = getattr(self, name)
            items = (items,) if isinstance(items, (int, np.integer)) else check_values(items, name, func, lambda v: v)
            if not items or len(set(items)) != len(items):
                raise ValueError(f"The {name!r} parameter of {func} must be a non-empty sequence of distinct ints. "
                                 f"Got {items!r}.")
            object.__setattr__(self, name, tuple(check_int(v, name, func, low=0, high=2**63 - 1) for v in items))
        # Upper limits: those of MLPMixer for the model, and epochs and steps capped as ConvAIConfig's.
        for name, lo, hi in (("train_per_task", 0, MAX_COUNT), ("val_per_task", 0, MAX_COUNT), ("ft_val", 1, MAX_COUNT),
                             ("data_seed", 0, 2**63 - 1),
                             ("test_size", 0, MAX_COUNT), ("image_size", 1, MAX_DIM), ("patch_size", 1, MAX_DIM),
                             ("width", 1, 65536), ("depth", 1, 1000), ("r", 1, MAX_DIM), ("batch_size", 1, MAX_COUNT),
                             ("retrain_epochs", 0, 100_000), ("reptile_epochs", 0, 100_000),
                             ("reptile_inner_steps", 0, 100_000), ("ft_epochs", 0, 100_000),
                             ("ft_batch_size", 1, MAX_COUNT), ("chunk_trials", 0, MAX_COUNT)):
            object.__setattr__(self, name, check_int(getattr(self, name), name, func, low=lo, high=hi))
        for name, hi in (("dropout", 1.0), ("lora_dropout", 1.0), ("lora_alpha", None), ("retrain_lr", None),
                         ("retrain_wd", None), ("reptile_lr", None), ("reptile_inner_lr", None), ("ft_lr", None),
                         ("ft_wd", None)):
            object.__setattr__(self, name, check_real(getattr(self, name), name, func, low=0.0, high=hi,
                                                      low_open=name == "lora_alpha"))
        aug = self.augment
        if isinstance(aug, str) and aug.lower() in ("true", "false", "1", "0"):
            aug = aug.lower() in ("true", "1")          # from the command line's --set augment=false
        if not isinstance(aug, (bool, np.bool_)):
            raise ValueError(f"The 'augment' parameter of {func} must be True or False. Got {self.augment!r} instead.")
        object.__setattr__(self, "augment", bool(aug))
        if self.image_size % self.patch_size:
            raise ValueError(f"The 'patch_size' parameter of {func} must divide image_size ({self.image_size}). "
                             f"Got {self.patch_size} instead.")
        check_entries(_mixer_entries(self.image_size, self.patch_size, self.width, self.depth, 4.0, 3),
                      "'image_size', 'patch_size', 'width' and 'depth'", func)
        if self.dataset == "digits" and max(self.n_finetune) > _DIGITS_POOL:
            raise ValueError(f"The 'n_finetune' parameter of {func} must hold ints in [0, {_DIGITS_POOL}] for digits "
                             f"(the fine-tuning pool of 8/9 images; 0: all). Got {self.n_finetune!r} instead.")
        # The head (2 outputs) is the narrowest LoRA-adapted layer.
        if self.r > 2 and ("lora" in self.finetuning or "LoRA-ML" in self.values):
            raise ValueError(f"The 'r' parameter of {func} must be an int in [1, 2] (the smallest side of a "
                             f"LoRA-adapted layer: the head has 2 outputs). Got {self.r} instead.")
        object.__setattr__(self, "data_root", str(self.data_root))
        # The data read is part of the key: fingerprint the files now, in the process that plans the
        # run (hashed once per process); the chunks carry the manifest and check it before they run.
        # A vision config without data_root gets no fingerprint, and its chunks refuse to run.
        record_manifest(self, self._files if self.dataset == "digits" or self.data_root else None, func)

    def _files(self) -> list:
        """``[(relative name, path)]`` of every data file the config's chunks read."""
        if self.dataset == "digits":
            return [("sklearn/datasets/data/digits.csv.gz", _digits_file())]
        return _cifar_files(self.data_root, "the 'data_root' parameter of RealDataConfig")

    def check_data(self) -> None:
        """Refuse to run on data other than the config was made from (a batch file changed, added or
        removed since): its key, and so its store folder, name the files it fingerprinted then.
        Cheap: a file whose size and modification time are the recorded ones is not read again.

        Raises
        ------
        ValueError
            Naming ``--data-root`` (or scikit-learn's digits file) and the file that changed.
        """
        if self.dataset == "vision" and not self.data_root:
            raise ValueError(f"--data-root (the 'data_root' parameter of RealDataConfig) is empty: {CIFAR10_HELP}.")
        where = (f"--data-root (the 'data_root' parameter of RealDataConfig) {self.data_root}"
                 if self.dataset == "vision" else "RealDataConfig(dataset='digits'): scikit-learn's bundled digits")
        check_manifest(self._files(), self.data_files, where)

    # SweepConfig's protocol: values (methods) × runs (seeds), chunked by chunk_trials.
    @property
    def runs(self) -> int:
        return len(self.seeds)

    @property
    def vary(self) -> str:
        return "retraining"

    def chunk_cost(self, value_index: int, trials) -> float:
        """Rough single-core seconds: retraining plus every fine-tuning run, in epochs over the data
        (measured 5-9 s per digits seed, 30 + 40 epochs; a CIFAR-10 epoch is ~200 digits epochs)."""
        epochs = (self.reptile_epochs if self.values[value_index] == "Reptile" else self.retrain_epochs) + \
            self.ft_epochs * len(self.finetuning) * len(self.n_finetune) / 10
        return len(trials) * epochs * 0.1 * (1 if self.dataset == "digits" else 200)

    def share_key(self, value_index: int, trials) -> str | None:
        """SR and last-layer-ML retrain the same way under both presets (quirks V1-V3 touch only
        LoRA adapters, fine-tuning starts and Reptile), so their chunks of equal seeds in the
        ``paper`` and ``clean`` sweeps share the retraining: the scheduler sends them to one worker
        together and :func:`simulate_realdata_chunks` retrains once. ``None`` for the other methods."""
        key = _retrain_key(self, self.values[value_index])
        if key is None:
            return None
        return f"{key}:{[int(self.seeds[int(t)]) for t in trials]}"

    @property
    def key(self) -> str:
        """Content hash of everything that determines the numbers, the data read included (its
        ``fingerprint``); not the chunking, not where the data is."""
        return _config_hash(self, ("chunk_trials",))


#: Fields that the retraining of one seed does not read (fine-tuning, the sweep's layout); the
#: preset is among them for the methods in _PRESET_FREE.
_FINETUNE_FIELDS = ("values", "seeds", "finetuning", "n_finetune", "ft_val", "test_size", "ft_epochs", "ft_lr",
                    "ft_wd", "ft_batch_size", "chunk_trials")
_PRESET_FREE = ("SR", "last-layer-ML")


#: Fields that say where the data is and when its files were written: never part of a key (the
#: ``fingerprint`` of the files' contents is), so the same files in another folder give the same keys.
_WHERE = ("data_root", "data_files")


def _config_hash(config, without, **extra) -> str:
    """Hash of the config's fields but ``without`` and :data:`_WHERE`, plus ``extra``."""
    d = config.to_dict()
    for name in tuple(without) + _WHERE:
        d.pop(name)
    d.update(extra)
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=list).encode()).hexdigest()[:16]


def _finetune_key(config) -> str:
    """Hash of every field but the sweep's layout: with the retraining key, seed, scheme and
    sample-size index, what a last-layer fine-tuning without options depends on. The preset is part
    of it but for digits: under ``paper`` the epochs are scored on the test split in place of the
    validation split (V4; digits: the same training, its val rows replaced by the test rows), and
    on CIFAR-10 the paper preset fine-tunes on every training image."""
    return _config_hash(config, ("values", "seeds", "chunk_trials") + (("preset",) if config.dataset == "digits"
                                                                       else ()))


def _retrain_key(config, method) -> str | None:
    """Hash of what one seed's retraining with ``method`` depends on, or ``None`` where it depends
    on the preset (LoRA-ML: V1 in the adapted forward pass; Reptile: V3)."""
    if method not in _PRESET_FREE or config.dataset not in ("digits", "vision"):
        return None
    if config.dataset == "vision" and config.augment:          # V6: the presets augment differently
        return _config_hash(config, _FINETUNE_FIELDS, method=method)
    return _config_hash(config, _FINETUNE_FIELDS + ("preset",), method=method)


_DIGITS = dict(image_size=8, patch_size=2, width=32, depth=1, dropout=0.1, augment=False, r=1, lora_alpha=1.0,
               batch_size=32, retrain_epochs=30, retrain_lr=3e-3, retrain_wd=1e-5, reptile_epochs=30,
               reptile_lr=1e-3, reptile_inner_steps=5, reptile_inner_lr=5e-2, ft_epochs=40, ft_lr=1e-2,
               ft_wd=1e-5, ft_batch_size=16, n_finetune=(10, 20, 40, 80, 120))
_VISION = dict(n_finetune=(0,))


def realdata_sweep(dataset: str, *, preset: str = "clean", seeds=(0, 1, 2, 3, 4), **overrides):
    """The frozen config of a real-data experiment (``"digits"``, ``"vision"`` or ``"convai"``).

    ``digits`` defaults to the offline protocol of the README (a tiny Mixer, 30 retraining and 40
    fine-tuning epochs, n = 10 … 120 fine-tuning images); ``vision`` to the paper's sizes (spec §2).
    ``convai`` is the language experiment (spec §3, a :class:`ConvAIConfig`): it needs ``data``,
    ``persona_map`` and ``model`` (paths, checked here before any work) and defaults to the paper's
    sizes (10 + 10 personas, ranks 1, 4, 8, 12, 16, 10 epochs).

    Parameters
    ----------
    dataset : {"digits", "vision", "convai"}
        The experiment.
    preset : {"paper", "clean"}
        ``paper`` reproduces the authors' protocol with its quirks; ``clean`` fixes them.
    seeds : sequence of int
        One retraining and fine-tuning run per seed, paired across methods.
    **overrides
        Any other field of :class:`RealDataConfig` (of :class:`ConvAIConfig` for ``convai``, where
        ``data``, ``persona_map`` and ``model`` are required).

    Examples
    --------
    >>> cfg = realdata_sweep("digits", seeds=(0, 1))
    >>> cfg.values, len(cfg.chunks())
    (('SR', 'LoRA-ML', 'last-layer-ML', 'Reptile'), 8)
    """
    check_choice(dataset, "dataset", "realdata_sweep", ("digits", "vision", "convai"))
    if dataset == "convai":
        return _convai_sweep(preset, seeds, overrides)
    names = {f.name for f in dataclasses.fields(RealDataConfig)} - {"dataset", "preset", "seeds", "fingerprint",
                                                                    "data_files"}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise ValueError(f"realdata_sweep got unknown option(s) {', '.join(map(repr, unknown))}; "
                         f"allowed: {', '.join(sorted(names))}.")
    base = dict(_DIGITS if dataset == "digits" else _VISION)
    base.update(overrides)
    return RealDataConfig(dataset=dataset, preset=preset, seeds=seeds, **base)


def _convai_sweep(preset, seeds, overrides):
    from ._convai import ConvAIConfig, check_convai_inputs

    names = {f.name for f in dataclasses.fields(ConvAIConfig)} - {"preset", "seeds", "fingerprint", "data_files"}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise ValueError(f"realdata_sweep got unknown option(s) {', '.join(map(repr, unknown))} for 'convai'; "
                         f"allowed: {', '.join(sorted(names))}.")
    paths = {k: overrides.get(k) for k in ("data", "persona_map", "model")}
    check_convai_inputs(paths["data"], paths["persona_map"], paths["model"])    # one line naming the flag
    overrides = {**overrides, **{k: str(Path(v).resolve()) for k, v in paths.items()}}
    return ConvAIConfig(preset=preset, seeds=seeds, **overrides)


# ------------------------------------------------------------------------------------------------
# Data of one seed


def _pair_labels(y, pair):
    mask = (y == pair[0]) | (y == pair[1])
    return mask, (y[mask] % 2)


def _digits_file() -> Path:
    """The file ``sklearn.datasets.load_digits`` reads (found without importing scikit-learn).

    The digits configs fingerprint this file rather than the arrays (which would import
    scikit-learn and parse the file whenever a config is made) or scikit-learn's version (which
    would change the key, and recompute every stored chunk, on each upgrade that leaves the data
    alone): the file is every number the data set holds, and checking it before a chunk runs
    costs a ``stat``."""
    spec = importlib.util.find_spec("sklearn")
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    path = next((Path(f) / "datasets" / "data" / "digits.csv.gz" for f in folders
                 if (Path(f) / "datasets" / "data" / "digits.csv.gz").is_file()), None)
    if path is None:
        raise ValueError("The 'dataset' parameter of RealDataConfig is 'digits', which reads scikit-learn's bundled "
                         "sklearn/datasets/data/digits.csv.gz; it was not found: pip install scikit-learn (or "
                         "'loraml[torch]').")
    return path


@functools.lru_cache(maxsize=1)
def _digits_arrays(fingerprint: str):
    """scikit-learn's digits as (x (1797, 1, 8, 8) float32 in [-0.5, 0.5], y int64), read once per
    process and digits file (``fingerprint``); read-only (every use indexes, which copies)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images.astype(np.float32) / 16.0 - 0.5)[:, None]       # (1797, 1, 8, 8)
    y = d.target.astype(np.int64)
    _check_classes(y, y, "RealDataConfig(dataset='digits'): scikit-learn's digits", "its labels", "its labels")
    x.flags.writeable = False
    y.flags.writeable = False
    return x, y


def _check_classes(y_train, y_test, where, train_name, test_name):
    """Refuse data whose labels do not define the tasks (class pairs 0/1 … 8/9): a label outside
    0-9, or a class of a task with no image in the training or the test split."""
    for y, name in ((y_train, train_name), (y_test, test_name)):
        outside = np.flatnonzero((y < 0) | (y > 9))
        if outside.size:
            raise ValueError(f"{where}: label {int(y[outside[0]])} in {name}; the tasks take the classes 0-9 (pairs "
                             f"{', '.join(f'{a}/{b}' for a, b in PAIRS + (TEST_PAIR,))}).")
        present = set(np.unique(y).tolist())
        for pair in PAIRS + (TEST_PAIR,):
            missing = [c for c in pair if c not in present]
            if missing:
                raise ValueError(f"{where}: class {missing[0]} of the task {pair[0]}/{pair[1]} has no image in {name}; "
                                 f"every task needs images of both its classes in the training and the test split.")


def _digits_data(config, rng):
    x, y = _digits_arrays(config.fingerprint)
    tasks = []
    for pair in PAIRS:
        mask, labels = _pair_labels(y, pair)
        xs = x[mask]
        order = rng.permutation(len(labels))
        cut = int(round(0.75 * len(labels)))
        tasks.append(((xs[order[:cut]], labels[order[:cut]]), (xs[order[cut:]], labels[order[cut:]])))
    mask, labels = _pair_labels(y, TEST_PAIR)
    xs = x[mask]
    order = rng.permutation(len(labels))
    pool, val, test = order[:_DIGITS_POOL], order[_DIGITS_POOL:_DIGITS_POOL + 60], order[_DIGITS_POOL + 60:]
    new = {"pool": (xs[pool], labels[pool]), "val": (xs[val], labels[val]), "test": (xs[test], labels[test])}
    return tasks, new


def _fixed_augmentation(x, data_seed):
    """The paper preset's training images (V6): one crop-and-flip of every image, drawn once from
    ``data_seed`` (not from a run seed), so every epoch and every seed sees the same images."""
    torch = _torch()
    out = crop_flip(torch.from_numpy(np.ascontiguousarray(x)), torch.Generator().manual_seed(int(data_seed)),
                    padding=4)
    return out.numpy()


def _vision_data(config, rng):
    x_tr, y_tr, x_te, y_te = read_cifar10(config.data_root)
    config.check_data()                  # the bytes just read are those the key names
    paper = config.preset == "paper"
    if paper and config.augment:
        x_tr = _fixed_augmentation(x_tr, config.data_seed)
    _check_classes(y_tr, y_te, f"--data-root (the 'data_root' parameter of RealDataConfig) {config.data_root}",
                   "the training batches (data_batch_1 ... data_batch_5)", "test_batch")
    tasks = []
    for pair in PAIRS:
        m_tr, l_tr = _pair_labels(y_tr, pair)
        m_te, l_te = _pair_labels(y_te, pair)
        xa, xb = x_tr[m_tr], x_te[m_te]
        if config.train_per_task:
            xa, l_tr = xa[:config.train_per_task], l_tr[:config.train_per_task]
        if config.val_per_task:
            xb, l_te = xb[:config.val_per_task], l_te[:config.val_per_task]
        tasks.append(((xa, l_tr), (xb, l_te)))
    m_tr, l_tr = _pair_labels(y_tr, TEST_PAIR)
    m_te, l_te = _pair_labels(y_te, TEST_PAIR)
    xa = x_tr[m_tr]
    order = rng.permutation(len(l_tr))
    if config.ft_val >= len(order) and not paper:
        raise ValueError(f"The 'ft_val' parameter of RealDataConfig must be below the {len(order)} fine-tuning "
                         f"images of the new task. Got {config.ft_val}.")
    xt, lt = x_te[m_te], l_te
    if config.test_size:
        xt, lt = xt[:config.test_size], lt[:config.test_size]
    if paper:                 # V4: every training image fine-tunes; the epochs are scored on the test split
        return tasks, {"pool": (xa[order], l_tr[order]), "val": (xt, lt), "test": (xt, lt)}
    val, pool = order[:config.ft_val], order[config.ft_val:]
    new = {"pool": (xa[pool], l_tr[pool]), "val": (xa[val], l_tr[val]), "test": (xt, lt)}
    return tasks, new


def _transforms(config, device, *, train: bool):
    """Batched input pipeline: uint8 CIFAR → float, crop-and-flip when training, normalisation."""
    torch = _torch()
    if config.dataset == "digits":
        return None
    mean = torch.tensor(_CIFAR_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(_CIFAR_STD, device=device).view(1, 3, 1, 1)
    augment = train and config.augment and config.preset == "clean"      # paper: augmented once (V6)

    def transform(x, generator):
        x = x.float().div_(255.0)
        if augment:
            x = crop_flip(x, generator, padding=4)
        return (x - mean) / std

    return transform


def crop_flip(x, generator, *, padding: int = 4):
    """RandomCrop(size, padding) with zero padding and a random horizontal flip per image, as one
    gather: offsets and flips are drawn on the CPU from ``generator`` (device-independent).

    Parameters
    ----------
    x : torch.Tensor (B, C, H, W)
        The images.
    generator : torch.Generator or None
        Source of the offsets and flips (a CPU generator; None: torch's default one).
    padding : int >= 0
        Zero padding on each side, the largest shift.

    Examples
    --------
    >>> import torch
    >>> x = torch.arange(16.0).reshape(1, 1, 4, 4)
    >>> out = crop_flip(x.expand(8, 1, 4, 4), torch.Generator().manual_seed(0), padding=1)
    >>> out.shape, bool((out == 0).any())           # same size; some crops reach into the zero padding
    (torch.Size([8, 1, 4, 4]), True)
    >>> y = crop_flip(x, torch.Generator().manual_seed(0), padding=0)
    >>> torch.equal(y, x) or torch.equal(y, x.flip(-1))      # no padding: the image or its mirror
    True
    """
    torch = _torch()
    func = "crop_flip"
    if not isinstance(x, torch.Tensor) or x.ndim != 4:
        raise ValueError(f"The 'x' parameter of {func} must be a torch.Tensor of shape (B, C, H, W). "
                         f"Got {type(x).__name__}{tuple(x.shape) if isinstance(x, torch.Tensor) else ''} instead.")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise ValueError(f"The 'generator' parameter of {func} must be a torch.Generator or None. "
                         f"Got {type(generator).__name__} instead.")
    padding = check_int(padding, "padding", func, low=0, high=MAX_DIM)
    B, C, H, W = x.shape
    dy = torch.randint(0, 2 * padding + 1, (B,), generator=generator).to(x.device)
    dx = torch.randint(0, 2 * padding + 1, (B,), generator=generator).to(x.device)
    flip = (torch.rand(B, generator=generator) < 0.5).to(x.device)
    padded = torch.nn.functional.pad(x, (padding, padding, padding, padding))
    rows = dy[:, None] + torch.arange(H, device=x.device)                      # (B, H)
    cols = torch.arange(W, device=x.device).expand(B, W)
    cols = torch.where(flip[:, None], cols.flip(-1), cols) + dx[:, None]       # (B, W)
    b = torch.arange(B, device=x.device)[:, None, None, None]
    c = torch.arange(C, device=x.device)[None, :, None, None]
    return padded[b, c, rows[:, None, :, None], cols[:, None, None, :]]


# ------------------------------------------------------------------------------------------------
# One chunk


def _specs(config):
    paper = config.preset == "paper"
    lora = LoraSpec(r=config.r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout, ignore_bias=paper)
    retrain_opt = OptimSpec(epochs=config.retrain_epochs, lr=config.retrain_lr, weight_decay=config.retrain_wd)
    reptile_opt = OptimSpec(epochs=config.reptile_epochs, lr=config.reptile_lr, weight_decay=config.retrain_wd)
    reptile = ReptileSpec(inner_steps=config.reptile_inner_steps, inner_lr=config.reptile_inner_lr,
                          sign=-1 if paper else 1, persistent=True)
    ft_opt = OptimSpec(epochs=config.ft_epochs, lr=config.ft_lr, weight_decay=config.ft_wd)
    return lora, retrain_opt, reptile_opt, reptile, ft_opt


def _model(config):
    channels = 1 if config.dataset == "digits" else 3
    return MLPMixer(image_size=config.image_size, channels=channels, patch_size=config.patch_size, dim=config.width,
                    depth=config.depth, num_classes=2, dropout=config.dropout)


def simulate_realdata_chunk(config: RealDataConfig, value_index: int, trials, device: str | None = None,
                            amp: bool | None = None, budget: float | None = None,
                            timings: dict | None = None, stacked: bool | None = None) -> pd.DataFrame:
    """Retrain with one method for the seeds ``trials`` (indices into ``config.seeds``), fine-tune with
    every scheme and sample size; return the tidy table (see the module docstring).

    ``device`` defaults to CUDA when available; ``amp`` (float16 autocast with a GradScaler, spec §2;
    fine-tuning evaluations in float32) defaults to on for CUDA.
    ``budget`` (seconds per seed) caps the work: retraining stops after the epoch that passes half
    of it, each fine-tuning after the epoch that passes its equal share of the rest (the table's
    epochs say how far each got); ``timings`` (a dict) receives the wall time of each phase.

    Parameters
    ----------
    config : RealDataConfig
        The experiment.
    value_index : int
        Index of the retraining method in ``config.values``.
    trials : sequence of int
        Indices into ``config.seeds``.
    device : str, optional
        Torch device; None: CUDA when available, else the CPU.
    amp : bool, optional
        float16 autocast with a GradScaler (spec §2); None: on for CUDA.
    budget : float >= 0, optional
        Seconds per seed; None: no cap.
    timings : dict, optional
        Receives the wall time of each phase.
    stacked : bool, optional
        Fine-tune the seeds of ``trials`` in one stacked pass (``sims/_seedstack.py``; per seed the
        looped result up to rounding) rather than one after another; None: stacked on CUDA only.
        Needs two or more seeds and no ``budget``; otherwise the loop runs.

    Examples
    --------
    >>> cfg = realdata_sweep("digits", seeds=(0,), values=("SR",), finetuning=("last-layer",), n_finetune=(10,),
    ...                      retrain_epochs=1, ft_epochs=1)
    >>> table = simulate_realdata_chunk(cfg, 0, (0,), device="cpu")
    >>> table.groupby(["phase", "split"], observed=True).size().to_dict()   # epochs 0-1 of each phase
    {('finetune', 'test'): 2, ('finetune', 'val'): 2, ('retrain', 'val'): 2}
    """
    torch = _torch()
    func = "simulate_realdata_chunk"
    if not isinstance(config, RealDataConfig):
        raise ValueError(f"The 'config' parameter of {func} must be a RealDataConfig. "
                         f"Got {type(config).__name__} instead.")
    value_index = check_int(value_index, "value_index", func, low=0, high=len(config.values) - 1)
    trials = check_values(trials, "trials", func,
                          lambda t: check_int(t, "trials", func, low=0, high=len(config.seeds) - 1))
    device = _check_device(("cuda" if torch.cuda.is_available() else "cpu") if device is None else device, func)
    if amp is not None and not isinstance(amp, (bool, np.bool_)):
        raise ValueError(f"The 'amp' parameter of {func} must be a bool or None. Got {amp!r} instead.")
    if budget is not None:
        budget = check_real(budget, "budget", func, low=0.0)
    if timings is not None and not isinstance(timings, dict):
        raise ValueError(f"The 'timings' parameter of {func} must be a dict or None. Got {type(timings).__name__}.")
    if stacked is not None and not isinstance(stacked, (bool, np.bool_)):
        raise ValueError(f"The 'stacked' parameter of {func} must be a bool or None. Got {stacked!r} instead.")
    amp = device.type == "cuda" if amp is None else amp
    return _chunk(config, value_index, trials, device, amp, budget, timings, None,
                  stacked=None if stacked is None else bool(stacked))


def simulate_realdata_chunks(chunks, device: str | None = None, amp: bool | None = None) -> list[pd.DataFrame]:
    """The tables of several chunks ``[(config, value_index, trials), ...]``, each bit-identical to
    :func:`simulate_realdata_chunk`; chunks with equal :meth:`RealDataConfig.share_key` (SR or
    last-layer-ML, the same seeds, both presets) retrain once, and on digits a last-layer
    fine-tuning that no quirk reaches (SR's) trains once for both presets (the paper preset's
    history scores its epochs on the test split, V4).

    Parameters
    ----------
    chunks : sequence of (RealDataConfig, int, sequence of int)
        ``(config, value_index, trials)`` triples, each as :func:`simulate_realdata_chunk` takes them.
    device : str, optional
        Torch device; None: CUDA when available, else the CPU.
    amp : bool, optional
        float16 autocast with a GradScaler (spec §2); None: on for CUDA.

    Examples
    --------
    >>> cfgs = [realdata_sweep("digits", preset=p, seeds=(0,), values=("SR",), retrain_epochs=1, ft_epochs=1,
    ...                        n_finetune=(10,), finetuning=("last-layer",)) for p in ("paper", "clean")]
    >>> cfgs[0].share_key(0, (0,)) == cfgs[1].share_key(0, (0,))
    True
    >>> a, b = simulate_realdata_chunks([(c, 0, (0,)) for c in cfgs], device="cpu")
    >>> test = [t[t["split"] == "test"]["accuracy"].to_numpy() for t in (a, b)]
    >>> bool((test[0] == test[1]).all())      # SR's last-layer fine-tuning: the same training in both presets
    True
    """
    func = "simulate_realdata_chunks"
    checked = RealDataConfig.check_chunks(chunks, "chunks", func)
    torch = _torch()
    device = _check_device(("cuda" if torch.cuda.is_available() else "cpu") if device is None else device, func)
    if amp is not None and not isinstance(amp, (bool, np.bool_)):
        raise ValueError(f"The 'amp' parameter of {func} must be a bool or None. Got {amp!r} instead.")
    amp = device.type == "cuda" if amp is None else amp
    cache = {}
    return [_chunk(config, v, trials, device, amp, None, None, cache) for config, v, trials in checked]


def _chunk(config, value_index, trials, device, amp, budget, timings, cache, stacked=None):
    config.check_data()                  # the files are those the key names (before any training)
    torch = _torch()
    method = config.values[value_index]
    frames = []
    threads = torch.get_num_threads()
    # One thread per process on the CPU: the digits model is tiny and intra-op threading made a
    # chunk 5x slower on 2 cores (measured 67 s against 12 s); scale out with processes instead.
    if device.type == "cpu" and config.dataset == "digits":
        torch.set_num_threads(1)
    try:
        # The seeds' fine-tunings as one stacked pass where kernel launches, not arithmetic, set the
        # pace (CUDA). On the CPU the digits model's arithmetic does: a stacked pass of 5 or 20 seeds
        # took as long as the loop (benchmarks/realdata_digits.py --stacked), and last-layer
        # fine-tuning would lose the loop's cached head inputs.
        stacked = device.type == "cuda" if stacked is None else stacked
        if stacked and len(trials) > 1 and budget is None:
            own = {}        # the seeds' retraining times (their fine-tuning times are the stacked passes')
            frames = _drive_stacked([_one_seed(config, method, config.seeds[int(t)], device, amp, budget, own, cache)
                                     for t in trials], timings, method)
            if timings is not None:
                timings.update({k: v for k, v in own.items() if k.startswith("retrain")})
        else:
            for t in trials:
                frames.append(_drive(_one_seed(config, method, config.seeds[int(t)], device, amp, budget, timings,
                                               cache)))
    finally:
        torch.set_num_threads(threads)
    frame = pd.concat(frames, ignore_index=True)
    for name, cats in (("retraining", RETRAINING_METHODS), ("finetuning", ("none",) + FINETUNING_SCHEMES)):
        frame[name] = pd.Categorical(frame[name], categories=list(cats))
    return frame


def _drive(seed_run):
    """Run one seed's :func:`_one_seed` generator, fine-tuning as it asks; its table."""
    try:
        request = next(seed_run)
        while True:
            _, base, train, kwargs = request
            request = seed_run.send(finetune(base, train, **kwargs))
    except StopIteration as stop:
        return stop.value


def _drive_stacked(seed_runs, timings, method):
    """Run several seeds' :func:`_one_seed` generators side by side: each retrains (one after
    another), then the fine-tunings they ask for with the same scheme and sample size run as one
    stacked pass (sims._seedstack). Their tables, in order."""
    from ._seedstack import finetune_seeds

    tables = [None] * len(seed_runs)
    requests = [None] * len(seed_runs)

    def advance(i, result):
        try:
            requests[i] = seed_runs[i].send(result)
        except StopIteration as stop:
            requests[i], tables[i] = None, stop.value

    for i in range(len(seed_runs)):
        advance(i, None)
    while any(r is not None for r in requests):
        key = next(r[0] for r in requests if r is not None)
        group = [i for i, r in enumerate(requests) if r is not None and r[0] == key]
        kws = [requests[i][3] for i in group]
        common = {k: kws[0][k] for k in ("scheme", "lora", "optim", "device", "amp", "deadline")}
        t0 = time.perf_counter()
        fts = finetune_seeds([requests[i][1] for i in group], [requests[i][2] for i in group],
                             vals=[kw["val"] for kw in kws], tests=[kw["test"] for kw in kws],
                             seeds=[kw["seed"] for kw in kws], options=[{k: v for k, v in kw.items() if k not in common
                                                                         and k not in ("val", "test", "seed")}
                                                                        for kw in kws], **common)
        if timings is not None:
            timings[f"finetune {method} {common['scheme']} n={len(requests[group[0]][2].y)} "
                    f"seeds {len(group)}"] = time.perf_counter() - t0
        for i, ft in zip(group, fts):
            advance(i, ft)
    return tables


def _one_seed(config, method, seed, device, amp, budget, timings, cache=None):
    """One seed's retraining and fine-tunings, as a generator: each fine-tuning is yielded as
    ``((scheme index, size index), base, train loader, finetune keywords)`` and the caller sends
    back its :class:`FineTuned` (see :func:`_drive`); the table is the generator's return value."""
    torch = _torch()
    streams = np.random.SeedSequence(seed).spawn(4)         # data split, model, retraining, fine-tuning
    data_rng = np.random.default_rng(streams[0])
    tasks, new = (_digits_data if config.dataset == "digits" else _vision_data)(config, data_rng)

    def gen(stream, i):
        return torch.Generator().manual_seed(int(stream.generate_state(1, dtype=np.uint64)[0] % (2**63)) + i)

    def tensors(x, y):
        return torch.as_tensor(x).to(device), torch.as_tensor(y).to(device)

    too_many = [n for n in config.n_finetune if n > len(new["pool"][1])]
    if too_many:                                         # before any training
        raise ValueError(f"The 'n_finetune' parameter of RealDataConfig must be at most {len(new['pool'][1])} "
                         f"(the fine-tuning pool). Got {too_many[0]}.")
    lora, retrain_opt, reptile_opt, reptile, ft_opt = _specs(config)
    train_tf, eval_tf = _transforms(config, device, train=True), _transforms(config, device, train=False)
    eval_bs = max(config.batch_size, 512)
    start = time.perf_counter()
    end = None if budget is None else start + budget
    base_row = {"dataset": config.dataset, "preset": config.preset, "retraining": method, "seed": np.int64(seed)}
    # A retraining that another chunk of this batch did (the same key and seed, no time budget) is
    # reused: fine-tuning copies the retrained model and seeds its own generators, so nothing after
    # this point depends on whether the retraining ran here.
    shared = None if cache is None or budget is not None else _retrain_key(config, method)
    res = None if shared is None else cache.get((shared, int(seed)))
    if res is None:
        train = [BatchLoader(*tensors(*tr), config.batch_size, shuffle=True, generator=gen(streams[2], i),
                             transform=train_tf) for i, (tr, _) in enumerate(tasks)]
        val = [BatchLoader(*tensors(*va), eval_bs, transform=eval_tf) for _, va in tasks]
        pooled = BatchLoader.pooled(train) if method == "SR" else None
        model_seed = int(streams[1].generate_state(1)[0])
        with _seeded(model_seed, device):
            model = _model(config)
        t0 = time.perf_counter()
        res = retrain(model, train, method=method, val=val, pooled=pooled, lora=lora,
                      optim=reptile_opt if method == "Reptile" else retrain_opt, reptile=reptile,
                      seed=int(streams[2].generate_state(1)[0]), device=device, amp=amp,
                      deadline=None if end is None else start + budget / 2)
        if timings is not None:
            timings[f"retrain {method} seed {seed}"] = time.perf_counter() - t0
        if shared is not None:
            cache[(shared, int(seed))] = res
    rows = [dict(base_row, phase="retrain", finetuning="none", n_finetune=np.int64(0), epoch=np.int64(r.epoch),
                 split="val", accuracy=float(r.val_accuracy)) for r in res.history.itertuples()]
    frames = [pd.DataFrame(rows)]
    paper = config.preset == "paper"
    pool_x, pool_y = new["pool"]
    test_ld = BatchLoader(*tensors(*new["test"]), eval_bs, transform=eval_tf)
    val_ld = test_ld if new["val"] is new["test"] else BatchLoader(*tensors(*new["val"]), eval_bs, transform=eval_tf)
    ft_key = None if shared is None else _finetune_key(config)
    for s, scheme in enumerate(config.finetuning):
        for j, n in enumerate(config.n_finetune):
            n_used = len(pool_y) if n == 0 else n
            tr = BatchLoader(*tensors(pool_x[:n_used], pool_y[:n_used]), min(config.ft_batch_size, n_used),
                             shuffle=True, generator=gen(streams[3], 100 * s + j), transform=train_tf)
            options = {}
            if method == "LoRA-ML" and scheme == "lora" and paper:
                options["init_adapter"] = res.adapter0                            # V2
            if method == "last-layer-ML":
                if paper:
                    options["init_head"] = res.heads[0]                          # V2
                elif scheme == "lora":
                    options["fresh_head"] = True   # θ̂ has no head of its own: a fresh one, frozen under LoRA
            t1 = time.perf_counter()
            left = len(config.finetuning) * len(config.n_finetune) - (s * len(config.n_finetune) + j)
            deadline = None if end is None else t1 + max(0.0, end - t1) / left
            # A last-layer fine-tuning without options reads no preset (V1 is about adapters, V2
            # passes options): the other preset's chunk in this batch may have done it already.
            ft_shared = None if shared is None or options or scheme != "last-layer" else \
                (shared, int(seed), ft_key, s, j)
            ft = None if ft_shared is None else cache.get(ft_shared)
            if ft is None:
                # The caller runs the fine-tuning (_drive: here and now; _drive_stacked: with the
                # other seeds of the chunk, in one stacked pass) and sends the result back.
                ft = yield (s, j), res.model, tr, dict(
                    scheme=scheme, val=val_ld, test=test_ld, lora=lora, optim=ft_opt,
                    seed=int(streams[3].generate_state(1)[0]) + 100 * s + j, device=device, amp=amp,
                    deadline=deadline, **options)
                if ft_shared is not None:
                    cache[ft_shared] = ft
            if timings is not None:
                timings[f"finetune {method} {scheme} n={n_used} seed {seed}"] = time.perf_counter() - t1
            h = ft.history
            if paper:           # V4: the epochs scored on the test split (digits: the same training, shared)
                h = _val_is_test(h)
            frames.append(pd.DataFrame({**base_row, "phase": "finetune", "finetuning": scheme,
                                        "n_finetune": np.int64(n_used), "epoch": h["epoch"].astype(np.int64),
                                        "split": h["split"], "accuracy": h["accuracy"].astype(np.float64)}))
    cols = ["dataset", "preset", "phase", "retraining", "finetuning", "seed", "n_finetune", "epoch", "split",
            "accuracy"]
    return pd.concat(frames, ignore_index=True)[cols]


def _val_is_test(history):
    """A fine-tuning history whose val rows are its test rows (the paper preset's V4)."""
    h = history.copy()
    test = h[h["split"] == "test"].set_index("epoch")["accuracy"]
    val = h["split"] == "val"
    h.loc[val, "accuracy"] = h.loc[val, "epoch"].map(test).to_numpy()
    return h


# ------------------------------------------------------------------------------------------------
# Summary


def _per_seed(table, func) -> pd.DataFrame:
    """One row per retraining method × fine-tuning scheme × n_finetune × seed: the last-epoch and
    the best-epoch (chosen on validation, :func:`best_and_last`) test accuracy."""
    columns = ("phase", "retraining", "finetuning", "n_finetune", "seed", "epoch", "split", "accuracy")
    _check_history(table, "table", func, columns)
    if not (table["phase"] == "finetune").any():
        raise ValueError(f"The 'table' parameter of {func} must hold fine-tuning rows (phase 'finetune'). "
                         "Got none.")
    for name in ("dataset", "preset"):
        if name in table.columns and table[name].nunique() > 1:
            raise ValueError(f"The 'table' parameter of {func} must hold one {name} (a seed's runs would mix). "
                             f"Got {', '.join(sorted(map(str, table[name].unique())))}.")
    ft = table[table["phase"] == "finetune"].sort_values("epoch", kind="stable")    # rows in any order
    per_seed = []
    for (m, s, n, seed), g in ft.groupby(["retraining", "finetuning", "n_finetune", "seed"], observed=True):
        bl = best_and_last(g)
        per_seed.append({"retraining": m, "finetuning": s, "n_finetune": int(n), "seed": int(seed),
                         "last": bl["last"], "best": bl["best"]})
    return pd.DataFrame(per_seed)


def _ordered(out) -> pd.DataFrame:
    """Rows by fine-tuning scheme, then n_finetune, then retraining method (the spec's orders)."""
    order = {m: i for i, m in enumerate(RETRAINING_METHODS)}
    sorder = {s: i for i, s in enumerate(FINETUNING_SCHEMES)}
    out = out.assign(_m=out["retraining"].map(order), _s=out["finetuning"].map(sorder))
    return out.sort_values(["_s", "n_finetune", "_m"]).drop(columns=["_m", "_s"]).reset_index(drop=True)


def realdata_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Per retraining method × fine-tuning scheme × n_finetune: mean, standard error (ddof 1) and
    median over seeds of the last-epoch and the best-epoch (chosen on validation) test accuracy.

    Parameters
    ----------
    table : pandas.DataFrame
        A table of :func:`simulate_realdata_chunk` (or the store's concatenation of them), with
        fine-tuning rows.

    Returns
    -------
    pandas.DataFrame
        Columns ``retraining, finetuning, n_finetune, seeds`` and, for ``last`` and ``best``,
        ``_mean``, ``_se`` and ``_median`` (accuracies as fractions).

    Raises
    ------
    ValueError
        ``table`` is not a DataFrame, lacks a column, holds no fine-tuning rows, or mixes presets
        or data sets.

    See Also
    --------
    paired_differences : each method against a baseline, paired over seeds, with confidence intervals.

    Examples
    --------
    >>> cfg = realdata_sweep("digits", seeds=(0,), values=("SR",), finetuning=("last-layer",), n_finetune=(10,),
    ...                      retrain_epochs=1, ft_epochs=1)
    >>> summary = realdata_summary(simulate_realdata_chunk(cfg, 0, (0,), device="cpu"))
    >>> summary[["retraining", "finetuning", "n_finetune"]].astype(str).values.tolist()
    [['SR', 'last-layer', '10']]
    """
    per_seed = _per_seed(table, "realdata_summary")
    rows = []
    for (m, s, n), g in per_seed.groupby(["retraining", "finetuning", "n_finetune"], observed=True, sort=False):
        row = {"retraining": m, "finetuning": s, "n_finetune": int(n), "seeds": len(g)}
        for which in ("last", "best"):
            v = g[which].to_numpy()
            row[f"{which}_mean"] = float(v.mean())
            row[f"{which}_se"] = float(v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else float("nan")
            row[f"{which}_median"] = float(np.median(v))
        rows.append(row)
    return _ordered(pd.DataFrame(rows))


def paired_differences(table: pd.DataFrame, baseline: str = "SR", *, level: float = 0.95) -> pd.DataFrame:
    """Each retraining method against ``baseline`` as a difference paired over seeds, with a
    Student-t confidence interval, per fine-tuning scheme and n_finetune, for the last-epoch and
    the best-epoch (chosen on validation) test accuracy.

    A seed fixes the data split and order, the initialisation and the fine-tuning draws of every
    method, so method and baseline of one seed share those draws; the difference of their
    accuracies cancels what the seed does to both. Per seed s present for both methods:
    d_s = acc(method, s) − acc(baseline, s); over the k such seeds the mean difference d̄, the
    standard deviation sd (ddof 1), and the interval d̄ ± t_{(1+level)/2, k−1} · sd / √k
    (NaN bounds with fewer than 2 paired seeds).

    Parameters
    ----------
    table : pandas.DataFrame
        A table of :func:`simulate_realdata_chunk` (or the store's concatenation of them), with
        fine-tuning rows of ``baseline`` and at least one other method.
    baseline : {"SR", "LoRA-ML", "last-layer-ML", "Reptile"}
        The method the others are compared with (subtracted).
    level : float in (0, 1)
        Confidence level of the intervals.

    Returns
    -------
    pandas.DataFrame
        One row per other method × scheme × n_finetune: ``retraining, finetuning, n_finetune,
        seeds`` (paired seeds) and, for ``last`` and ``best``: ``_diff`` (d̄), ``_sd``, ``_lo`` and
        ``_hi`` (the interval), as fractions of accuracy (× 100 for points).

    Raises
    ------
    ValueError
        ``table`` is not a DataFrame, lacks a column or fine-tuning rows, mixes presets or data
        sets, ``baseline`` is not a method or has no rows in ``table``, or ``level`` is outside
        (0, 1).

    Examples
    --------
    >>> rows = [{"phase": "finetune", "retraining": m, "finetuning": "lora", "n_finetune": 10, "seed": s,
    ...          "epoch": 1, "split": split, "accuracy": acc}
    ...         for m, accs in (("SR", (0.6, 0.8, 0.7)), ("LoRA-ML", (0.7, 0.9, 0.9)))
    ...         for s, acc in enumerate(accs) for split in ("val", "test")]
    >>> d = paired_differences(pd.DataFrame(rows))
    >>> d[["retraining", "seeds"]].values.tolist(), round(float(d["last_diff"].iloc[0]), 4)   # d_s = 0.1, 0.1, 0.2
    ([['LoRA-ML', 3]], 0.1333)
    >>> round(float(d["last_lo"].iloc[0]), 4), round(float(d["last_hi"].iloc[0]), 4)   # ± 4.303 · 0.0577 / √3
    (-0.0101, 0.2768)
    """
    from scipy import stats

    func = "paired_differences"
    check_choice(baseline, "baseline", func, RETRAINING_METHODS)
    level = check_real(level, "level", func)
    if not 0.0 < level < 1.0:
        raise ValueError(f"The 'level' parameter of {func} must be a float in (0, 1). Got {level!r} instead.")
    per_seed = _per_seed(table, func)
    if not (per_seed["retraining"] == baseline).any():
        present = ", ".join(sorted(set(per_seed["retraining"].astype(str))))
        raise ValueError(f"The 'baseline' parameter of {func} must be a retraining method with fine-tuning rows in "
                         f"'table' ({present}). Got {baseline!r} instead.")
    keys = ["finetuning", "n_finetune", "seed"]
    base = per_seed[per_seed["retraining"] == baseline].drop(columns="retraining")
    other = per_seed[per_seed["retraining"] != baseline]
    paired = other.merge(base, on=keys, suffixes=("", "_base"))
    rows = []
    for (m, s, n), g in paired.groupby(["retraining", "finetuning", "n_finetune"], observed=True, sort=False):
        k = len(g)
        row = {"retraining": m, "finetuning": s, "n_finetune": int(n), "seeds": k}
        for which in ("last", "best"):
            d = g[which].to_numpy() - g[f"{which}_base"].to_numpy()
            mean = float(d.mean())
            sd = float(d.std(ddof=1)) if k > 1 else float("nan")
            half = float(stats.t.ppf(0.5 + level / 2, k - 1) * sd / np.sqrt(k)) if k > 1 else float("nan")
            row.update({f"{which}_diff": mean, f"{which}_sd": sd, f"{which}_lo": mean - half,
                        f"{which}_hi": mean + half})
        rows.append(row)
    columns = ["retraining", "finetuning", "n_finetune", "seeds"] + \
        [f"{w}_{c}" for w in ("last", "best") for c in ("diff", "sd", "lo", "hi")]
    if not rows:
        return pd.DataFrame(columns=columns)
    return _ordered(pd.DataFrame(rows, columns=columns))
