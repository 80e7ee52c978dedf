"""The language experiment (spec/realdata.md §3): readers, protocol splits, the peft-wrapped RoBERTa,
the whole command at tiny size, and a learnable generated task.

Every file here is generated in the real formats (``sims.write_convai``: PersonaChat
"self_original" text and pickled persona maps) and every model is a tiny random RoBERTa (2 layers
of width 32) with a word-level tokenizer built offline (``sims.write_tiny_roberta``).
"""

import copy
import json
import pickle
import re
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
# Reading and splitting


def test_reader_counts_clusters_and_splits(files):
    """Counts of a generated file with known structure. Rules out: a dialogue split at the wrong
    line (count ≠ 24), cluster 0 or the one-dialogue cluster kept (5 or 6 clusters instead of 4),
    an unstable size order (2 before 3 on a tie), the held-out dialogues taken from the front or
    of the wrong number, persona text in a context, the true candidate dropped or duplicated."""
    data, model = files
    train = sims.read_personachat(data / "train_self_original.txt")
    assert len(train) == 6 + 5 + 5 + 4 + 2 + 1 + 1
    assert all(len(d["turns"]) == 3 and len(d["persona"]) in (1, 2) for d in train)
    assert all(len(c) == 20 and r in c for d in train for _, r, c in d["turns"])
    tmap = sims.read_persona_map(data / "train_persona_map.pkl")
    clusters = sims.persona_clusters(train, tmap, top=10)
    assert [(cid, len(ds)) for cid, ds in clusters] == [(1, 6), (2, 5), (3, 5), (4, 4)]
    assert [cid for cid, _ in sims.persona_clusters(train, tmap, top=2)] == [1, 2]
    # each cluster's dialogues in file order: the persona alternates between its two descriptions
    first = clusters[0][1]
    assert [C.persona_description(d["persona"]) for d in first[:2]] != [C.persona_description(first[0]["persona"])] * 2

    cfg = _config(data, model)
    tr, te = C._data(cfg)
    turns = 3
    # T = 3 retraining personas (clusters 1, 2, 3), the last 3 dialogues of each for validation
    assert [cid for cid, _, _ in tr] == [1, 2, 3]
    assert [(len(a[1]), len(v[1])) for _, a, v in tr] == [(3 * turns, 3 * turns), (2 * turns, 3 * turns),
                                                           (2 * turns, 3 * turns)]
    # 2 test personas (valid clusters 1, 2): the last 2 dialogues evaluate, the one before validates
    assert [cid for cid, *_ in te] == [1, 2]
    assert [(len(a[1]), len(b[1]), len(c[1])) for _, a, b, c in te] == [(3 * turns, turns, 2 * turns),
                                                                         (2 * turns, turns, 2 * turns)]
    # the held-out dialogues are the cluster's last ones, in order
    valid = sims.read_personachat(data / "valid_self_original.txt")
    vmap = sims.read_persona_map(data / "valid_persona_map.pkl")
    last2 = sims.persona_clusters(valid, vmap)[0][1][-2:]
    contexts, cands = C._examples(last2, 20)
    u = [t[0] for t in last2[0]["turns"]]
    r = [t[1] for t in last2[0]["turns"]]
    assert contexts[:3] == [u[0], f"{u[0]} {r[0]} {u[1]}", f"{u[0]} {r[0]} {u[1]} {r[1]} {u[2]}"]
    assert not any("persona" in c for c in contexts)
    assert all(len(cs) == 20 and cs[at] == resp for (cs, at), resp in zip(cands, r))
    assert all(cs.count(cs[at]) == 1 for cs, at in cands)


def test_persona_map_as_one_file_with_tuples_gives_the_same_clusters(files, tmp_path):
    """A single map file for both splits, descriptions as tuples of sentences with odd spacing:
    rules out a description compared without normalisation or a folder-only reader."""
    data, _ = files
    tmap = pickle.loads((data / "train_persona_map.pkl").read_bytes())
    merged = {c: {tuple("  " + part for part in re.split(r"(?<=\.) ", s)) for s in descs} for c, descs in tmap.items()}
    path = tmp_path / "persona_map"
    path.write_bytes(pickle.dumps(merged))
    train = sims.read_personachat(data / "train_self_original.txt")
    want = sims.persona_clusters(train, sims.read_persona_map(data / "train_persona_map.pkl"))
    got = sims.persona_clusters(train, sims.read_persona_map(path))
    assert [(c, len(d)) for c, d in got] == [(c, len(d)) for c, d in want]
    assert C._map_paths(path) == (path, path)


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
    """The whole command at tiny size (2 seeds, 2 ranks, every method and scheme): the store holds
    one chunk per (value, seed, persona), the tables and the figure are written, and a rerun
    computes nothing (rules out chunk keys that change between runs, or retraining not reused)."""
    data, model = files
    store, out = tmp_path / "store", tmp_path / "out"
    argv = ["realdata", "convai", "--data", str(data), "--persona-map", str(data), "--model", str(model),
            "--ranks", "1", "2", "--seeds", "0", "1", "--epochs", "1", "--reptile-epochs", "1", "--ft-epochs", "1",
            "--set", "n_train_personas=3", "--set", "n_test_personas=2", "--set", "reptile_inner_steps=2",
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
                                            "persona_map/train_persona_map.pkl", "model/tokenizer.json"}
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

    def read_while_written(file):
        out = read(file)
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
    16 contexts of 20 candidates. A model no better than chance (hits@1 probability 1/20 per context,
    independent) has P(X ≥ k) for X ~ Binomial(16, 1/20); k = 6 is the smallest count with
    P(X ≥ 6) < 1e-4 (it is 8.1e-5; P(X ≥ 5) = 8.6e-4), so hits@1 ≥ 6/16 = 0.375 rules out chance
    at that level. Seen to fail when the label is put on the wrong candidate (one_hot of
    (y + 1) mod 20 in the pair loss). It does not rule out ranking by the class-0 logit: the
    2-class cross-entropy leaves a shift common to both logits free, and here the true pair's
    class-0 logit rose too."""
    from scipy.stats import binom

    n = 2 * 2 * 4
    k = next(k for k in range(n + 1) if binom.sf(k - 1, n, 1 / 20) < 1e-4)
    assert k == 6
    data, model = convai_files(tmp_path, train_sizes=(10, 10, 10), valid_sizes=(10, 10), turns=4, rng=1)
    cfg = _config(data, model, methods=("LoRA-ML",), finetuning=("lora",), ranks=(4,), retrain_epochs=15,
                  retrain_lr=3e-3, warmup=0.0, lora_dropout=0.0, ft_epochs=10, ft_lr=3e-3, chunk_trials=0)
    table = sims.run(cfg, executor="serial", progress=False, device="cpu")
    s = sims.convai_summary(table)
    avg = s[s["persona"] == "average"]["last_mean"].iloc[0]
    assert avg >= k / n, s.to_string()


# ------------------------------------------------------------------------------------------------
# Determinism, resumption and the presets


def test_a_chunk_is_the_same_whether_retraining_is_computed_or_loaded(files, tmp_path):
    """Persona 1's chunk three ways: retraining computed (and saved), loaded from the checkpoint
    folder in a 'fresh process' (the in-memory cache cleared), and computed without a folder.
    Rules out numbers that depend on how a chunk was resumed: torch's global random state after
    retraining leaking into fine-tuning, a checkpoint saved before the best epoch was restored, an
    unseeded draw anywhere."""
    import dataclasses

    import pandas as pd

    data, model = files
    cfg = _config(data, model, methods=("LoRA-ML",), finetuning=("lora",), ranks=(2,), retrain_epochs=2,
                  ft_epochs=2, retrain_lr=3e-3, ft_lr=3e-3, checkpoint_dir=str(tmp_path / "ck"))
    frames = []
    for c in (cfg, cfg, dataclasses.replace(cfg, checkpoint_dir="")):
        C._RETRAIN_CACHE.clear()
        frames.append(sims.simulate_convai_chunk(c, 0, (1,), device="cpu"))
    assert len(list((tmp_path / "ck").iterdir())) == 1
    pd.testing.assert_frame_equal(frames[0], frames[1], check_exact=True)
    pd.testing.assert_frame_equal(frames[0], frames[2], check_exact=True)
    assert frames[0]["accuracy"].nunique() > 1            # the numbers move: the comparison is not vacuous


def test_presets_differ_only_in_the_order_sr_visits_the_tasks(files):
    """``paper`` (SR: all of task 0, then task 1, …) and ``clean`` (SR: shuffled pooled batches)
    give different SR retraining and identical LoRA-ML retraining. Rules out a preset that is not
    wired to SR, or that leaks into the other methods."""
    import numpy.testing as npt

    data, model = files
    hist = {}
    for preset in ("paper", "clean"):
        cfg = _config(data, model, preset=preset, methods=("SR", "LoRA-ML"), finetuning=("lora",), ranks=(2,),
                      retrain_epochs=2, retrain_lr=3e-3)
        for method in ("SR", "LoRA-ML"):
            C._RETRAIN_CACHE.clear()
            base, h = C._retrained(cfg, method, 2, 0, torch.device("cpu"), False)
            hist[preset, method] = (h["train_loss"].to_numpy()[1:], torch.cat([p.flatten() for p in base.parameters()]))
    npt.assert_array_equal(hist["paper", "LoRA-ML"][0], hist["clean", "LoRA-ML"][0])
    assert torch.equal(hist["paper", "LoRA-ML"][1], hist["clean", "LoRA-ML"][1])
    assert not np.array_equal(hist["paper", "SR"][0], hist["clean", "SR"][0])
    seq = C._Sequential([[("a", 0), ("b", 0)], [("c", 1)]])
    assert len(seq) == 3 and [b[0] for b in seq] == ["a", "b", "c"]
