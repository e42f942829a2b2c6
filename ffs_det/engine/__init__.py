"""Training loop pieces."""
from .. import detectron2_compat  # noqa: F401
from .trainer import Trainer, wrap_ddp

__all__ = ["Trainer", "wrap_ddp"]
