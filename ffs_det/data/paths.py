"""Where datasets live: ``--dataset-dir``, else ``$FFS_DATASETS``, else ``datasets/`` (relative to the cwd)."""
import os

__all__ = ["DATASETS_ENV", "default_dataset_dir"]

DATASETS_ENV = "FFS_DATASETS"


def default_dataset_dir() -> str:
    return os.environ.get(DATASETS_ENV) or "datasets"
