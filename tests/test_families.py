"""Any Hugging Face causal LM: five families built tiny and random from their configs (offline).

Llama (grouped-query attention), Qwen3 (q/k norms), Gemma2 (sliding-window layers, soft-capping, tied embeddings),
GPT-2 (``Conv1D``, fused ``c_attn``) and Phi-3 (fused ``qkv_proj`` and ``gate_up_proj``): compress -> save ->
``lors.from_pretrained`` in a fresh process -> the same logits; full rank is exact; the budget is met.
"""
import json
import subprocess
import sys

import pytest
import torch

import lors
from lors.apply.budget import stack_linears

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.filterwarnings("ignore:calibration saw no inputs")

VOCAB = 96
SMALL = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=64)


def family(name):
    t = transformers
    if name == "llama":
        return t.LlamaForCausalLM(t.LlamaConfig(**SMALL))
    if name == "qwen3":
        return t.Qwen3ForCausalLM(t.Qwen3Config(**SMALL, head_dim=8))
    if name == "gemma2":
        return t.Gemma2ForCausalLM(t.Gemma2Config(**SMALL, head_dim=8, sliding_window=4,
                                                  layer_types=["sliding_attention", "full_attention",
                                                               "sliding_attention"]))
    if name == "gpt2":
        return t.GPT2LMHeadModel(t.GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=3, n_head=4, n_positions=64))
    if name == "phi3":
        return t.Phi3ForCausalLM(t.Phi3Config(**SMALL, pad_token_id=0))
    raise ValueError(name)


FAMILIES = ("llama", "qwen3", "gemma2", "gpt2", "phi3")
TARGETS = {"gpt2": ["attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"],
           "phi3": ["self_attn.o_proj", "self_attn.qkv_proj", "mlp.gate_up_proj", "mlp.down_proj"]}


def tokens(n, seed):
    return torch.randint(1, VOCAB, (n, 16), generator=torch.Generator().manual_seed(seed))


def test_five_families_compress_save_and_reload_in_a_fresh_process(tmp_path):
    x = tokens(2, 9)
    expected = {}
    for name in FAMILIES:
        torch.manual_seed(0)
        model = family(name).eval()
        _, targets, _ = stack_linears(model)
        if name in TARGETS:
            assert sorted(targets) == sorted(TARGETS[name]), targets
        # full rank (epsilon ~ 0): the same function
        exact, _ = lors.compress(model, tokens(4, 1), epsilon=1e-9, form="factors", sequential=False, shrinkage=0.0)
        torch.testing.assert_close(exact(x).logits, model(x).logits, atol=2e-4, rtol=1e-4)
        # the best recipe at 60 %: the budget is met, sequential refit over differently called blocks
        small, report = lors.compress(model, tokens(6, 1), budget=0.6, shrinkage=0.0)
        assert 0.55 < report.fraction <= 0.6, (name, report.fraction)
        assert torch.isfinite(small(x).logits).all()
        lors.save_pretrained(small, tmp_path / name, config=lors.CompressConfig(budget=0.6, shrinkage=0.0))
        expected[name] = small(x).logits
    torch.save({"x": x}, tmp_path / "x.pt")
    code = ("import sys, json, torch, lors; x = torch.load(sys.argv[1])['x']; out = {}\n"
            "for name in sys.argv[3:]:\n"
            "    m = lors.from_pretrained(sys.argv[2] + '/' + name)\n"
            "    out[name] = m(x).logits.tolist()\n"
            "print(json.dumps(out))")
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "x.pt"), str(tmp_path), *FAMILIES],
                          capture_output=True, text=True, check=True)
    got = json.loads(done.stdout.strip().splitlines()[-1])
    for name in FAMILIES:
        torch.testing.assert_close(torch.tensor(got[name]), expected[name], atol=1e-5, rtol=1e-5, msg=name)


def test_sliding_window_layers_are_refitted_with_their_own_mask():
    from lors.apply.sequential import block_inputs

    torch.manual_seed(0)
    model = family("gemma2").eval()
    batch = {"input_ids": tokens(2, 3), "use_cache": False}
    _, calls = block_inputs(model, list(model.model.layers), [batch])
    masks = [kw.get("attention_mask") for _, kw in calls[0]]
    assert masks[0] is not None and masks[1] is not None
    assert not torch.equal(masks[0], masks[1])  # sliding vs full attention
    torch.testing.assert_close(masks[0], masks[2])


def test_folder_is_self_contained_and_refuses_other_versions(tmp_path):
    torch.manual_seed(0)
    model = family("llama").eval()
    small, _ = lors.compress(model, tokens(4, 1), budget=0.7, sequential=False, shrinkage=0.0)
    folder = lors.save_pretrained(small, tmp_path / "m", dtype="bfloat16")
    meta = json.loads((folder / "lors.json").read_text())
    assert meta["architecture"] == "LlamaForCausalLM" and meta["dtype"] == "bfloat16"
    restored = lors.from_pretrained(folder)
    assert next(restored.parameters()).dtype == torch.bfloat16
    assert lors.count_parameters(restored) == lors.count_parameters(small)
    with pytest.raises(OSError):  # the plain loader stops instead of loading the dense model with random weights
        transformers.LlamaForCausalLM.from_pretrained(folder)
    with pytest.raises(ValueError, match="from_pretrained"):
        lors.load(family("llama"), folder)
    meta["lors_version"] = "0.0.1"
    (folder / "lors.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="written by lors 0.0.1"):
        lors.from_pretrained(folder)
    meta["lors_version"], meta["architecture"] = lors.__version__, "GPT2LMHeadModel"
    (folder / "lors.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="architecture"):
        lors.from_pretrained(folder)
