"""Deep nearest neighbours: distance to the k-th nearest L2-normalised training feature.

Sun, Ming, Zhu & Li, "Out-of-Distribution Detection with Deep Nearest Neighbors", ICML 2022.

Fit: L2-normalise the training features (optionally keep a random ``train_fraction`` of them, as the
paper does for ImageNet) and index them with scikit-learn's ``NearestNeighbors``. Score, higher = more
in-distribution: ``-|| z - z_(k) ||_2`` with ``z = x / ||x||`` and ``z_(k)`` its k-th nearest normalised
training feature. The paper uses k = 50 on CIFAR-10 and k = 1000 on ImageNet.
"""
import numpy as np
from sklearn.neighbors import NearestNeighbors

from .base import Scorer, register_scorer
from .checks import features_2d, l2_normalize, require_fitted

__all__ = ["KNNScorer"]


@register_scorer("knn")
class KNNScorer(Scorer):
    requires = frozenset({"features"})

    def __init__(self, k: int = 50, normalize: bool = True, train_fraction: float = 1.0, seed: int = 0,
                 n_jobs=None):
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        if not 0.0 < train_fraction <= 1.0:
            raise ValueError(f"train_fraction must be in (0, 1], got {train_fraction}")
        self.k, self.normalize, self.train_fraction, self.seed = int(k), bool(normalize), train_fraction, seed
        self.n_jobs = n_jobs
        self.index = None

    def _prepare(self, features, dim=None) -> np.ndarray:
        x = features_2d(features, dim=dim)
        return (l2_normalize(x) if self.normalize else x).numpy()

    def fit(self, features=None, **_) -> "KNNScorer":
        z = self._prepare(features)
        if self.train_fraction < 1.0:
            keep = np.random.default_rng(self.seed).permutation(len(z))[:max(1, int(self.train_fraction * len(z)))]
            z = z[np.sort(keep)]
        if len(z) < self.k:
            raise ValueError(f"knn: k={self.k} exceeds the number of training features ({len(z)})")
        self.dim = z.shape[1]
        self.index = NearestNeighbors(n_neighbors=self.k, n_jobs=self.n_jobs).fit(z)
        return self

    def score(self, features=None, **_) -> np.ndarray:
        require_fitted(self, "index")
        dist, _ = self.index.kneighbors(self._prepare(features, self.dim), n_neighbors=self.k)
        return -dist[:, -1].astype(np.float64)
