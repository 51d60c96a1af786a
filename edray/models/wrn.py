"""Wide ResNets (Zagoruyko & Komodakis 2016): WRN-d-k, pre-activation basic blocks.

Depth ``6n + 4``; groups of ``16k``, ``32k``, ``64k`` channels after a 16-channel stem.
WRN-40-2 -> WRN-16-2 is a standard CIFAR distillation pair. Units are
``[stem + group1, group2, group3 + final BN-ReLU]``: the last BN-ReLU belongs to unit 3 so
the classifier is the plain pool-flatten-linear head every backbone shares.
"""

from __future__ import annotations

import torch
from torch import nn

from edray.models.backbone import ARCHITECTURES, SMALL_IMAGE, Backbone

__all__ = ["WideBlock", "wide_resnet", "wrn_16_2", "wrn_16_4", "wrn_40_2", "wrn_28_10"]


class WideBlock(nn.Module):
    """BN-ReLU-conv3x3-BN-ReLU-conv3x3 with an identity or 1x1-projection shortcut."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.relu = nn.ReLU(inplace=True)
        self.projection: nn.Module | None = None
        if stride != 1 or cin != cout:
            self.projection = nn.Conv2d(cin, cout, 1, stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.relu(self.bn1(x))
        out = self.conv2(self.relu(self.bn2(self.conv1(pre))))
        # With a projection the shortcut reads the pre-activated input, as in the authors' code.
        return out + (x if self.projection is None else self.projection(pre))


def wide_resnet(depth: int, widen: int, *, num_classes: int, in_channels: int, image_size: int) -> Backbone:
    """WRN-``depth``-``widen``."""
    if depth < 10 or (depth - 4) % 6 or widen < 1:
        raise ValueError(f"WRN depth must be 6n + 4 with n >= 1 and widen >= 1, got {depth}, {widen}")
    blocks = (depth - 4) // 6
    widths = [16 * widen, 32 * widen, 64 * widen]
    stem: list[nn.Module] = [nn.Conv2d(in_channels, 16, 3, 1 if image_size <= SMALL_IMAGE else 2, 1, bias=False)]
    if image_size > SMALL_IMAGE:
        stem.append(nn.MaxPool2d(3, 2, 1))
    units, cin = [], 16
    for i, width in enumerate(widths):
        group = [WideBlock(cin if b == 0 else width, width, 2 if (i > 0 and b == 0) else 1) for b in range(blocks)]
        cin = width
        head = stem if i == 0 else []
        tail = [nn.BatchNorm2d(width), nn.ReLU(inplace=True)] if i == len(widths) - 1 else []
        units.append(nn.Sequential(*head, *group, *tail))
    model = Backbone(units, widths, num_classes=num_classes)
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.Linear):
            nn.init.zeros_(m.bias)
    return model


@ARCHITECTURES.register("wrn_16_2")
def wrn_16_2(*, num_classes: int, in_channels: int, image_size: int) -> Backbone:
    return wide_resnet(16, 2, num_classes=num_classes, in_channels=in_channels, image_size=image_size)


@ARCHITECTURES.register("wrn_16_4")
def wrn_16_4(*, num_classes: int, in_channels: int, image_size: int) -> Backbone:
    return wide_resnet(16, 4, num_classes=num_classes, in_channels=in_channels, image_size=image_size)


@ARCHITECTURES.register("wrn_40_2")
def wrn_40_2(*, num_classes: int, in_channels: int, image_size: int) -> Backbone:
    return wide_resnet(40, 2, num_classes=num_classes, in_channels=in_channels, image_size=image_size)


@ARCHITECTURES.register("wrn_28_10")
def wrn_28_10(*, num_classes: int, in_channels: int, image_size: int) -> Backbone:
    return wide_resnet(28, 10, num_classes=num_classes, in_channels=in_channels, image_size=image_size)
