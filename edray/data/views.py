"""Replayable augmentation views (docs/design.md#the-logit-store).

A view's crop offset and flip are a pure function of ``(seed, sample id, view)``, computed
with a counter-based hash (splitmix64) instead of a random generator. A teacher's logits
precomputed for view v of sample i are therefore computed on exactly the pixels the
student sees when it later draws view v of sample i, in any process, on any machine, and
without touching (or depending on) any global RNG state.

View 0 is the evaluation view: the centred crop of the padded image (the image itself),
never flipped.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from edray.spec import AugmentSpec

__all__ = [
    "LIVE_VIEW_IDS", "ViewParams", "apply_views", "batch_views", "counter_hash", "normalise_pixels", "pixel_views",
    "view_params",
]

_MASK = (1 << 64) - 1
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MUL1 = np.uint64(0xBF58476D1CE4E5B9)
_MUL2 = np.uint64(0x94D049BB133111EB)
# Live teachers (no store) draw view ids from [1, LIVE_VIEW_IDS): a fresh augmentation each
# time, as a store's views 1..V-1 are a fixed few. The bound (the largest int32) keeps ids
# well inside the hash's integer keys.
LIVE_VIEW_IDS = 2**31 - 1
# Salts that make the dx, dy and flip draws independent hashes of the same key.
_SALT_DX, _SALT_DY, _SALT_FLIP = 1, 2, 3


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser on a uint64 array (wraps modulo 2**64, as intended)."""
    with np.errstate(over="ignore"):
        z = x + _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * _MUL1
        z = (z ^ (z >> np.uint64(27))) * _MUL2
        return z ^ (z >> np.uint64(31))


def _as_u64(value: int | torch.Tensor | np.ndarray) -> np.ndarray:
    if isinstance(value, int):
        return np.array(value & _MASK, dtype=np.uint64)
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    arr = np.asarray(value)
    if arr.dtype.kind == "u":
        return arr.astype(np.uint64)
    if arr.dtype.kind != "i":
        raise TypeError(f"hash keys must be integers, got dtype {arr.dtype}")
    # Two's-complement reinterpretation keeps negative keys distinct from positive ones.
    return arr.astype(np.int64).view(np.uint64)


def counter_hash(*keys: int | torch.Tensor | np.ndarray) -> np.ndarray:
    """A 64-bit hash of a tuple of integer keys, broadcast over array keys.

    Chained splitmix64: ``h = mix(mix(mix(k0) ^ k1) ^ k2)...``. Pure and stateless, so
    equal keys give equal hashes everywhere.
    """
    if not keys:
        raise ValueError("counter_hash needs at least one key")
    h = _splitmix64(_as_u64(keys[0]))
    for key in keys[1:]:
        h = _splitmix64(h ^ _as_u64(key))
    return np.atleast_1d(h)


@dataclass(frozen=True)
class ViewParams:
    """Per-sample crop offsets into the padded image and flips.

    Attributes:
        dx: column of the crop's left edge in the padded image, int64 [B], in [0, 2 * pad].
        dy: row of the crop's top edge, int64 [B], in [0, 2 * pad].
        flip: horizontal flip after the crop, bool [B].
    """

    dx: torch.Tensor
    dy: torch.Tensor
    flip: torch.Tensor

    def __len__(self) -> int:
        return len(self.dx)


def view_params(seed: int, sample_ids: torch.Tensor, views: torch.Tensor | int, aug: AugmentSpec) -> ViewParams:
    """Crop offsets and flips of ``views`` (one per sample, or one for all) of ``sample_ids``.

    The crop offset is uniform over the ``2 * crop_padding + 1`` positions per axis; the
    flip is a fair coin when ``aug.hflip`` is on and never otherwise. View 0 is always
    the centre crop without flip, whatever the seed.
    """
    ids = torch.as_tensor(sample_ids, dtype=torch.long).reshape(-1)
    view = torch.as_tensor(views, dtype=torch.long).reshape(-1)
    if view.numel() == 1:
        view = view.expand(len(ids))
    if len(view) != len(ids):
        raise ValueError(f"views has {len(view)} entries for {len(ids)} sample ids")
    if (view < 0).any():
        raise ValueError("views must be >= 0 (0 is the evaluation view)")
    pad = aug.crop_padding
    key = counter_hash(int(seed), ids, view)
    span = np.uint64(2 * pad + 1)
    dx = torch.from_numpy((counter_hash(key, _SALT_DX) % span).astype(np.int64))
    dy = torch.from_numpy((counter_hash(key, _SALT_DY) % span).astype(np.int64))
    if aug.hflip:
        flip = torch.from_numpy((counter_hash(key, _SALT_FLIP) >> np.uint64(63)).astype(bool))
    else:
        flip = torch.zeros(len(ids), dtype=torch.bool)
    evaluation = view == 0
    dx = torch.where(evaluation, pad, dx)
    dy = torch.where(evaluation, pad, dy)
    flip = flip & ~evaluation
    return ViewParams(dx=dx, dy=dy, flip=flip)


def apply_views(images: torch.Tensor, params: ViewParams, aug: AugmentSpec) -> torch.Tensor:
    """Zero-pad by ``crop_padding``, crop H x W at ``(dy, dx)``, flip where ``flip``.

    Images are normalised before this, so the zero padding is the dataset mean. One
    gather for the whole batch: no Python loop over samples.

    Args:
        images: float [B, C, H, W].
        params: from :func:`view_params`, one entry per image.
    """
    if images.dim() != 4:
        raise ValueError(f"images must be [B, C, H, W], got shape {tuple(images.shape)}")
    b, _, h, w = images.shape
    if len(params) != b:
        raise ValueError(f"{len(params)} view params for a batch of {b} images")
    pad = aug.crop_padding
    device = images.device
    dx, dy, flip = params.dx.to(device), params.dy.to(device), params.flip.to(device)
    if pad == 0 and not bool(flip.any()):
        return images
    padded = F.pad(images, (pad, pad, pad, pad)) if pad else images
    cols = torch.arange(w, device=device)
    cols = torch.where(flip[:, None], (w - 1) - cols, cols) + dx[:, None]  # [B, W]
    rows = torch.arange(h, device=device)[None, :] + dy[:, None]  # [B, H]
    batch = torch.arange(b, device=device)[:, None, None]
    # Advanced indices around a slice put the indexed dims first: [B, H, W, C].
    out = padded[batch, :, rows[:, :, None], cols[:, None, :]]
    return out.permute(0, 3, 1, 2).contiguous()


def normalise_pixels(pixels: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 [B, H, W, C] -> float32 [B, C, H, W] (contiguous), ``(x / 255 - mean) / std``.

    The one normalisation of decoded pixels, on whichever device they are: the image sets
    (file, cache) and :func:`pixel_views` all use it, so they agree value for value. It is
    computed as ``x * (1 / (255 std)) + (-mean / std)`` in place after the uint8 -> float
    copy (two passes over the floats instead of four), equal to the formula within float32
    rounding. A multiply then an add, not ``addcmul``: on a CPU its broadcast operands are
    not vectorised, and it took 3.6x as long as the two passes.
    """
    b, h, w, c = pixels.shape
    device = pixels.device
    out = torch.empty((b, c, h, w), dtype=torch.float32, device=device)
    out.copy_(pixels.permute(0, 3, 1, 2))
    scale, shift = _affine(mean, std, (1, c, 1, 1), device)
    return out.mul_(scale).add_(shift)


def _affine(mean: torch.Tensor, std: torch.Tensor, shape: tuple[int, ...], device: torch.device):
    """(scale, shift) of the normalisation, float32 of ``shape`` on ``device``."""
    mean = mean.reshape(shape).to(device=device, dtype=torch.float32)
    std = std.reshape(shape).to(device=device, dtype=torch.float32)
    return 1.0 / (255.0 * std), -mean / std


def pixel_views(
    pixels: torch.Tensor | Sequence[np.ndarray], params: ViewParams, aug: AugmentSpec, mean: torch.Tensor,
    std: torch.Tensor,
) -> torch.Tensor:
    """The views of uint8 pixels, normalised: equal, value for value, to
    ``apply_views(normalise_pixels(pixels, mean, std), params, aug)``.

    On a CPU each image is done whole before the next, while it is in cache: its crop
    and flip are cut from the uint8 pixels straight into channel-first order (a quarter
    of the bytes to move, and the float conversion then reads contiguous memory), then
    converted and normalised in place, and the padding, which is 0 after normalisation,
    written as 0 last. ``pixels`` may then be a list of [H, W, C] rows (the image sets
    hand over their rows without stacking them first: zero-copy views of the image
    cache). On a GPU the gather of :func:`apply_views` after normalising is already cheap.

    Args:
        pixels: uint8 [B, H, W, C], or (CPU) a sequence of B uint8 [H, W, C] arrays.
        params: from :func:`view_params`, one entry per image.
        mean, std: per-channel statistics in [0, 1] units.
    """
    if isinstance(pixels, torch.Tensor):
        if pixels.dim() != 4 or pixels.dtype != torch.uint8:
            raise ValueError(f"pixels must be uint8 [B, H, W, C], got {pixels.dtype} of shape {tuple(pixels.shape)}")
        if pixels.device.type != "cpu":
            if len(params) != len(pixels):
                raise ValueError(f"{len(params)} view params for a batch of {len(pixels)} images")
            return apply_views(normalise_pixels(pixels, mean, std), params, aug)
        if not len(pixels):
            return torch.empty((0, pixels.shape[3], *pixels.shape[1:3]), dtype=torch.float32)
    # On the CPU: the rows as numpy arrays, a zero-copy view of a tensor batch.
    rows: np.ndarray | Sequence[np.ndarray] = pixels.numpy() if isinstance(pixels, torch.Tensor) else pixels
    if len(params) != len(rows):
        raise ValueError(f"{len(params)} view params for a batch of {len(rows)} images")
    if not len(rows):
        raise ValueError("pixel_views needs at least one image row")
    h, w, c = rows[0].shape
    pad = aug.crop_padding
    out = torch.empty((len(rows), c, h, w), dtype=torch.float32)
    chw = np.zeros((c, h, w), dtype=np.uint8)  # one image's crop; what the window leaves is zeroed as floats
    chw_t = torch.from_numpy(chw)
    scale, shift = _affine(mean, std, (c, 1, 1), out.device)
    for i, (dx, dy, flip) in enumerate(zip(params.dx.tolist(), params.dy.tolist(), params.flip.tolist())):
        image = rows[i]
        if image.shape != (h, w, c) or image.dtype != np.uint8:
            raise ValueError(f"pixels must be uint8 rows of one shape {(h, w, c)}, got {image.dtype} {image.shape}")
        # The crop window in image coordinates, clipped to the image; t* are its rows/cols in the crop.
        oy, ox = dy - pad, dx - pad
        y0, y1, x0, x1 = max(0, oy), min(h, oy + h), max(0, ox), min(w, ox + w)
        ty0, ty1, tx0, tx1 = y0 - oy, y1 - oy, x0 - ox, x1 - ox
        if flip:  # crop column j lands at w - 1 - j
            tx0, tx1 = w - tx1, w - tx0
        view = out[i]
        if y1 <= y0 or x1 <= x0:  # the crop lies wholly in the padding
            view.zero_()
            continue
        src = image[y0:y1, x0:x1]
        chw[:, ty0:ty1, tx0:tx1] = (src[:, ::-1] if flip else src).transpose(2, 0, 1)
        view.copy_(chw_t)
        view.mul_(scale).add_(shift)
        if (ty0, ty1, tx0, tx1) != (0, h, 0, w):
            view[:, :ty0] = 0.0
            view[:, ty1:] = 0.0
            view[:, :, :tx0] = 0.0
            view[:, :, tx1:] = 0.0
    return out


def batch_views(
    batch: torch.Tensor, params: ViewParams, aug: AugmentSpec, stats: tuple[torch.Tensor, torch.Tensor] | None
) -> torch.Tensor:
    """Views of a batch from :meth:`ImageSet.load_pixels`: uint8 pixels (normalised with
    ``stats``) or already-normalised floats; the same values either way."""
    if batch.dtype == torch.uint8:
        if stats is None:
            raise ValueError("uint8 pixels need the set's (mean, std) to be normalised")
        return pixel_views(batch, params, aug, *stats)
    return apply_views(batch, params, aug)
