"""Registry of OOD scorers (``fit`` on ID data, ``score`` -> higher = more in-distribution)."""
from .base import SCORERS, Scorer, as_tensor, build_scorer, register_scorer

__all__ = ["SCORERS", "Scorer", "as_tensor", "build_scorer", "register_scorer"]
