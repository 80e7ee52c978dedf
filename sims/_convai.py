"""The paper's language experiment (spec/realdata.md §3): ConvAI2 / PersonaChat personas as tasks,
RoBERTa for sequence classification scoring (context, candidate) pairs, LoRA from peft, the four
retraining methods of :mod:`sims._peftml` with the ``"pairs"`` objective.

Data
----
- :func:`read_personachat` reads the "self_original" text format: numbered lines, the number
  restarting at 1 with each dialogue; ``your persona: …`` lines, then turns
  ``partner utterance<TAB>response<TAB><TAB>cand1|cand2|…`` (the response is among the
  candidates). A dialogue's persona key (:func:`persona_key`) is the sorted list of its persona
  sentences, each without its leading space and its last character. Under ``paper`` the file's
  last dialogue is not read (the authors' parser stores a dialogue when the next one starts, C3).
- :func:`read_persona_map` reads the genuine persona maps ``train_persona_map`` and
  ``valid_persona_map``: a pickle of a dict ``numpy.int32`` cluster id → list of members, each
  member a persona key (a sorted list of sentences without their last character).
- :func:`persona_clusters`: each distinct persona key, in order of first appearance, goes to the
  cluster one of whose members equals it (cluster 0 when none does), so a cluster's dialogues are
  grouped by persona, each persona's in file order; clusters with more than one dialogue are kept,
  cluster 0 dropped; ranked by their training turns (ties: the smaller id first), the first ``top``.
- Retraining: the ``n_train_personas`` (10) first clusters of the train file; the last
  ``val_dialogues`` (3) dialogues of each are its validation set. Test: the ``n_test_personas`` (10)
  first clusters of the valid file; the last ``eval_dialogues`` (2) dialogues of each are its
  evaluation set and all others train (``paper``: the best epoch is then chosen on the evaluation
  dialogues, C4); ``clean`` holds out the ``ft_val_dialogues`` (1) before them to choose it.
- Every turn is one example: the context is the utterances of both speakers up to the partner's
  current one, concatenated with no separator, without persona text; paired with each of
  ``n_candidates`` (20) candidates in the file's order. A pair is ``<s> context </s><s> candidate
  </s>``, context and candidate tokenised separately, not truncated: a pair longer than the model's
  positions is refused naming its dialogue (``clean``: the context is cut from the left).

Model: ``RobertaForSequenceClassification`` (2 labels) from a local folder (``local_files_only``),
wrapped so that a batch (B, C, L) of token ids gives (B, C, 2) logits (padding masked, trailing
padding trimmed per batch: RoBERTa's positions come from the padding mask, so trimming changes no
number). The head is ``model.classifier``; LoRA targets every Linear of the encoder.

Protocol: AdamW, batches of ``batch_size`` (8) contexts, one optimiser step per task batch, Σ_t
len_t steps per epoch for SR, LoRA-ML and last-layer-ML alike (len_t = ⌈N_t / 8⌉). SR visits the
tasks one after another (``paper``, C1) or in a shuffled interleaving of the same batches
(``clean``); LoRA-ML (per-task adapters and heads) and last-layer-ML (per-task heads) go round-robin
over the tasks that still have batches. The retraining schedule is linear with warm-up, from task
0's batch count len0 under ``paper`` (warm-up 0.1·len0·E, zero at 6.67·len0·E, the scheduler
stepped after the optimiser so the first step runs at lr 0: C2) and from the real step count under
``clean``. Reptile: one round per epoch, per task a copy takes ``reptile_inner_steps`` (20) steps of
a fresh constant-rate AdamW on that task's batches (an iterator made afresh each epoch, wrapping
around), then one outer AdamW step on (θ − θ_t)/T; outer schedule warm-up 10, zero at 667. The
retraining checkpoint is chosen by mean validation hits@1 (strict rise over a best that starts at
0). Each test persona is fine-tuned separately with a new random head: LoRA of rank r (head
trainable) or the head alone; AdamW with warm-up over one epoch's len_t steps, zero at 40·len_t.

Values of the sweep (one chunk = one value × one (seed, persona) trial by default):
``"<method> lora r=<r>"`` for every rank and method other than last-layer-ML, and
``"<method> last-layer"`` for every method other than LoRA-ML. Retraining is computed once per
(method, rank for LoRA-ML, seed) and process (the last ``len(seeds) + 1`` stay in memory; a method's
ranks are consecutive values), and kept on disk under ``checkpoint_dir`` when one is
given (the command line uses the store folder), so chunks of other personas and ranks reuse it.

Table: ``dataset, preset, phase, retraining, finetuning, rank, seed, persona, cluster, epoch, split,
accuracy`` (accuracy = hits@1). Retraining rows (``phase == "retrain"``, ``persona == -1``) are
stored once per (value, seed), in the chunk of persona 0.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
import pandas as pd

from theory.validation import MAX_COUNT, check_bool, check_choice, check_int, check_real, check_rng, check_values

from ._config import SweepConfig
from ._fingerprint import check_manifest, file_manifest, manifest_digest, record_manifest
from ._peftml import (
    FINETUNING_SCHEMES,
    RETRAINING_METHODS,
    BatchLoader,
    LoraSpec,
    OptimSpec,
    ReptileSpec,
    _check_device,
    _check_history,
    _reset,
    _seeded,
    _torch,
    best_and_last,
    finetune,
    retrain,
)
from ._store import atomic_write

__all__ = ["write_tiny_roberta", "ConvAIConfig", "CONVAI_HELP", "CONVAI_RANKS", "read_personachat", "read_persona_map",
           "persona_key", "persona_clusters", "write_convai", "simulate_convai_chunk", "convai_summary",
           "check_convai_inputs"]

CONVAI_RANKS = (1, 4, 8, 12, 16)
DATA_FILES = ("train_self_original.txt", "valid_self_original.txt")
MAP_FILES = ("train_persona_map", "valid_persona_map")
CONVAI_HELP = ("--data is the ConvAI2 folder holding train_self_original.txt and valid_self_original.txt "
               "(PersonaChat 'self_original' text: numbered lines, 'your persona: ...' lines, then "
               "'utterance<TAB>response<TAB><TAB>cand1|...|cand20' turns); --persona-map is a persona-map pickle "
               "(a dict of numpy.int32 cluster ids to lists of members, each member the sorted list of a persona's "
               "sentences without their last character), one file for both splits or a folder with "
               "train_persona_map and valid_persona_map; --model is a local folder of a RoBERTa "
               "checkpoint with its tokenizer (config.json with model_type 'roberta', e.g. roberta-base "
               "saved by save_pretrained)")
_LINE = re.compile(r"^(\d+) (.*)$")
_PERSONA = "your persona:"


# ------------------------------------------------------------------------------------------------
# Reading


def _path(value, name, func, flag):
    if not isinstance(value, (str, os.PathLike)) or str(value) == "":
        raise ValueError(f"{flag} (the {name!r} parameter of {func}) must be a path. Got {value!r} instead.")
    return Path(value)


def read_personachat(path, *, keep_last: bool = True) -> list[dict]:
    """The dialogues of one PersonaChat "self_original" file, in file order.

    Each dialogue is ``{"persona": key, "turns": ((utterance, response, (candidate, …)), …),
    "line": n}``, where ``key`` is :func:`persona_key` of its persona lines (sorted sentences, the
    text after ``your persona:`` without its leading space and its last character) and ``n`` the
    line of the file it starts at.

    Parameters
    ----------
    path : str or pathlib.Path
        A ``*_self_original.txt`` file.
    keep_last : bool
        Keep the file's last dialogue. The authors' parser stores a dialogue when the next one
        starts, so it never reads the last one (quirk C3): ``False`` reproduces that.

    Raises
    ------
    ValueError
        The file is missing, or a line is not in the format (the message names the line).

    Examples
    --------
    >>> import tempfile
    >>> tmp = tempfile.TemporaryDirectory()          # removed when the example ends
    >>> data = write_convai(tmp.name, train_sizes=(3, 2), valid_sizes=(2, 2), turns=1)
    >>> dialogues = read_personachat(data / "train_self_original.txt")
    >>> len(dialogues), len(dialogues[0]["turns"]), len(dialogues[0]["turns"][0][2])   # 3 + 2 + 4 extra; 20 candidates
    (9, 1, 20)
    >>> len(read_personachat(data / "train_self_original.txt", keep_last=False))       # C3: the last one unread
    8
    """
    func = "read_personachat"
    path = _path(path, "path", func, "--data")
    keep_last = check_bool(keep_last, "keep_last", func)
    if not path.is_file():
        raise ValueError(f"--data (the 'path' parameter of {func}): {path} is not a file. {CONVAI_HELP}.")
    dialogues = []
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"--data (the 'path' parameter of {func}): {path} cannot be read as UTF-8 text "
                         f"({type(err).__name__}). {CONVAI_HELP}.") from None
    for i, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        m = _LINE.match(line)
        if m is None:
            raise ValueError(f"--data (the 'path' parameter of {func}): {path} line {i} does not start with a "
                             f"line number. {CONVAI_HELP}.")
        number, body = int(m.group(1)), m.group(2)
        if number == 1 or not dialogues:
            dialogues.append({"persona": [], "turns": [], "line": i})
        d = dialogues[-1]
        if body.startswith(_PERSONA):
            d["persona"].append(body[len(_PERSONA):])
            continue
        parts = body.split("\t")
        if len(parts) < 4 or not parts[3]:
            raise ValueError(f"--data (the 'path' parameter of {func}): {path} line {i} is neither a persona line "
                             f"nor a turn 'utterance<TAB>response<TAB><TAB>candidates'. {CONVAI_HELP}.")
        cands = tuple(parts[3].split("|"))
        if parts[1] not in cands:
            raise ValueError(f"--data (the 'path' parameter of {func}): {path} line {i}: the response is not among "
                             f"its candidates. {CONVAI_HELP}.")
        d["turns"].append((parts[0], parts[1], cands))
    if not keep_last:
        dialogues = dialogues[:-1]
    return [{"persona": persona_key(d["persona"]), "turns": tuple(d["turns"]), "line": d["line"]} for d in dialogues]


def persona_key(sentences) -> tuple:
    """The key a persona is matched by: each sentence without one leading space and without its
    last character (normally the "."), no other change (no lower-casing, no whitespace collapsed),
    sorted. Persona-map members are lists of exactly these strings.

    Parameters
    ----------
    sentences : sequence of str
        The text after ``your persona:`` of each persona line.

    Examples
    --------
    >>> persona_key((" i like dogs.", " my favourite colour is blue."))
    ('i like dogs', 'my favourite colour is blue')
    >>> persona_key((" zebras are fine.", " apples."))      # sorted
    ('apples', 'zebras are fine')
    """
    if isinstance(sentences, (str, bytes)) or not hasattr(sentences, "__iter__"):
        raise ValueError(f"The 'sentences' parameter of persona_key must be a sequence of strings. "
                         f"Got {type(sentences).__name__}.")
    sentences = list(sentences)
    if not all(isinstance(s, str) for s in sentences):
        raise ValueError("The 'sentences' parameter of persona_key must hold strings. Got "
                         f"{type(next(s for s in sentences if not isinstance(s, str))).__name__}.")
    return tuple(sorted((s[1:] if s.startswith(" ") else s)[:-1] for s in sentences))


def read_persona_map(path) -> dict[int, list[tuple]]:
    """A persona map in the genuine format: a pickle of one dict whose keys are integer cluster ids
    (``numpy.int32`` in the genuine files) and whose values are lists of members, each member a
    list of str (a persona's sentences, sorted, last character removed). Returned as
    ``{int id: [member as a tuple of str, …]}`` with the members in file order.

    Parameters
    ----------
    path : str or pathlib.Path
        The pickle file (``train_persona_map``, ``valid_persona_map``: no extension).

    Raises
    ------
    ValueError
        The file is missing or does not hold such a dict.

    Examples
    --------
    >>> import tempfile
    >>> tmp = tempfile.TemporaryDirectory()          # removed when the example ends
    >>> data = write_convai(tmp.name, train_sizes=(3, 2), valid_sizes=(2, 2), turns=1)
    >>> clusters = read_persona_map(data / "train_persona_map")
    >>> sorted(clusters), len(clusters[1]), clusters[3]     # cluster 0, the two clusters, a one-dialogue cluster
    ([0, 1, 2, 3], 2, [('train lonely persona',)])
    """
    func = "read_persona_map"
    path = _path(path, "path", func, "--persona-map")
    if not path.is_file():
        raise ValueError(f"--persona-map (the 'path' parameter of {func}): {path} is not a file. {CONVAI_HELP}.")
    try:
        with open(path, "rb") as fh:
            raw = pickle.load(fh)
        if not isinstance(raw, dict):
            raise TypeError
        out = {}
        for k, v in raw.items():
            if isinstance(k, (bool, np.bool_)) or not isinstance(k, (int, np.integer)):
                raise TypeError
            if not isinstance(v, list) or not all(isinstance(m, list) and all(isinstance(s, str) for s in m)
                                                  for m in v):
                raise TypeError
            out[int(k)] = [tuple(m) for m in v]
    except Exception:
        raise ValueError(f"--persona-map (the 'path' parameter of {func}): {path} is not a persona map (a pickled "
                         f"dict of integer cluster ids to lists of members, each a list of str). "
                         f"{CONVAI_HELP}.") from None
    return out


def persona_clusters(dialogues, persona_map, *, top: int = 10, held_out: int = 0) -> list[tuple[int, list]]:
    """(cluster id, dialogues) of the ``top`` clusters with the most training turns.

    Each distinct persona key, in order of its first appearance among ``dialogues``, goes to the
    cluster one of whose members equals it, or to cluster 0 when none does; a cluster's dialogues
    are therefore grouped by persona, each persona's dialogues in file order. Clusters with more
    than one dialogue are kept, then cluster 0 is dropped (a genuine cluster and the fallback of
    unmatched personas at once). They are ranked by their training turns (the turns of all their
    dialogues but the last ``held_out``), most first; ties by cluster id, smaller first.

    Parameters
    ----------
    dialogues : list of dict
        Dialogues of :func:`read_personachat`.
    persona_map : dict
        A persona map of :func:`read_persona_map` (cluster id → members).
    top : int >= 1
        The most clusters returned.
    held_out : int >= 0
        Dialogues at the end of each cluster that do not train (they do not count in the ranking).

    Examples
    --------
    >>> import tempfile
    >>> tmp = tempfile.TemporaryDirectory()          # removed when the example ends
    >>> data = write_convai(tmp.name, train_sizes=(3, 2), valid_sizes=(2, 2), turns=1)
    >>> dialogues = read_personachat(data / "train_self_original.txt")
    >>> clusters = persona_clusters(dialogues, read_persona_map(data / "train_persona_map"))
    >>> [(cid, len(ds)) for cid, ds in clusters]      # cluster 0 and the one-dialogue cluster 3 dropped
    [(1, 3), (2, 2)]
    """
    func = "persona_clusters"
    if isinstance(dialogues, (str, bytes, dict)) or not hasattr(dialogues, "__iter__"):
        raise ValueError(f"The 'dialogues' parameter of {func} must be a list of dialogues (read_personachat). "
                         f"Got {type(dialogues).__name__}.")
    if not isinstance(persona_map, dict):
        raise ValueError(f"The 'persona_map' parameter of {func} must be a dict (read_persona_map). "
                         f"Got {type(persona_map).__name__}.")
    top = check_int(top, "top", func, low=1, high=MAX_COUNT)
    held_out = check_int(held_out, "held_out", func, low=0, high=MAX_COUNT)
    where: dict = {}                            # member -> cluster (the first cluster of the map holding it)
    for cid, ms in persona_map.items():
        if isinstance(ms, (str, bytes)) or not hasattr(ms, "__iter__"):
            raise ValueError(f"The 'persona_map' parameter of {func} must map cluster ids to lists of members. "
                             f"Got {type(ms).__name__} for cluster {cid!r}.")
        for m in ms:
            where.setdefault(tuple(m), cid)
    by_persona: dict = {}
    for d in dialogues:
        if not isinstance(d, dict) or "persona" not in d or "turns" not in d:
            raise ValueError(f"The 'dialogues' parameter of {func} must hold dialogues of read_personachat. "
                             f"Got an item of type {type(d).__name__}.")
        by_persona.setdefault(tuple(d["persona"]), []).append(d)
    groups: dict = {}
    for key, ds in by_persona.items():          # first appearance order, as a dict keeps insertion order
        cid = where.get(key, 0)
        groups.setdefault(int(cid), []).extend(ds)
    kept = [(cid, ds) for cid, ds in groups.items() if len(ds) > 1 and cid != 0]
    kept.sort(key=lambda item: (-sum(len(d["turns"]) for d in item[1][:max(0, len(item[1]) - held_out)]), item[0]))
    return kept[:top]


def _map_paths(persona_map) -> tuple[Path, Path]:
    path = _path(persona_map, "persona_map", "check_convai_inputs", "--persona-map")
    if path.is_dir():
        found = []
        for name in MAP_FILES:
            cands = [path / name, path / f"{name}.pkl"]
            hit = next((c for c in cands if c.is_file()), None)
            if hit is None:
                raise ValueError(f"--persona-map (the 'persona_map' parameter) {path} lacks {name}. {CONVAI_HELP}.")
            found.append(hit)
        return found[0], found[1]
    if not path.is_file():
        raise ValueError(f"--persona-map (the 'persona_map' parameter) {path} is neither a persona-map file nor "
                         f"a folder of them. {CONVAI_HELP}.")
    return path, path


def _data_paths(data) -> tuple[Path, Path]:
    path = _path(data, "data", "check_convai_inputs", "--data")
    if not path.is_dir():
        raise ValueError(f"--data (the 'data' parameter) {path} is not a folder. {CONVAI_HELP}.")
    missing = [n for n in DATA_FILES if not (path / n).is_file()]
    if missing:
        raise ValueError(f"--data (the 'data' parameter) {path} lacks {', '.join(missing)}. {CONVAI_HELP}.")
    return path / DATA_FILES[0], path / DATA_FILES[1]


def _check_model_path(model) -> Path:
    path = _path(model, "model", "check_convai_inputs", "--model")
    cfg = path / "config.json"
    if not cfg.is_file():
        raise ValueError(f"--model (the 'model' parameter) {path} is not a RoBERTa checkpoint folder (no "
                         f"config.json). {CONVAI_HELP}.")
    try:
        kind = json.loads(cfg.read_text()).get("model_type")
    except (OSError, ValueError, AttributeError):
        kind = None
    if kind != "roberta":
        raise ValueError(f"--model (the 'model' parameter) {path} is not a RoBERTa checkpoint: its config.json "
                         f"has model_type {kind!r}, "
                         f"expected 'roberta'. {CONVAI_HELP}.")
    weights = [p for p in path.iterdir() if p.suffix in (".safetensors", ".bin")]
    if not weights:
        raise ValueError(f"--model (the 'model' parameter) {path} has no weights (*.safetensors or *.bin). "
                         f"{CONVAI_HELP}.")
    if not any((path / n).is_file() for n in ("tokenizer.json", "vocab.json")):
        raise ValueError(f"--model (the 'model' parameter) {path} has no tokenizer (tokenizer.json, or vocab.json "
                         f"and merges.txt). "
                         f"{CONVAI_HELP}.")
    return path


# ------------------------------------------------------------------------------------------------
# Writing files in the real formats (tests, offline demos)


def write_convai(root, *, train_sizes=(6, 5, 5, 4), valid_sizes=(6, 5, 4), turns=3, n_candidates: int = 20,
                 vocab: int = 40, rng=0) -> Path:
    """Write PersonaChat "self_original" files and persona maps in the genuine formats under
    ``root``: ``train_self_original.txt``, ``valid_self_original.txt``, ``train_persona_map`` and
    ``valid_persona_map`` (pickle protocol 4 of a dict with ``numpy.int32`` keys in shuffled order,
    each value a list of members, each member the sorted list of a persona's sentences without
    their last character; no file extension).

    Cluster ``c`` (ids 1, 2, …) of a split holds ``sizes[c - 1]`` dialogues, written interleaved
    across clusters; each cluster has two personas (of two sentences each, written in a random
    order; its dialogues alternate between them). Beside them each file has 2 dialogues of cluster
    0, 1 dialogue of a cluster of its own (one dialogue: dropped) and 1 dialogue whose persona is in
    no cluster, all near the start: the file's last dialogue is a cluster's (the one quirk C3
    loses). A learnable task: utterances are four words ``aK`` and a ".", distractors words ``bK``,
    and the true response is three words ``cK``, one word of the partner's utterance and a "." (so
    it repeats a word of the context, and its words differ in kind from the distractors': a bag of
    words ranks it first).

    Parameters
    ----------
    root : str or pathlib.Path
        The folder to write (created if missing).
    train_sizes, valid_sizes : sequence of int >= 1
        Dialogues per cluster of the training and the validation split.
    turns : int >= 1, or a sequence of them
        Turns per dialogue; a sequence gives cluster ``c``'s dialogues ``turns[c - 1]`` turns (in
        both splits; at least as many entries as clusters), the other dialogues ``turns[0]``.
    n_candidates : int >= 2
        Candidates per turn (the true response among them).
    vocab : int >= 2
        Words of each kind (``aK``, ``bK``, ``cK`` for K < vocab).
    rng : numpy.random.Generator, int or None
        Source of the words and the orders.

    Examples
    --------
    >>> import tempfile
    >>> tmp = tempfile.TemporaryDirectory()          # removed when the example ends
    >>> data = write_convai(tmp.name, train_sizes=(3, 2), valid_sizes=(2, 2), turns=1)
    >>> sorted(p.name for p in data.iterdir())
    ['train_persona_map', 'train_self_original.txt', 'valid_persona_map', 'valid_self_original.txt']
    >>> import pickle
    >>> raw = pickle.loads((data / "train_persona_map").read_bytes())
    >>> type(next(iter(raw))).__name__, sorted(int(k) for k in raw)
    ('int32', [0, 1, 2, 3])
    """
    func = "write_convai"
    root = _path(root, "root", func, "root")
    for name, sizes in (("train_sizes", train_sizes), ("valid_sizes", valid_sizes)):
        check_values(sizes, name, func, lambda v: check_int(v, name, func, low=1, high=10_000), least=1)
    K_max = max(len(tuple(train_sizes)), len(tuple(valid_sizes)))
    if isinstance(turns, (int, np.integer)) and not isinstance(turns, (bool, np.bool_)):
        per = (check_int(turns, "turns", func, low=1, high=1000),) * K_max
    else:
        per = check_values(turns, "turns", func, lambda v: check_int(v, "turns", func, low=1, high=1000), least=1)
        if len(per) < K_max:
            raise ValueError(f"The 'turns' parameter of {func} must be an int or hold one int per cluster (at least "
                             f"{K_max}). Got {len(per)}.")
    n_candidates = check_int(n_candidates, "n_candidates", func, low=2, high=1000)
    vocab = check_int(vocab, "vocab", func, low=2, high=100_000)
    rng = check_rng(rng, func)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ValueError(f"The 'root' parameter of {func} must be a folder that can be created and written. "
                         f"Got {str(root)!r}: {err.strerror}.") from None

    def words(prefix, n):
        return " ".join(f"{prefix}{k}" for k in rng.integers(0, vocab, size=n))

    for split, sizes in (("train", tuple(train_sizes)), ("valid", tuple(valid_sizes))):
        K = len(sizes)
        personas = {c: [[f"{split} persona {c} {v} {j} likes {words('p', 2)}." for j in range(2)]
                        for v in range(2)] for c in range(1, K + 1)}
        extra = {0: [[f"{split} zero persona {v}."] for v in range(2)], K + 1: [[f"{split} lonely persona."]]}
        stray = [f"{split} stray persona."]
        order = []
        left = dict(enumerate(sizes, start=1))
        while any(left.values()):
            for c in range(1, K + 1):
                if left[c]:
                    order.append((c, personas[c][left[c] % 2]))
                    left[c] -= 1
        order[1:1] = [(0, extra[0][0]), (K + 1, extra[K + 1][0])]
        order[4:4] = [(0, extra[0][1]), (0, stray)]
        lines = []
        for c, persona in order:
            n = 1
            for sentence in rng.permutation(persona):       # the file's order is not the key's
                lines.append(f"{n} your persona: {sentence}")
                n += 1
            for _ in range(per[c - 1] if 1 <= c <= K else per[0]):
                utterance = words("a", 4)
                true = words("c", 3) + " " + rng.choice(utterance.split()) + " ."
                cands = [words("b", 4) + " ." for _ in range(n_candidates - 1)] + [true]
                lines.append(f"{n} {utterance} .\t{true}\t\t{'|'.join(cands)}")
                n += 1
        (root / f"{split}_self_original.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
        members = {c: [sorted(s[:-1] for s in p) for p in ps] for c, ps in {**personas, **extra}.items()}
        ids = list(members)
        cmap = {np.int32(ids[i]): members[ids[i]] for i in rng.permutation(len(ids))}
        with open(root / f"{split}_persona_map", "wb") as fh:
            pickle.dump(cmap, fh, protocol=4)
    return root


def write_tiny_roberta(folder, *, vocab: int = 40, hidden: int = 32, layers: int = 2, seed: int = 0) -> Path:
    """Save a random RoBERTa for sequence classification (2 labels; ``layers`` layers of width
    ``hidden``) with a word-level tokenizer that knows every word :func:`write_convai` writes for the
    same ``vocab`` (built offline with the ``tokenizers`` library; RoBERTa's special ids <s> 0,
    <pad> 1, </s> 2), loadable as ``--model folder``: the offline stand-in for roberta-base.

    Parameters
    ----------
    folder : str or pathlib.Path
        The folder to write (created if missing).
    vocab : int >= 2
        As in :func:`write_convai`: the tokenizer knows its words.
    hidden : even int >= 2
        Width of the layers (two attention heads).
    layers : int >= 1
        Transformer layers.
    seed : int >= 0
        Seed of the random weights.

    Examples
    --------
    >>> import tempfile
    >>> tmp = tempfile.TemporaryDirectory()          # removed when the example ends
    >>> model = write_tiny_roberta(tmp.name, vocab=5)
    >>> sorted(p.name for p in model.iterdir())
    ['config.json', 'model.safetensors', 'tokenizer.json', 'tokenizer_config.json']
    """
    func = "write_tiny_roberta"
    folder = _path(folder, "folder", func, "folder")
    vocab = check_int(vocab, "vocab", func, low=2, high=100_000)
    hidden = check_int(hidden, "hidden", func, low=2, high=4096)
    if hidden % 2:
        raise ValueError(f"The 'hidden' parameter of {func} must be even (2 attention heads). Got {hidden}.")
    layers = check_int(layers, "layers", func, low=1, high=64)
    seed = check_int(seed, "seed", func, low=0, high=2**63 - 1)
    torch = _torch()
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, RobertaConfig, RobertaForSequenceClassification

    specials = ["<s>", "<pad>", "</s>", "<unk>"]
    words = sorted({f"{p}{k}" for p in "abcp" for k in range(vocab)}) + ["."]
    table = {w: i for i, w in enumerate(specials + words)}
    tok = Tokenizer(models.WordLevel(table, unk_token="<unk>"))
    # punctuation splits off: a context is its utterances concatenated without a separator ("a1 .a2")
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>")
    cfg = RobertaConfig(vocab_size=len(table), hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2,
                        intermediate_size=2 * hidden, max_position_embeddings=160, num_labels=2, pad_token_id=1,
                        bos_token_id=0, eos_token_id=2)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ValueError(f"The 'folder' parameter of {func} must be a folder that can be created and written. "
                         f"Got {str(folder)!r}: {err.strerror}.") from None
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = RobertaForSequenceClassification(cfg)
    model.save_pretrained(folder)
    fast.save_pretrained(folder)
    return folder


# ------------------------------------------------------------------------------------------------
# The config


def _doc(text, default=dataclasses.MISSING):
    return field(default=default, metadata={"doc": text})


_PATHS = ("data", "persona_map", "model", "checkpoint_dir")


@dataclass(frozen=True)
class ConvAIConfig(SweepConfig):
    """The language experiment, frozen and validated; chunks are one value (method × fine-tuning ×
    rank) × ``chunk_trials`` (seed, persona) trials.

    Build it with ``sims.realdata_sweep("convai", data=..., persona_map=..., model=...)``, which
    checks the three inputs first.

    Examples
    --------
    >>> import tempfile
    >>> from sims import realdata_sweep
    >>> tmp = tempfile.TemporaryDirectory()          # removed when the example ends
    >>> root = tmp.name
    >>> data = write_convai(f"{root}/data", train_sizes=(5, 4), valid_sizes=(4, 4), turns=2, n_candidates=4)
    >>> cfg = realdata_sweep("convai", data=data, persona_map=data, model=write_tiny_roberta(f"{root}/roberta"),
    ...                      methods=("LoRA-ML",), finetuning=("lora",), ranks=(2,), seeds=(0,), n_train_personas=2,
    ...                      n_test_personas=1, n_candidates=4, retrain_epochs=1, ft_epochs=1)
    >>> cfg.values, cfg.runs                 # (method, fine-tuning, rank); seeds x test personas
    (('LoRA-ML lora r=2',), 1)
    """

    #: 2: the spec's protocol of step budgets, schedules, selection and inputs (numbers changed)
    engine_version: ClassVar[int] = 2

    data: str = _doc("folder with train_self_original.txt and valid_self_original.txt (not part of the key)", "")
    persona_map: str = _doc("persona-map pickle, or a folder of train_/valid_persona_map.pkl (not part of the key)",
                            "")
    model: str = _doc("local RoBERTa checkpoint folder with its tokenizer (not part of the key)", "")
    fingerprint: str = _doc("digest of the names, sizes and SHA-256 hashes of the data, persona-map and model files, "
                            "computed when the config is made (a value passed in is replaced); part of the key: "
                            "other files, other results", "")
    preset: str = _doc("'paper' (the authors' quirks C1-C4 of spec §3: SR visits the tasks in order, the "
                       "retraining schedule from the first task's batch count, the file's last dialogue unread, "
                       "the best fine-tuning epoch chosen on the test dialogues) or 'clean' (each fixed)", "clean")
    methods: tuple = _doc("retraining methods (a subset of SR, LoRA-ML, last-layer-ML, Reptile)", RETRAINING_METHODS)
    ranks: tuple = _doc("LoRA ranks (retraining adapters of LoRA-ML and the fine-tuning adapter)", CONVAI_RANKS)
    finetuning: tuple = _doc("fine-tuning schemes ('lora', 'last-layer')", FINETUNING_SCHEMES)
    seeds: tuple = _doc("seeds", (0, 1, 2, 3, 4))
    n_train_personas: int = _doc("retraining personas T (largest train clusters)", 10)
    n_test_personas: int = _doc("test personas (largest valid clusters)", 10)
    val_dialogues: int = _doc("last dialogues of each retraining persona used for validation", 3)
    eval_dialogues: int = _doc("last dialogues of each test persona used for evaluation", 2)
    ft_val_dialogues: int = _doc("clean: dialogues before the evaluation ones that choose the best fine-tuning "
                                 "epoch (paper: none, the epoch is chosen on the evaluation dialogues, C4)", 1)
    n_candidates: int = _doc("candidates per context (the true one and the first others)", 20)
    max_length: int = _doc("the most tokens of a <s> context </s><s> candidate </s> pair (0: the model's "
                           "positions); a longer pair is refused naming its dialogue (paper) or its context cut "
                           "from the left (clean)", 0)
    batch_size: int = _doc("contexts per batch (x n_candidates pairs), retraining and fine-tuning", 8)
    micro_batch: int = _doc("contexts per backpropagated slice of a batch (gradient accumulation, for a GPU or "
                            "CPU that cannot hold a whole batch's activations; other dropout draws, so part of "
                            "the key); 0: the whole batch", 0)
    retrain_epochs: int = _doc("retraining epochs (SR, LoRA-ML, last-layer-ML)", 10)
    retrain_lr: float = _doc("retraining AdamW learning rate (linear schedule with warm-up)", 5e-5)
    retrain_wd: float = _doc("AdamW weight decay of retraining and Reptile", 0.01)
    warmup: float = _doc("retraining warm-up: clean, this fraction of the real steps, then linear to 0 at the "
                         "last; paper (C2), warmup x len0 x epochs steps, 0 at 6.67 x len0 x epochs (len0: task "
                         "0's batches)", 0.1)
    reptile_epochs: int = _doc("Reptile outer epochs", 10)
    reptile_lr: float = _doc("Reptile outer AdamW learning rate", 1e-4)
    reptile_inner_steps: int = _doc("Reptile inner AdamW steps per task", 20)
    reptile_inner_lr: float = _doc("Reptile inner AdamW learning rate", 5e-5)
    lora_alpha: float = _doc("LoRA alpha (scaling alpha / r)", 16.0)
    lora_dropout: float = _doc("LoRA dropout", 0.1)
    ft_epochs: int = _doc("fine-tuning epochs", 10)
    ft_lr: float = _doc("fine-tuning AdamW learning rate (linear warm-up over one epoch's steps len_t, 0 at "
                        "40 len_t)", 1e-4)
    ft_wd: float = _doc("fine-tuning AdamW weight decay", 0.01)
    chunk_trials: int = _doc("(seed, persona) trials per stored chunk (1: one chunk per method, rank, seed, persona)",
                             1)
    checkpoint_dir: str = _doc("folder where retrained models are kept for reuse across chunks (not part of the key)",
                               "")
    data_files: tuple = _doc("(name, size, SHA-256, mtime_ns) of each file read, computed with the fingerprint; a "
                             "chunk refuses to run when a file no longer matches (not part of the key)", ())

    def __post_init__(self):
        func = "ConvAIConfig"
        check_choice(self.preset, "preset", func, ("paper", "clean"))
        for name, allowed in (("methods", RETRAINING_METHODS), ("finetuning", FINETUNING_SCHEMES)):
            items = getattr(self, name)
            items = (items,) if isinstance(items, str) else tuple(items) if hasattr(items, "__iter__") else items
            if not isinstance(items, tuple) or not items or len(set(map(str, items))) != len(items):
                raise ValueError(f"The {name!r} parameter of {func} must be a non-empty sequence without repeats. "
                                 f"Got {items!r}.")
            for item in items:
                check_choice(item, name, func, allowed)
            object.__setattr__(self, name, tuple(sorted(items, key=allowed.index)))
        for name, lo, hi in (("seeds", 0, 2**63 - 1), ("ranks", 1, 4096)):
            items = getattr(self, name)
            items = (items,) if isinstance(items, (int, np.integer)) else check_values(items, name, func, lambda v: v)
            items = tuple(check_int(v, name, func, low=lo, high=hi) for v in items)
            if not items or len(set(items)) != len(items):
                raise ValueError(f"The {name!r} parameter of {func} must be a non-empty sequence of distinct ints. "
                                 f"Got {items!r}.")
            object.__setattr__(self, name, items)
        for name, lo, hi in (("n_train_personas", 1, 10_000), ("n_test_personas", 1, 10_000),
                             ("val_dialogues", 1, 10_000), ("eval_dialogues", 1, 10_000),
                             ("ft_val_dialogues", 1, 10_000), ("n_candidates", 2, 10_000), ("max_length", 0, 65_536),
                             ("batch_size", 1, 1_000_000), ("micro_batch", 0, 1_000_000),
                             ("retrain_epochs", 0, 100_000), ("reptile_epochs", 0, 100_000),
                             ("reptile_inner_steps", 0, 100_000), ("ft_epochs", 0, 100_000),
                             ("chunk_trials", 0, MAX_COUNT)):
            object.__setattr__(self, name, check_int(getattr(self, name), name, func, low=lo, high=hi))
        for name, hi in (("retrain_lr", None), ("retrain_wd", None), ("warmup", 1.0), ("reptile_lr", None),
                         ("reptile_inner_lr", None), ("lora_alpha", None), ("lora_dropout", 1.0), ("ft_lr", None),
                         ("ft_wd", None)):
            object.__setattr__(self, name, check_real(getattr(self, name), name, func, low=0.0, high=hi))
        if 0 < self.max_length < 8:
            raise ValueError(f"The 'max_length' parameter of {func} must be 0 (the model's positions) or an int in "
                             f"[8, 65536]. Got {self.max_length} instead.")
        if self.lora_alpha == 0:
            raise ValueError(f"The 'lora_alpha' parameter of {func} must be a real number > 0. Got 0.0 instead.")
        for name in _PATHS + ("fingerprint",):
            value = getattr(self, name)
            if isinstance(value, os.PathLike):
                value = str(value)
            if not isinstance(value, str):
                raise ValueError(f"The {name!r} parameter of {func} must be a path (str). Got {value!r} instead.")
            object.__setattr__(self, name, value)
        # The files read are part of the key: fingerprint them now, in the process that plans the run
        # (hashed once per process); the chunks carry the manifest and check it before they run. A
        # config that lacks one of the three paths gets no fingerprint, and its chunks refuse to run.
        paths = (self.data, self.persona_map, self.model)
        record_manifest(self, (lambda: _convai_files(*paths)) if all(paths) else None, func)
        if not self.values:
            raise ValueError(f"The 'methods' parameter of {func} gives no table with the fine-tuning schemes "
                             f"{self.finetuning!r}: LoRA tables need SR, LoRA-ML or Reptile, the last-layer table "
                             f"SR, last-layer-ML or Reptile. Got {self.methods!r}.")

    # SweepConfig's protocol: values (method × scheme × rank) × runs (seed × persona).
    @property
    def values(self) -> tuple:
        out = []
        if "lora" in self.finetuning:       # method-major: a method's ranks in a row reuse its retraining
            out += [f"{m} lora r={r}" for m in self.methods if m != "last-layer-ML" for r in self.ranks]
        if "last-layer" in self.finetuning:
            out += [f"{m} last-layer" for m in self.methods if m != "LoRA-ML"]
        return tuple(out)

    @property
    def runs(self) -> int:
        return len(self.seeds) * self.n_test_personas

    @property
    def vary(self) -> str:
        return "retraining"

    def value_spec(self, value_index: int) -> tuple[str, str, int]:
        """(retraining method, fine-tuning scheme, rank; 0 for last-layer) of one value."""
        label = self.values[value_index]
        method, scheme, *rest = label.split(" ")
        return method, scheme, int(rest[0][2:]) if rest else 0

    def trial(self, t: int) -> tuple[int, int]:
        """(seed, persona index) of trial ``t``."""
        return self.seeds[t // self.n_test_personas], t % self.n_test_personas

    def chunk_cost(self, value_index: int, trials) -> float:
        return float(len(trials)) * self.ft_epochs

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        return d

    @property
    def key(self) -> str:
        """Content hash of what determines the numbers, the files read included (their
        ``fingerprint``); not the chunking, not where the files are."""
        d = self.to_dict()
        for name in ("chunk_trials", "data_files") + _PATHS:
            d.pop(name)
        return hashlib.sha256(json.dumps(d, sort_keys=True, default=list).encode()).hexdigest()[:16]

    def retrain_key(self, method: str, rank: int, seed: int) -> str:
        """Names one retraining: what it depends on (not the fine-tuning, not the other methods)."""
        d = self.to_dict()
        for name in ("chunk_trials", "methods", "ranks", "finetuning", "seeds", "n_test_personas", "eval_dialogues",
                     "ft_val_dialogues", "ft_epochs", "ft_lr", "ft_wd", "data_files") + _PATHS:
            d.pop(name)
        d.update(method=method, rank=rank if method == "LoRA-ML" else 0, seed=int(seed),
                 engine=self.engine_version)
        return hashlib.sha256(json.dumps(d, sort_keys=True, default=list).encode()).hexdigest()[:24]

    def check_data(self) -> None:
        """Refuse to run on files other than the config was made from (a data, persona-map or model
        file changed, added or removed since): its keys (store folder, retrained checkpoints) name
        the files it fingerprinted then. Cheap: a file whose size and modification time are the
        recorded ones is not read again.

        Raises
        ------
        ValueError
            Naming the flag (``--data``, ``--persona-map``, ``--model``) and the file that changed.
        """
        check_manifest(_convai_files(self.data, self.persona_map, self.model), self.data_files,
                       "--data/--persona-map/--model (the 'data', 'persona_map' and 'model' parameters of ConvAIConfig)")


def _convai_files(data, persona_map, model) -> list:
    """``[(relative name, path)]`` of every file the experiment reads: the two dialogue files
    (``data/…``), the persona map(s) (``persona_map/…``) and every file of the model folder, its
    tokenizer included (``model/…``); checked as :func:`check_convai_inputs` says."""
    files = [(f"data/{p.name}", p) for p in _data_paths(data)]
    files += [(f"persona_map/{p.name}", p) for p in dict.fromkeys(_map_paths(persona_map))]
    mpath = _check_model_path(model)
    files += [(f"model/{p.name}", p) for p in sorted(mpath.iterdir()) if p.is_file()]
    return files


def check_convai_inputs(data, persona_map, model) -> str:
    """Check the three inputs of the language experiment before any work (the files exist and have
    the expected form: the model folder is a RoBERTa checkpoint with weights and a tokenizer);
    return their fingerprint (names, sizes and SHA-256 hashes of the files, each read once per
    process), which :class:`ConvAIConfig` keys on.

    Parameters
    ----------
    data : str or pathlib.Path
        Folder with ``train_self_original.txt`` and ``valid_self_original.txt`` (``--data``).
    persona_map : str or pathlib.Path
        A persona-map pickle, or a folder with ``train_persona_map.pkl`` and ``valid_persona_map.pkl``
        (``--persona-map``).
    model : str or pathlib.Path
        A local RoBERTa checkpoint folder with its tokenizer (``--model``).

    Raises
    ------
    ValueError
        One line naming the flag (``--data``, ``--persona-map``, ``--model``) and the expected format.

    Examples
    --------
    >>> import tempfile
    >>> tmp = tempfile.TemporaryDirectory()          # removed when the example ends
    >>> data = write_convai(tmp.name, train_sizes=(3, 2), valid_sizes=(2, 2), turns=1)
    >>> check_convai_inputs(data, data, data)   # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: --model (the 'model' parameter) ... is not a RoBERTa checkpoint folder ...
    """
    files = _convai_files(data, persona_map, model)
    for path in dict.fromkeys(_map_paths(persona_map)):
        read_persona_map(path)                 # a map that is no pickled dict is refused now, not in a chunk
    return manifest_digest(file_manifest(files))


# ------------------------------------------------------------------------------------------------
# Model and tokenised data


@functools.lru_cache(maxsize=2)
def _load(model_path: str, fingerprint: str = ""):
    """(tokenizer, RobertaForSequenceClassification with 2 labels) from a local folder, read once
    per process and fingerprint (files rewritten in place are read again); callers deep-copy the
    model."""
    import transformers

    _check_model_path(model_path)
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    try:
        tok = transformers.AutoTokenizer.from_pretrained(model_path, local_files_only=True)
        net = transformers.RobertaForSequenceClassification.from_pretrained(model_path, num_labels=2,
                                                                            local_files_only=True)
    except (OSError, ValueError, KeyError) as err:
        raise ValueError(f"--model (the 'model' parameter) {model_path} could not be loaded as a RoBERTa "
                         f"checkpoint with its tokenizer "
                         f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}). "
                         f"{CONVAI_HELP}.") from None
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
        if getattr(tok, name) is None:
            raise ValueError(f"--model (the 'model' parameter) {model_path}: its tokenizer has no {name[:-3]} "
                             f"(RoBERTa uses <s>, </s>, "
                             f"<pad>). {CONVAI_HELP}.")
    if tok.pad_token_id != net.config.pad_token_id:
        raise ValueError(f"--model (the 'model' parameter) {model_path}: the tokenizer's pad id "
                         f"{tok.pad_token_id} differs from the "
                         f"model's pad_token_id {net.config.pad_token_id}. {CONVAI_HELP}.")
    net.eval()
    return tok, net


@functools.lru_cache(maxsize=1)
def _pair_scorer_class():
    torch = _torch()

    class PairScorer(torch.nn.Module):
        """RoBERTa scoring (context, candidate) pairs: ids (B, C, L) → logits (B, C, 2)."""

        def __init__(self, model, pad_id):
            super().__init__()
            self.model = model
            self.pad_id = int(pad_id)

        def forward(self, ids):
            B, C, L = ids.shape
            flat = ids.reshape(B * C, L)
            mask = flat != self.pad_id
            width = int(mask.sum(1).max())
            flat, mask = flat[:, :width], mask[:, :width]
            return self.model(input_ids=flat, attention_mask=mask.long()).logits.reshape(B, C, -1)

    return PairScorer


def _scorer(net, pad_id):
    return _pair_scorer_class()(net, pad_id)


HEAD = "model.classifier"


def _targets(scorer) -> tuple:
    torch = _torch()
    return tuple(n for n, m in scorer.named_modules() if isinstance(m, torch.nn.Linear) and ".encoder." in n)


def _examples(dialogues, n_candidates):
    """(contexts, (candidate list, true index) per turn, the line each turn's dialogue starts at)
    of every turn. A context is the utterances up to the partner's current one, concatenated with
    no separator (no persona text); the candidates are the file's, in its order (the true response
    and the first ``n_candidates − 1`` others, the true one kept at its place among them)."""
    contexts, cands, where = [], [], []
    for d in dialogues:
        history = ""
        for utterance, response, candidates in d["turns"]:
            history += utterance
            others = [c for c in candidates if c != response]
            if len(others) < n_candidates - 1:
                raise ValueError(f"The 'n_candidates' parameter of ConvAIConfig must be at most "
                                 f"{len(others) + 1} (a turn of the data has that many candidates). "
                                 f"Got {n_candidates}.")
            pos = candidates.index(response)
            chosen = others[:n_candidates - 1]
            at = min(pos, n_candidates - 1)
            contexts.append(history)
            cands.append((chosen[:at] + [response] + chosen[at:], at))
            where.append(d.get("line"))
            history += response
    return contexts, cands, where


def _pair_ids(tok, ctx_ids, cand_ids, limit, truncate, where, split):
    """``<s> ctx </s><s> cand </s>`` (context and candidate tokenised separately, not the
    tokenizer's pair encoding); a pair over ``limit`` tokens is refused naming its dialogue, or
    (``truncate``) its context is cut from the left."""
    bos, eos = tok.bos_token_id, tok.eos_token_id
    over = len(ctx_ids) + len(cand_ids) + 4 - limit
    if over > 0:
        if not truncate or over > len(ctx_ids):
            raise ValueError(f"--data (the 'data' parameter): a (context, candidate) pair of the {split} dialogue "
                             f"starting at line {where} has {len(ctx_ids) + len(cand_ids) + 4} tokens, more than "
                             f"the {limit} the model's positions (or max_length) allow; the paper preset refuses "
                             f"it (the clean preset cuts the context from the left).")
        ctx_ids = ctx_ids[over:]
    return [bos] + list(ctx_ids) + [eos, bos] + list(cand_ids) + [eos]


def _encode(tok, dialogues, n_candidates, limit, truncate=False, split="train"):
    """Token ids (N, C, L) of every turn's pairs (right-padded to the longest pair) and the true
    index (N,)."""
    torch = _torch()
    contexts, cands, where = _examples(dialogues, n_candidates)
    texts = sorted(set(contexts) | {c for cs, _ in cands for c in cs})
    ids = dict(zip(texts, tok(texts, add_special_tokens=False)["input_ids"])) if texts else {}
    pad = tok.pad_token_id
    rows, labels = [], []
    for ctx, (cs, at), line in zip(contexts, cands, where):
        rows.append([_pair_ids(tok, ids[ctx], ids[c], limit, truncate, line, split) for c in cs])
        labels.append(at)
    L = max((len(p) for row in rows for p in row), default=1)
    x = torch.full((len(rows), n_candidates, L), pad, dtype=torch.long)
    for i, row in enumerate(rows):
        for j, p in enumerate(row):
            x[i, j, :len(p)] = torch.tensor(p, dtype=torch.long)
    return x, torch.tensor(labels, dtype=torch.long)


def _positions(net) -> int:
    """Tokens a RoBERTa input may hold: its position ids start after the padding id."""
    return int(net.config.max_position_embeddings - net.config.pad_token_id - 1)


_DATA_CACHE: dict = {}


def _ft_val(config) -> int:
    """Fine-tuning validation dialogues: none under ``paper`` (C4: the epoch is chosen on the
    evaluation dialogues), ``ft_val_dialogues`` under ``clean``."""
    return 0 if config.preset == "paper" else config.ft_val_dialogues


def _split(config, clusters, last, before, split, top):
    if len(clusters) < top:
        raise ValueError(f"--data/--persona-map (the 'data' and 'persona_map' parameters): the {split} file has "
                         f"{len(clusters)} persona cluster(s) with more "
                         f"than one dialogue (cluster 0 dropped); the protocol needs {top} "
                         f"({'n_train_personas' if split == 'train' else 'n_test_personas'}).")
    need = last + before + 1
    small = [(cid, len(ds)) for cid, ds in clusters if len(ds) < need]
    if small:
        raise ValueError(f"--data/--persona-map (the 'data' and 'persona_map' parameters): {split} cluster "
                         f"{small[0][0]} has {small[0][1]} dialogue(s); "
                         f"the protocol needs at least {need} (held-out dialogues + 1 to train).")
    out = []
    for cid, ds in clusters:
        held = ds[len(ds) - last:]
        mid = ds[len(ds) - last - before:len(ds) - last]
        out.append((cid, ds[:len(ds) - last - before], mid, held))
    return out


def _dialogues(config):
    """(train clusters, test clusters) of the config's files: :func:`persona_clusters` of each file
    (the last dialogue unread under ``paper``, C3), ranked by the turns that train."""
    train_file, valid_file = _data_paths(config.data)
    train_map, valid_map = (read_persona_map(p) for p in _map_paths(config.persona_map))
    keep = config.preset != "paper"
    tr = persona_clusters(read_personachat(train_file, keep_last=keep), train_map, top=config.n_train_personas,
                          held_out=config.val_dialogues)
    te = persona_clusters(read_personachat(valid_file, keep_last=keep), valid_map, top=config.n_test_personas,
                          held_out=config.eval_dialogues + _ft_val(config))
    return (_split(config, tr, config.val_dialogues, 0, "train", config.n_train_personas),
            _split(config, te, config.eval_dialogues, _ft_val(config), "valid", config.n_test_personas))


def _data(config):
    """Tokenised tasks of the config's files: (train tasks [(cluster, train, val)], test tasks
    [(cluster, train, val, eval)]) as (x, y) tensors on the CPU, cached per process (under
    ``paper`` a test task's val is its eval: C4)."""
    key = (config.data, config.persona_map, config.model, config.fingerprint, config.preset, config.n_train_personas,
           config.n_test_personas, config.val_dialogues, config.eval_dialogues, config.ft_val_dialogues,
           config.n_candidates, config.max_length)
    if key in _DATA_CACHE:
        return _DATA_CACHE[key]
    tok, net = _load(str(config.model), config.fingerprint)
    limit = min(config.max_length or _positions(net), _positions(net))
    tr, te = _dialogues(config)
    enc = functools.partial(_encode, tok, n_candidates=config.n_candidates, limit=limit,
                            truncate=config.preset == "clean")
    train = [(cid, enc(a, split="train"), enc(c, split="train")) for cid, a, _, c in tr]
    test = []
    for cid, a, b, c in te:
        held = enc(c, split="valid")
        test.append((cid, enc(a, split="valid"), enc(b, split="valid") if b else held, held))
    config.check_data()                  # the bytes just read are those the key names
    _DATA_CACHE.clear()
    _DATA_CACHE[key] = (train, test)
    return train, test


# ------------------------------------------------------------------------------------------------
# One chunk


def _gen(stream, i):
    torch = _torch()
    return torch.Generator().manual_seed(int(stream.generate_state(1, dtype=np.uint64)[0] % (2**63)) + i)


class _Sequential:
    """SR in the paper's order (C1): every batch of task 0, then of task 1, …"""

    def __init__(self, loaders):
        self.loaders = loaders

    def __len__(self):
        return sum(len(ld) for ld in self.loaders)

    def __iter__(self):
        for ld in self.loaders:
            yield from ld


class _Shuffled(_Sequential):
    """SR in the clean order: the same per-task batches (Σ_t len_t of them), the tasks' turns
    shuffled each epoch by ``generator`` (a uniformly random interleaving of the task sequences)."""

    def __init__(self, loaders, generator):
        super().__init__(loaders)
        self.generator = generator

    def __iter__(self):
        torch = _torch()
        slots = torch.cat([torch.full((len(ld),), t) for t, ld in enumerate(self.loaders)])
        order = slots[torch.randperm(len(slots), generator=self.generator)].tolist()
        iters = [iter(ld) for ld in self.loaders]
        for t in order:
            yield next(iters[t])


#: The language code's linear schedules (transformers' warm-up schedule, stepped after the
#: optimiser): retraining under ``paper`` (C2) reaches 0 at this many times len0 × epochs steps;
#: Reptile's outer schedule warms up over 10 outer steps and reaches 0 at 667; fine-tuning warms
#: up over one epoch's len_t steps and reaches 0 at 40 len_t.
C2_END = 6.67
REPTILE_WARMUP, REPTILE_END = 10, 667
FT_END = 40


def _retrain_optim(config, method, train) -> OptimSpec:
    """The retraining optimiser and schedule of ``method`` on the task loaders ``train``."""
    if method == "Reptile":
        return OptimSpec(epochs=config.reptile_epochs, lr=config.reptile_lr, weight_decay=config.retrain_wd,
                         optimizer="adamw", schedule="steps", warmup_steps=REPTILE_WARMUP, total_steps=REPTILE_END)
    if config.preset == "paper":             # C2: from task 0's batch count, whatever the real step count
        span = len(train[0]) * config.retrain_epochs
        schedule = dict(schedule="steps", warmup_steps=config.warmup * span, total_steps=C2_END * span)
    else:
        schedule = dict(schedule="linear", warmup=config.warmup)
    return OptimSpec(epochs=config.retrain_epochs, lr=config.retrain_lr, weight_decay=config.retrain_wd,
                     optimizer="adamw", **schedule)


def _finetune_optim(config, batches) -> OptimSpec:
    """Fine-tuning: AdamW, warm-up over one epoch's ``batches`` steps, 0 at ``FT_END`` epochs' worth."""
    return OptimSpec(epochs=config.ft_epochs, lr=config.ft_lr, weight_decay=config.ft_wd, optimizer="adamw",
                     schedule="steps", warmup_steps=batches, total_steps=FT_END * batches)


_RETRAIN_CACHE: dict = {}


def _base_model(config, seed, device):
    torch = _torch()
    tok, net = _load(str(config.model), config.fingerprint)
    streams = np.random.SeedSequence(seed).spawn(4)
    with _seeded(int(streams[1].generate_state(1)[0]), torch.device("cpu")):
        scorer = _scorer(__import__("copy").deepcopy(net), tok.pad_token_id)
        _reset(scorer.get_submodule(HEAD))               # a fresh head, drawn from the seed
    return scorer, streams


def _specs(config, rank):
    lora = LoraSpec(r=max(rank, 1), lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout)
    return lora


def _retrained(config, method, rank, seed, device, amp):
    """(θ̂ on the CPU, retraining history) of one (method, rank, seed): from this process's cache,
    the checkpoint folder, or computed (and kept in both)."""
    torch = _torch()
    key = config.retrain_key(method, rank, seed)
    if key in _RETRAIN_CACHE:
        _RETRAIN_CACHE[key] = _RETRAIN_CACHE.pop(key)        # most recently used last
        return _RETRAIN_CACHE[key]
    scorer, streams = _base_model(config, seed, device)
    path = Path(config.checkpoint_dir) / f"retrain-{key}.pt" if config.checkpoint_dir else None
    if path is not None and path.is_file():
        try:
            saved = torch.load(path, map_location="cpu", weights_only=False)
            scorer.load_state_dict(saved["state"])
            out = (scorer, pd.DataFrame(saved["history"]))
            _remember(config, key, out)
            return out
        except Exception:                 # unreadable: recompute and overwrite
            scorer, streams = _base_model(config, seed, device)
    train_tasks, _ = _data(config)
    bs = config.batch_size
    train = [BatchLoader(x.to(device), y.to(device), bs, shuffle=True, generator=_gen(streams[2], i))
             for i, (_, (x, y), _) in enumerate(train_tasks)]
    val = [BatchLoader(x.to(device), y.to(device), bs) for _, _, (x, y) in train_tasks]
    pooled = None
    if method == "SR":
        pooled = _Sequential(train) if config.preset == "paper" else _Shuffled(train, _gen(streams[2], len(train)))
    targets = _targets(scorer)
    lora = dataclasses.replace(_specs(config, rank), target_modules=targets)
    optim = _retrain_optim(config, method, train)
    reptile = ReptileSpec(inner_steps=config.reptile_inner_steps, inner_lr=config.reptile_inner_lr, sign=1,
                          inner_optimizer="adamw", inner_weight_decay=config.retrain_wd, persistent=False)
    res = retrain(scorer, train, method=method, head=HEAD, val=val, pooled=pooled, lora=lora, optim=optim,
                  reptile=reptile, seed=int(streams[2].generate_state(1)[0]), device=device, amp=amp,
                  objective="pairs", task_heads=True, step="task", micro_batch=config.micro_batch or None)
    model = res.model.to("cpu")
    out = (model, res.history)
    if path is not None:
        checkpoint = {"state": model.state_dict(), "history": res.history.to_dict(orient="list")}
        atomic_write(path, lambda tmp: torch.save(checkpoint, tmp))
    _remember(config, key, out)
    return out


def _remember(config, key, out):
    """Keep a retrained model in this process: the last ``len(seeds) + 1`` of them (chunks run
    value by value, and a method's ranks are consecutive values, so SR and Reptile are retrained
    once per seed even without a checkpoint folder)."""
    _RETRAIN_CACHE[key] = out
    while len(_RETRAIN_CACHE) > len(config.seeds) + 1:
        _RETRAIN_CACHE.pop(next(iter(_RETRAIN_CACHE)))


_COLUMNS = ["dataset", "preset", "phase", "retraining", "finetuning", "rank", "seed", "persona", "cluster", "epoch",
            "split", "accuracy"]


def simulate_convai_chunk(config: ConvAIConfig, value_index: int, trials, device: str | None = None,
                          amp: bool | None = None) -> pd.DataFrame:
    """Retrain with one value's method (once per seed, reused), fine-tune on each trial's test
    persona; return the tidy table (see the module docstring). ``device`` defaults to CUDA when
    available; ``amp`` (float16 autocast with a GradScaler) to off: spec §3 trains in float32.

    Parameters
    ----------
    config : ConvAIConfig
        The experiment.
    value_index : int
        Index of the (method, fine-tuning scheme, rank) in ``config.values``.
    trials : sequence of int
        Distinct (seed, test persona) trials, each below ``config.runs``.
    device : str, optional
        Torch device; None: CUDA when available, else the CPU.
    amp : bool, optional
        float16 autocast with a GradScaler; None: off (the protocol trains in float32, without mixed
        precision).

    Examples
    --------
    >>> import tempfile
    >>> from sims import realdata_sweep
    >>> tmp = tempfile.TemporaryDirectory()          # removed when the example ends
    >>> root = tmp.name
    >>> data = write_convai(f"{root}/data", train_sizes=(5, 4), valid_sizes=(4, 4), turns=2, n_candidates=4)
    >>> cfg = realdata_sweep("convai", data=data, persona_map=data, model=write_tiny_roberta(f"{root}/roberta"),
    ...                      methods=("LoRA-ML",), finetuning=("lora",), ranks=(2,), seeds=(0,), n_train_personas=2,
    ...                      n_test_personas=1, n_candidates=4, retrain_epochs=1, ft_epochs=1)
    >>> table = simulate_convai_chunk(cfg, 0, (0,), device="cpu")
    >>> table.groupby(["phase", "split"], observed=True).size().to_dict()     # epochs 0-1 of each phase
    {('finetune', 'test'): 2, ('finetune', 'val'): 2, ('retrain', 'val'): 2}
    """
    torch = _torch()
    func = "simulate_convai_chunk"
    value_index, trials = ConvAIConfig.check_chunk(config, value_index, trials, func)
    device = _check_device(("cuda" if torch.cuda.is_available() else "cpu") if device is None else device, func)
    if amp is not None and not isinstance(amp, (bool, np.bool_)):
        raise ValueError(f"The 'amp' parameter of {func} must be a bool or None. Got {amp!r} instead.")
    amp = False if amp is None else bool(amp)
    config.check_data()                  # the files are those the keys name (before any training)
    method, scheme, rank = config.value_spec(value_index)
    frames = []
    for t in trials:
        seed, p = config.trial(int(t))
        base, history = _retrained(config, method, rank, seed, device, amp)
        row = {"dataset": "convai", "preset": config.preset, "retraining": method, "finetuning": scheme,
               "rank": np.int64(rank), "seed": np.int64(seed)}
        if p == 0:
            frames.append(pd.DataFrame({**row, "phase": "retrain", "persona": np.int64(-1), "cluster": np.int64(-1),
                                        "epoch": history["epoch"].astype(np.int64), "split": "val",
                                        "accuracy": history["val_accuracy"].astype(np.float64)}))
        _, test_tasks = _data(config)
        cid, (xa, ya), (xb, yb), (xc, yc) = test_tasks[p]
        streams = np.random.SeedSequence(seed).spawn(4)
        bs = config.batch_size
        tr = BatchLoader(xa.to(device), ya.to(device), bs, shuffle=True, generator=_gen(streams[3], p))
        va = BatchLoader(xb.to(device), yb.to(device), bs)
        te = BatchLoader(xc.to(device), yc.to(device), bs)
        lora = dataclasses.replace(_specs(config, rank), target_modules=_targets(base))
        optim = _finetune_optim(config, len(tr))
        ft = finetune(base, tr, scheme=scheme, val=va, test=te, head=HEAD, lora=lora, optim=optim,
                      seed=int(streams[3].generate_state(1)[0]) + p, device=device, amp=amp, fresh_head=True,
                      train_head=True, objective="pairs", micro_batch=config.micro_batch or None)
        h = ft.history
        frames.append(pd.DataFrame({**row, "phase": "finetune", "persona": np.int64(p), "cluster": np.int64(cid),
                                    "epoch": h["epoch"].astype(np.int64), "split": h["split"],
                                    "accuracy": h["accuracy"].astype(np.float64)}))
    frame = pd.concat(frames, ignore_index=True)[_COLUMNS]
    for name, cats in (("retraining", RETRAINING_METHODS), ("finetuning", FINETUNING_SCHEMES)):
        frame[name] = pd.Categorical(frame[name], categories=list(cats))
    return frame


# ------------------------------------------------------------------------------------------------
# Summary


def _mean_se(v):
    v = np.asarray(v, dtype=float)
    return float(v.mean()), (float(v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else float("nan"))


def _last_best(history, paper: bool) -> tuple[float, float]:
    """(last, best) test hits@1 of one fine-tuning history: ``paper`` (C4) the largest test value
    over the epochs after the first evaluation, both rounded to 3 decimals as the authors report
    them; otherwise :func:`best_and_last` (the test value at the epoch of best validation)."""
    if not paper:
        bl = best_and_last(history)
        return bl["last"], bl["best"]
    h = history[history["epoch"] > 0] if (history["epoch"] > 0).any() else history
    test = h[h["split"] == "test"].set_index("epoch")["accuracy"].sort_index()
    return round(float(test.iloc[-1]), 3), round(float(test.max()), 3)


def convai_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Per retraining method × fine-tuning scheme × rank × persona, and averaged over the personas
    (``persona == "average"``: each seed's mean over personas, then over seeds): mean and standard
    error (ddof 1) over seeds of the last-epoch and the best-epoch hits@1. The best epoch is one of
    the training epochs (the evaluation before training excluded), chosen on the validation
    dialogue (``clean``) or, for rows of the ``paper`` preset, the largest test value (C4; last and
    best rounded to 3 decimals, as the authors report them).

    Parameters
    ----------
    table : pandas.DataFrame
        A table of :func:`simulate_convai_chunk` (or the store's concatenation of them), with
        fine-tuning rows.

    Examples
    --------
    >>> import tempfile
    >>> from sims import realdata_sweep
    >>> tmp = tempfile.TemporaryDirectory()          # removed when the example ends
    >>> root = tmp.name
    >>> data = write_convai(f"{root}/data", train_sizes=(5, 4), valid_sizes=(4, 4), turns=2, n_candidates=4)
    >>> cfg = realdata_sweep("convai", data=data, persona_map=data, model=write_tiny_roberta(f"{root}/roberta"),
    ...                      methods=("LoRA-ML",), finetuning=("lora",), ranks=(2,), seeds=(0,), n_train_personas=2,
    ...                      n_test_personas=1, n_candidates=4, retrain_epochs=1, ft_epochs=1)
    >>> summary = convai_summary(simulate_convai_chunk(cfg, 0, (0,), device="cpu"))
    >>> summary["persona"].tolist()           # the average over personas first, then each persona
    ['average', '0']
    """
    columns = ("phase", "retraining", "finetuning", "rank", "seed", "persona", "epoch", "split", "accuracy")
    _check_history(table, "table", "convai_summary", columns)
    ft = table[table["phase"] == "finetune"]
    if ft.empty:
        raise ValueError("The 'table' parameter of convai_summary must hold fine-tuning rows (phase 'finetune'). "
                         "Got none.")
    per = []
    paper = ft["preset"].astype(str) == "paper" if "preset" in ft.columns else pd.Series(False, index=ft.index)
    for (m, s, r, seed, p), g in ft.groupby(["retraining", "finetuning", "rank", "seed", "persona"], observed=True):
        last, best = _last_best(g, bool(paper.loc[g.index].all()))
        per.append({"retraining": m, "finetuning": s, "rank": int(r), "seed": int(seed), "persona": int(p),
                    "last": last, "best": best})
    per = pd.DataFrame(per)
    rows = []
    for (m, s, r), g in per.groupby(["retraining", "finetuning", "rank"], observed=True, sort=False):
        groups = [(str(p), gp) for p, gp in g.groupby("persona")]
        avg = g.groupby("seed")[["last", "best"]].mean()
        for persona, gp in [("average", avg)] + groups:
            row = {"retraining": m, "finetuning": s, "rank": int(r), "persona": persona, "seeds": len(gp)}
            for which in ("last", "best"):
                row[f"{which}_mean"], row[f"{which}_se"] = _mean_se(gp[which])
            rows.append(row)
    out = pd.DataFrame(rows)
    order = {m: i for i, m in enumerate(RETRAINING_METHODS)}
    sorder = {s: i for i, s in enumerate(FINETUNING_SCHEMES)}
    out = out.assign(_m=out["retraining"].map(order), _s=out["finetuning"].map(sorder),
                     _p=out["persona"].map(lambda p: -1 if p == "average" else int(p)))
    return out.sort_values(["_s", "rank", "_p", "_m"]).drop(columns=["_m", "_s", "_p"]).reset_index(drop=True)
