"""torchvision ImageNet networks (random init, or pretrained weights) cut into four units.

ResNets: ``[stem + layer1, layer2, layer3, layer4]``. MobileNetV2: ``features`` cut where
the 32-, 64- and 160-channel stages begin, i.e. at the same output strides (4, 8, 16, 32)
as the ResNet units. Widths are read from the built modules, not restated.

Small images (at most :data:`~edray.models.backbone.SMALL_IMAGE` pixels) get a CIFAR-style
stem instead, a 3x3 stride-1 conv with no max-pool (and, for MobileNetV2, a stride-1
24-channel stage), so a 32-pixel image ends at 4x4 rather than 1x1. The first conv is
also rebuilt when the data has other than 3 channels.

With pretrained weights (``state_dict``, see :mod:`edray.models.pretrained`) the network is
torchvision's own, ImageNet stem included whatever the image size, since the weights were
learnt with it; the weights are loaded before the net is cut, and the classifier is new.
"""

from __future__ import annotations

from torch import nn

from edray.models.backbone import ARCHITECTURES, SMALL_IMAGE, Backbone

__all__ = ["resnet18", "resnet34", "resnet50", "mobilenet_v2"]

# torchvision is imported by the builders, not at the top: it costs ~1 s in every fresh
# process (each sweep trial's Ray worker), and the small-image networks never need it.

# torchvision's MobileNetV2 stages: expansion t, channels c, blocks n, first stride s.
_MOBILENET_V2_STAGES = [
    [1, 16, 1, 1], [6, 24, 2, 2], [6, 32, 3, 2], [6, 64, 4, 2], [6, 96, 3, 1], [6, 160, 3, 2], [6, 320, 1, 1],
]
_MOBILENET_V2_UNIT_STARTS = (2, 3, 5)  # stages that open units 2, 3 and 4


def _out_channels(unit: nn.Module) -> int:
    """Channels a unit emits: its last BatchNorm's, which ends every block of these nets."""
    norms = [m for m in unit.modules() if isinstance(m, nn.BatchNorm2d)]
    if not norms:
        raise ValueError(f"cannot read the width of a unit without BatchNorm: {unit}")
    return norms[-1].num_features


def _init_conv(conv: nn.Conv2d) -> nn.Conv2d:
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    return conv


def _torchvision_resnet(
    name: str, *, num_classes: int, in_channels: int, image_size: int, imagenet_stem: bool, state_dict: dict | None
) -> Backbone:
    from torchvision import models as tvm

    net = getattr(tvm, name)(weights=None)
    if state_dict is not None:
        net.load_state_dict(state_dict)
    if image_size <= SMALL_IMAGE and not imagenet_stem:
        net.conv1 = _init_conv(nn.Conv2d(in_channels, net.conv1.out_channels, 3, 1, 1, bias=False))
        net.maxpool = nn.Identity()
    elif in_channels != 3 and not imagenet_stem:
        net.conv1 = _init_conv(nn.Conv2d(in_channels, net.conv1.out_channels, 7, 2, 3, bias=False))
    stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, net.layer1)
    units = [stem, net.layer2, net.layer3, net.layer4]
    return Backbone(units, [_out_channels(u) for u in units], num_classes=num_classes)


@ARCHITECTURES.register("resnet18")
def resnet18(
    *, num_classes: int, in_channels: int, image_size: int, imagenet_stem: bool = False, state_dict: dict | None = None
) -> Backbone:
    return _torchvision_resnet("resnet18", num_classes=num_classes, in_channels=in_channels, image_size=image_size,
                               imagenet_stem=imagenet_stem, state_dict=state_dict)


@ARCHITECTURES.register("resnet34")
def resnet34(
    *, num_classes: int, in_channels: int, image_size: int, imagenet_stem: bool = False, state_dict: dict | None = None
) -> Backbone:
    return _torchvision_resnet("resnet34", num_classes=num_classes, in_channels=in_channels, image_size=image_size,
                               imagenet_stem=imagenet_stem, state_dict=state_dict)


@ARCHITECTURES.register("resnet50")
def resnet50(
    *, num_classes: int, in_channels: int, image_size: int, imagenet_stem: bool = False, state_dict: dict | None = None
) -> Backbone:
    return _torchvision_resnet("resnet50", num_classes=num_classes, in_channels=in_channels, image_size=image_size,
                               imagenet_stem=imagenet_stem, state_dict=state_dict)


@ARCHITECTURES.register("mobilenet_v2")
def mobilenet_v2(
    *, num_classes: int, in_channels: int, image_size: int, imagenet_stem: bool = False, state_dict: dict | None = None
) -> Backbone:
    from torchvision import models as tvm
    from torchvision.ops.misc import Conv2dNormActivation

    small = image_size <= SMALL_IMAGE and not imagenet_stem
    stages = [list(s) for s in _MOBILENET_V2_STAGES]
    if small:
        stages[1][3] = 1  # keep the 24-channel stage at full resolution
    net = tvm.mobilenet_v2(weights=None, inverted_residual_setting=stages)
    if state_dict is not None:
        net.load_state_dict(state_dict)
    features = list(net.features)
    if not imagenet_stem and (small or in_channels != 3):
        width = features[0].out_channels
        stem = Conv2dNormActivation(in_channels, width, stride=1 if small else 2, activation_layer=nn.ReLU6)
        _init_conv(stem[0])
        features[0] = stem
    # features[0] is the stem conv, then one block per (stage, repeat), then the 1x1 conv to 1280.
    starts = [1 + sum(n for _, _, n, _ in stages[:s]) for s in _MOBILENET_V2_UNIT_STARTS]
    bounds = [0, *starts, len(features)]
    units = [nn.Sequential(*features[a:b]) for a, b in zip(bounds, bounds[1:])]
    return Backbone(units, [_out_channels(u) for u in units], num_classes=num_classes)
