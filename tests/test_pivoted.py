"""Pivoted low-rank storage: the same rank-r matrix in r (in + out - r) numbers; budgets, save/load, merge, compress."""
import pytest
import torch

import lors
from lors.apply.budget import budget_ranks, stack_linears
from lors.apply.calibration import input_moments
from lors.apply.lct import pivot
from lors.nn.pivoted import PivotedLowRankLinear, pivoted_rank

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.filterwarnings("ignore:calibration saw no inputs")


def test_from_factors_is_exact_and_stores_r_times_in_plus_out_minus_r():
    g = torch.Generator().manual_seed(0)
    for out_f, in_f, r in ((12, 20, 5), (20, 12, 7), (9, 9, 8)):
        A, B = torch.randn(out_f, r, generator=g, dtype=torch.float64), torch.randn(r, in_f, generator=g,
                                                                                 dtype=torch.float64)
        bias = torch.randn(out_f, generator=g, dtype=torch.float64)
        layer = PivotedLowRankLinear.from_factors(A, B, bias)
        torch.testing.assert_close(layer.weight, A @ B, atol=1e-10, rtol=0)
        x = torch.randn(3, 4, in_f, generator=g, dtype=torch.float64)
        torch.testing.assert_close(layer(x), x @ (A @ B).T + bias, atol=1e-10, rtol=0)
        assert sorted(layer.pivots.tolist()) == list(range(in_f))  # a permutation
        stored = sum(p.numel() for p in layer.parameters())
        assert stored == r * in_f + r * out_f - r * r + out_f == layer.num_stored()
        assert lors.count_parameters(layer) == stored


def test_from_lowrank_matches_the_factor_layer_in_float32():
    torch.manual_seed(0)
    dense = torch.nn.Linear(48, 24)
    moment = torch.randn(48, 48)
    moment = moment @ moment.T / 48
    factors = lors.LowRankLinear.from_weight(dense.weight, dense.bias, rank=10, input_moment=moment)
    layer = PivotedLowRankLinear.from_lowrank(factors)
    x = torch.randn(5, 48)
    torch.testing.assert_close(layer(x), factors(x), atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(layer.to_dense().weight, factors.weight.detach(), atol=2e-6, rtol=0)
    assert layer.num_stored() == factors.num_stored() - 10 * 10


def test_gradients_equal_those_of_the_assembled_weight():
    torch.manual_seed(1)
    layer = PivotedLowRankLinear.from_factors(torch.randn(6, 3), torch.randn(3, 8), torch.randn(6))
    x = torch.randn(4, 8)
    layer(x).pow(2).sum().backward()
    grads = [p.grad.clone() for p in layer.parameters()]
    layer.zero_grad()
    torch.nn.functional.linear(x, layer.weight, layer.bias).pow(2).sum().backward()
    for a, p in zip(grads, layer.parameters()):
        assert a.abs().sum() > 0
        torch.testing.assert_close(a, p.grad)


def test_pivoted_rank_is_the_largest_that_fits():
    for shape in ((576, 576), (192, 576), (1536, 576), (7, 3)):
        for budget in (10.0, 0.5 * shape[0] * shape[1], 0.8 * shape[0] * shape[1], shape[0] * shape[1] - 1):
            r = pivoted_rank(shape, budget)
            best = max([k for k in range(0, min(shape) + 1) if k * (sum(shape) - k) <= budget])
            assert r == best, (shape, budget, r, best)
    assert pivoted_rank((576, 576), 0.8 * 576 * 576) == 318  # vs 230 as U V


def tiny_llama(layers=3):
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32)
    return transformers.LlamaForCausalLM(cfg).eval()


def calibration(n=3):
    g = torch.Generator().manual_seed(1)
    return [{"input_ids": torch.randint(0, 64, (2, 12), generator=g), "use_cache": False} for _ in range(n)]


@pytest.mark.parametrize("allocation", ["uniform", "spectrum"])
def test_budget_ranks_cost_pivoted_storage(allocation):
    model = tiny_llama()
    _, _, paths = stack_linears(model)
    moments = input_moments(model, paths, calibration())
    dense = sum(model.get_submodule(p).weight.numel() for p in paths)
    for fraction in (0.8, 0.5):
        ranks = budget_ranks(model, "lct", fraction, moments, allocation=allocation, form="pivoted")
        cost = 0
        for p, r in ranks.items():
            out_f, in_f = model.get_submodule(p).weight.shape
            assert 1 <= r < min(out_f, in_f)
            cost += r * (in_f + out_f - r)
        assert fraction - 0.05 < cost / dense <= fraction
        factors = budget_ranks(model, "lct", fraction, moments, allocation=allocation)
        assert sum(ranks.values()) > sum(factors.values())  # the same budget buys more rank
    with pytest.raises(ValueError, match="form"):
        budget_ranks(model, "lors", 0.8, moments, form="pivoted")


def test_pivot_saves_loads_and_merges(tmp_path):
    model = tiny_llama()
    lors.lct(model, fraction=0.6, targets=r"model\.layers\..*_proj")
    x = torch.randint(0, 64, (2, 10))
    before = model(x).logits
    factor_count = lors.count_parameters(model)
    pivot(model)
    assert all(isinstance(model.get_submodule(p), PivotedLowRankLinear) for p in stack_linears(tiny_llama())[2])
    torch.testing.assert_close(model(x).logits, before, atol=1e-4, rtol=1e-4)
    assert lors.count_parameters(model) < factor_count
    lors.save(model, tmp_path / "p")
    restored = lors.load(tiny_llama(), tmp_path / "p")
    torch.testing.assert_close(restored(x).logits, model(x).logits, atol=0, rtol=0)
    torch.testing.assert_close(lors.merge(model)(x).logits, model(x).logits, atol=1e-4, rtol=1e-4)
    assert [c.kind for c in restored.lors_conversion.conversions] == ["lct", "pivot"]
    with pytest.raises(ValueError, match="no LowRankLinear"):
        pivot(model)


def test_compress_pivoted_keeps_the_budget_and_beats_factors_on_output_error():
    from lors.compression import CompressConfig
    from lors.compression.pipeline import choose_shrinkage

    teacher = tiny_llama()
    calib = calibration()
    _, _, paths = stack_linears(teacher)
    moments = input_moments(teacher, paths, calib)
    dense = sum(teacher.get_submodule(p).weight.numel() for p in paths)
    x = torch.cat([b["input_ids"] for b in calib])
    ref = teacher(x).logits

    @torch.no_grad()
    def error(model):
        return float((model(x).logits - ref).pow(2).mean() / ref.pow(2).mean())

    errors = {}
    for form in ("factors", "pivoted"):
        student, report = lors.compress(teacher, calib, method="lct", budget=0.5, form=form, shrinkage=0.0)
        kept = sum(p.numel() for path in paths for p in student.get_submodule(path).parameters())
        assert 0.45 < kept / dense <= 0.5 and report.params == kept
        errors[form] = error(student)
    assert errors["pivoted"] < errors["factors"]
    cfg = CompressConfig(method="lct", budget=0.5, sequential=False, allocation="uniform").resolve("lm")
    best, scores = choose_shrinkage(teacher, moments, error, cfg, grid=(0.0, 0.5, 1.0))
    assert set(scores) == {0.0, 0.5, 1.0} and best == min(scores, key=scores.get)
    assert len(set(scores.values())) == 3  # the shrinkage changes the fit
    with pytest.raises(ValueError, match="pivoted"):
        CompressConfig(method="lors", budget=0.5, form="pivoted")
