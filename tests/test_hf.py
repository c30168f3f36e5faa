"""Hugging Face models: GPT-2 Conv1D, safe save_pretrained/load, Trainer, lct edge cases, PEFT-style options."""
import copy
import os

import pytest
import torch

import lors

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.filterwarnings("ignore:LORS stack", "ignore:lct kept")


def gpt2(layers=3, seed=0):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    cfg = GPT2Config(n_layer=layers, n_embd=32, n_head=4, vocab_size=100, n_positions=64, bos_token_id=0,
                     eos_token_id=0, pad_token_id=0)
    model = GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():  # make the blocks differ more than their init does
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return model


def tokens(seed=1, shape=(2, 10)):
    return torch.randint(1, 100, shape, generator=torch.Generator().manual_seed(seed))


def test_gpt2_conv1d_convert_full_rank_exact_merge_and_generate():
    from transformers.pytorch_utils import Conv1D

    base, x = gpt2(), tokens()
    ref = base(x).logits
    conv = lors.convert(copy.deepcopy(base), lors.LorsConfig(rank=32))
    assert sorted(r.target for r in conv.lors_conversion.stacks) == \
        ["attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"]
    assert torch.allclose(conv(x).logits, ref, atol=1e-4)
    prompt, mask = x[:, :4], torch.ones(2, 4, dtype=torch.long)
    assert torch.equal(conv.generate(prompt, attention_mask=mask, max_new_tokens=6, do_sample=False),
                       base.generate(prompt, attention_mask=mask, max_new_tokens=6, do_sample=False))
    merged = lors.merge(conv)
    assert isinstance(merged.transformer.h[1].attn.c_attn, Conv1D)
    assert merged.transformer.h[1].attn.c_attn.weight.shape == (32, 96)  # (in, out), as GPT-2 stores it
    assert torch.allclose(merged(x).logits, ref, atol=1e-4)
    low = lors.convert(copy.deepcopy(base), lors.LorsConfig(rank=2))
    assert lors.count_parameters(low) < lors.count_parameters(base)


def test_gpt2_lct_keeps_tied_head_skips_small_layers_never_grows():
    from transformers.pytorch_utils import Conv1D

    base, x = gpt2(), tokens()
    with pytest.warns(UserWarning, match="lm_head"):
        model = lors.lct(copy.deepcopy(base), rank=16, targets=".*")
    assert model.lm_head.weight is model.transformer.wte.weight  # still tied
    assert "lm_head" not in lors.lct_ranks(model)
    assert model.lors_conversion.conversions[-1].skipped["lm_head"].startswith("weight is tied")
    assert "transformer.h.0.mlp.c_fc" in lors.lct_ranks(model)
    assert lors.count_parameters(model) < lors.count_parameters(base)
    # a rank larger than some layers: those are skipped and reported, nothing raises, nothing grows
    with pytest.warns(UserWarning, match="rank 64 > min"):
        big = lors.lct(copy.deepcopy(base), rank=64, targets=".*")
    assert "transformer.h.0.attn.c_proj" in big.lors_conversion.conversions[-1].skipped
    assert lors.count_parameters(big) <= lors.count_parameters(base)
    # full rank where it fits is exact, and merge gives Conv1D back
    full = lors.lct(copy.deepcopy(base), rank=32, targets=r".*c_attn", skip_if_larger=False)
    assert torch.allclose(full(x).logits, base(x).logits, atol=1e-4)
    assert isinstance(lors.merge(full).transformer.h[0].attn.c_attn, Conv1D)


def test_save_load_gpt2_folder_round_trip(tmp_path):
    base, x = gpt2(), tokens()
    model = lors.lct(lors.convert(copy.deepcopy(base), lors.LorsConfig(rank=4, targets=["c_attn", "c_fc"])),
                     rank=8, targets=r".*attn\.c_proj")
    lors.save(model, tmp_path / "ck")
    loaded = lors.load(gpt2(seed=5), tmp_path / "ck")
    assert torch.equal(loaded(x).logits, model(x).logits)
    assert loaded.lm_head.weight is loaded.transformer.wte.weight


def test_save_pretrained_is_safe_and_from_pretrained_fails_loudly(tmp_path):
    from transformers import GPT2LMHeadModel

    base, x = gpt2(), tokens()
    model = lors.convert(copy.deepcopy(base), lors.LorsConfig(rank=4))
    model.save_pretrained(tmp_path / "hf")
    assert (tmp_path / "hf" / "lors.json").is_file() and (tmp_path / "hf" / "model.safetensors").is_file()
    loaded = lors.load(gpt2(seed=7), tmp_path / "hf")
    assert torch.equal(loaded(x).logits, model(x).logits)
    # the unsafe path (from_pretrained on the unconverted class) must not load silently
    with pytest.raises(RuntimeError, match="mismatch"):
        GPT2LMHeadModel.from_pretrained(tmp_path / "hf")
    # a merged (plain) model saves and loads through transformers as usual
    lors.merge(model).save_pretrained(tmp_path / "merged")
    assert not (tmp_path / "merged" / "lors.json").exists()
    again = GPT2LMHeadModel.from_pretrained(tmp_path / "merged").eval()
    assert torch.allclose(again(x).logits, model(x).logits, atol=1e-4)


def test_load_explains_converted_weights_without_record(tmp_path):
    model = lors.convert(gpt2(), lors.LorsConfig(rank=4))
    model.save_pretrained(tmp_path / "hf")
    (tmp_path / "hf" / "lors.json").unlink()
    with pytest.raises(FileNotFoundError, match="lors_\\* keys.*no lors.json"):
        lors.load(gpt2(), tmp_path / "hf")


class RandomTokens(torch.utils.data.Dataset):
    def __len__(self):
        return 16

    def __getitem__(self, i):
        x = tokens(seed=i, shape=(12,))
        return {"input_ids": x, "labels": x}


class RandomImages(torch.utils.data.Dataset):
    def __len__(self):
        return 16

    def __getitem__(self, i):
        g = torch.Generator().manual_seed(i)
        return {"pixel_values": torch.randn(3, 16, 16, generator=g), "labels": torch.tensor(i % 3)}


def hf_models():
    from transformers import LlamaConfig, LlamaForCausalLM, ViTConfig, ViTForImageClassification

    torch.manual_seed(0)
    llama = LlamaForCausalLM(LlamaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                         num_key_value_heads=2, intermediate_size=64, vocab_size=100))
    vit = ViTForImageClassification(ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                              intermediate_size=64, image_size=16, patch_size=8, num_labels=3))
    return {"llama": (llama, RandomTokens()), "vit": (vit, RandomImages()), "gpt2": (gpt2(2), RandomTokens())}


@pytest.mark.parametrize("name", ["llama", "vit", "gpt2"])
def test_trainer_trains_converted_model_and_checkpoint_loads(tmp_path, name):
    pytest.importorskip("accelerate")
    from transformers import Trainer, TrainingArguments

    model, data = hf_models()[name]
    base = copy.deepcopy(model)
    model = lors.convert(model, lors.LorsConfig(rank=2))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.AdamW(lors.param_groups(model, lr=1e-3, weight_decay=0.01))
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=4, per_device_train_batch_size=4, save_steps=4,
                             report_to=[], use_cpu=True, disable_tqdm=True, logging_steps=100)
    trainer = Trainer(model=model, args=args, train_dataset=data, optimizers=(optimizer, None))
    result = trainer.train()
    assert torch.isfinite(torch.tensor(result.training_loss))
    shared = [n for n in before if n.endswith("shared_weight")]
    assert shared and all(not torch.equal(before[n], dict(model.named_parameters())[n]) for n in shared)
    # the Trainer's scheduler scales each group's own initial lr, so the ratio holds at every step
    lrs = {g["name"]: g["initial_lr"] for g in optimizer.param_groups}
    assert lrs["shared/N=2"] / lrs["private"] == pytest.approx(2 ** -0.5)
    checkpoint = tmp_path / "checkpoint-4"
    assert (checkpoint / "lors.json").is_file()
    loaded = lors.load(base, checkpoint).eval()
    model.eval()
    batch = torch.utils.data.default_collate([data[0], data[1]])
    batch.pop("labels")
    key = "logits"
    assert torch.allclose(loaded(**batch)[key], model(**batch)[key], atol=1e-6)


def test_peft_style_options():
    base = gpt2(layers=4)
    model = lors.convert(copy.deepcopy(base), lors.LorsConfig(
        rank=2, exclude_modules=["attn.c_proj"], layers_to_transform=[1, 2, 3], train_shared=False,
        freeze_base=True, modules_to_save=["ln_f"]))
    targets = sorted(r.target for r in model.lors_conversion.stacks)
    assert targets == ["attn.c_attn", "mlp.c_fc", "mlp.c_proj"]
    assert all(r.layers == [1, 2, 3] for r in model.lors_conversion.stacks)
    from transformers.pytorch_utils import Conv1D
    assert isinstance(model.transformer.h[0].attn.c_attn, Conv1D)  # block 0 left dense
    assert isinstance(model.transformer.h[1].attn.c_proj, Conv1D)  # excluded path left dense
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(("lors_h" in n and not n.endswith("shared_weight")) or n.startswith("transformer.ln_f")
                             for n in trainable)
    assert "transformer.ln_f.weight" in trainable and "transformer.h.0.attn.c_attn.weight" not in trainable
    expected = sum(p.numel() for n, p in model.named_parameters() if n in trainable)
    assert lors.count_parameters(model, trainable_only=True) == expected
    assert f"trainable params: {expected:,}" in lors.accounting.summary(model)
    # the options survive save/load
    x = tokens()
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        lors.save(model, d)
        loaded = lors.load(copy.deepcopy(base), d)
    assert {n for n, p in loaded.named_parameters() if p.requires_grad} == trainable
    assert torch.equal(loaded(x).logits, model(x).logits)


def test_peft_option_errors():
    with pytest.raises(ValueError, match="layers_to_transform"):
        lors.LorsConfig(layers_to_transform=[1])
    with pytest.raises(ValueError, match="modules_to_save"):
        lors.LorsConfig(modules_to_save=["classifier"])
    with pytest.raises(ValueError, match="layers_to_transform.*allowed: 0..2"):
        lors.convert(gpt2(), lors.LorsConfig(layers_to_transform=[1, 5]))
