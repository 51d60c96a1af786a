"""How a run uses its device: autocast dtype, grad scaler, memory format, host-to-device copies.

``optim.precision`` is resolved once per run against the device actually used:

- ``auto``: bf16 autocast on CUDA GPUs that support it (Ampere and later), fp16 with a
  grad scaler on older GPUs, fp32 on CPU (CPU bf16 is slower than fp32 on most CPUs
  without AMX, so it is only used when asked for).
- ``bf16``: autocast to bfloat16 (CPU or a GPU that supports it); no scaler needed, its
  exponent range is fp32's.
- ``fp16``: autocast to float16 with a :class:`torch.amp.GradScaler` (small gradients
  underflow in fp16 otherwise); CUDA only.
- ``fp32``: no autocast.

Parameters and optimizer state stay fp32 in every mode (autocast casts per op), so
checkpoints, the exported student and precomputed fp16 logits do not depend on it.
On CUDA, conv nets also run ``channels_last`` (tensor cores read NHWC without a
transpose) and batches come from pinned host memory with non-blocking copies;
``cudnn.benchmark`` picks the fastest kernels when the spec is not ``deterministic``.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Literal, TypeVar

import torch
from torch import nn

from edray.errors import EdrayError

__all__ = ["Precision", "configure_backends", "prepare_model", "resolve_precision", "to_device"]

PrecisionName = Literal["auto", "fp32", "bf16", "fp16"]
_FIELD = "optim.precision"
_M = TypeVar("_M", bound=nn.Module)


@dataclass(frozen=True)
class Precision:
    """The resolved precision of one run on one device.

    Attributes:
        name: ``fp32``, ``bf16`` or ``fp16`` (never ``auto``).
        device_type: ``cpu`` or ``cuda`` (what :func:`torch.autocast` takes).
    """

    name: Literal["fp32", "bf16", "fp16"]
    device_type: str

    @property
    def dtype(self) -> torch.dtype | None:
        """The autocast dtype, or None for fp32."""
        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.name)

    def autocast(self) -> contextlib.AbstractContextManager:
        """The context forward passes run in (a no-op for fp32)."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=self.dtype)

    def grad_scaler(self) -> torch.amp.GradScaler:
        """A scaler that is live for fp16 only; for other modes ``scale``/``step``/``update`` pass through."""
        return torch.amp.GradScaler(self.device_type, enabled=self.name == "fp16")


def _device_type(device: str | torch.device) -> str:
    return torch.device(device).type


def resolve_precision(name: PrecisionName, device: str | torch.device) -> Precision:
    """Resolve ``optim.precision`` for ``device``.

    Raises:
        EdrayError: ``fp16`` on a CPU, ``bf16`` on a GPU without bf16, or a device type
            that has no autocast here.
    """
    kind = _device_type(device)
    if kind not in ("cpu", "cuda"):
        if name in ("auto", "fp32"):
            return Precision("fp32", kind)
        raise EdrayError(_FIELD, f"{name} autocast is supported on cpu and cuda, not {kind}", "use fp32")
    if name == "auto":
        if kind == "cpu":
            return Precision("fp32", kind)
        return Precision("bf16" if torch.cuda.is_bf16_supported() else "fp16", kind)
    if name == "fp16" and kind == "cpu":
        raise EdrayError(_FIELD, "fp16 needs a CUDA GPU; this run is on the CPU", "use bf16, fp32 or auto on a CPU")
    if name == "bf16" and kind == "cuda" and not torch.cuda.is_bf16_supported():
        raise EdrayError(_FIELD, "bf16 is not supported by this GPU", "use fp16 (with a grad scaler) or auto")
    return Precision(name, kind)


def configure_backends(*, deterministic: bool, device: str | torch.device) -> None:
    """Let cuDNN pick the fastest kernels for fixed shapes, unless the run must be deterministic."""
    if _device_type(device) == "cuda":
        torch.backends.cudnn.benchmark = not deterministic
        torch.backends.cuda.matmul.allow_tf32 = not deterministic
        torch.backends.cudnn.allow_tf32 = not deterministic


def prepare_model(model: _M, device: str | torch.device) -> _M:
    """Move ``model`` to ``device``; conv nets on CUDA go ``channels_last``."""
    model = model.to(device)
    if _device_type(device) == "cuda" and any(isinstance(m, nn.Conv2d) for m in model.modules()):
        model = model.to(memory_format=torch.channels_last)
    return model


def to_device(x: torch.Tensor, device: str | torch.device) -> torch.Tensor:
    """Copy a host batch to ``device``: pinned and non-blocking on CUDA (the copy overlaps
    the previous step's kernels), 4-D images ``channels_last`` to match the model."""
    if _device_type(device) != "cuda":
        return x.to(device)
    # Only a pinned batch (from the loader's workers) can be copied asynchronously; pinning
    # here would cost one more host copy than the plain one.
    x = x.to(device, non_blocking=x.is_pinned())
    if x.dim() == 4 and x.is_floating_point():
        x = x.contiguous(memory_format=torch.channels_last)
    return x
