"""Image sets: labels known up front, pixels loaded by row index.

Grouping classes into grades needs every label before any image is decoded, and
replayable views need stable row ids, so an :class:`ImageSet` is "labels + load(rows)"
rather than a per-sample ``Dataset``. In-memory sets load a batch with one indexing op
(no DataLoader); file sets decode with PIL and can fan out over DataLoader workers
(:mod:`edray.data.loading`).
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from edray.data.views import ViewParams, batch_views, normalise_pixels, pixel_views
from edray.errors import EdrayError
from edray.spec import AugmentSpec

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "DecodedImageSet",
    "FileImageSet",
    "ImageSet",
    "SubsetImageSet",
    "TensorImageSet",
    "subset",
]

# Normalisation of RGB photos when no per-dataset statistics are known (ImageNet's).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ImageSet(abc.ABC):
    """Rows of labelled images.

    Attributes:
        labels: int64 [N], available without decoding any image.
        in_memory: True when ``load`` is a cheap in-process operation (no workers needed).
    """

    labels: torch.Tensor
    in_memory: bool = True

    def __len__(self) -> int:
        return len(self.labels)

    @abc.abstractmethod
    def load(self, indices: torch.Tensor) -> torch.Tensor:
        """Float32 [B, C, H, W] images of rows ``indices``, normalised, at the set's size."""

    def load_pixels(self, indices: torch.Tensor) -> torch.Tensor:
        """A batch as it should cross to the device: uint8 [B, H, W, C] for sets of decoded
        pixels (a quarter of the bytes; :func:`~edray.data.views.batch_views` normalises and
        cuts the views there), else :meth:`load`'s floats."""
        return self.load(indices)

    @property
    def stats(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(mean, std) that normalise :meth:`load_pixels`'s uint8 pixels; None when it gives floats."""
        return None

    def load_views(self, indices: torch.Tensor, params: ViewParams, aug: AugmentSpec) -> torch.Tensor:
        """Float32 [B, C, H, W]: the views ``params`` of rows ``indices``, normalised (on the CPU)."""
        return batch_views(self.load_pixels(indices), params, aug, self.stats)


def _stats(values: Sequence[float], channels: int, what: str) -> torch.Tensor:
    t = torch.as_tensor(values, dtype=torch.float32).reshape(-1)
    if t.numel() == 1:
        t = t.expand(channels)
    if t.numel() != channels:
        raise ValueError(f"{what} has {t.numel()} values for {channels} channels")
    return t.reshape(1, channels, 1, 1).clone()


class TensorImageSet(ImageSet):
    """Images held in memory; ``load`` indexes, scales, resizes and normalises a batch.

    Args:
        images: [N, C, H, W]; uint8 (scaled by 1/255) or float (already in [0, 1] units).
        labels: int64 [N].
        mean, std: per-channel statistics in [0, 1] units (one value broadcasts).
        image_size: square output size; None keeps the stored size.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        *,
        mean: Sequence[float],
        std: Sequence[float],
        image_size: int | None = None,
    ):
        if images.dim() != 4:
            raise ValueError(f"images must be [N, C, H, W], got shape {tuple(images.shape)}")
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images = images
        self.labels = torch.as_tensor(labels, dtype=torch.long)
        channels = images.shape[1]
        self.mean = _stats(mean, channels, "mean")
        self.std = _stats(std, channels, "std")
        self.image_size = image_size

    def load(self, indices: torch.Tensor) -> torch.Tensor:
        x = self.images[torch.as_tensor(indices, dtype=torch.long)]
        x = x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()
        size = self.image_size
        if size is not None and tuple(x.shape[-2:]) != (size, size) and len(x):
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        return (x - self.mean) / self.std


class DecodedImageSet(ImageSet):
    """Rows of decoded RGB pixels (from files, or from their decoded-image cache).

    Subclasses give :meth:`pixel_rows`; the stacked batch (:meth:`load_uint8`), the batch
    as it crosses to the device (:meth:`load_pixels`), its statistics, the normalised floats
    (:meth:`load`) and the views cut on the CPU (:meth:`load_views`) are the same for all of
    them, so a file and its cache agree value for value.

    Attributes:
        mean, std: per-channel statistics in [0, 1] units, [1, 3, 1, 1].
        image_size: the rows' square size.
    """

    mean: torch.Tensor
    std: torch.Tensor
    image_size: int

    @abc.abstractmethod
    def pixel_rows(self, indices: torch.Tensor) -> list[np.ndarray]:
        """The decoded pixels of rows ``indices``, one uint8 [H, W, 3] array each (not
        stacked: :meth:`load_views` cuts views straight from them)."""

    def load_uint8(self, indices: torch.Tensor) -> np.ndarray:
        """The decoded pixels of rows ``indices``: uint8 [B, H, W, 3]."""
        rows = self.pixel_rows(indices)
        size = self.image_size
        batch = np.empty((len(rows), size, size, 3), dtype=np.uint8)
        for i, row in enumerate(rows):
            batch[i] = row
        return batch

    @property
    def stats(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.mean, self.std

    def load_views(self, indices: torch.Tensor, params: ViewParams, aug: AugmentSpec) -> torch.Tensor:
        rows = self.pixel_rows(indices)
        if not rows:
            return torch.empty((0, 3, self.image_size, self.image_size))
        return pixel_views(rows, params, aug, self.mean, self.std)

    def load_pixels(self, indices: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.load_uint8(indices))

    def load(self, indices: torch.Tensor) -> torch.Tensor:
        return normalise_pixels(self.load_pixels(indices), self.mean, self.std)


class FileImageSet(DecodedImageSet):
    """Images decoded from files with PIL (RGB): shorter side to ``image_size``, centre crop.

    Holds only paths and labels, so it pickles cheaply into DataLoader workers.
    :data:`RESIZE_RULE` names the decode below; the decoded-image cache keys on it.

    Args:
        root: directory the paths are relative to.
        paths: relative file paths, one per row.
        labels: int64 [N].
        image_size: square output size.
        mean, std: per-channel statistics in [0, 1] units.
    """

    in_memory = False
    RESIZE_RULE = "pil-draft-rgb/shorter-side-bilinear/centre-crop/v1"

    def __init__(
        self,
        root: str | Path,
        paths: Sequence[str],
        labels: torch.Tensor,
        *,
        image_size: int,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ):
        if len(paths) != len(labels):
            raise ValueError(f"{len(paths)} paths but {len(labels)} labels")
        if image_size <= 0:
            raise ValueError(f"image_size must be > 0, got {image_size}")
        self.root = str(root)
        self.paths = list(paths)
        self.labels = torch.as_tensor(labels, dtype=torch.long)
        self.image_size = image_size
        self.mean = _stats(mean, 3, "mean")
        self.std = _stats(std, 3, "std")

    def path(self, row: int) -> Path:
        return Path(self.root) / self.paths[row]

    def _decode(self, row: int) -> np.ndarray:
        path = self.path(row)
        size = self.image_size
        try:
            with Image.open(path) as img:
                img.draft("RGB", (size, size))  # JPEG: decode at a reduced scale that still covers size
                img = img.convert("RGB")
                w, h = img.size
                scale = size / min(w, h)
                new_w, new_h = max(size, round(w * scale)), max(size, round(h * scale))
                if (new_w, new_h) != (w, h):
                    img = img.resize((new_w, new_h), Image.Resampling.BILINEAR)
                left, top = (new_w - size) // 2, (new_h - size) // 2
                img = img.crop((left, top, left + size, top + size))
                return np.asarray(img, dtype=np.uint8)
        except (OSError, ValueError, Image.DecompressionBombError) as err:
            raise EdrayError(str(path), f"cannot decode image ({err})", "remove or replace the file") from None

    def pixel_rows(self, indices: torch.Tensor) -> list[np.ndarray]:
        """The decoded pixels of rows ``indices``, what the image cache stores."""
        return [self._decode(row) for row in torch.as_tensor(indices, dtype=torch.long).reshape(-1).tolist()]


class SubsetImageSet(ImageSet):
    """Some rows of another set; ``load`` maps row ids back to the base set."""

    def __init__(self, base: ImageSet, rows: torch.Tensor):
        rows = torch.as_tensor(rows, dtype=torch.long).reshape(-1)
        if len(rows) and (rows.min() < 0 or rows.max() >= len(base)):
            raise IndexError(f"subset rows out of range for a set of {len(base)}")
        self.base = base
        self.rows = rows
        self.labels = base.labels[rows]

    @property
    def in_memory(self) -> bool:  # type: ignore[override]
        return self.base.in_memory

    def load(self, indices: torch.Tensor) -> torch.Tensor:
        return self.base.load(self.rows[torch.as_tensor(indices, dtype=torch.long)])

    def load_pixels(self, indices: torch.Tensor) -> torch.Tensor:
        return self.base.load_pixels(self.rows[torch.as_tensor(indices, dtype=torch.long)])

    def load_views(self, indices: torch.Tensor, params: ViewParams, aug: AugmentSpec) -> torch.Tensor:
        return self.base.load_views(self.rows[torch.as_tensor(indices, dtype=torch.long)], params, aug)

    @property
    def stats(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        return self.base.stats


def subset(images: ImageSet, indices: torch.Tensor) -> ImageSet:
    """A view onto rows ``indices`` of ``images`` (labels sliced); subsets of subsets flatten."""
    indices = torch.as_tensor(indices, dtype=torch.long).reshape(-1)
    if isinstance(images, SubsetImageSet):
        if len(indices) and (indices.min() < 0 or indices.max() >= len(images)):
            raise IndexError(f"subset rows out of range for a set of {len(images)}")
        return SubsetImageSet(images.base, images.rows[indices])
    return SubsetImageSet(images, indices)
