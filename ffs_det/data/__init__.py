"""Datasets: registration in detectron2's catalogs, the synthetic shapes world, and COCO-json converters.

The registration API (:mod:`.catalog`, which imports detectron2) is loaded on first use, so the shapes
generator and the converters work without importing detectron2.
"""
import importlib

from .cli import add_dataset_args, apply_dataset_args
from .paths import DATASETS_ENV, default_dataset_dir

_CATALOG_NAMES = ("BUILTIN_DATASETS", "register_all", "register_coco", "require_datasets", "get_thing_classes",
                  "load_coco_detection", "registered_by_ffs_det")

__all__ = ["add_dataset_args", "apply_dataset_args", "DATASETS_ENV", "default_dataset_dir", *_CATALOG_NAMES]


def __getattr__(name):
    if name in _CATALOG_NAMES:
        return getattr(importlib.import_module(".catalog", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
