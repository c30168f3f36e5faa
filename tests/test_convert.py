import pytest
import torch
from torch import nn

import lors
from lors import LorsConfig, convert, count_parameters, lct, lct_ranks, merge
from lors.models.vit import VisionTransformer
from lors.nn.static import StackLayer

# Full-rank conversions (used to check exactness) are larger than dense: convert() warns, as it should.
pytestmark = pytest.mark.filterwarnings("ignore:LORS stack")


def encoder(batch_first=True, layers=3, d=32, ff=64, seed=0):
    torch.manual_seed(seed)
    layer = nn.TransformerEncoderLayer(d, 4, ff, dropout=0.0, batch_first=batch_first)
    enc = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
    with torch.no_grad():  # TransformerEncoder deep-copies one layer: make the layers differ
        for p in enc.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return enc.eval()


def dense_minus_lors(n, d_in, d_out, ranks):
    """Parameters removed by turning n dense (d_out x d_in) weights into shared + residual factors."""
    return n * d_in * d_out - (d_in * d_out + sum(r * (d_in + d_out) for r in ranks))


@pytest.mark.parametrize("batch_first", [True, False])
def test_transformer_encoder_full_rank_reproduces_and_low_rank_drops_closed_form(batch_first):
    enc = encoder(batch_first)
    x = torch.randn(5, 7, 32)
    ref = enc(x)
    before = count_parameters(enc)
    full = convert(encoder(batch_first), LorsConfig(rank=32))
    assert torch.allclose(full(x), ref, atol=1e-5)
    with torch.no_grad():  # also through TransformerEncoderLayer's inference fast path
        assert torch.allclose(full(x), ref, atol=1e-5)

    low = convert(encoder(batch_first), LorsConfig(rank=4))
    assert (low(x) - ref).abs().max() > 1e-3
    drop = (dense_minus_lors(3, 32, 96, [4] * 3) + dense_minus_lors(3, 32, 32, [4] * 3)
            + dense_minus_lors(3, 32, 64, [4] * 3) + dense_minus_lors(3, 64, 32, [4] * 3))
    assert count_parameters(low) == before - drop
    assert isinstance(low.layers[0].linear1, StackLayer)
    assert "lors_layers.self_attn__in_proj.shared_weight" in low.state_dict()
    assert not any("in_proj_weight" in k for k in low.state_dict())


def test_merge_round_trip_is_new_and_dense():
    enc = encoder()
    x = torch.randn(2, 5, 32)
    conv = convert(encoder(), rank=4)
    merged = merge(conv)
    assert merged is not conv and isinstance(conv.layers[0].linear1, StackLayer)  # input untouched
    assert list(merged.state_dict()) == list(enc.state_dict())
    assert type(merged.layers[0].self_attn) is nn.MultiheadAttention
    assert type(merged.layers[0].self_attn.out_proj) is type(enc.layers[0].self_attn.out_proj)
    assert torch.allclose(merged(x), conv(x), atol=1e-5)
    assert count_parameters(merged) == count_parameters(enc)


def test_targets_rank_pattern_and_epsilon():
    conv = convert(encoder(), LorsConfig(targets=["linear1", "linear2"], rank=2,
                                         rank_pattern={"linear2": 3, "layers.1.linear1": 5}))
    rec = {r.target: r.ranks for r in conv.lors_conversion.stacks}
    assert rec == {"linear1": [2, 5, 2], "linear2": [3, 3, 3]}
    assert isinstance(conv.layers[0].self_attn.out_proj, nn.Linear)  # not targeted

    regex = convert(encoder(), LorsConfig(targets=r"self_attn\..*", rank=2))
    assert {r.target for r in regex.lors_conversion.stacks} == {"self_attn.in_proj", "self_attn.out_proj"}

    enc = encoder()
    conv = convert(encoder(), LorsConfig(epsilon=0.05, targets=["linear1"]))
    for i, (orig, layer) in enumerate(zip(enc.layers, conv.layers)):
        err = (layer.linear1.weight - orig.linear1.weight).norm() / orig.linear1.weight.norm()
        assert err <= 0.05 + 1e-6
        r = conv.lors_conversion.stacks[0].ranks[i]
        assert 1 <= r < 32


def test_vit_full_rank_reproduces():
    torch.manual_seed(0)
    vit = VisionTransformer(img_size=8, patch_size=4, in_chans=1, num_classes=3, dim=16, depth=3, heads=2, mlp_dim=32)
    x = torch.randn(2, 1, 8, 8)
    ref = vit(x)
    convert(vit, rank=16)
    assert torch.allclose(vit(x), ref, atol=1e-5)
    assert {r.container for r in vit.lors_conversion.stacks} == {"blocks"}


def test_bert_full_rank_reproduces_and_low_rank_differs():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                                  intermediate_size=64, max_position_embeddings=16)
    torch.manual_seed(0)
    bert = transformers.BertModel(cfg).eval()
    ids = torch.randint(0, 50, (2, 9))
    ref = bert(input_ids=ids).last_hidden_state
    before = count_parameters(bert)
    convert(bert, LorsConfig(rank=32))
    assert torch.allclose(bert(input_ids=ids).last_hidden_state, ref, atol=1e-5)
    torch.manual_seed(0)
    low = convert(transformers.BertModel(cfg).eval(), LorsConfig(targets=["query", "key", "value"], rank=2))
    assert (low(input_ids=ids).last_hidden_state - ref).abs().max() > 1e-4
    assert count_parameters(low) == before - 3 * dense_minus_lors(3, 32, 32, [2, 2, 2])


def payload_bytes(path):
    """Bytes of tensor data in a safetensors file (file size minus its 8-byte length and JSON header)."""
    raw = path.read_bytes()
    return len(raw) - 8 - int.from_bytes(raw[:8], "little")


def test_save_load_round_trip_and_file_shrinks(tmp_path):
    from safetensors.torch import save_model

    x = torch.randn(2, 5, 32)
    enc = encoder()
    save_model(enc, str(tmp_path / "dense.safetensors"))
    conv = convert(encoder(), rank=2)
    lors.save(conv, tmp_path / "lors")
    loaded = lors.load(encoder(seed=1), tmp_path / "lors")  # different init, same architecture
    assert torch.allclose(loaded(x), conv(x), atol=1e-6)
    ratio_params = count_parameters(conv) / count_parameters(enc)
    ratio_files = payload_bytes(tmp_path / "lors" / "model.safetensors") / payload_bytes(tmp_path / "dense.safetensors")
    assert ratio_params < 0.6 and ratio_files == pytest.approx(ratio_params, rel=1e-9)


def test_lct_on_encoder_save_load(tmp_path):
    enc = encoder()
    x = torch.randn(2, 5, 32)
    ref = enc(x)
    lct(enc, epsilon=0.6, targets=r"layers\.\d+\.linear\d")
    ranks = lct_ranks(enc)
    assert len(ranks) == 6 and all(r < 32 for r in ranks.values())
    lors.save(enc, tmp_path)
    loaded = lors.load(encoder(seed=3), tmp_path)
    assert lct_ranks(loaded) == ranks and torch.allclose(loaded(x), enc(x), atol=1e-6)
    assert torch.allclose(merge(enc)(x), enc(x), atol=1e-5) and (enc(x) - ref).abs().max() > 1e-4


def test_converted_model_trains():
    torch.manual_seed(0)
    enc = convert(encoder(), rank=4).train()
    head = nn.Linear(32, 1)
    x, y = torch.randn(16, 5, 32), torch.randn(16, 1)
    opt = torch.optim.Adam(list(enc.parameters()) + list(head.parameters()), lr=3e-3)
    losses = []
    for _ in range(30):
        loss = nn.functional.mse_loss(head(enc(x).mean(1)), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    stack = enc.lors_layers["linear1"]
    assert stack.shared_weight.grad is not None and stack.B[2].grad.abs().sum() > 0


def test_errors():
    mlp = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4))
    with pytest.raises(ValueError, match=r"no stacks.*examined containers: \(model\)"):
        convert(mlp, rank=1)
    with pytest.raises(ValueError, match=r"matches no weight path.*available paths: .*linear1"):
        convert(encoder(), LorsConfig(targets=["qkv"]))
    with pytest.raises(ValueError, match=r"too large for 'layers.1.linear2'"):
        convert(encoder(), LorsConfig(targets=["linear2"], rank_pattern={"layers.1.linear2": 40}))
    with pytest.raises(ValueError, match="epsilon"):
        LorsConfig(epsilon=1.5)
    with pytest.raises(ValueError, match="init"):
        LorsConfig(init="random")
    with pytest.raises(ValueError, match="rank"):
        LorsConfig(rank=0)


def test_load_onto_different_base_model(tmp_path):
    lors.save(convert(encoder(), rank=2), tmp_path)
    with pytest.raises(ValueError, match="different base model"):
        lors.load(encoder(layers=4), tmp_path)
    with pytest.raises(ValueError, match="different base model"):
        lors.load(encoder(ff=48), tmp_path)


def test_paper_init_every_layer_starts_equal():
    conv = convert(encoder(), LorsConfig(rank=2, init="paper"))
    x = torch.randn(3, 32)
    outs = [layer.linear1(x) for layer in conv.layers]
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[1], outs[2])


def test_convert_twice_adds_only_new_targets():
    enc = convert(encoder(), LorsConfig(targets=["linear1"], rank=2))
    enc = convert(enc, LorsConfig(targets=r"self_attn\..*|linear1", rank=3))
    targets = [r.target for r in enc.lors_conversion.stacks]
    assert sorted(targets) == ["linear1", "self_attn.in_proj", "self_attn.out_proj"]
    x = torch.randn(2, 5, 32)
    assert torch.allclose(merge(enc)(x), enc(x), atol=1e-5)
