"""Training loop pieces."""
from .trainer import Trainer, wrap_ddp

__all__ = ["Trainer", "wrap_ddp"]
