"""Class-conditional Gaussian mixture log-likelihood of (L2-normalised, pooled) features.

The class-conditional Gaussian density of a classifier's features goes back to Lee et al. (NeurIPS 2018);
a class-conditional GMM on L2-normalised features is one of the prior energies of HEAT: Lafon, Ramzi,
Rambour & Thome, "Hybrid Energy Based Model in the Feature Space for Out-of-Distribution Detection",
ICML 2023. Here each class has its own covariance (or one tied covariance) and the score is the full
mixture likelihood.

Feature maps ``(N, C, H, W)`` are global-average pooled; with ``normalize=True`` rows are scaled to unit
norm. Each class ``c`` gets ``n_components`` Gaussians (closed-form maximum likelihood for one component,
scikit-learn's ``GaussianMixture`` for more), weighted by the class frequency ``pi_c``. Score, higher =
more in-distribution: the mixture log-density ``log sum_c pi_c p(z | c)`` in nats. Without ``labels`` at fit
all samples form one class.
"""
import numpy as np
import torch

from .base import Scorer, register_scorer
from .checks import features_2d, l2_normalize, labels_1d, require_fitted
from .gaussians import Gaussians, fit_class_gaussians

__all__ = ["GMMScorer"]


@register_scorer("gmm")
class GMMScorer(Scorer):
    requires = frozenset({"features", "labels"})

    def __init__(self, normalize: bool = True, covariance: str = "full", n_components: int = 1,
                 ridge: float = 1e-6, seed: int = 0):
        self.normalize = bool(normalize)
        self.covariance = covariance
        self.n_components = int(n_components)
        self.ridge = float(ridge)
        self.seed = int(seed)
        self.gaussians: Gaussians = None

    def prepare(self, features, name: str = "features", dim=None) -> torch.Tensor:
        """The pooled (and normalised) float64 features the mixture lives on."""
        x = features_2d(features, name, dim)
        return l2_normalize(x) if self.normalize else x

    def fit(self, features=None, labels=None, **_) -> "GMMScorer":
        z = self.prepare(features)
        y = np.zeros(z.shape[0], np.int64) if labels is None else labels_1d(labels, z.shape[0])
        self.gaussians = fit_class_gaussians(z, y, covariance=self.covariance, ridge=self.ridge,
                                             n_components=self.n_components, seed=self.seed)
        return self

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """Mixture log-density of already prepared features ``z``."""
        require_fitted(self, "gaussians")
        return self.gaussians.log_prob(z)

    def score(self, features=None, **_) -> np.ndarray:
        require_fitted(self, "gaussians")
        return self.log_prob(self.prepare(features, dim=self.gaussians.dim)).numpy()
