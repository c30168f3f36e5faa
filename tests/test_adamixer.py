import math

import pytest
import torch

from lors import count_parameters, param_groups
from lors.models.adamixer.boxes import (box_cxcywh_to_xyxy, box_iof, box_iou, box_xyxy_to_cxcywh, box_xyxy_to_xyzr,
                                        box_xyzr_to_xyxy, generalized_box_iou)
from lors.cli.config import AdaMixerConfig
from lors.models.adamixer.decoder import DecoderStage, build_decoder
from lors.models.adamixer.detector import build_adamixer, postprocess
from lors.models.adamixer.losses import SetCriterion, sigmoid_focal_loss
from lors.models.adamixer.matcher import HungarianMatcher
from lors.models.adamixer.sampling import level_weights, sampling_3d

TINY = dict(num_classes=3, backbone_depth=18, backbone_width=8, feat_channels=32, num_queries=10, num_heads=4,
            n_groups=2, in_points=4, out_points=8, ffn_dim=64, core_size=2, out_rank=2)


def adamixer(**kw):
    return build_adamixer(AdaMixerConfig(**kw))


def test_box_conversions_round_trip():
    torch.manual_seed(0)
    xyxy = torch.rand(20, 2) * 50
    xyxy = torch.cat([xyxy, xyxy + 1 + torch.rand(20, 2) * 30], -1)
    assert torch.allclose(box_cxcywh_to_xyxy(box_xyxy_to_cxcywh(xyxy)), xyxy, atol=1e-5)
    assert torch.allclose(box_xyzr_to_xyxy(box_xyxy_to_xyzr(xyxy)), xyxy, atol=1e-4)
    # z = log2(sqrt(w h)), r = log2(h / w) for a 4 x 16 box
    xyzr = box_xyxy_to_xyzr(torch.tensor([[0.0, 0.0, 4.0, 16.0]]))
    assert torch.allclose(xyzr, torch.tensor([[2.0, 8.0, 3.0, 2.0]]))


def test_iou_giou_iof_hand_computed():
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
    b = torch.tensor([[1.0, 1.0, 3.0, 3.0], [0.0, 0.0, 1.0, 1.0], [5.0, 5.0, 6.0, 6.0]])
    assert torch.allclose(box_iou(a, b), torch.tensor([[1 / 7, 1 / 4, 0.0]]))
    # GIoU = IoU - (enclosing - union) / enclosing: enclosing areas 9, 4, 36; unions 7, 4, 5
    assert torch.allclose(generalized_box_iou(a, b), torch.tensor([[1 / 7 - 2 / 9, 1 / 4, 0 - 31 / 36]]))
    # IoF divides by the first box's area (4): intersections 1, 1, 0
    assert torch.allclose(box_iof(a, b), torch.tensor([[0.25, 0.25, 0.0]]))
    assert torch.allclose(box_iof(b[1:2], a), torch.tensor([[1.0]]))  # a small box fully inside a large one


def test_focal_loss_matches_formula():
    logits = torch.tensor([-2.0, 0.0, 1.5, 3.0])
    targets = torch.tensor([0.0, 1.0, 1.0, 0.0])
    p = torch.sigmoid(logits)
    expected = torch.where(targets == 1, -0.25 * (1 - p) ** 2 * torch.log(p), -0.75 * p ** 2 * torch.log(1 - p))
    assert torch.allclose(sigmoid_focal_loss(logits, targets), expected, atol=1e-6)


def test_3d_sampling_picks_pixel_and_level():
    # level 0 (stride 4) holds a unique value per pixel and channel, level 1 (stride 8) is zero
    C, H, W = 4, 6, 8
    f0 = torch.arange(C * H * W, dtype=torch.float32).view(1, C, H, W)
    f1 = torch.zeros(1, C, H // 2, W // 2)
    i, j = 5, 2  # column, row
    point = torch.tensor([(i + 0.5) * 4, (j + 0.5) * 4, 2.0]).view(1, 1, 1, 1, 3).expand(1, 1, 2, 1, 3)
    out = sampling_3d(point, [f0, f1], strides=[4, 8])  # (1, 1, G=2, 1, C/G=2)
    w0 = 1 / (1 + math.exp(-0.5))  # softmax(-(2-2)^2/2, -(2-3)^2/2)[0]
    assert torch.allclose(level_weights(torch.tensor(2.0), [4, 8])[0], torch.tensor(w0))
    for g in range(2):
        for c in range(2):
            assert out[0, 0, g, 0, c].item() == pytest.approx(w0 * f0[0, 2 * g + c, j, i].item(), rel=1e-5)


def test_matcher_batched_equals_per_image_and_handles_empty():
    torch.manual_seed(0)
    matcher = HungarianMatcher()
    outputs = {"pred_logits": torch.randn(3, 7, 4), "pred_boxes": torch.rand(3, 7, 4) * 0.5 + 0.25}
    targets = [{"labels": torch.tensor([1, 3]), "boxes": torch.rand(2, 4) * 0.5 + 0.25},
               {"labels": torch.zeros(0, dtype=torch.long), "boxes": torch.zeros(0, 4)},
               {"labels": torch.tensor([0, 0, 2]), "boxes": torch.rand(3, 4) * 0.5 + 0.25}]
    batched = matcher(outputs, targets)
    for b, t in enumerate(targets):
        single = matcher({k: v[b:b + 1] for k, v in outputs.items()}, [t])[0]
        assert torch.equal(batched[b][0], single[0]) and torch.equal(batched[b][1], single[1])
    assert len(batched[1][0]) == 0 and len(batched[2][0]) == 3
    empty = matcher(outputs, [targets[1]] * 3)
    assert all(len(r) == 0 for r, _ in empty)


def test_original_adamixer_parameter_counts():
    """Original AdaMixer (256 dims, 80 classes, 8 heads, 4 groups x 32 in-points, 128 out-points)."""
    d, K, heads, G, P_in, P_out, ffn = 256, 80, 8, 4, 32, 128, 2048
    c = d // G
    mixing = (d + 1) * G * c * c + (d + 1) * G * P_out * P_in + (c * P_out * G * d + d) + 2 * d
    assert mixing == 16_810_752
    rest = ((3 * d * d + 3 * d) + (d * d + d)  # self-attention
            + 2 * d + heads  # attention LayerNorm, per-head IoF tau
            + (d * G * P_in * 3 + G * P_in * 3)  # sampling offsets
            + (d * ffn + ffn + ffn * d + d) + 2 * d  # FFN + LayerNorm
            + 2 * (d * d + d + 2 * d) + (d * K + K) + (d * 4 + 4))  # cls/reg branches, fc_cls, fc_reg
    with torch.device("meta"):
        decoder = build_decoder(AdaMixerConfig(num_stages=6, feat_channels=d, num_classes=K, num_heads=heads,
                                                n_groups=G, in_points=P_in, out_points=P_out, ffn_dim=ffn))
    assert count_parameters(decoder.mixing) == 6 * mixing
    assert count_parameters(decoder.stages[0]) == rest == 1_567_964
    assert count_parameters(decoder) == 6 * (mixing + rest) == 110_272_296


@pytest.mark.parametrize("decoder,stage_bias,ffn_rank", [("dense", False, 0), ("lors", False, 0), ("lors", True, 3)])
def test_forward_backward_every_parameter_gets_gradient(decoder, stage_bias, ffn_rank):
    torch.manual_seed(0)
    model = adamixer(**TINY, decoder=decoder, stage_bias=stage_bias, ffn_rank=ffn_rank)
    with torch.no_grad():  # zero-initialised tensors (fc_reg, generators, B) pass no gradient at step 0 by design
        for p in model.parameters():
            if p.abs().sum() == 0:
                p.normal_(std=0.01)
    images, sizes = torch.randn(2, 3, 64, 96), torch.tensor([[96, 64], [80, 60]])
    out = model(images, sizes)
    assert out["pred_logits"].shape == (2, 10, 3) and out["pred_boxes"].shape == (2, 10, 4)
    assert len(out["aux_outputs"]) == 5
    targets = [{"labels": torch.tensor([0, 2]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.3], [0.3, 0.3, 0.1, 0.1]])},
               {"labels": torch.tensor([1]), "boxes": torch.tensor([[0.6, 0.4, 0.5, 0.5]])}]
    crit = SetCriterion(3)
    losses = crit(out, targets)
    assert {"loss_focal", "loss_l1_0", "loss_giou_4"} <= set(losses)
    total = crit.total(losses)
    assert torch.isfinite(total)
    total.backward()
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
            if not name.startswith("query_boxes"):
                assert p.grad.abs().sum() > 0, name


def test_lors_decoder_reduction_and_postprocess():
    with torch.device("meta"):
        dense = adamixer(**{**TINY, "feat_channels": 64, "out_points": 64, "in_points": 16}, decoder="dense")
        lors = adamixer(**{**TINY, "feat_channels": 64, "out_points": 64, "in_points": 16}, decoder="lors")
        with_bias = adamixer(**{**TINY, "feat_channels": 64, "out_points": 64, "in_points": 16}, decoder="lors",
                             stage_bias=True)
    assert count_parameters(lors.decoder) < 0.5 * count_parameters(dense.decoder)
    # stage_bias: per stage and sampling group, one full M (C/G x C/G) and one full S (P_out x P_in) bias
    G, C, stages = TINY["n_groups"], 64 // TINY["n_groups"], lors.decoder.mixing.num_stages
    assert count_parameters(with_bias) - count_parameters(lors) == stages * G * (C * C + 64 * 16)
    assert count_parameters(lors.backbone) == count_parameters(dense.backbone)
    logits = torch.full((1, 3, 2), -10.0)
    logits[0, 1, 0] = 5.0
    boxes = torch.tensor([[[0.5, 0.5, 1.0, 1.0], [0.25, 0.5, 0.5, 1.0], [0.5, 0.5, 0.1, 0.1]]])
    res = postprocess({"pred_logits": logits, "pred_boxes": boxes}, torch.tensor([[200, 100]]), top_k=2)[0]
    assert res["labels"][0] == 0 and torch.allclose(res["boxes"][0], torch.tensor([0.0, 0.0, 100.0, 100.0]))


def test_ffn_shared_across_stages():
    torch.manual_seed(0)
    kw = {**TINY, "decoder": "lors"}
    dense_ffn, shared_ffn = adamixer(**kw), adamixer(**kw, ffn_rank=3)
    q, f, r, stages = TINY["feat_channels"], TINY["ffn_dim"], 3, 6
    # dense: per stage two Linears; LORS: two shared weights, per stage two rank-r residuals and two biases
    per_stage_dense = 2 * q * f + f + q
    lors_ffn = 2 * q * f + stages * (2 * r * (q + f) + f + q)
    assert count_parameters(dense_ffn) - count_parameters(shared_ffn) == stages * per_stage_dense - lors_ffn
    # the shared weights appear once and are grouped as shared (N = stages); stage i's FFN uses W_shared + B_i A_i
    names = [n for n, _ in shared_ffn.named_parameters()]
    assert names.count("decoder.ffn_in.shared_weight") == 1 and not any("stages.0.ffn." in n for n in names)
    shared_groups = [g for g in param_groups(shared_ffn, 1e-3) if g["name"].startswith("shared/N=6")]
    shared_ids = {id(p) for g in shared_groups for p in g["params"]}
    assert id(shared_ffn.decoder.ffn_in.shared_weight) in shared_ids
    stack, x = shared_ffn.decoder.ffn_in, torch.randn(5, q)
    with torch.no_grad():
        for b in stack.B:
            b.normal_()
    first = shared_ffn.decoder.stages[2].ffn[0]
    assert torch.allclose(first(x), x @ stack.weight(2).T + stack.layer_bias(2), atol=1e-5)
    with pytest.raises(ValueError, match="ffn_rank"):
        adamixer(**kw, ffn_rank=-1)


def test_stage_sampling_offsets_init_grid():
    stage = DecoderStage(32, 3, 4, n_groups=2, in_points=4)
    bias = stage.sampling_offsets.bias.view(2, 4, 3)
    assert torch.allclose(bias[0, :, :2].sort(0).values[[0, -1]], torch.tensor([[-0.25, -0.25], [0.25, 0.25]]))
    assert torch.all(bias[..., 2] == -1.0) and torch.all(stage.fc_reg.weight == 0)
    assert torch.all((stage.iof_tau >= 0) & (stage.iof_tau <= 4))


def test_backbone_torchvision_names_load_and_frozen_bn(tmp_path):
    from safetensors.torch import save_file

    from lors.models.adamixer.backbone import FrozenBatchNorm2d, ResNet, load_torchvision_weights

    torch.manual_seed(0)
    r18, r50 = ResNet(18, width=8), ResNet(50, width=8)
    keys18, keys50 = set(r18.state_dict()), set(r50.state_dict())
    # torchvision's resnet18 / resnet50 parameter names
    assert {"conv1.weight", "bn1.running_mean", "layer1.0.conv2.weight", "layer2.0.downsample.0.weight",
            "layer4.1.bn2.bias"} <= keys18
    assert {"layer1.0.conv3.weight", "layer3.5.bn3.weight", "layer4.0.downsample.1.running_var"} <= keys50
    assert r50.out_channels == [32, 64, 128, 256]  # width 8 -> 8 * 4 * (1, 2, 4, 8)
    feats = r18(torch.randn(1, 3, 64, 64))
    assert [f.shape[-1] for f in feats] == [16, 8, 4, 2]  # strides 4, 8, 16, 32
    state = {k: torch.randn_like(v.float()) if v.is_floating_point() else v for k, v in r18.state_dict().items()}
    state["fc.weight"] = torch.randn(10, 64)  # a classifier head in the file is ignored
    save_file(state, str(tmp_path / "r18.safetensors"))
    frozen = ResNet(18, width=8, frozen_bn=True)
    load_torchvision_weights(frozen, tmp_path / "r18.safetensors")
    assert torch.equal(frozen.layer3[1].conv1.weight, state["layer3.1.conv1.weight"])
    assert isinstance(frozen.bn1, FrozenBatchNorm2d) and not any(True for _ in frozen.bn1.parameters())
    with pytest.raises(ValueError, match="does not fit"):
        load_torchvision_weights(ResNet(34, width=8), tmp_path / "r18.safetensors")


def test_out_rank_per_stage():
    """model.out_rank as a list: stage s's out-projection residual has rank out_rank[s] (closed-form count)."""
    with torch.device("meta"):
        uniform = adamixer(**{**TINY, "out_rank": 2}, decoder="lors")
        per_stage = adamixer(**{**TINY, "out_rank": [1, 1, 2, 2, 3, 5]}, decoder="lors")
    proj_in = (TINY["feat_channels"] // TINY["n_groups"]) * TINY["out_points"] * TINY["n_groups"]
    per_rank = proj_in + TINY["feat_channels"]  # one rank unit of B (out x r) and A (r x in)
    extra = sum([1, 1, 2, 2, 3, 5]) - 2 * 6
    assert count_parameters(per_stage) - count_parameters(uniform) == extra * per_rank
    assert per_stage.decoder.mixing.out_proj.weight(5).shape == (TINY["feat_channels"], proj_in)
    with pytest.raises(ValueError, match="rank"):
        adamixer(**{**TINY, "out_rank": [2, 2]}, decoder="lors")
