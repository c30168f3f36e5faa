"""Compression quality methods: block-wise reconstruction, cached top-k distillation, the collapse flag."""
import copy
import json
import re

import pytest
import torch
import torch.nn.functional as F

import lors
from lors.apply.budget import stack_linears
from lors.apply.reconstruct import block_error, reconstruct_block
from lors.apply.sequential import _run, block_inputs
from lors.compression import CompressConfig
from lors.compression.config import FieldError
from lors.tasks.distill import TOPK_KEYS, DistillTask, cache_topk, kl_loss, topk_kl_loss

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.filterwarnings("ignore:calibration saw no inputs")
VOCAB = 96


def tiny_llama(seed=0):
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return transformers.LlamaForCausalLM(config).eval()


def tokens(n, seed, length=16):
    return torch.randint(1, VOCAB, (n, length), generator=torch.Generator().manual_seed(seed))


def block_data(model, teacher, batches):
    """(compressed block 0, its inputs, the original block 0's outputs) on ``batches``."""
    container, _, _ = stack_linears(teacher)
    blocks, originals = list(model.get_submodule(container)), list(teacher.get_submodule(container))
    with torch.no_grad():
        hiddens, calls = block_inputs(teacher, originals, batches)
        inputs = [(h, *c[0]) for h, c in zip(hiddens, calls)]
        targets = [_run(originals[0], *x) for x in inputs]
    return blocks[0], inputs, targets


@pytest.mark.parametrize("loss", ["token", "total"])
def test_block_reconstruction_lowers_the_block_error_and_never_raises_it(loss):
    teacher = tiny_llama()
    batches = [{"input_ids": tokens(4, s), "use_cache": False} for s in range(3)]
    student, _ = lors.compress(teacher, torch.cat([b["input_ids"] for b in batches]),
                               CompressConfig(method="lct", budget=0.4, form="factors", shrinkage=0.0,
                                              sequential=False))
    block, inputs, targets = block_data(student, teacher, batches)
    start = block_error(block, inputs, targets, loss=loss)
    assert start > 1e-4  # something to reconstruct
    trained = copy.deepcopy(block)
    fit = reconstruct_block(trained, inputs, targets, steps=60, lr=3e-3, loss=loss)
    assert fit.before == pytest.approx(start, rel=1e-6)
    assert fit.after < 0.9 * start and fit.steps == 60
    assert block_error(trained, inputs, targets, loss=loss) == pytest.approx(fit.after, rel=1e-6)
    # a learning rate far too large makes training diverge: the closed-form start is put back, bit for bit
    wrecked = copy.deepcopy(block)
    fit = reconstruct_block(wrecked, inputs, targets, steps=5, lr=10.0, loss=loss)
    assert fit.steps == 0 and fit.after == fit.before
    assert all(torch.equal(a, b) for a, b in zip(wrecked.state_dict().values(), block.state_dict().values()))
    # padded tokens are left out of the error: garbage targets there change nothing
    masks = [torch.ones(4, 16, dtype=torch.long) for _ in batches]
    for m, t in zip(masks, targets):
        m[:, -3:] = 0
    noisy = [t.clone() for t in targets]
    for t in noisy:
        t[:, -3:] = 1e3
    clean = block_error(block, inputs, targets, masks, loss)
    assert block_error(block, inputs, noisy, masks, loss) == pytest.approx(clean, rel=1e-6)


def test_block_error_weightings_match_their_formulas_and_differ_on_a_huge_token():
    """'token' averages each token's error relative to its own target; 'total' divides summed squares, so one token
    of huge norm (as pretrained LMs' first token) decides it."""
    g = torch.Generator().manual_seed(0)
    target = torch.randn(2, 5, 8, generator=g)
    target[:, 0] *= 1000.0  # an attention-sink token
    out = target + 0.1 * torch.randn(2, 5, 8, generator=g)
    out[:, 0] = target[:, 0]  # the huge token is reproduced exactly; every other token is 10 % off
    block = torch.nn.Identity()
    inputs = [(out, (), {})]
    err = (out - target).pow(2).sum(-1)
    ref = target.pow(2).sum(-1)
    token, total = (block_error(block, inputs, [target], loss=w) for w in ("token", "total"))
    assert token == pytest.approx(float((err / ref).mean()), rel=1e-5)
    assert total == pytest.approx(float(err.sum() / ref.sum()), rel=1e-5)
    assert total < 1e-6 < 1e-3 < token  # 'total' barely sees the error on the ordinary tokens
    mask = torch.ones(2, 5, dtype=torch.long)
    mask[1, 3:] = 0
    keep = mask.bool()
    assert block_error(block, inputs, [target], [mask], "token") == pytest.approx(
        float((err[keep] / ref[keep]).mean()), rel=1e-5)
    with pytest.raises(ValueError, match="loss must be one of token, total"):
        block_error(block, inputs, [target], loss="mean")
    with pytest.raises(ValueError, match="loss must be one of token, total"):
        reconstruct_block(torch.nn.Linear(8, 8), inputs, [target], loss="sum")


def test_block_reconstruction_is_exact_when_nothing_is_removed():
    teacher = tiny_llama()
    batches = [{"input_ids": tokens(2, s), "use_cache": False} for s in range(2)]
    block, inputs, targets = block_data(copy.deepcopy(teacher), teacher, batches)
    assert block_error(block, inputs, targets) == 0
    state = copy.deepcopy(block.state_dict())
    fit = reconstruct_block(block, inputs, targets, steps=5, lr=1e-3)
    assert fit.before == fit.after == 0 and fit.steps == 0
    assert all(torch.equal(v, state[k]) for k, v in block.state_dict().items())


def test_compress_with_block_reconstruction_beats_the_closed_form_and_reports_every_block():
    teacher = tiny_llama()
    calib, held = tokens(12, 1), tokens(6, 2)
    base = dict(method="lct", budget=0.5, form="factors", shrinkage=0.0)
    closed, _ = lors.compress(teacher, calib, CompressConfig(**base, recon_steps=0))
    trained, report = lors.compress(teacher, calib, CompressConfig(**base, recon_steps=40, recon_lr=3e-3))
    assert len(report.block_errors) == 3
    assert all(after <= before for before, after in report.block_errors)
    assert any(after < 0.95 * before for before, after in report.block_errors)
    assert report.config["recon_steps"] == 40 and "block recon 40" in CompressConfig(**base, recon_steps=40).setting()

    def kl(student):
        with torch.no_grad():
            return kl_loss(student(held).logits, teacher(held).logits, None).item()
    assert kl(trained) < kl(closed)


@pytest.mark.parametrize("loss", [None, "total"])
def test_compress_trains_blocks_on_the_configured_loss(loss, monkeypatch):
    import lors.apply.sequential as sequential
    from lors.compression.config import LM_RECON_LOSS as RECON_LOSS
    seen, real = [], sequential.reconstruct_block

    def spy(*args):
        seen.append(args[-1])
        return real(*args)
    monkeypatch.setattr(sequential, "reconstruct_block", spy)
    _, report = lors.compress(tiny_llama(), tokens(4, 1), CompressConfig(
        method="lct", budget=0.5, form="factors", shrinkage=0.0, recon_steps=2, recon_loss=loss))
    assert seen == [loss or RECON_LOSS] * 3 and report.config["recon_loss"] == (loss or RECON_LOSS)


def test_block_reconstruction_fields_are_refused_where_they_cannot_apply():
    with pytest.raises(FieldError, match="recon_steps .*sequential"):
        CompressConfig(budget=0.5, sequential=False, recon_steps=4)
    with pytest.raises(FieldError, match="recon_steps .*method 'lct'"):
        CompressConfig(budget=0.5, method="lors", recon_steps=4)
    with pytest.raises(FieldError, match="recon_lr applies to block reconstruction"):
        CompressConfig(budget=0.5, recon_lr=1e-3, recon_steps=0)
    with pytest.raises(FieldError, match="recon_lr applies to block reconstruction"):
        CompressConfig(budget=0.5, recon_lr=1e-3, sequential=False, shrinkage=0.2).resolve("lm")
    with pytest.raises(FieldError, match="recon_loss applies to block reconstruction"):
        CompressConfig(budget=0.5, recon_loss="total", recon_steps=0)
    with pytest.raises(FieldError, match="recon_loss applies to block reconstruction"):
        CompressConfig.fast(budget=0.5, recon_loss="total").resolve("lm")
    with pytest.raises(FieldError, match="recon_loss must be one of 'token', 'total'"):
        CompressConfig(budget=0.5, recon_loss="mse")
    assert CompressConfig(budget=0.5).resolve("lm").recon_loss == "token"  # the measured defaults
    assert CompressConfig(budget=0.5, method="lct").resolve("encoder").recon_loss == "total"
    assert CompressConfig(budget=0.5, recon_loss="total").resolve("lm").recon_loss == "total"
    assert CompressConfig(budget=0.5, method="lct", recon_loss="token").resolve("encoder").recon_loss == "token"
    assert "(total loss)" in CompressConfig(budget=0.5, recon_loss="total").resolve("lm").setting()
    # the default applies where reconstruction can run, and nowhere else
    from lors.compression.config import ENCODER_RECON_LR, ENCODER_RECON_STEPS, LM_RECON_LR, LM_RECON_STEPS
    lm, encoder = CompressConfig(budget=0.5).resolve("lm"), CompressConfig(budget=0.5, method="lct").resolve("encoder")
    assert (lm.recon_steps, lm.recon_lr) == (LM_RECON_STEPS, LM_RECON_LR)
    from lors.compression.config import LM_CALIBRATION_WINDOWS
    assert lm.calibration_windows == LM_CALIBRATION_WINDOWS and encoder.calibration_windows is None
    assert CompressConfig(budget=0.5, calibration_windows=8).resolve("lm").calibration_windows == 8
    assert (encoder.recon_steps, encoder.recon_lr) == (ENCODER_RECON_STEPS, ENCODER_RECON_LR)
    assert CompressConfig(budget=0.5, method="modular").resolve("encoder").recon_steps == ENCODER_RECON_STEPS
    set_by_hand = CompressConfig(budget=0.5, method="lct", recon_steps=7, recon_lr=2e-3).resolve("encoder")
    assert (set_by_hand.recon_steps, set_by_hand.recon_lr) == (7, 2e-3)
    assert CompressConfig.fast(budget=0.5).resolve("lm").recon_steps == 0
    assert CompressConfig(budget=0.5, method="lors").resolve("lm").recon_steps == 0
    with pytest.raises(FieldError, match="recon_steps must be an integer"):
        CompressConfig(budget=0.5, recon_steps=-1)
    with pytest.raises(ValueError, match="one target per input"):
        reconstruct_block(torch.nn.Linear(2, 2), [(torch.zeros(1, 2), (), {})], [], steps=1)


def test_kl_losses_at_temperature_one_skip_the_division_and_keep_every_bit():
    # bf16 logits as a bf16-mixed forward leaves them: T = 1 takes the no-division path, T = 2 divides; both must
    # match the formula written out in float32 (value and gradient), so skipping the division changes nothing
    g = torch.Generator().manual_seed(1)
    s = torch.randn(2, 4, 40, generator=g).to(torch.bfloat16)
    t = torch.randn(2, 4, 40, generator=g)
    for temperature in (1.0, 2.0):
        logp = F.log_softmax(t / temperature, -1)
        values, index = logp.topk(6, -1)
        x, ref = s.clone().requires_grad_(True), s.clone().requires_grad_(True)
        got = topk_kl_loss(x, values, index, None, temperature)
        r = F.log_softmax(ref.float() / temperature, -1)
        r_k = r.gather(-1, index)
        t_rest, s_rest = 1 - values.exp().sum(-1), 1 - r_k.exp().sum(-1)
        want = ((values.exp() * (values - r_k)).sum(-1) + t_rest * (t_rest.log() - s_rest.log())).mean()
        want = want * temperature ** 2
        got.backward()
        want.backward()
        assert torch.equal(got, want) and torch.equal(x.grad, ref.grad)
        full = kl_loss(s, t, None, temperature)
        expected = (logp.exp() * (logp - F.log_softmax(s.float() / temperature, -1))).sum(-1).mean()
        assert torch.equal(full, expected * temperature ** 2)
    assert topk_kl_loss(s, values, index, None, 1.0) != topk_kl_loss(s, values, index, None, 2.0)


def test_topk_kl_equals_the_full_kl_when_k_is_the_vocabulary():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(2, 5, 11, generator=g, dtype=torch.float64), torch.randn(2, 5, 11, generator=g,
                                                                               dtype=torch.float64)
    mask = torch.ones(2, 5)
    mask[1, 3:] = 0
    for temperature in (1.0, 2.0):
        logp = F.log_softmax(t / temperature, -1)
        values, index = logp.topk(11, -1)
        full = kl_loss(s, t, mask, temperature)
        assert topk_kl_loss(s, values, index, mask, temperature).item() == pytest.approx(full.item(), rel=1e-5)
        # with k < V: the tail bucket makes it a KL between two (k + 1)-bucket distributions, so 0 <= it <= full
        # (merging outcomes never raises a KL) and 0 only when the student matches the teacher
        values, index = logp.topk(3, -1)
        part = topk_kl_loss(s, values, index, mask, temperature).item()
        assert 0 < part < full.item()
        assert topk_kl_loss(t, values, index, mask, temperature).item() == pytest.approx(0, abs=1e-6)


@pytest.mark.parametrize("precision", ["fp32", "bf16-mixed"])
def test_cached_topk_distillation_equals_full_distillation_when_k_is_the_vocabulary(precision):
    teacher = tiny_llama(0)
    batches = [{"input_ids": tokens(2, s)} for s in range(3)]
    cached = cache_topk(teacher, batches, k=VOCAB, temperature=2.0, precision=precision)
    assert cached[0][TOPK_KEYS[0]].shape == (2, 16, VOCAB) and cached[0][TOPK_KEYS[1]].dtype == torch.int32
    assert TOPK_KEYS[0] not in batches[0]  # the input batches are not changed
    full_task, cached_task = (DistillTask(teacher, "kl", temperature=2.0, precision=precision) for _ in range(2))
    students = [tiny_llama(1), tiny_llama(1)]
    for student, task, data in zip(students, (full_task, cached_task), (batches, cached)):
        optimizer = torch.optim.SGD(student.parameters(), lr=0.5)
        for batch in data * 2:
            loss, n = task.loss(student, batch, torch.device("cpu"))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        assert n == 2
    for a, b in zip(students[0].parameters(), students[1].parameters()):
        assert torch.allclose(a, b, atol=1e-5)
    assert not torch.allclose(students[0].lm_head.weight, tiny_llama(1).lm_head.weight)  # training moved them
    with pytest.raises(ValueError, match="need loss 'kl'"):
        DistillTask(teacher, "kl+hidden").loss(students[0], cached[0], torch.device("cpu"))


def test_distill_topk_fields_are_refused_where_they_cannot_apply():
    with pytest.raises(FieldError, match="distill_topk applies to distillation only"):
        CompressConfig(budget=0.5, distill_topk=8)
    with pytest.raises(FieldError, match="distill_topk caches logits for distill_loss 'kl'"):
        CompressConfig(budget=0.5, distill_steps=2, distill_topk=8, distill_loss="kl+hidden")
    with pytest.raises(FieldError, match="distill_topk applies to causal LMs only"):
        CompressConfig(budget=0.5, distill_steps=2, distill_topk=8).resolve("encoder")


@pytest.mark.parametrize("native", [True, False])
def test_distill_precision_defaults_to_bf16_mixed_for_lms_where_the_hardware_multiplies_bfloat16(native,
                                                                                                 monkeypatch):
    import lors.compression.config as config

    monkeypatch.setattr(config, "native_bf16", lambda device="cpu": native)
    lm = CompressConfig(budget=0.5, distill_steps=2).resolve("lm")
    assert lm.distill_precision == ("bf16-mixed" if native else "fp32")
    assert CompressConfig(budget=0.5, distill_steps=2).resolve("encoder").distill_precision == "fp32"  # not measured
    assert CompressConfig(budget=0.5).resolve("lm").distill_precision is None  # no distillation, no precision
    explicit = CompressConfig(budget=0.5, distill_steps=2, distill_precision="fp32").resolve("lm")
    assert explicit.distill_precision == "fp32"


def test_distill_precision_is_refused_where_it_cannot_apply():
    with pytest.raises(FieldError, match="distill_precision applies to distillation only"):
        CompressConfig(budget=0.5, distill_precision="bf16-mixed")
    with pytest.raises(FieldError, match="distill_precision must be one of 'fp32', 'bf16-mixed'; got 'fp16'"):
        CompressConfig(budget=0.5, distill_steps=2, distill_precision="fp16")


def test_distillation_batches_never_ask_the_sources_for_more_windows_than_they_hold():
    """A long distillation takes every window of every source (the smallest one runs out first, the others make up
    the rest), then repeats them; a short one takes a step's batch of windows per step in equal shares."""
    from lors.compression.lm_distill import distill_batches

    tokenizer = lambda text, add_special_tokens: {"input_ids": list(text.encode())}  # noqa: E731  bytes as ids
    texts = ["a" * 400, "b" * 160, "c" * 1000]  # 25, 10 and 62 windows of 16 tokens: 97 in all
    for steps, windows, counts in ((3, 6, (2, 2, 2)), (20, 40, (15, 10, 15)), (1000, 97, (25, 10, 62))):
        cfg = CompressConfig(budget=0.5, distill_steps=steps, window=16, batch_size=2).resolve("lm")
        batches, key = distill_batches(tokenizer, texts, cfg, "sha")
        assert sum(len(b["input_ids"]) for b in batches) == key["windows"] == windows
        assert set(b["input_ids"].shape[1] for b in batches) == {16} and key["base"] == "sha"
        firsts = [chr(int(w[0])) for b in batches for w in b["input_ids"]]
        assert tuple(firsts.count(c) for c in "abc") == counts
        half = firsts[: len(firsts) // 2]  # interleaved in proportion: each source fills half its share early
        assert all(abs(half.count(c) - n / 2) <= 1 for c, n in zip("abc", counts))



def test_a_causal_lm_seed_reorders_the_distillation_batches_and_nothing_else():
    from lors.compression.lm_distill import seeded_order

    batches = [{"input_ids": torch.full((2, 4), i)} for i in range(40)]
    assert seeded_order(batches, 0) == batches  # seed 0: as made, so every recorded run reproduces
    one, two = seeded_order(batches, 1), seeded_order(batches, 2)
    ids = lambda bs: [int(b["input_ids"][0, 0]) for b in bs]  # noqa: E731
    assert sorted(ids(one)) == sorted(ids(two)) == list(range(40))  # the same data ...
    assert ids(one) != ids(batches) and ids(one) != ids(two) and ids(seeded_order(batches, 1)) == ids(one)  # reordered
    with pytest.raises(FieldError, match="seed orders the distillation batches of causal LMs .* set distill_steps > 0"):
        CompressConfig(budget=0.5, seed=1).resolve("lm")
    assert CompressConfig(budget=0.5, seed=1, distill_steps=5).resolve("lm").seed == 1

# ---------------------------------------------------------------- modular decomposition (MoDeGPT type I)

def test_neuron_refit_is_exact_when_the_dropped_neurons_are_combinations_of_the_kept_ones():
    from lors.apply.modular import refit_down, select_neurons

    g = torch.Generator().manual_seed(0)
    basis = torch.randn(5, 12, generator=g, dtype=torch.float64)  # 12 neurons spanning 5 directions
    h = torch.randn(400, 5, generator=g, dtype=torch.float64) @ basis
    C, D = h.T @ h / len(h), torch.randn(7, 12, generator=g, dtype=torch.float64)
    keep = select_neurons(C, D, 5)
    assert len(keep) == 5 and torch.all(keep[1:] > keep[:-1])
    D_new = refit_down(D, C, C, keep, ridge=1e-12)
    assert torch.allclose(h[:, keep] @ D_new.T, h @ D.T, atol=1e-6)
    # a neuron that never fires, or whose output weights are zero, is never kept before a live one
    C2, D2 = C.clone(), D.clone()
    C2[3], C2[:, 3], D2[:, 8] = 0, 0, 0
    assert not {3, 8} & set(select_neurons(C2, D2, 10).tolist())
    with pytest.raises(ValueError, match="kept neurons must be in"):
        select_neurons(C, D, 13)


def test_modular_mlps_are_exact_when_every_neuron_is_kept():
    from lors.apply.calibration import input_moments
    from lors.apply.modular import decompose_mlps

    teacher = tiny_llama()
    container, targets, paths = stack_linears(teacher)
    model = copy.deepcopy(teacher)
    sizes = decompose_mlps(model, container, targets, 1.0, input_moments(teacher, paths, [tokens(4, 1)]))
    assert set(sizes.values()) == {64}
    x = tokens(2, 5)
    with torch.no_grad():
        assert torch.equal(model(x).logits, teacher(x).logits)


def test_modular_compression_meets_the_budget_reloads_and_cuts_whole_neurons(tmp_path):
    teacher = tiny_llama()
    calib, x = tokens(12, 1), tokens(2, 5)
    student, report = lors.compress(teacher, calib, CompressConfig(method="modular", budget=0.5, shrinkage=0.0,
                                                                   allocation="uniform"))
    mlp = student.model.layers[0].mlp
    assert (mlp.gate_proj.out_features, mlp.up_proj.out_features, mlp.down_proj.in_features) == (32, 32, 32)
    dense = sum(p.numel() for n, p in teacher.model.layers.named_parameters() if "proj" in n)
    kept = sum(p.numel() for n, p in student.model.layers.named_parameters() if "proj" in n or ".U" in n
               or ".V" in n or "pivot" in n.lower())
    assert report.dense_params == dense and report.params <= 0.5 * dense + 3  # the budget, counted independently
    assert kept == report.params
    lors.save_pretrained(student, tmp_path / "m")
    again = lors.from_pretrained(tmp_path / "m")
    with torch.no_grad():
        assert torch.equal(again(x).logits, student(x).logits)
    with pytest.raises(FieldError, match="'modular' keeps a fraction"):
        CompressConfig(method="modular", rank=4)


def test_modular_refuses_a_fused_mlp():
    from lors.apply.modular import mlp_parts

    with pytest.raises(ValueError, match="fused gate_up is not supported"):
        mlp_parts(torch.nn.Module(), ["self_attn.qkv_proj", "mlp.gate_up_proj", "mlp.down_proj"])


# ---------------------------------------------------------------- loss-aware rank allocation

def test_output_sensitivity_is_the_mean_squared_loss_gradient_at_each_layer_output():
    from lors.apply.budget import output_sensitivity

    model = tiny_llama()
    batch = {"input_ids": tokens(2, 3), "attention_mask": torch.ones(2, 16, dtype=torch.long)}
    batch["attention_mask"][1, 12:] = 0
    path = "model.layers.1.mlp.down_proj"
    found = output_sensitivity(model, [path, "model.layers.0.self_attn.q_proj"], [batch])
    assert all(p.grad is None and p.requires_grad for p in model.parameters())  # no weight gradients left behind
    # independently: a zero tensor added to the layer's output; its gradient is dL/dy
    delta = torch.zeros(2, 16, 32, requires_grad=True)
    handle = model.get_submodule(path).register_forward_hook(lambda m, a, out: out + delta)
    logits = model(**batch).logits[:, :-1]
    keep = batch["attention_mask"][:, 1:].bool()
    F.cross_entropy(logits[keep], batch["input_ids"][:, 1:][keep], reduction="sum").backward()
    handle.remove()
    g = delta.grad[batch["attention_mask"].bool()]
    assert found[path] == pytest.approx(float(g.pow(2).sum()) / 32 / int(keep.sum()), rel=1e-5)


def test_embedding_sensitivity_estimates_the_squared_jacobian_of_the_sentence_embedding():
    """For encoders ``L = r . e`` with random directions r: the mean of ||dL/dy||^2 over draws is ||de/dy||_F^2, the
    Gauss-Newton weight of an output error of layer y on the sentence embedding e; checked against the Jacobian
    computed column by column."""
    from lors.apply.budget import output_sensitivity

    config = transformers.BertConfig(vocab_size=VOCAB, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=32, max_position_embeddings=32)
    torch.manual_seed(0)
    bert = transformers.BertModel(config, add_pooling_layer=False).eval()
    batch = {"input_ids": tokens(1, 2)[:, :6], "attention_mask": torch.tensor([[1, 1, 1, 1, 0, 0]])}
    path = "encoder.layer.1.output.dense"
    copies = {k: v.expand(4000, -1) for k, v in batch.items()}  # one sentence, a direction drawn for each copy
    found = output_sensitivity(bert, [path], [copies], objective="embedding")[path]
    delta = torch.zeros(1, 6, 16)

    def embedding(d):
        handle = bert.get_submodule(path).register_forward_hook(lambda m, a, out: out + d)
        hidden = bert(**batch).last_hidden_state
        handle.remove()
        m = batch["attention_mask"].unsqueeze(-1).float()
        return F.normalize((hidden * m).sum(1) / m.sum(1), dim=-1)[0]

    J = torch.autograd.functional.jacobian(embedding, delta)[:, 0, :4]  # (16, 4 real tokens, 16)
    assert found == pytest.approx(float(J.pow(2).sum()) / 16, rel=0.08)
    with pytest.raises(ValueError, match="objective must be one of"):
        output_sensitivity(bert, [path], [batch], objective="cosine")


def test_sensitivity_allocation_meets_the_budget_and_follows_the_sensitivity():
    from lors.apply.budget import budget_ranks, stack_linears
    from lors.apply.calibration import input_moments
    from lors.nn.pivoted import pivoted_rank  # noqa: F401  (pivoted costs are checked below by count)

    model = tiny_llama()
    _, _, paths = stack_linears(model)
    moments = input_moments(model, paths, [tokens(8, 1)])
    flat = {p: 1.0 for p in paths}
    loud = dict(flat, **{paths[0]: 1e6})
    dense = sum(model.get_submodule(p).weight.numel() for p in paths)
    for form in ("factors", "pivoted"):
        a = budget_ranks(model, "lct", 0.4, moments, allocation="sensitivity", sensitivity=flat, form=form)
        b = budget_ranks(model, "lct", 0.4, moments, allocation="sensitivity", sensitivity=loud, form=form)
        for ranks in (a, b):
            cost = sum(r * (sum(model.get_submodule(p).weight.shape) - (r if form == "pivoted" else 0))
                       for p, r in ranks.items())
            assert cost <= 0.4 * dense
        assert b[paths[0]] > a[paths[0]]
    with pytest.raises(ValueError, match="needs sensitivity"):
        budget_ranks(model, "lct", 0.4, moments, allocation="sensitivity")
    student, report = lors.compress(tiny_llama(), tokens(8, 1), CompressConfig(budget=0.5, allocation="sensitivity",
                                                                               shrinkage=0.0, sequential=False))
    assert report.params <= 0.5 * report.dense_params


# ---------------------------------------------------------------- the CLI end to end

def test_compress_cli_modular_recon_and_cached_distillation(tmp_path, monkeypatch, capsys):
    from test_llm_compress import tiny_llama_folder

    from lors.cli.main import main

    monkeypatch.setenv("LORS_CACHE", str(tmp_path / "cache"))
    folder = tiny_llama_folder(tmp_path)
    flags = ["compress", "--model", str(folder), "--budget", "0.5", "--method", "modular", "--shrinkage", "0",
             "--recon-steps", "3", "--calibration", "stdlib", "--calibration-windows", "4", "--eval-text", "pydoc",
             "--eval-windows", "2", "--distill-steps", "4", "--distill-topk", "8", "--no-progress"]
    assert main(flags + ["--out", str(tmp_path / "a")]) == 0
    first = capsys.readouterr().out
    assert re.search(r"teacher top-8: \d+ batches in", first) and "block error" in first
    results = json.loads((tmp_path / "a" / "results.json").read_text())
    assert results["peak_memory_gb"] > 0.1
    for r in results["rows"]:
        assert r["collapsed"] == (r["collapsed_samples"] > 0) and 0 <= r["collapsed_samples"] <= 4
    label = "modular pivoted sequential + block recon 3 (token loss) + sensitivity allocation (50%)"
    assert [r["model"] for r in results["rows"]][1] == label
    assert len(results["report"]["block_errors"]) == 3
    assert len(list((tmp_path / "cache" / "teacher-topk").glob("*.safetensors"))) == 1
    assert main(flags + ["--out", str(tmp_path / "b")]) == 0  # the second student reuses the teacher's cache
    assert "teacher top-8: cached" in capsys.readouterr().out
    again = json.loads((tmp_path / "b" / "results.json").read_text())["rows"]
    assert again[-1]["ppl_pydoc"] == pytest.approx(results["rows"][-1]["ppl_pydoc"], rel=1e-4)
    reloaded = lors.from_pretrained(tmp_path / "b")
    mlp = reloaded.model.layers[0].mlp  # whole neurons cut (how many per block: the sensitivity allocation's call)
    assert mlp.down_proj.in_features == mlp.gate_proj.out_features < 64
    assert main(flags[:-5] + ["--distill-topk", "8"]) == 2
    assert "--distill-topk applies to distillation only" in capsys.readouterr().err
    refused = ["--allocation", "sensitivity", "--init", "svd", "--no-sequential", "--shrinkage", "0"]
    assert main(flags[:7] + refused) == 2
    assert "--allocation" in capsys.readouterr().err


def test_modular_on_an_encoder_keeps_the_budget_of_the_encoders_parameters():
    config = transformers.BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=64, max_position_embeddings=32)
    torch.manual_seed(0)
    bert = transformers.BertModel(config).eval()
    batch = {"input_ids": tokens(8, 1), "attention_mask": torch.ones(8, 16, dtype=torch.long)}
    small, report = lors.compress(bert, [batch], CompressConfig(method="modular", budget=0.5, shrinkage=0.0))
    before, after = lors.count_parameters(bert.encoder), lors.count_parameters(small.encoder)
    assert report.kind == "encoder" and 0.45 * before < after <= 0.5 * before
    assert small.encoder.layer[0].intermediate.dense.out_features < 64


# ---------------------------------------------------------------- modular attention (per head)

def test_modular_attention_is_exact_when_every_feature_is_kept():
    from lors.apply.calibration import input_moments
    from lors.apply.heads import Sliced, decompose_attention

    bert_config = transformers.BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                          intermediate_size=64, max_position_embeddings=32)
    for teacher in (tiny_llama(), transformers.BertModel(bert_config).eval()):  # rotary + GQA; biases, no rotary
        container, targets, paths = stack_linears(teacher)
        model = copy.deepcopy(teacher)
        sizes = decompose_attention(model, container, targets, 1.0, input_moments(teacher, paths, [tokens(8, 1)]))
        assert len(sizes) == 4 * len(model.get_submodule(container))
        assert sum(isinstance(m, Sliced) for m in model.modules()) == len(sizes)
        x = tokens(2, 5)
        with torch.no_grad():
            out = lambda m: m(x).logits if hasattr(m, "lm_head") else m(x).last_hidden_state
            torch.testing.assert_close(out(model), out(teacher), atol=1e-5, rtol=1e-5)


def test_value_output_fit_is_exact_when_the_values_span_the_kept_features():
    from lors.apply.heads import vo_fit

    g = torch.Generator().manual_seed(0)
    heads, kv, dim, keep, d = 4, 2, 8, 3, 16
    # every key-value head's values live in `keep` directions: keeping `keep` features loses nothing
    spans = [torch.randn(dim, keep, generator=g) for _ in range(kv)]
    Wv = torch.cat([A @ torch.randn(keep, d, generator=g) for A in spans])
    bv = torch.cat([A @ torch.randn(keep, generator=g) for A in spans])  # the bias in the span too
    Wo = torch.randn(d, heads * dim, generator=g)
    x = torch.randn(500, d, generator=g, dtype=torch.float64)
    mix = torch.softmax(torch.randn(heads, 500, 500, generator=g, dtype=torch.float64), -1)  # attention weights
    v = (x @ Wv.double().T + bv.double()).view(500, kv, dim)
    a = torch.stack([mix[h] @ v[:, h // (heads // kv)] for h in range(heads)], 1).reshape(500, heads * dim)
    Wv2, bv2, Wo2 = vo_fit(Wv, bv, Wo, a.T @ a / 500, heads, kv, dim, keep)
    assert Wv2.shape == (kv * keep, d) and Wo2.shape == (d, heads * keep)
    z = (x @ Wv2.T + bv2).view(500, kv, keep)
    a2 = torch.stack([mix[h] @ z[:, h // (heads // kv)] for h in range(heads)], 1).reshape(500, heads * keep)
    exact = a @ Wo.double().T
    assert (a2 @ Wo2.T - exact).norm() < 1e-3 * exact.norm()
    # one feature fewer than the values span: no longer exact, and worse than keeping them
    Wv3, bv3, Wo3 = vo_fit(Wv, bv, Wo, a.T @ a / 500, heads, kv, dim, keep - 1)
    z = (x @ Wv3.T + bv3).view(500, kv, keep - 1)
    a3 = torch.stack([mix[h] @ z[:, h // (heads // kv)] for h in range(heads)], 1).reshape(500, heads * (keep - 1))
    assert (a3 @ Wo3.T - exact).norm() > 1e-2 * exact.norm()


def test_query_key_selection_keeps_rotary_pairs_per_key_value_head_and_drops_silent_ones():
    from lors.apply.heads import _units, qk_keep

    g = torch.Generator().manual_seed(0)
    heads, kv, dim, d = 4, 2, 8, 16
    Wq, Wk, C = torch.randn(heads * dim, d, generator=g), torch.randn(kv * dim, d, generator=g), torch.eye(d)
    Wk[0 * dim + 1] = 0  # key head 0, pair (1, 5): one half silent, the pair still scores by its other half
    Wk[0 * dim + 2], Wk[0 * dim + 6] = 0, 0  # key head 0, pair (2, 6): silent, never kept
    Wq[[2 * dim + 3, 3 * dim + 3, 2 * dim + 7, 3 * dim + 7]] = 0  # pair (3, 7) of key head 1's queries
    kept = qk_keep(Wq, Wk, C, heads, kv, dim, 3, rotary=True)
    assert 2 not in kept[0].tolist() and 3 not in kept[1].tolist() and all(len(k) == 3 for k in kept)
    assert _units(dim, True).tolist() == [[0, 4], [1, 5], [2, 6], [3, 7]]
    # the score is sum over a key-value head's queries of sqrt(E q_u^2 E k_u^2), computed independently
    q, k = (Wq @ Wq.T).diagonal().view(heads, dim), (Wk @ Wk.T).diagonal().view(kv, dim)
    pair = lambda e, u: e[..., u] + e[..., u + dim // 2]
    score = [sum(float((pair(q[h], u) * pair(k[1], u)).sqrt()) for h in (2, 3)) for u in range(4)]
    assert kept[1].tolist() == sorted(sorted(range(4), key=lambda u: -score[u])[:3])
    with pytest.raises(ValueError, match=r"kept query-key units per head must be in \[1, 4\]"):
        qk_keep(Wq, Wk, C, heads, kv, dim, 5, rotary=True)


@pytest.mark.parametrize("name", ["llama", "qwen3", "gemma2", "gpt2"])
def test_modular_compression_of_attention_meets_the_budget_and_reloads(name, tmp_path):
    from test_families import family

    from lors.apply.heads import Sliced

    torch.manual_seed(0)
    teacher = family(name).eval()
    student, report = lors.compress(teacher, tokens(8, 1), CompressConfig(method="modular", budget=0.5,
                                                                          shrinkage=0.0, recon_steps=4))
    sliced = {n.rsplit(".", 1)[-1] for n, m in student.named_modules() if isinstance(m, Sliced)}
    # value-output per head (queries and keys by lct: query-key selection lost on SmolLM2); fused c_attn: lct
    expected = {"llama": {"v_proj", "o_proj"}, "gemma2": {"v_proj", "o_proj"}, "qwen3": {"v_proj", "o_proj"},
                "gpt2": set()}[name]
    assert sliced == expected
    dense = sum(p.numel() for n, m in teacher.named_modules() for p in m.parameters() if n.rsplit(".", 1)[-1] in
                {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "c_attn", "c_proj",
                 "c_fc"})
    assert report.dense_params == dense and 0.4 * dense < report.params <= 0.5 * dense
    lors.save_pretrained(student, tmp_path / name)
    again, x = lors.from_pretrained(tmp_path / name), tokens(2, 5)
    with torch.no_grad():
        assert torch.equal(again(x).logits, student(x).logits)


def test_modular_query_key_selection_refuses_per_head_norms():
    from test_families import family

    from lors.apply.calibration import input_moments
    from lors.apply.heads import decompose_attention

    model = family("qwen3").eval()
    container, targets, paths = stack_linears(model)
    with pytest.raises(ValueError, match="q_norm / k_norm"):
        decompose_attention(model, container, targets, 0.5, input_moments(model, paths, [tokens(4, 1)]))
    with pytest.raises(ValueError, match=r"parts must be some of \('qk', 'vo'\)"):
        decompose_attention(model, container, targets, 0.5, None, parts=("qkv",))


def test_modular_sensitivity_allocation_meets_the_budget_and_follows_the_sensitivity(tmp_path):
    from lors.apply.calibration import input_moments
    from lors.apply.modular import modular_sizes, neuron_cost

    teacher = tiny_llama()
    container, targets, paths = stack_linears(teacher)
    moments = input_moments(teacher, paths, [tokens(8, 1)])
    blocks, vo = teacher.model.layers, ("self_attn.v_proj", "self_attn.o_proj", 4, 2, 8)
    per_neuron, _ = neuron_cost(blocks[0], ["mlp.gate_proj", "mlp.up_proj"], "mlp.down_proj")
    per_feature = 2 * 32 + 4 * 32  # a value row of each key-value head, an output column of each query head
    budget = 0.5 * 3 * (64 * per_neuron + 8 * per_feature)
    flat = {p: 1.0 for p in paths}
    loud = dict(flat, **{"model.layers.2.mlp.down_proj": 1e6})
    sizes = {}
    for name, sens in (("flat", flat), ("loud", loud)):
        kept, values = modular_sizes(teacher, container, ["mlp.gate_proj", "mlp.up_proj"], "mlp.down_proj", moments,
                                     sens, budget, vo)
        assert sum(kept) * per_neuron + sum(values) * per_feature <= budget  # counted independently
        assert min(kept) >= 1 and min(values) >= 1 and max(values) <= 8 and max(kept) <= 64
        sizes[name] = kept
    assert sizes["loud"][2] > sizes["flat"][2]  # the block whose MLP the loss feels most keeps more neurons
    student, report = lors.compress(teacher, tokens(8, 1), CompressConfig(method="modular", budget=0.5,
                                                                          allocation="sensitivity", shrinkage=0.0))
    assert 0.45 * report.dense_params < report.params <= 0.5 * report.dense_params
    lors.save_pretrained(student, tmp_path / "m")
    x = tokens(2, 5)
    with torch.no_grad():
        assert torch.equal(lors.from_pretrained(tmp_path / "m")(x).logits, student(x).logits)
    # the default: sensitivity for calibrated lct / modular budgets (LMs and encoders), uniform where it cannot apply
    assert CompressConfig(budget=0.5).resolve("lm").allocation == "sensitivity"
    assert CompressConfig(budget=0.5, method="modular").resolve("lm").allocation == "sensitivity"
    assert CompressConfig(budget=0.5).resolve("encoder").allocation == "sensitivity"  # the embedding's Gauss-Newton
    assert CompressConfig(budget=0.5, init="svd", sequential=False, shrinkage=0.0).resolve("lm").allocation == "uniform"
    assert CompressConfig(budget=0.5, method="lors").resolve("lm").allocation == "uniform"
    assert CompressConfig(rank=4).resolve("lm").allocation == "uniform"
    # distillation's lr: LMs 5e-5 (470 steps at 80 %: lower perplexity than 3e-5), encoders 1e-4 (5e-4 set MiniLM
    # back 0.08 cosine before it recovered); none without distillation
    assert [CompressConfig(budget=0.5, distill_steps=9).resolve(k).lr for k in ("lm", "encoder")] == [5e-5, 1e-4]
    assert CompressConfig(budget=0.5).resolve("encoder").lr is None
    with pytest.raises(FieldError, match="'modular' spreads its budget 'uniform' or by 'sensitivity'"):
        CompressConfig(method="modular", budget=0.5, allocation="spectrum")


def test_sequential_refit_of_modular_layers_is_exact_when_nothing_is_removed():
    """Every neuron and value feature kept, calibration moments shrunk: the least-squares refits of the down and
    output projections (maps from re-based or fewer features) must give back the same network."""
    from lors.apply.calibration import input_moments
    from lors.apply.heads import decompose_attention
    from lors.apply.modular import decompose_mlps
    from lors.apply.sequential import sequential_refit

    teacher = tiny_llama()
    container, targets, paths = stack_linears(teacher)
    moments = input_moments(teacher, paths, [tokens(8, 1)])
    model = copy.deepcopy(teacher)
    decompose_attention(model, container, targets, 1.0, moments, ("vo",))
    decompose_mlps(model, container, targets, 1.0, moments)
    refitted = [t for t in targets if not t.endswith(("q_proj", "k_proj"))]
    sequential_refit(model, teacher, container, refitted, [{"input_ids": tokens(8, 1), "use_cache": False}],
                     shrinkage=0.2)
    x = tokens(2, 5)
    with torch.no_grad():
        torch.testing.assert_close(model(x).logits, teacher(x).logits, atol=1e-5, rtol=1e-5)


def test_teacher_cache_is_keyed_by_the_token_ids(tmp_path, monkeypatch):
    """Equal batches reuse the cached top-k; batches of other tokens under the same key compute their own."""
    from test_llm_compress import tiny_llama

    from lors.compression.lm_distill import cached_teacher
    from lors.tasks.distill import TOPK_KEYS, cache_topk

    monkeypatch.setenv("LORS_CACHE", str(tmp_path))
    teacher, lines = tiny_llama(layers=1), []
    key = dict(base="x", window=6, k=4, temperature=1.0)
    a = [{"input_ids": torch.randint(0, 64, (2, 6), generator=torch.Generator().manual_seed(s))} for s in (0, 1)]
    b = [{"input_ids": x["input_ids"].flip(0)} for x in a]
    first = cached_teacher(teacher, a, key, lines.append)
    again = cached_teacher(teacher, a, key, lines.append)
    other = cached_teacher(teacher, b, key, lines.append)
    assert [line.startswith("teacher top-4: cached (") for line in lines] == [False, True, False]
    assert len(list((tmp_path / "teacher-topk").glob("*.safetensors"))) == 2
    fresh = cache_topk(teacher, b, 4)
    for x, y, z, w in zip(first, again, other, fresh):
        for k in TOPK_KEYS:
            assert torch.equal(x[k], y[k]) and torch.allclose(z[k].float(), w[k].float())
        assert not torch.equal(x[TOPK_KEYS[1]], z[TOPK_KEYS[1]])  # other tokens, other teacher predictions
    # a bf16-mixed student gets a teacher run under the same autocast: its own cache, values near fp32's
    half = cached_teacher(teacher, a, key, lines.append, "bf16-mixed")
    assert not lines[-1].startswith("teacher top-4: cached (")
    assert len(list((tmp_path / "teacher-topk").glob("*.safetensors"))) == 3
    for x, y in zip(first, half):
        assert not torch.equal(x[TOPK_KEYS[0]], y[TOPK_KEYS[0]])
        torch.testing.assert_close(x[TOPK_KEYS[0]].exp().sum(-1), y[TOPK_KEYS[0]].exp().sum(-1), atol=0.05, rtol=0)


def test_default_method_is_modular_below_the_threshold_for_lms_only():
    """The default method: ``modular`` for causal-LM budgets under MODULAR_BELOW (it measured better at 60 %),
    ``lct`` at and above it, for encoders, rank/epsilon sizes, spectrum allocation, and models whose fused MLP
    modular cannot cut (Phi-3's ``gate_up_proj``); a method the user names is kept."""
    import transformers as t

    from lors.apply.modular import modular_applies
    from lors.compression.config import MODULAR_BELOW

    method = lambda kind, **f: CompressConfig(**f).resolve(kind).method  # noqa: E731
    assert method("lm", budget=MODULAR_BELOW - 0.01) == "modular" and method("lm", budget=MODULAR_BELOW) == "lct"
    assert method("encoder", budget=0.5) == "lct" and method("lm", rank=4) == "lct"
    assert method("lm", budget=0.5, allocation="spectrum") == "lct"
    assert method("lm", budget=0.5, method="lct") == "lct" and method("lm", budget=0.9, method="modular") == "modular"
    assert CompressConfig(budget=0.5).method is None and "default" in CompressConfig(budget=0.5).setting()
    fused = t.Phi3ForCausalLM(t.Phi3Config(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                           num_attention_heads=4, num_key_value_heads=2, pad_token_id=0))
    assert modular_applies(tiny_llama()) and not modular_applies(fused)
    assert CompressConfig(budget=0.5).resolve("lm", fused).method == "lct"
    assert CompressConfig(budget=0.5).resolve("lm", tiny_llama()).method == "modular"
    # through compress(): the fused model gets lct factors, the separate MLP whole neurons
    _, report = lors.compress(fused, tokens(4, 1), CompressConfig.fast(budget=0.5))
    assert report.config["method"] == "lct"
    _, report = lors.compress(tiny_llama(), tokens(4, 1), CompressConfig.fast(budget=0.5))
    assert report.config["method"] == "modular"
