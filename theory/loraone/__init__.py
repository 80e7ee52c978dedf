"""LoRA-One: the one-step full gradient, spectral initialisation and preconditioned fine-tuning.

Implements spec/loraone.md §1–§2 on numpy arrays (no I/O, randomness only through ``rng``).

Orientation (the paper's)
-------------------------
Rows are samples: ``X`` (N, d) inputs, ``Y`` (N, m) outputs, and ``Y ≈ X W`` with W (d, m). LoRA
adds ``A B`` with ``A`` (d, r) on the input side and ``B`` (r, m) on the output side:
``W = W0 + A B`` and the loss is ``L(A, B) = (1/2N)‖X(W0 + AB) − Y‖²``. Then
``∇_W L = Σ̂ (W − W♮)`` with ``Σ̂ = XᵀX/N``, ``∇_A L = ∇_W L Bᵀ`` and ``∇_B L = Aᵀ ∇_W L``.

Mapping to torch / PEFT: a ``torch.nn.Linear`` stores ``weight`` as out × in, i.e. ``W0ᵀ``, and PEFT
adds ``scaling · lora_B @ lora_A`` (out × in). Hence ``A = lora_Aᵀ`` (in × r) and ``B = lora_Bᵀ``
(r × out), with PEFT's ``scaling`` (``lora_alpha/r``, or ``lora_alpha/√r`` with rsLoRA) folded into
the factors here: the theory uses no scaling. To export: ``lora_A = A.T``, ``lora_B = B.T / scaling``.

In LoRA-ML's orientation (spec/theory.md, ``y = W x``, W out × in) a parameter ``Â`` corresponds to
``W0 = Âᵀ`` here, and a LoRA-One update ``A B`` to ``Δ = (A B)ᵀ``.

Sufficient statistics
---------------------
The linear loss depends on the data only through ``Σ̂ = XᵀX/N`` and ``XᵀY/N``, so
:func:`finetune_moments` (which :func:`finetune` and :func:`finetune_population` call) costs
O(d r (d + m)) per step whatever N is. Population mode is ``Σ̂ = I``, ``XᵀY/N = W♮``: the loss is
then ``½‖W0 + AB − W♮‖²``. Internally the quadratic is kept in square-root form
``½‖H(W0 + AB) − K‖²`` (``H = Σ̂^{1/2}``, ``K = H⁺ XᵀY/N``) so that residuals near an exact fit are
computed without cancellation (relative errors of 1e-15 are measurable).

All engines are batched: any leading axes of the statistics, ``W0`` and the factors broadcast, so
several κ or α (or runs) advance in one array operation per step.

Layout: ``_model`` (ground truths, the one-step gradient, the loss and the alignment metric), ``_init``
(initialisations) and ``_train`` (the fine-tuning engines); the public names are re-exported here.
"""

from .._lowrank import subspace_sin as subspace_sin
from ._init import loraga_init as loraga_init
from ._init import spectral_init as spectral_init
from ._init import spectral_init_code as spectral_init_code
from ._init import vanilla_init as vanilla_init
from ._model import LoraObjective as LoraObjective
from ._model import lora_objective as lora_objective
from ._model import one_step_gradient as one_step_gradient
from ._model import sample_low_rank as sample_low_rank
from ._model import subspace_alignment as subspace_alignment
from ._train import FinetuneResult as FinetuneResult
from ._train import finetune as finetune
from ._train import finetune_moments as finetune_moments
from ._train import finetune_population as finetune_population

__all__ = [
    "FinetuneResult",
    "LoraObjective",
    "finetune",
    "finetune_moments",
    "finetune_population",
    "lora_objective",
    "loraga_init",
    "one_step_gradient",
    "sample_low_rank",
    "spectral_init",
    "spectral_init_code",
    "subspace_alignment",
    "subspace_sin",
    "vanilla_init",
]
