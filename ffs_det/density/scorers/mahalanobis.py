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

from .base import Scorer, register_scorer
from .checks import features_2d, labels_1d, require_fitted
from .gaussians import fit_class_gaussians

__all__ = ["MahalanobisScorer"]


@register_scorer("mahalanobis")
class MahalanobisScorer(Scorer):
    requires = frozenset({"features", "labels"})

    def __init__(self, ridge: float = 1e-6):
        self.ridge = float(ridge)
        self.gaussians = None

    def fit(self, features=None, labels=None, **_) -> "MahalanobisScorer":
        x = features_2d(features)
        y = labels_1d(labels, x.shape[0])
        self.gaussians = fit_class_gaussians(x, y, covariance="tied", ridge=self.ridge)
        return self

    def score(self, features=None, **_) -> np.ndarray:
        require_fitted(self, "gaussians")
        x = features_2d(features, dim=self.gaussians.dim)
        return (-0.5 * self.gaussians.sq_mahalanobis(x).min(dim=1).values).numpy()

    def log_normalizer(self) -> float:
        """``-(D/2) log 2 pi - (1/2) log det Sigma``: the score plus this is the closest class's log-density."""
        require_fitted(self, "gaussians")
        g = self.gaussians
        return float(-0.5 * (g.dim * np.log(2 * np.pi) + g.log_det()[0]))
