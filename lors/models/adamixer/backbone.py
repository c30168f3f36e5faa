"""ResNet-18/34/50 backbone returning C2-C5, and the channel-mapping neck.

Parameter names follow torchvision (``conv1``, ``bn1``, ``layer1.0.conv1``, ``layer1.0.downsample.0``, ...)
so a local torchvision checkpoint file loads with :func:`load_torchvision_weights`; nothing is downloaded.
``width`` scales every stage's channels (64 for the standard networks; e.g. 16 for quick CPU runs).
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

LAYOUTS = {18: ("basic", [2, 2, 2, 2]), 34: ("basic", [3, 4, 6, 3]), 50: ("bottleneck", [3, 4, 6, 3])}


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm with fixed statistics and affine parameters (buffers, as in torchvision/DETR)."""

    def __init__(self, n: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        for name, value in [("weight", torch.ones(n)), ("bias", torch.zeros(n)), ("running_mean", torch.zeros(n)),
                            ("running_var", torch.ones(n))]:
            self.register_buffer(name, value)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        state_dict.pop(prefix + "num_batches_tracked", None)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        shift = self.bias - self.running_mean * scale
        return x * scale[None, :, None, None] + shift[None, :, None, None]


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin, width, stride, norm):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, width, 3, stride, 1, bias=False)
        self.bn1 = norm(width)
        self.conv2 = nn.Conv2d(width, width, 3, 1, 1, bias=False)
        self.bn2 = norm(width)
        self.relu = nn.ReLU(inplace=True)
        out = width * self.expansion
        self.downsample = (nn.Sequential(nn.Conv2d(cin, out, 1, stride, bias=False), norm(out))
                           if stride != 1 or cin != out else None)

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(y)) + identity)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin, width, stride, norm):
        super().__init__()
        out = width * self.expansion
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = norm(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = norm(width)
        self.conv3 = nn.Conv2d(width, out, 1, bias=False)
        self.bn3 = norm(out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = (nn.Sequential(nn.Conv2d(cin, out, 1, stride, bias=False), norm(out))
                           if stride != 1 or cin != out else None)

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        return self.relu(self.bn3(self.conv3(y)) + identity)


class ResNet(nn.Module):
    """ResNet trunk: images (B, 3, H, W) -> [C2, C3, C4, C5] at strides 4, 8, 16, 32."""

    def __init__(self, depth: int = 50, width: int = 64, frozen_bn: bool = False):
        super().__init__()
        if depth not in LAYOUTS:
            raise ValueError(f"backbone depth must be one of {tuple(LAYOUTS)}, got {depth}")
        kind, blocks = LAYOUTS[depth]
        block = BasicBlock if kind == "basic" else Bottleneck
        norm = FrozenBatchNorm2d if frozen_bn else nn.BatchNorm2d
        self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
        self.bn1 = norm(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        cin, self.out_channels = width, []
        for i, n in enumerate(blocks):
            w = width * 2 ** i
            layers = []
            for j in range(n):
                layers.append(block(cin, w, 2 if (j == 0 and i > 0) else 1, norm))
                cin = w * block.expansion
            setattr(self, f"layer{i + 1}", nn.Sequential(*layers))
            self.out_channels.append(cin)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        feats = []
        for i in range(1, 5):
            x = getattr(self, f"layer{i}")(x)
            feats.append(x)
        return feats


def load_torchvision_weights(backbone: ResNet, path: str | Path) -> None:
    """Load a local torchvision ResNet checkpoint (a safetensors file, or a ``.pth`` read with
    ``weights_only=True``, which refuses arbitrary pickled objects). The ``fc`` head is ignored."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"backbone weights not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    missing, unexpected = backbone.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise ValueError(f"{path} does not fit this ResNet: missing {missing[:6]}, unexpected {unexpected[:6]}")


class ChannelMapper(nn.Module):
    """1x1 conv + GroupNorm mapping each pyramid level to ``out_channels``."""

    def __init__(self, in_channels: list[int], out_channels: int, groups: int = 32):
        super().__init__()
        groups = min(groups, out_channels)
        self.convs = nn.ModuleList([nn.Sequential(nn.Conv2d(c, out_channels, 1, bias=False),
                                                  nn.GroupNorm(groups, out_channels)) for c in in_channels])

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        return [conv(f) for conv, f in zip(self.convs, feats)]
