"""Mahalanobis distance to the closest class mean under a tied covariance.

Lee, Lee, Lee & Shin, "A Simple Unified Framework for Detecting Out-of-Distribution Samples and
Adversarial Attacks", NeurIPS 2018.

Fit: class means ``mu_c`` and one shared covariance ``Sigma = (1/N) sum_c sum_{i in c} (x_i - mu_c)(x_i -
mu_c)^T + ridge * I`` (maximum likelihood, as in the paper). Score, higher = more in-distribution:

    s(x) = -1/2 min_c (x - mu_c)^T Sigma^{-1} (x - mu_c)

i.e. the class-conditional Gaussian log-density of the closest class without its constant
``-(D/2) log 2 pi - (1/2) log det Sigma``. The input pre-processing of the paper is not applied (it needs
gradients through the network; see ODIN for that family).
"""
import numpy as np

from ..gaussians import fit_class_gaussians
from ..inputs import as_features, as_labels
from ..streaming import Rows, as_feature_rows
from .base import Scorer, register_scorer

__all__ = ["MahalanobisScorer"]


@register_scorer("mahalanobis")
class MahalanobisScorer(Scorer):
    """Fitted attribute: ``gaussians_`` (class means and the tied covariance's Cholesky factor)."""

    uses_labels = True
    streams = True

    def __init__(self, ridge: float = 1e-6):
        self.ridge = ridge

    def fit(self, X, y=None, *, head=None) -> "MahalanobisScorer":
        """``X`` in memory or a row source (:mod:`~ffs_det.density.streaming`: two passes, O(K D + D^2)
        memory); ``y`` likewise."""
        x = as_feature_rows(X)
        labels = y if isinstance(y, Rows) else as_labels(y, len(x))
        self.gaussians_ = fit_class_gaussians(x, labels, covariance="tied", ridge=float(self.ridge))
        return self

    def score(self, X) -> np.ndarray:
        self.check_fitted()
        x = as_features(X, dim=self.gaussians_.dim)
        return (-0.5 * self.gaussians_.sq_mahalanobis(x).min(dim=1).values).numpy()

    def log_normalizer(self) -> float:
        """``-(D/2) log 2 pi - (1/2) log det Sigma``: the score plus this is the closest class's log-density."""
        self.check_fitted()
        g = self.gaussians_
        return float(-0.5 * (g.dim * np.log(2 * np.pi) + g.log_det()[0]))
