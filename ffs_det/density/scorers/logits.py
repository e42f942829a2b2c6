"""Scorers that read only the classifier's logits: maximum softmax probability and energy.

* ``msp`` — ``max_c softmax(logits / T)_c`` (Hendrycks & Gimpel, ICLR 2017; ``T = 1`` by default).
* ``energy`` — the negative free energy ``T * logsumexp(logits / T)`` (Liu et al., NeurIPS 2020).

Both need no fitting and are computed in float64.
"""
import numpy as np
import torch

from .base import Scorer, register_scorer

__all__ = ["MSPScorer", "EnergyScorer", "check_temperature", "max_softmax", "negative_energy", "as_float64"]


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


def as_float64(x, name: str, ndim: int) -> torch.Tensor:
    """``x`` (tensor or array) as a float64 CPU tensor with ``ndim`` dimensions, without a float32 detour."""
    if x is None:
        raise ValueError(f"this scorer needs {name!r}")
    try:
        t = x.detach().to("cpu", torch.float64) if torch.is_tensor(x) else \
            torch.as_tensor(np.asarray(x, dtype=np.float64))
    except (TypeError, ValueError) as e:
        raise ValueError(f"{name} must be numeric ({e})") from None
    if t.dim() != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(t.shape)}")
    return t


def _logits(logits) -> torch.Tensor:
    t = as_float64(logits, "logits", ndim=2)
    if t.shape[1] < 1:
        raise ValueError(f"logits need at least one class column, got shape {tuple(t.shape)}")
    return t


@register_scorer("msp")
class MSPScorer(Scorer):
    """Maximum softmax probability at temperature ``T``."""

    requires = frozenset({"logits"})
    requires_fit = False

    def __init__(self, temperature: float = 1.0):
        self.temperature = check_temperature(temperature)

    def score(self, logits=None, **_) -> np.ndarray:
        return max_softmax(_logits(logits), self.temperature).numpy()


@register_scorer("energy")
class EnergyScorer(Scorer):
    """Negative energy ``T * logsumexp(logits / T)``."""

    requires = frozenset({"logits"})
    requires_fit = False

    def __init__(self, temperature: float = 1.0):
        self.temperature = check_temperature(temperature)

    def score(self, logits=None, **_) -> np.ndarray:
        return negative_energy(_logits(logits), self.temperature).numpy()
