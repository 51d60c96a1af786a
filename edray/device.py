"""The one rule for the torch device a run uses."""

from __future__ import annotations

__all__ = ["choose_device"]


def choose_device(requested: str | None = None, *, use_gpu: bool = True) -> str:
    """``requested`` (``--device``) if given, else ``cuda`` when ``use_gpu`` and a GPU is
    visible, else ``cpu``. Trials and Ray tasks pass ``use_gpu=spec.scaling.use_gpu``: a
    GPU they were not given is not theirs."""
    if requested:
        return requested
    import torch

    return "cuda" if use_gpu and torch.cuda.is_available() else "cpu"
