"""Feature normalisations shared by the scorers and the benchmarks: L2 onto a sphere, per-dimension
z-scores, and the combinations the FDE scorer offers."""
import math

import torch

from .streaming import FeatureRows, column_mean_std

__all__ = ["l2_normalize", "Standardizer", "FeatureNormalizer", "NORMALIZATIONS"]

NORMALIZATIONS = ("l2", "l2_standardize", "standardize", "none")


def l2_normalize(x: torch.Tensor, radius: float = 1.0) -> torch.Tensor:
    """Rows scaled to Euclidean norm ``radius`` (zero rows stay finite)."""
    return x / x.norm(dim=1, keepdim=True).clamp(min=1e-12) * radius


class Standardizer:
    """``x -> (x - mean) / std`` per dimension with statistics of the fit rows (``std >= eps``; one row:
    ``std = 1``); its log-Jacobian is ``log_det = -sum(log std)``."""

    def __init__(self, eps: float = 1e-8):
        self.eps = eps

    def fit(self, x) -> "Standardizer":
        """``x``: a tensor ``(N, D)`` or :class:`~ffs_det.density.streaming.FeatureRows` (two passes)."""
        if isinstance(x, FeatureRows):
            self.mean_, std = column_mean_std(x)
            self.std_ = std.clamp(min=self.eps) if len(x) > 1 else torch.ones_like(self.mean_)
        else:
            self.mean_ = x.mean(dim=0)
            self.std_ = x.std(dim=0).clamp(min=self.eps) if x.shape[0] > 1 else torch.ones_like(self.mean_)
        self.log_det = float(-self.std_.log().sum())
        return self

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean_) / self.std_


class FeatureNormalizer:
    """One of :data:`NORMALIZATIONS`: ``"l2"`` scales rows onto the sphere of radius ``sqrt(D)`` (each
    coordinate of unit RMS, the scale of a standard-normal base), ``"l2_standardize"`` then z-scores each
    dimension with the fit statistics, ``"standardize"`` z-scores the raw features, ``"none"``."""

    def __init__(self, kind: str = "l2"):
        if kind not in NORMALIZATIONS:
            raise ValueError(f"unknown feature normalisation {kind!r}; choose one of {NORMALIZATIONS}")
        self.kind = kind
        self.standardizer = Standardizer(eps=1e-6) if "standardize" in kind else None

    def fit(self, x) -> "FeatureNormalizer":
        """``x``: a tensor ``(N, D)`` or :class:`~ffs_det.density.streaming.FeatureRows`."""
        if self.standardizer is not None:
            self.standardizer.fit(x.map(self._l2) if isinstance(x, FeatureRows) else self._l2(x))
        return self

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        y = self._l2(x)
        return self.standardizer(y) if self.standardizer is not None else y

    def _l2(self, x: torch.Tensor) -> torch.Tensor:
        return l2_normalize(x, math.sqrt(x.shape[1])) if self.kind.startswith("l2") else x
