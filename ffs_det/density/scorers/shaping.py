"""Activation shaping: reshape each sample's penultimate activations, then score the energy of the logits.

* ``ash`` — Djurisic, Bozanic, Ashok & Liu, "Extremely Simple Activation Shaping for Out-of-Distribution
  Detection", ICLR 2023 (the method section's ASH-P, -B, -S). Per sample, the ``k = D - round(D p / 100)``
  largest of the ``D`` activations are kept and the others set to 0 (prune, ``variant="p"``); ``"b"``
  (binarize) sets every kept one to ``s1 / k``, ``"s"`` (scale) multiplies the kept ones by ``exp(s1 / s2)``,
  where ``s1`` is the sum of all activations and ``s2`` that of the kept ones.
* ``scale`` — Xu, Chen, Franchi & Yao, "Scaling for Training Time and Post-hoc Out-of-distribution Detection
  Enhancement", ICLR 2024 (the method section's SCALE): nothing is pruned; all activations are multiplied by
  ``exp(s1 / s2)``, with ``s2`` the sum of the ``k`` largest, ``k`` as above.

The score, higher = more in-distribution, is the energy ``logsumexp((shaped x) W^T + b)`` through the
classifier's final linear layer (``head``). Both shape the pooled penultimate features, as the authors' code
does for ImageNet ResNet-50 (after the global average pool). Both assume non-negative (post-ReLU) activations:
then ``s2 >= k s1 / D`` and the factor ``exp(s1 / s2) <= exp(D / k)``. Ties at the cut are kept in feature
order (a stable sort), so the scores do not depend on the sorting algorithm.
"""
import math

import numpy as np
import torch

from ..inputs import as_features, required_head
from ..streaming import as_feature_rows, is_streamed
from .base import Scorer, register_scorer
from .logits import negative_energy

__all__ = ["ASHScorer", "SCALEScorer", "kept_count", "top_mask", "ash", "scale_ratio", "scale_factor",
           "check_percentile", "checked_exp", "ASH_VARIANTS"]

ASH_VARIANTS = ("p", "b", "s")
_MAX_LOG = math.log(torch.finfo(torch.float64).max)


def check_percentile(percentile) -> float:
    """``percentile`` in ``[0, 100)`` (the share of activations cut or below the cut)."""
    p = float(percentile)
    if not 0 <= p < 100:
        raise ValueError(f"percentile must be in [0, 100), got {percentile!r}")
    return p


def kept_count(dim: int, percentile: float) -> int:
    """``k = D - round(D p / 100)``, the number of activations above the ``p``-th percentile (the authors' rounding,
    half to even); ValueError when it is 0 (``p`` too close to 100 for ``D`` activations)."""
    k = dim - int(np.round(dim * percentile / 100.0))
    if k < 1:
        raise ValueError(f"percentile {percentile} keeps no activation of {dim}; lower it below "
                         f"{100.0 * (dim - 0.5) / dim:.4g}")
    return k


def top_mask(x: torch.Tensor, k) -> torch.Tensor:
    """Boolean ``(N, D)``: the ``k`` largest entries of each row (``k`` an int or an ``(N,)`` tensor of counts),
    ties in feature order."""
    order = torch.sort(x, dim=1, descending=True, stable=True).indices
    ranks = torch.empty_like(order).scatter_(1, order, torch.arange(x.shape[1]).expand_as(order))
    counts = torch.as_tensor(k).reshape(-1, 1)
    return ranks < counts


def _ratio(s1: torch.Tensor, s2: torch.Tensor) -> torch.Tensor:
    """``s1 / s2`` per row; 0 where ``s2 = 0`` (for non-negative features: an all-zero row, which any factor
    leaves at 0)."""
    nonzero = s2 != 0
    return torch.where(nonzero, s1 / torch.where(nonzero, s2, torch.ones_like(s2)), torch.zeros_like(s1))


def checked_exp(ratio: torch.Tensor, what: str) -> torch.Tensor:
    """``exp(ratio)``; ValueError where it overflows float64 (possible only for signed activations, or
    ``D / k > 709``)."""
    if (ratio > _MAX_LOG).any():
        raise ValueError(f"{what}: the factor exp(s1 / s2) overflows for {int((ratio > _MAX_LOG).sum())} rows "
                         f"(max s1 / s2 = {float(ratio.max()):.4g}); the activations must be non-negative "
                         f"(post-ReLU), where s1 / s2 <= D / k")
    return torch.exp(ratio)


def ash(x: torch.Tensor, variant: str, percentile: float) -> torch.Tensor:
    """ASH-``variant`` of the rows of ``x``."""
    k = kept_count(x.shape[1], percentile)
    keep = top_mask(x, k)
    pruned = torch.where(keep, x, torch.zeros_like(x))
    if variant == "p":
        return pruned
    s1 = x.sum(dim=1, keepdim=True)
    if variant == "b":
        return torch.where(keep, s1 / k, torch.zeros_like(x))
    return pruned * checked_exp(_ratio(s1, pruned.sum(dim=1, keepdim=True)), "ash-s")


def scale_ratio(x: torch.Tensor, percentile) -> torch.Tensor:
    """SCALE's ``r = s1 / s2`` per row, ``(N, 1)``: the sum of all activations over that of the ``k`` largest;
    ``percentile`` a number or an ``(N,)`` tensor of per-row percentiles (AdaSCALE's)."""
    p = torch.as_tensor(percentile, dtype=torch.float64)
    if p.dim() == 0:
        k = kept_count(x.shape[1], float(p))
    else:
        k = x.shape[1] - torch.round(x.shape[1] * p / 100.0).to(torch.int64)
        if (k < 1).any():
            raise ValueError(f"a percentile of {float(p.max())} keeps no activation of {x.shape[1]}")
    s2 = torch.where(top_mask(x, k), x, torch.zeros_like(x)).sum(dim=1, keepdim=True)
    return _ratio(x.sum(dim=1, keepdim=True), s2)


def scale_factor(x: torch.Tensor, percentile) -> torch.Tensor:
    """SCALE's factor ``exp(s1 / s2)`` per row, ``(N, 1)`` (:func:`scale_ratio`)."""
    return checked_exp(scale_ratio(x, percentile), "scale")


class _ShapingScorer(Scorer):
    """Energy of the logits of shaped features; ``fit`` only keeps the final linear layer (nothing is learned
    from the data, whose width it checks). Fitted attribute: ``head_``."""

    uses_head = "required"
    streams = True

    def fit(self, X, y=None, *, head=None):
        self.check_params()
        dim = as_feature_rows(X).dim if is_streamed(X) else as_features(X).shape[1]
        self.head_ = required_head(self.name, head, dim)
        return self

    def score(self, X) -> np.ndarray:
        self.check_fitted()
        x = as_features(X, dim=self.head_.in_features)
        return negative_energy(self.head_.logits(self.shape(x))).numpy()

    def shape(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


@register_scorer("ash")
class ASHScorer(_ShapingScorer):
    """ASH-P / -B / -S (``variant``) at ``percentile``: 90 with ``"s"`` is the authors' ImageNet setting
    (``ash_s@90`` in andrijazz/ash, config/imagenet_config.yml); OpenOOD v1.5 uses 90 too (with ``"b"``)."""

    def __init__(self, variant: str = "s", percentile: float = 90.0):
        self.variant = variant
        self.percentile = percentile

    def check_params(self) -> None:
        if self.variant not in ASH_VARIANTS:
            raise ValueError(f"variant must be one of {ASH_VARIANTS} (prune, binarize, scale), got {self.variant!r}")
        check_percentile(self.percentile)

    def shape(self, x: torch.Tensor) -> torch.Tensor:
        return ash(x, self.variant, float(self.percentile))


@register_scorer("scale")
class SCALEScorer(_ShapingScorer):
    """SCALE at ``percentile`` (85: the authors' setting, kai422/SCALE configs/postprocessors/scale.yml, and
    OpenOOD v1.5's)."""

    def __init__(self, percentile: float = 85.0):
        self.percentile = percentile

    def check_params(self) -> None:
        check_percentile(self.percentile)

    def shape(self, x: torch.Tensor) -> torch.Tensor:
        return x * scale_factor(x, float(self.percentile))
