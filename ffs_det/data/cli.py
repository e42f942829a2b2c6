"""Dataset options shared by the train/apply CLIs: ``--dataset-dir`` and repeatable ``--register-coco`` /
``--register-coco-ood``."""
import argparse
from typing import List

from .paths import DATASETS_ENV, default_dataset_dir

__all__ = ["add_dataset_args", "apply_dataset_args"]


def add_dataset_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    group = parser.add_argument_group("datasets")
    group.add_argument("--dataset-dir", default=default_dataset_dir(),
                       help=f"root of the datasets (default: ${DATASETS_ENV} or 'datasets'); see datasets/README.md")
    group.add_argument("--register-coco", nargs=3, action="append", default=[],
                       metavar=("NAME", "JSON", "IMAGE_ROOT"),
                       help="register a COCO-format json as dataset NAME (repeatable)")
    group.add_argument("--register-coco-ood", nargs=3, action="append", default=[],
                       metavar=("NAME", "JSON", "IMAGE_ROOT"),
                       help="register a COCO-format json as OOD test set NAME: its annotations are not in the "
                            "model's classes, so no box AP or ground-truth matching is computed on it (repeatable)")
    return parser


def apply_dataset_args(args: argparse.Namespace) -> List[str]:
    """Register the built-in datasets under ``args.dataset_dir``, then each ``--register-coco`` and
    ``--register-coco-ood``; idempotent.

    Returns the names registered. Files are only checked when a dataset is loaded (or by
    :func:`ffs_det.data.require_datasets`).
    """
    from .catalog import register_all, register_coco

    names = register_all(getattr(args, "dataset_dir", None) or default_dataset_dir())
    for name, json_file, image_root in getattr(args, "register_coco", None) or []:
        names.append(register_coco(name, json_file, image_root))
    for name, json_file, image_root in getattr(args, "register_coco_ood", None) or []:
        names.append(register_coco(name, json_file, image_root, is_ood=True))
    return names
