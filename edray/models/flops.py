"""Multiply-accumulate counts, so benchmarks can state compute ratios (teacher vs student).

Only convolutions and linear layers are counted: they are nearly all of a CNN's
arithmetic, and counting them from the real output shapes (forward hooks) needs no
per-architecture formula.
"""

from __future__ import annotations

import math
from typing import cast

import torch
from torch import nn

__all__ = ["count_macs"]


def _conv_macs(module: nn.modules.conv._ConvNd, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> int:
    kernel = math.prod(module.kernel_size)
    if module.transposed:  # every input element is spread over out_channels/groups x kernel outputs
        return inputs[0].numel() * (module.out_channels // module.groups) * kernel
    return output.numel() * (module.in_channels // module.groups) * kernel


def _linear_macs(module: nn.Linear, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> int:
    return output.numel() * module.in_features


def count_macs(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Multiply-accumulates of the conv and linear layers of ``model`` for one sample.

    Args:
        model: any module; it is run once in eval mode without gradients, and its
            train/eval mode is restored afterwards.
        input_shape: one sample's shape ``(C, H, W)``; a 4-tuple ``(B, C, H, W)`` is
            taken as a batch and the count divided by ``B``.

    Example: ``count_macs(nn.Conv2d(1, 2, 3, padding=1), (1, 4, 4)) == 2 * 16 * 9``.
    """
    shape = tuple(int(d) for d in input_shape)
    if len(shape) != 4:
        shape = (1, *shape)
    batch = shape[0]
    if batch < 1 or any(d < 1 for d in shape):
        raise ValueError(f"input_shape must have positive sizes, got {tuple(input_shape)}")
    total = 0

    def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        nonlocal total
        if isinstance(module, nn.modules.conv._ConvNd):
            total += _conv_macs(module, inputs, output)
        else:  # hooked only on convolutions and Linear layers
            total += _linear_macs(cast(nn.Linear, module), inputs, output)

    handles = [
        m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear))
    ]
    param = next(model.parameters(), None)
    x = torch.zeros(shape, device=param.device if param is not None else "cpu")
    modes = {m: m.training for m in model.modules()}
    try:
        model.eval()
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
        for m, mode in modes.items():
            m.training = mode
    return total // batch
