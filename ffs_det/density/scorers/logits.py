"""Scorers that read only the classifier's logits: maximum softmax probability and energy.

* ``msp`` — ``max_c softmax(logits / T)_c`` (Hendrycks & Gimpel, ICLR 2017; ``T = 1`` by default).
* ``energy`` — the negative free energy ``T * logsumexp(logits / T)`` (Liu et al., NeurIPS 2020).

Both need no fitting (``score_logits``; ``fit(head=...)`` to score features) and are computed in float64.
"""
import numpy as np
import torch

from .base import LogitScorer, register_scorer

__all__ = ["MSPScorer", "EnergyScorer", "check_temperature", "max_softmax", "negative_energy"]


def check_temperature(temperature: float) -> float:
    t = float(temperature)
    if not np.isfinite(t) or t <= 0:
        raise ValueError(f"temperature must be a positive number, got {temperature!r}")
    return t


def max_softmax(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """``max_c softmax(logits / T)_c`` per row."""
    return torch.softmax(logits / temperature, dim=1).max(dim=1).values


def negative_energy(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """``T * logsumexp(logits / T)`` per row (minus the energy: higher = more in-distribution)."""
    return temperature * torch.logsumexp(logits / temperature, dim=1)


@register_scorer("msp")
class MSPScorer(LogitScorer):
    """Maximum softmax probability at temperature ``T``."""

    def __init__(self, temperature: float = 1.0):
        self.temperature = temperature

    def check_params(self) -> None:
        check_temperature(self.temperature)

    def _from_logits(self, logits: torch.Tensor) -> torch.Tensor:
        return max_softmax(logits, float(self.temperature))


@register_scorer("energy")
class EnergyScorer(LogitScorer):
    """Negative energy ``T * logsumexp(logits / T)``."""

    def __init__(self, temperature: float = 1.0):
        self.temperature = temperature

    def check_params(self) -> None:
        check_temperature(self.temperature)

    def _from_logits(self, logits: torch.Tensor) -> torch.Tensor:
        return negative_energy(logits, float(self.temperature))
