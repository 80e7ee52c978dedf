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


def tiny_roberta(folder, words, *, hidden=32, layers=2, seed=0):
    """Save a random RoBERTa for sequence classification (2 labels, ``layers`` layers of width
    ``hidden``) and a word-level tokenizer over ``words`` (built with the ``tokenizers`` library;
    RoBERTa's special ids <s> 0, <pad> 1, </s> 2) to ``folder``, loadable with ``--model folder``."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, RobertaConfig, RobertaForSequenceClassification

    specials = ["<s>", "<pad>", "</s>", "<unk>"]
    vocab = {w: i for i, w in enumerate(specials + sorted(set(words) - set(specials)))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>")
    cfg = RobertaConfig(vocab_size=len(vocab), hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2,
                        intermediate_size=2 * hidden, max_position_embeddings=160, num_labels=2, pad_token_id=1,
                        bos_token_id=0, eos_token_id=2)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = RobertaForSequenceClassification(cfg)
    model.save_pretrained(folder)
    fast.save_pretrained(folder)
    return folder


def convai_files(root, *, vocab=40, **sizes):
    """(data folder, model folder) under ``root``: PersonaChat files and persona maps from
    ``sims.write_convai`` and a tiny RoBERTa whose tokenizer knows every generated word."""
    import sims

    data = sims.write_convai(root / "convai", vocab=vocab, **sizes)
    words = [f"{p}{k}" for p in "abcp" for k in range(vocab)]
    return data, tiny_roberta(root / "roberta", words)
