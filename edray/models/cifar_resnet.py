"""CIFAR ResNets (He et al. 2016, §4.2): 3 stages of basic blocks with 16/32/64 channels.

Depth ``6n + 2``: resnet20 (n=3), resnet32, resnet56, resnet110 (n=18). ResNet110 ->
ResNet20 is the ED paper's CIFAR-100 pair. The shortcut at a stage change is a 1x1
conv + BN projection, as the distillation codebases (CRD, torchdistill) use. Units are
``[stem + stage1, stage2, stage3]``.
"""

from __future__ import annotations

import torch
from torch import nn

from edray.models.backbone import ARCHITECTURES, SMALL_IMAGE, Backbone

__all__ = ["BasicBlock", "cifar_resnet", "resnet20", "resnet32", "resnet56", "resnet110"]


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with a residual connection, then ReLU."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


def _stem(in_channels: int, width: int, image_size: int) -> list[nn.Module]:
    if image_size <= SMALL_IMAGE:
        return [nn.Conv2d(in_channels, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
    # Large images: downsample by 4 first, so stage 1 sees 56x56 for a 224-pixel image.
    return [
        nn.Conv2d(in_channels, width, 3, 2, 1, bias=False),
        nn.BatchNorm2d(width),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(3, 2, 1),
    ]


def cifar_resnet(depth: int, *, num_classes: int, in_channels: int, image_size: int) -> Backbone:
    """A CIFAR ResNet of ``depth = 6n + 2`` layers."""
    if depth < 8 or (depth - 2) % 6:
        raise ValueError(f"CIFAR ResNet depth must be 6n + 2 with n >= 1, got {depth}")
    blocks = (depth - 2) // 6
    widths = [16, 32, 64]
    units, cin = [], widths[0]
    for i, width in enumerate(widths):
        stage = [BasicBlock(cin if b == 0 else width, width, 2 if (i > 0 and b == 0) else 1) for b in range(blocks)]
        cin = width
        units.append(nn.Sequential(*(_stem(in_channels, widths[0], image_size) if i == 0 else []), *stage))
    model = Backbone(units, widths, num_classes=num_classes)
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    return model


@ARCHITECTURES.register("resnet20")
def resnet20(*, num_classes: int, in_channels: int, image_size: int) -> Backbone:
    return cifar_resnet(20, num_classes=num_classes, in_channels=in_channels, image_size=image_size)


@ARCHITECTURES.register("resnet32")
def resnet32(*, num_classes: int, in_channels: int, image_size: int) -> Backbone:
    return cifar_resnet(32, num_classes=num_classes, in_channels=in_channels, image_size=image_size)


@ARCHITECTURES.register("resnet56")
def resnet56(*, num_classes: int, in_channels: int, image_size: int) -> Backbone:
    return cifar_resnet(56, num_classes=num_classes, in_channels=in_channels, image_size=image_size)


@ARCHITECTURES.register("resnet110")
def resnet110(*, num_classes: int, in_channels: int, image_size: int) -> Backbone:
    return cifar_resnet(110, num_classes=num_classes, in_channels=in_channels, image_size=image_size)
