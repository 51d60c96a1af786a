"""Small plain CNNs for tiny images (digits 8x8, MNIST 28x28): the embedded default's models.

Three units of two 3x3 conv-BN-ReLU layers; units 2 and 3 halve the resolution, so an
8x8 digit ends at 2x2. ``cnn_small`` is the student; ``cnn_medium`` and ``cnn_large``
have the same structure with 2x and 3x the channels (about 4x and 9x the compute) and
serve as teachers.
"""

from __future__ import annotations

from torch import nn

from edray.models.backbone import ARCHITECTURES, SMALL_IMAGE, Backbone

__all__ = ["cnn_small", "cnn_medium", "cnn_large"]


def _conv_bn_relu(cin: int, cout: int, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


def _plain_cnn(widths: tuple[int, int, int], *, num_classes: int, in_channels: int, image_size: int) -> Backbone:
    # Larger images get a stride-2 first conv, so a 224-pixel image does not run at full size.
    first_stride = 1 if image_size <= SMALL_IMAGE else 2
    units, cin = [], in_channels
    for i, width in enumerate(widths):
        stride = first_stride if i == 0 else 2
        units.append(nn.Sequential(*_conv_bn_relu(cin, width, stride), *_conv_bn_relu(width, width)))
        cin = width
    model = Backbone(units, list(widths), num_classes=num_classes)
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    return model


@ARCHITECTURES.register("cnn_small")
def cnn_small(*, num_classes: int, in_channels: int, image_size: int) -> Backbone:
    return _plain_cnn((16, 32, 64), num_classes=num_classes, in_channels=in_channels, image_size=image_size)


@ARCHITECTURES.register("cnn_medium")
def cnn_medium(*, num_classes: int, in_channels: int, image_size: int) -> Backbone:
    return _plain_cnn((32, 64, 128), num_classes=num_classes, in_channels=in_channels, image_size=image_size)


@ARCHITECTURES.register("cnn_large")
def cnn_large(*, num_classes: int, in_channels: int, image_size: int) -> Backbone:
    return _plain_cnn((48, 96, 192), num_classes=num_classes, in_channels=in_channels, image_size=image_size)
