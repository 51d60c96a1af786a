"""Datasets (read from disk, never downloaded), train/val/test carving, replayable views.

Importing this package registers every dataset in :data:`DATASETS`.
"""

from edray.data import cifar100, digits, folders, synthetic  # noqa: F401  (register the datasets)
from edray.data.groups import ClassGroups, split_classes
from edray.data.imagesets import FileImageSet, ImageSet, TensorImageSet, subset
from edray.data.loading import BatchLoader, LoaderSettings, iterate_batches, loader_settings
from edray.data.splits import DATASETS, DataSplits, load_data
from edray.data.views import ViewParams, apply_views, batch_views, view_params

__all__ = [
    "BatchLoader",
    "DATASETS",
    "ClassGroups",
    "DataSplits",
    "FileImageSet",
    "ImageSet",
    "LoaderSettings",
    "TensorImageSet",
    "ViewParams",
    "apply_views",
    "batch_views",
    "iterate_batches",
    "load_data",
    "loader_settings",
    "split_classes",
    "subset",
    "view_params",
]
