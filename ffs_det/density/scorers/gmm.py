"""Class-conditional Gaussian mixture log-likelihood of (L2-normalised, pooled) features.

The class-conditional Gaussian density of a classifier's features goes back to Lee et al. (NeurIPS 2018);
a class-conditional GMM on L2-normalised features is one of the prior energies of HEAT: Lafon, Ramzi,
Rambour & Thome, "Hybrid Energy Based Model in the Feature Space for Out-of-Distribution Detection",
ICML 2023. Here each class has its own covariance (or one tied covariance) and the score is the full
mixture likelihood.

Feature maps ``(N, C, H, W)`` are global-average pooled; with ``normalize=True`` rows are scaled to unit
norm. Each class ``c`` gets ``n_components`` Gaussians (closed-form maximum likelihood for one component,
scikit-learn's ``GaussianMixture`` for more, on at most ``mixture_rows`` random rows), weighted by the class
frequency ``pi_c``. Score, higher = more in-distribution: the mixture log-density ``log sum_c pi_c p(z | c)`` in nats. Without ``y`` at fit
all samples form one class.
"""
from typing import Optional

import numpy as np
import torch

from ..gaussians import fit_class_gaussians
from ..inputs import as_features
from ..normalize import l2_normalize
from ..streaming import FeatureRows, as_feature_rows
from .base import Scorer, register_scorer

__all__ = ["GMMScorer"]


@register_scorer("gmm")
class GMMScorer(Scorer):
    """Fitted attribute: ``gaussians_`` (the class-conditional mixture)."""

    uses_labels = True
    streams = True

    def __init__(self, normalize: bool = True, covariance: str = "full", n_components: int = 1,
                 ridge: float = 1e-6, seed: int = 0, mixture_rows: Optional[int] = 100_000):
        self.normalize = normalize
        self.covariance = covariance
        self.n_components = n_components
        self.ridge = ridge
        self.seed = seed
        self.mixture_rows = mixture_rows

    def check_params(self) -> None:
        if self.mixture_rows is not None and int(self.mixture_rows) < 1:
            raise ValueError(f"mixture_rows must be None or >= 1, got {self.mixture_rows}")

    def prepare(self, X, name: str = "features", dim=None) -> torch.Tensor:
        """The pooled (and normalised) float64 features the mixture lives on."""
        x = as_features(X, name, dim)
        return l2_normalize(x) if self.normalize else x

    def prepare_rows(self, X) -> FeatureRows:
        """:meth:`prepare` applied block by block to features in memory or a row source."""
        rows = as_feature_rows(X)
        return rows.map(l2_normalize) if self.normalize else rows

    def fit(self, X, y=None, *, head=None) -> "GMMScorer":
        """``X`` in memory or a row source: one component per class takes two passes over the blocks;
        more components fit in memory on at most ``mixture_rows`` random rows."""
        self.check_params()
        z = self.prepare_rows(X)
        # labels in memory, a row source or None (one class): fit_class_gaussians checks them as it reads them
        self.gaussians_ = fit_class_gaussians(z, y, covariance=self.covariance, ridge=float(self.ridge),
                                              n_components=int(self.n_components), seed=int(self.seed),
                                              mixture_rows=self.mixture_rows)
        return self

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """Mixture log-density of already prepared features ``z``."""
        self.check_fitted()
        return self.gaussians_.log_prob(z)

    def score(self, X) -> np.ndarray:
        self.check_fitted()
        return self.log_prob(self.prepare(X, dim=self.gaussians_.dim)).numpy()
