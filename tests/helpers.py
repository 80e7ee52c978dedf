"""Statistics and instance builders shared by the tests."""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st


def mean_and_se(values):
    """Sample mean and its standard error."""
    values = np.asarray(values, dtype=float)
    return float(values.mean()), float(values.std(ddof=1) / np.sqrt(values.size))


def frob2(M):
    return float(np.sum(np.asarray(M) ** 2))


seeds = st.integers(min_value=0, max_value=2**32 - 1)


@st.composite
def recoverable_sizes(draw, max_k=3, max_d=12):
    """(d, k, T) with T >= 3 and d >= 3k: the regime of exact recovery (P5)."""
    k = draw(st.integers(1, max_k))
    d = draw(st.integers(3 * k, max(3 * k, max_d)))
    T = draw(st.integers(3, 5))
    return d, k, T


def examples(n: int) -> int:
    """A test's hypothesis budget: ``n`` examples under the default profiles (max_examples 100),
    scaled with the loaded profile, so that ``HYPOTHESIS_PROFILE=thorough`` really runs more."""
    from hypothesis import settings

    return max(1, round(n * settings.default.max_examples / 100))


# ------------------------------------------------------------------------------------------------
# The language experiment: a tiny RoBERTa and its tokenizer, built offline


def convai_files(root, *, vocab=40, **sizes):
    """(data folder, model folder) under ``root``: PersonaChat files and persona maps from
    ``sims.write_convai`` and a tiny RoBERTa whose tokenizer knows every generated word."""
    import sims

    data = sims.write_convai(root / "convai", vocab=vocab, **sizes)
    return data, sims.write_tiny_roberta(root / "roberta", vocab=vocab)
