"""The language experiment (spec/realdata.md §3): readers, protocol splits, the peft-wrapped RoBERTa,
the whole command at tiny size, and a learnable generated task.

Every file here is generated in the real formats (``sims.write_convai``: PersonaChat
"self_original" text and pickled persona maps) and every model is a tiny random RoBERTa (2 layers
of width 32) with a word-level tokenizer built offline (``sims.write_tiny_roberta``).
"""

import copy
import json
import pickle
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")
pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

import sims  # noqa: E402
from helpers import convai_files  # noqa: E402
from loraml import cli  # noqa: E402
from sims import _convai as C  # noqa: E402  (internals: splits and the pair scorer)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Train clusters of 6, 5, 5, 4 dialogues and valid clusters of 6, 5, 4 (3 turns each), plus in
    each file 2 dialogues of cluster 0, one of a one-dialogue cluster and one of no cluster."""
    return convai_files(tmp_path_factory.mktemp("convai"))


def _config(data, model, **kw):
    base = dict(data=data, persona_map=data, model=model, seeds=(0,), ranks=(2,), n_train_personas=3,
                n_test_personas=2, retrain_epochs=1, reptile_epochs=1, reptile_inner_steps=2, ft_epochs=1)
    base.update(kw)
    seeds = base.pop("seeds")
    return sims.realdata_sweep("convai", seeds=seeds, **base)


# ------------------------------------------------------------------------------------------------
# Reading and splitting: the genuine formats


def test_persona_maps_are_written_and_read_in_the_genuine_format(files, tmp_path):
    """``write_convai`` writes the genuine persona maps: files without extension, a protocol-4
    pickle of one dict with numpy.int32 keys (not in id order), each value a list of members, each
    member a sorted list of str without a trailing "." or space. The reader accepts exactly that
    and refuses the project's former format (a dict of sets of description strings), naming the
    flag. A dialogue's persona as the parser reads it (sentences in file order, with their ".")
    equals a member once its key is made (rules out the mismatch that put every dialogue in cluster
    0: file order kept, the "." kept)."""
    data, _ = files
    for split in ("train", "valid"):
        raw_bytes = (data / f"{split}_persona_map").read_bytes()
        assert raw_bytes[:2] == b"\x80\x04"                       # pickle protocol 4
        raw = pickle.loads(raw_bytes)
        assert all(type(k) is np.int32 for k in raw)
        assert sorted(int(k) for k in raw) == list(range(len(raw))) and list(map(int, raw)) != sorted(map(int, raw))
        for members in raw.values():
            assert isinstance(members, list) and members
            for m in members:
                assert isinstance(m, list) and m == sorted(m) and all(isinstance(s, str) for s in m)
                assert not any(s.endswith((".", " ")) for s in m)
    text = (data / "train_self_original.txt").read_text().splitlines()
    persona = [line.split("your persona:", 1)[1] for line in text[:3] if "your persona:" in line]
    assert persona and all(p.startswith(" ") and p.endswith(".") for p in persona)
    tmap = sims.read_persona_map(data / "train_persona_map")
    assert sims.persona_key(persona) in [m for ms in tmap.values() for m in ms]
    assert tuple(p.strip() for p in persona) not in [m for ms in tmap.values() for m in ms]
    old = tmp_path / "old_map"
    old.write_bytes(pickle.dumps({1: {"i like dogs. i ski."}}))
    with pytest.raises(ValueError, match="--persona-map .* is not a persona map"):
        sims.read_persona_map(old)
    assert C._map_paths(data) == (data / "train_persona_map", data / "valid_persona_map")


def test_clusters_group_dialogues_by_persona_and_hold_out_the_last_ones(files):
    """On the default generated files (train clusters of 6, 5, 5, 4 dialogues, 3 turns each, the
    two personas of a cluster alternating in the file): a cluster's dialogues are grouped by exact
    persona in order of first appearance (rules out file order, under which the held-out
    dialogues would mix both personas); cluster 0, the unmatched persona and the one-dialogue
    cluster are dropped; the held-out dialogues are the last n of that order; C3: the file's last
    dialogue (cluster 1's) is read under clean and unread under paper."""
    data, model = files
    train = sims.read_personachat(data / "train_self_original.txt")
    assert len(train) == 6 + 5 + 5 + 4 + 2 + 1 + 1
    assert all(len(d["turns"]) == 3 for d in train) and all(len(c) == 20 and r in c for d in train
                                                               for _, r, c in d["turns"])
    tmap = sims.read_persona_map(data / "train_persona_map")
    clusters = sims.persona_clusters(train, tmap, top=10, held_out=3)
    assert [(cid, len(ds)) for cid, ds in clusters] == [(1, 6), (2, 5), (3, 5), (4, 4)]
    one = clusters[0][1]
    keys = [d["persona"] for d in one]
    assert keys == [keys[0]] * 3 + [keys[3]] * 3 and keys[0] != keys[3]          # grouped, 3 + 3
    assert [d["line"] for d in one[:3]] == sorted(d["line"] for d in one[:3])    # each persona's in file order
    assert [d["line"] for d in one] != sorted(d["line"] for d in one)            # not file order
    assert train[-1] is one[-1]                                                  # the file ends with cluster 1's
    for preset, n_one in (("clean", 6), ("paper", 5)):
        cfg = _config(data, model, preset=preset)
        tr, te = C._dialogues(cfg)
        assert [cid for cid, *_ in tr] == [1, 2, 3]
        cid, rest, _, held = tr[0]
        assert len(rest) + len(held) == n_one and len(held) == 3
        clusters = sims.persona_clusters(sims.read_personachat(data / "train_self_original.txt",
                                                               keep_last=preset == "clean"), tmap, held_out=3)
        assert [d["line"] for d in held] == [d["line"] for d in clusters[0][1][-3:]]
        # fine-tuning: the last 2 evaluate; paper trains on all the others, clean holds one out to choose the epoch
        ft = [(len(a), len(b), len(c)) for _, a, b, c in te]
        # (valid clusters of 6, 5, 4 dialogues; under paper cluster 1 loses the file's last one)
        assert ft == ([(3, 0, 2), (3, 0, 2)] if preset == "paper" else [(3, 1, 2), (2, 1, 2)])


def test_clusters_are_ranked_by_training_turns_then_by_id(tmp_path):
    """Cluster 1 has 3 dialogues of 5 turns, cluster 2 has 4 of 2: by turns 1 comes first (15 > 8),
    by dialogues 2 would (rules out the former ranking by dialogue count). Holding out 3 dialogues
    leaves cluster 1 no training turn and cluster 2 two: the order flips (rules out counting the
    held-out turns). Equal turns: the smaller id first even when the larger id appears first in the
    file (rules out an order of appearance)."""
    data = sims.write_convai(tmp_path / "a", train_sizes=(3, 4), valid_sizes=(2, 2), turns=(5, 2), n_candidates=2,
                             vocab=3)
    dialogues = sims.read_personachat(data / "train_self_original.txt")
    tmap = sims.read_persona_map(data / "train_persona_map")
    assert [c for c, _ in sims.persona_clusters(dialogues, tmap)] == [1, 2]
    assert [c for c, _ in sims.persona_clusters(dialogues, tmap, held_out=3)] == [2, 1]
    tie = sims.write_convai(tmp_path / "b", train_sizes=(2, 2), valid_sizes=(2, 2), turns=1, n_candidates=2, vocab=3)
    dialogues = sims.read_personachat(tie / "train_self_original.txt")[::-1]
    tmap = sims.read_persona_map(tie / "train_persona_map")
    assert dialogues[0]["persona"] in tmap[2] or dialogues[0]["persona"] not in tmap[1]
    assert [c for c, _ in sims.persona_clusters(dialogues, tmap)] == [1, 2]


def test_pair_ids_are_two_separately_encoded_sequences_and_long_pairs_are_refused(files):
    """The ids of a pair are <s> ctx </s><s> cand </s> with the context the turns' text concatenated
    without a separator (rules out the tokenizer's pair encoding, which puts </s></s> in between,
    and a separator between utterances); a pair over the limit is refused naming its dialogue's line
    under paper, and cut from the left of its context under clean (the candidate and the context's
    last tokens kept)."""
    data, model = files
    tok, _ = C._load(str(model))
    train = sims.read_personachat(data / "train_self_original.txt")
    d = train[0]
    (u1, r1, _), (u2, r2, cands2) = d["turns"][:2]
    x, y = C._encode(tok, [d], 20, 158)
    ctx = u1 + r1 + u2
    assert C._examples([d], 20)[0][1] == ctx
    assert "." + r1[:2] in ctx                            # utterances end with " ." and nothing joins them
    want = lambda c: [0] + tok(ctx, add_special_tokens=False)["input_ids"] + [2, 0] + \
        tok(c, add_special_tokens=False)["input_ids"] + [2]       # noqa: E731
    for j in (0, int(y[1])):
        row = x[1, j][x[1, j] != tok.pad_token_id].tolist()
        assert row == want(cands2[j]) and row.count(2) == 2
    assert cands2[int(y[1])] == r2
    n = len(want(cands2[0]))
    with pytest.raises(ValueError, match=f"dialogue starting at line {d['line']} has {n} tokens"):
        C._encode(tok, [d], 20, n - 3)
    cut, _ = C._encode(tok, [d], 20, n - 3, truncate=True)
    row = cut[1, 0][cut[1, 0] != tok.pad_token_id].tolist()
    assert row == [0] + want(cands2[0])[4:]                # the context's first 3 tokens dropped
    # the config's max_length caps the pairs the same way (0: the model's 158 positions)
    with pytest.raises(ValueError, match="dialogue starting at line .* more than the 12"):
        C._data(_config(data, model, preset="paper", max_length=12))
    (_, (x, _), _), *_ = C._data(_config(data, model, preset="clean", max_length=12))[0]
    assert x.shape[-1] == 12 and C._data(_config(data, model, preset="clean"))[0][0][1][0].shape[-1] > 12


# ------------------------------------------------------------------------------------------------
# The issue-13 invariants for the peft-wrapped RoBERTa


def _scorer_and_batch(files, seed=0):
    data, model = files
    cfg = _config(data, model)
    scorer, _ = C._base_model(cfg, seed, "cpu")
    tr, _ = C._data(cfg)
    (x, y) = tr[0][1]
    return cfg, scorer, x[:4], y[:4]


def test_peft_roberta_starts_as_the_base_and_a_task_reaches_its_adapter_only(files):
    """B = 0: every task adapter computes the base bit for bit (rules out B ≠ 0 at the start); a
    task's backward pass reaches the base and its own adapter's B only (rules out several adapters
    active at once, or the base left frozen by peft); the pair loss is the 2-class cross-entropy of
    every pair (rules out a loss over the 20 candidates as one softmax, which differs here)."""
    cfg, scorer, x, y = _scorer_and_batch(files)
    scorer.eval()
    with torch.no_grad():
        want = scorer(x)
    T = 3
    lora = sims.LoraSpec(r=2, lora_alpha=16.0, target_modules=C._targets(scorer))
    assert len(lora.target_modules) == 12 and all(".encoder." in n for n in lora.target_modules)
    net, params = sims.attach_lora(copy.deepcopy(scorer), lora, T)
    net.eval()
    for t in range(T):
        net.set_adapter(f"task{t}")
        with torch.no_grad():
            assert torch.equal(net(x), want)
    from sims._peftml import _loss

    loss = _loss(scorer, (x, y), "cpu", False, "pairs")
    target = torch.nn.functional.one_hot(y, 20).float()
    bce = torch.nn.functional.binary_cross_entropy_with_logits(want[..., 1] - want[..., 0], target)
    assert torch.allclose(loss, bce, rtol=1e-5, atol=0)
    softmax20 = torch.nn.functional.cross_entropy(want[..., 1], y)
    assert not torch.allclose(loss, softmax20, rtol=1e-2)
    net.train()
    for s in range(T):
        for p in params:
            p.grad = None
        net.set_adapter(f"task{s}")
        _loss(net, (x, y), "cpu", False, "pairs").backward()
        for name, p in net.named_parameters():
            if "lora_" not in name:
                if "embeddings" not in name:      # padding rows of the embeddings get no gradient
                    assert p.grad is not None and p.grad.abs().sum() > 0, name
            elif f".task{s}." in name and "lora_B" in name:
                assert p.grad is not None and p.grad.abs().sum() > 0, name
            elif f".task{s}." not in name:
                assert p.grad is None or not p.grad.any(), name


@pytest.mark.parametrize("scheme", ["lora", "last-layer"])
def test_frozen_roberta_is_bit_identical_after_finetuning(files, scheme):
    """Fine-tuning trains the new head (and the adapter), nothing else: rules out an optimiser over
    every parameter (LayerNorms, embeddings, biases) or a head left frozen under LoRA."""
    cfg, scorer, x, y = _scorer_and_batch(files)
    before = copy.deepcopy(scorer.state_dict())
    ld = sims.BatchLoader(x, y, 2, shuffle=True, generator=torch.Generator().manual_seed(0))
    lora = sims.LoraSpec(r=2, lora_alpha=16.0, lora_dropout=0.1, target_modules=C._targets(scorer))
    ft = sims.finetune(scorer, ld, scheme=scheme, val=ld, test=ld, head=C.HEAD, lora=lora,
                       optim=sims.OptimSpec(epochs=2, lr=1e-2, optimizer="adamw", schedule="constant"),
                       fresh_head=True, train_head=True, objective="pairs")
    assert all(torch.equal(v, scorer.state_dict()[k]) for k, v in before.items())         # input untouched
    after = {k.replace("base_model.model.", "").replace(".base_layer", ""): v for k, v in ft.model.state_dict().items()
             if "lora_" not in k}
    changed = {k for k, v in before.items() if not torch.equal(v, after[k])}
    assert changed and all(k.startswith(C.HEAD + ".") for k in changed), sorted(changed)[:5]
    if scheme == "lora":
        assert all(v.any() for k, v in ft.model.state_dict().items() if "lora_B" in k)


# ------------------------------------------------------------------------------------------------
# The command end to end, and bad input


def test_cli_convai_end_to_end_writes_the_tables_and_resumes(files, tmp_path, capsys):
    """The whole command at tiny size (2 seeds, 2 ranks, every method and scheme) on files in the
    genuine formats (PersonaChat text, persona maps of numpy.int32 keys) and a tiny random RoBERTa,
    under a minute: the store holds
    one chunk per (value, seed, persona), the tables and the figure are written, and a rerun
    computes nothing (rules out chunk keys that change between runs, or retraining not reused)."""
    data, model = files
    store, out = tmp_path / "store", tmp_path / "out"
    argv = ["realdata", "convai", "--data", str(data), "--persona-map", str(data), "--model", str(model),
            "--ranks", "1", "2", "--seeds", "0", "1", "--epochs", "1", "--reptile-epochs", "1", "--ft-epochs", "1",
            "--set", "n_train_personas=3", "--set", "n_test_personas=2", "--set", "reptile_inner_steps=2",
            "--set", "n_candidates=4",
            "--store", str(store), "--out", str(out), "--executor", "serial", "--quiet"]
    assert cli.main(argv) == 0
    (folder,) = store.iterdir()
    chunks = sorted(folder.glob("chunk-*.parquet"))
    n_values = 2 * 3 + 3                  # ranks x {SR, LoRA-ML, Reptile} + {SR, last-layer-ML, Reptile}
    assert len(chunks) == n_values * 2 * 2
    # retraining once per (method, rank for LoRA-ML, seed): SR, Reptile, last-layer-ML, LoRA-ML x 2 ranks
    assert len(list((folder / "retrained").glob("retrain-*.pt"))) == (3 + 2) * 2
    md = (out / "table.md").read_text()
    assert "| rank | LoRA-ML | SR | Reptile |" in md and "| last-layer-ML |" in md
    assert (out / "convai.png").stat().st_size > 0
    import pandas as pd

    csv = pd.read_csv(out / "table.csv")
    assert set(csv["persona"].astype(str)) == {"average", "0", "1"} and (csv["seeds"] == 2).all()
    stamps = {p: p.stat().st_mtime_ns for p in chunks}
    capsys.readouterr()
    assert cli.main(argv) == 0
    assert {p: p.stat().st_mtime_ns for p in chunks} == stamps
    assert (out / "table.md").read_text() == md


def test_bad_inputs_get_one_line_naming_the_flag_before_any_work(files, tmp_path, capsys):
    """Missing files and a model folder that is not RoBERTa: a ValueError naming the flag and what
    is expected, before anything is written (rules out a traceback from transformers after the
    store folder was made)."""
    data, model = files
    bert = tmp_path / "bert"
    bert.mkdir()
    cfg = json.loads((model / "config.json").read_text())
    (bert / "config.json").write_text(json.dumps({**cfg, "model_type": "bert"}))
    (bert / "model.safetensors").write_bytes((model / "model.safetensors").read_bytes())
    with pytest.raises(ValueError, match="--model .* not a RoBERTa checkpoint.*model_type 'bert'"):
        sims.realdata_sweep("convai", data=data, persona_map=data, model=bert)
    cases = [(["--data", str(tmp_path / "none")], "--data"), (["--persona-map", str(tmp_path / "none")],
                                                               "--persona-map"),
             (["--model", str(bert)], "--model"), (["--model", str(data)], "--model")]
    for extra, flag in cases:
        argv = ["realdata", "convai", "--data", str(data), "--persona-map", str(data), "--model", str(model)]
        i = argv.index(extra[0])
        argv[i + 1] = extra[1]
        store = tmp_path / "store"
        assert cli.main(argv + ["--store", str(store), "--out", str(tmp_path / "out"), "--quiet"]) == 2
        err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
        assert len(err) == 1 and flag in err[0], err
        assert not store.exists() and not (tmp_path / "out").exists()


def test_the_files_read_are_part_of_every_key_and_a_changed_file_is_refused(files, tmp_path, monkeypatch):
    """The same files in another folder give the same keys (store folder, chunk, retrained
    checkpoint); one letter of a dialogue file changed, the file's size kept, gives other keys
    (rules out a fingerprint of names and sizes only, which served one data set's results and
    retrained checkpoints for another) and makes a config made before the change refuse to run,
    naming the file, before any training (rules out a chunk computed on other data than its key
    names; the data already read in this process does not excuse it), also when the file is written
    while a chunk reads it. A file added to the model folder changes the key too (the tokenizer's
    files are read)."""
    data, model = files
    copy_data = shutil.copytree(data, tmp_path / "data", copy_function=shutil.copyfile)    # new modification times
    copy_model = shutil.copytree(model, tmp_path / "model", copy_function=shutil.copyfile)
    a, b = _config(data, model), _config(copy_data, copy_model)
    assert (a.key, a.chunk_key(0, (0,)), a.retrain_key("SR", 0, 0)) == \
        (b.key, b.chunk_key(0, (0,)), b.retrain_key("SR", 0, 0))
    assert {e[0] for e in a.data_files} >= {"data/train_self_original.txt", "data/valid_self_original.txt",
                                            "persona_map/train_persona_map", "model/tokenizer.json"}
    C._data(b)                                           # b's data read and cached in this process
    path = copy_data / "valid_self_original.txt"
    text = path.read_text()
    line = text.index("\t")
    i = text.rindex(" ", 0, line) + 1                    # the last word of the first utterance: still a valid file
    path.write_text(text[:i] + ("b" if text[i] == "a" else "a") + text[i + 1:])
    c = _config(copy_data, copy_model)
    assert c.key != a.key and c.retrain_key("SR", 0, 0) != a.retrain_key("SR", 0, 0)
    with pytest.raises(ValueError, match="--data.*: data/valid_self_original.txt changed since the config was made"):
        sims.simulate_convai_chunk(b, 0, (0,), device="cpu")
    (copy_model / "notes.txt").write_text("a file the loader may read")
    d = _config(copy_data, copy_model)
    assert d.key != c.key
    with pytest.raises(ValueError, match="model/notes.txt is new since the config was made"):
        c.check_data()
    read = C.read_personachat

    def read_while_written(file, **options):
        out = read(file, **options)
        with open(copy_data / "train_self_original.txt", "a") as fh:
            fh.write("\n")
        return out

    monkeypatch.setattr(C, "read_personachat", read_while_written)
    with pytest.raises(ValueError, match="data/train_self_original.txt changed since the config was made"):
        sims.simulate_convai_chunk(d, 0, (0,), device="cpu")
    # Model weights rewritten in place: a config made after reads the new ones (rules out a model
    # cached per process by its folder alone).
    def embeddings(cfg):
        return C._base_model(cfg, 0, "cpu")[0].model.roberta.embeddings.word_embeddings.weight

    before = embeddings(d)
    sims.write_tiny_roberta(copy_model, seed=1)
    assert not torch.equal(before, embeddings(_config(copy_data, copy_model)))


# ------------------------------------------------------------------------------------------------
# A learnable task


def test_lora_ml_then_lora_finetuning_learns_the_generated_task(tmp_path):
    """On the generated task the true response repeats a word of the partner's utterance and its
    other words are of a kind no distractor uses, so it can be learned. LoRA-ML retraining (T = 3)
    then LoRA fine-tuning (r = 4) on 2 unseen personas must reach average last-epoch hits@1 far
    above chance.

    Threshold from a binomial bound: the evaluation holds n = 2 personas x 2 dialogues x 4 turns =
    16 contexts of 4 candidates. A model no better than chance (hits@1 probability 1/4 per context,
    independent) has P(X ≥ k) for X ~ Binomial(16, 1/4); k = 12 is the smallest count with
    P(X ≥ 12) < 1e-4, so hits@1 ≥ 12/16 = 0.75 rules out chance at that level. Seen to fail when
    the label is put on the wrong candidate (one_hot of (y + 1) mod C in the pair loss). It does
    not rule out ranking by the class-0 logit: the 2-class cross-entropy leaves a shift common to
    both logits free."""
    from scipy.stats import binom

    n, chance = 2 * 2 * 4, 1 / 4
    k = next(k for k in range(n + 1) if binom.sf(k - 1, n, chance) < 1e-4)
    assert k == 12
    data, model = convai_files(tmp_path, train_sizes=(10, 10, 10), valid_sizes=(10, 10), turns=4, rng=1)
    cfg = _config(data, model, methods=("LoRA-ML",), finetuning=("lora",), ranks=(4,), retrain_epochs=10,
                  retrain_lr=3e-3, warmup=0.0, lora_dropout=0.0, ft_epochs=10, ft_lr=3e-3, chunk_trials=0,
                  n_candidates=4)
    table = sims.run(cfg, executor="serial", progress=False, device="cpu")
    s = sims.convai_summary(table)
    avg = s[s["persona"] == "average"]["last_mean"].iloc[0]
    assert avg >= k / n, s.to_string()


# ------------------------------------------------------------------------------------------------
# Determinism, resumption and the presets


def test_a_chunk_is_the_same_whether_retraining_is_computed_or_loaded(files, tmp_path):
    """Persona 0's chunk (retraining rows included) three ways: retraining computed (and saved),
    loaded from the checkpoint folder in a 'fresh process' (the in-memory cache cleared), and
    computed without a folder.
    Rules out numbers that depend on how a chunk was resumed: torch's global random state after
    retraining leaking into fine-tuning, a checkpoint saved before the best epoch was restored, an
    unseeded draw anywhere."""
    import dataclasses

    import pandas as pd

    data, model = files
    cfg = _config(data, model, methods=("LoRA-ML",), finetuning=("lora",), ranks=(2,), retrain_epochs=2,
                  ft_epochs=2, retrain_lr=3e-3, ft_lr=3e-3, n_candidates=4, checkpoint_dir=str(tmp_path / "ck"))
    frames = []
    for c in (cfg, cfg, dataclasses.replace(cfg, checkpoint_dir="")):
        C._RETRAIN_CACHE.clear()
        frames.append(sims.simulate_convai_chunk(c, 0, (0,), device="cpu"))
    assert len(list((tmp_path / "ck").iterdir())) == 1
    pd.testing.assert_frame_equal(frames[0], frames[1], check_exact=True)
    pd.testing.assert_frame_equal(frames[0], frames[2], check_exact=True)
    assert frames[0]["accuracy"].nunique() > 1            # the numbers move: the comparison is not vacuous
