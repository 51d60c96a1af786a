"""The segmentable classifier every edray model is, and the registry that builds one by name.

ED cuts a student into consecutive segments and grows it grade by grade (docs/design.md#the-method), so
each architecture is declared as an ordered list of *feature units* with their output
widths. A segment is a run of whole units, and a teaching-reference head reads a unit's
output, so the widths must be the true channel counts (``tests/test_models.py`` checks
them against real shapes, as timm's tests check ``feature_info``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from edray.errors import EdrayError
from edray.registry import Registry

__all__ = ["ARCHITECTURES", "SMALL_IMAGE", "Backbone", "build_backbone"]

ARCHITECTURES: Registry = Registry("architecture", "arch")

SMALL_IMAGE = 64
"""Images of at most this many pixels a side get a stride-1 stem (no early downsampling),
as CIFAR networks do; larger ones get an ImageNet-style stem that downsamples by 4."""


class Backbone(nn.Module):
    """A plain classifier cut into ordered feature units.

    ``forward`` is ``classifier(units[-1](...units[0](x)))``: nothing runs outside the
    units and the classifier, so any contiguous run of units is a valid segment and the
    finished ED student is this very module.

    Args:
        units: feature units in order; unit 0 includes the stem.
        widths: output channels of each unit.
        num_classes: number of logits.
        classifier: an existing head to reuse (the growing student passes its own so
            the exported model shares the trained weights); built fresh when ``None``.
    """

    def __init__(
        self,
        units: Sequence[nn.Module],
        widths: Sequence[int],
        *,
        num_classes: int,
        classifier: nn.Sequential | None = None,
    ):
        super().__init__()
        if len(units) == 0 or len(units) != len(widths):
            raise ValueError(f"need one width per unit, got {len(units)} units and widths {list(widths)}")
        self.units = nn.ModuleList(units)
        self.widths = [int(w) for w in widths]
        self.num_classes = int(num_classes)
        if classifier is None:
            classifier = nn.Sequential(
                nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(self.widths[-1], self.num_classes)
            )
        last = classifier[-1]
        if not isinstance(last, nn.Linear) or last.in_features != self.widths[-1] or last.out_features != num_classes:
            raise ValueError(f"classifier must end in Linear({self.widths[-1]}, {num_classes}), got {last}")
        self.classifier = classifier

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        for unit in self.units:
            x = unit(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.forward_features(x))


def build_backbone(
    arch: str,
    *,
    num_classes: int,
    in_channels: int,
    image_size: int,
    pretrained: str | None = None,
    load_weights: bool = True,
    field: str = "pretrained",
) -> Backbone:
    """Build ``arch`` for ``in_channels`` x ``image_size`` images: randomly initialised, or
    from torchvision's ``pretrained`` weights (e.g. ``IMAGENET1K_V2``) with a new classifier.

    ``load_weights=False`` builds the pretrained layout only (ImageNet stem at any size),
    for loading a checkpoint trained from those weights; ``field`` names the spec field
    in errors.

    Raises:
        EdrayError: ``arch`` is not registered (the message lists the known names), a size
            is not positive, or the pretrained weights cannot be used (see
            :func:`edray.models.pretrained.load_weights`).
    """
    constructor = ARCHITECTURES.get(arch)
    for name, value in (("num_classes", num_classes), ("in_channels", in_channels), ("image_size", image_size)):
        if int(value) < 1:
            raise EdrayError(name, f"must be >= 1 to build {arch}, got {value}", "check the dataset")
    extra = {}
    if pretrained is not None:
        from edray.models import pretrained as torch_cache

        if arch not in torch_cache.PRETRAINED_ARCHS:
            raise EdrayError(field, f"{arch} has no torchvision weights",
                             f"use one of {sorted(torch_cache.PRETRAINED_ARCHS)}, or remove pretrained")
        if int(in_channels) != 3:
            raise EdrayError(field, f"pretrained weights take RGB images, this dataset has {in_channels} channels",
                             "remove pretrained")
        state = torch_cache.load_weights(arch, pretrained, field=field) if load_weights else None
        extra = {"imagenet_stem": True, "state_dict": state}
    model = constructor(num_classes=int(num_classes), in_channels=int(in_channels), image_size=int(image_size), **extra)
    if not isinstance(model, Backbone):
        raise TypeError(f"architecture {arch!r} built a {type(model).__name__}, not a Backbone")
    return model

