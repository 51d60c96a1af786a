"""Pretrained torchvision weights for teachers, read from torchvision's own cache, never downloaded.

``teachers.models[i].pretrained: IMAGENET1K_V2`` names a member of the architecture's
torchvision weights enum (``ResNet50_Weights.IMAGENET1K_V2``). torchvision keeps
downloaded weights under ``$TORCH_HOME/hub/checkpoints/<file name of the URL>``; edray
loads them from there through the weights API (:meth:`WeightsEnum.get_state_dict`,
which reads a cached file without touching the network). edray never downloads at run
time (a sweep on a cluster must not depend on the internet, docs/design.md#data): a missing file
is a one-line error that names the weights, the exact file, and how to put it there.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch

from edray.errors import EdrayError

__all__ = ["PRETRAINED_ARCHS", "load_weights", "weights_file"]

# edray architecture -> torchvision weights enum.
PRETRAINED_ARCHS = {
    "resnet18": "ResNet18_Weights",
    "resnet34": "ResNet34_Weights",
    "resnet50": "ResNet50_Weights",
    "mobilenet_v2": "MobileNet_V2_Weights",
}


def _weights(arch: str, name: str, field: str) -> Any:
    from torchvision.models import get_weight

    enum = PRETRAINED_ARCHS.get(arch)
    if enum is None:
        raise EdrayError(field, f"{arch} has no torchvision weights",
                         f"use one of {sorted(PRETRAINED_ARCHS)}, or remove pretrained")
    try:
        return get_weight(f"{enum}.{name}")
    except (KeyError, ValueError, AttributeError):
        import torchvision.models as tvm

        known = [w.name for w in getattr(tvm, enum)]
        raise EdrayError(field, f"{name!r} is not a torchvision weight of {arch}", f"use one of {known}") from None


def weights_file(arch: str, name: str, *, field: str = "pretrained") -> Path:
    """The file torchvision keeps ``arch``'s weights ``name`` in: ``$TORCH_HOME/hub/checkpoints/<URL's file>``."""
    weights = _weights(arch, name, field)
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(weights.url).path)


def load_weights(arch: str, name: str, *, field: str = "pretrained") -> dict[str, torch.Tensor]:
    """The torchvision state dict of ``arch``'s weights ``name``, from the local cache.

    Raises:
        EdrayError: an architecture without torchvision weights, an unknown weights name
            (the known ones are listed), a file missing from the cache (offline: what to
            place where), or a file torch cannot read.
    """
    weights = _weights(arch, name, field)
    enum = PRETRAINED_ARCHS[arch]
    path = weights_file(arch, name, field=field)
    if not path.is_file():
        raise EdrayError(
            field, f"{enum}.{name} is not in the torch cache: no file {path} (edray never downloads)",
            f"on a machine with internet run `python -c \"import torchvision; torchvision.models.get_weight("
            f"'{enum}.{name}').get_state_dict()\"` (or fetch {weights.url}) and copy the file to {path}; "
            "TORCH_HOME moves the cache",
        )
    try:
        return weights.get_state_dict(progress=False, map_location="cpu", weights_only=True)
    except Exception as err:  # a truncated or foreign file: torch raises many kinds
        raise EdrayError(field, f"cannot read {path} ({type(err).__name__}: {err})",
                         f"delete it and place {weights.url} there again") from None
