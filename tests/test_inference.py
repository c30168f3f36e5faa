"""Inference paths: the GPT's key/value cache, the LORS weight cache, bf16 autocast and torch.compile."""
import copy

import pytest
import torch
import torch.nn.functional as F

import lors
from lors.models.gpt import GPT
from lors.nn.static import LorsLinearStack

SIZES = dict(vocab_size=64, block_size=24, dim=32, depth=3, heads=4, mlp_dim=64)
VARIANTS = [("dense", {}), ("lors", dict(rank=3, attn_groups=[1, 2, 1])), ("lct", dict(lct_rank=6))]


def model_of(variant, kw, seed=0):
    torch.manual_seed(seed)
    model = GPT(**SIZES, variant=variant, **kw).eval()
    with torch.no_grad():  # LORS residuals start at zero: make them matter
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


@pytest.mark.parametrize("variant,kw", VARIANTS)
def test_cached_decoding_equals_the_full_forward(variant, kw):
    model = model_of(variant, kw)
    idx = torch.randint(0, 64, (2, 20))
    with torch.no_grad():
        full = model(idx)
        cache = model.new_cache()
        parts = [model(idx[:, :6], cache)]  # prefill
        parts += [model(idx[:, t:t + 1], cache) for t in range(6, 12)]  # one token at a time
        parts.append(model(idx[:, 12:20], cache))  # a chunk after a cache: causal within it, all of the past
    torch.testing.assert_close(torch.cat(parts, 1), full, atol=1e-5, rtol=1e-5)
    assert cache[0][0].shape == (2, 4, 20, 8)  # (B, heads, tokens, head dim)
    with pytest.raises(ValueError, match="block_size"):
        model(idx[:, :5], cache)  # 20 cached + 5 > 24


def test_generate_with_the_cache_equals_greedy_recomputation_past_the_block_size():
    model = model_of("lors", dict(rank=3))
    idx = torch.randint(0, 64, (2, 5))
    out = model.generate(idx, tokens=30, temperature=0)  # 35 > block_size 24: ends with a sliding window
    ref = idx
    with torch.no_grad():
        for _ in range(30):
            ref = torch.cat([ref, model(ref[:, -24:])[:, -1].argmax(-1, keepdim=True)], 1)
    assert torch.equal(out, ref)


def test_weight_cache_is_exact_reused_and_invalidated_by_a_step():
    model = model_of("lors", dict(rank=3, attn_groups=[1, 2, 1]))
    idx = torch.randint(0, 64, (2, 10))
    with torch.no_grad():
        plain = model(idx)
    assert lors.cache_weights(model) == 4  # qkv, proj, fc1, fc2
    stacks = [m for m in model.modules() if isinstance(m, LorsLinearStack)]
    with torch.no_grad():
        cached = model(idx)
    torch.testing.assert_close(cached, plain, atol=1e-5, rtol=1e-5)
    held = sum(w.numel() for s in stacks for _, w in s._weight_cache.values())
    assert held == 3 * (32 * 96 + 32 * 32 + 32 * 64 + 64 * 32)  # N d_out d_in per stack: the merged weights
    first = stacks[0].cached_weight(1)
    assert stacks[0].cached_weight(1) is first  # reused while nothing changed

    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    F.cross_entropy(model(idx).flatten(0, 1), idx.flatten()).backward()  # gradients on: the cache is not read
    opt.step()
    assert stacks[0].cached_weight(1) is not first  # the step changed the tensors: rebuilt
    with torch.no_grad():
        after = model(idx)
        lors.cache_weights(model, enabled=False)
        assert all(not s._weight_cache for s in stacks)
        torch.testing.assert_close(after, model(idx), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(after, plain)


@pytest.mark.parametrize("variant,kw", VARIANTS[1:])
def test_bf16_autocast_is_close_to_fp32_and_merging_under_it_stays_exact(variant, kw):
    model = model_of(variant, kw)
    idx = torch.randint(0, 64, (2, 16))
    with torch.no_grad():
        fp32 = model(idx)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16 = model(idx)
            merged_in_autocast = lors.merge(model)
    assert bf16.dtype == torch.bfloat16
    rel = ((bf16.float() - fp32).norm() / fp32.norm()).item()
    assert rel < 3e-2  # bf16 keeps 8 bits of mantissa
    merged = lors.merge(model)
    for (name, a), (_, b) in zip(merged.state_dict().items(), merged_in_autocast.state_dict().items()):
        assert a.dtype == torch.float32 and torch.equal(a, b), name  # autocast does not reach the float64 merge
    with torch.no_grad():
        torch.testing.assert_close(merged(idx), fp32, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("variant,kw", VARIANTS[1:])
def test_compiled_model_equals_eager_in_training_and_inference(variant, kw):
    eager = model_of(variant, kw).train()
    twin = copy.deepcopy(eager)
    compiled = torch.compile(twin)
    idx = torch.randint(0, 64, (2, 16))
    losses = []
    for m in (eager, compiled):
        loss = F.cross_entropy(m(idx[:, :-1]).flatten(0, 1), idx[:, 1:].flatten())
        loss.backward()
        losses.append(loss)
    torch.testing.assert_close(losses[0], losses[1], atol=1e-5, rtol=1e-5)
    for (name, p), q in zip(eager.named_parameters(), twin.parameters()):
        torch.testing.assert_close(p.grad, q.grad, atol=1e-5, rtol=1e-4, msg=name)
    eager.eval(), compiled.eval()
    with torch.no_grad():
        torch.testing.assert_close(compiled(idx), eager(idx), atol=1e-5, rtol=1e-5)
