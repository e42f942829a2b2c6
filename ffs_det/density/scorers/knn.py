"""Deep nearest neighbours: distance to the k-th nearest L2-normalised training feature.

Sun, Ming, Zhu & Li, "Out-of-Distribution Detection with Deep Nearest Neighbors", ICML 2022.

Fit: L2-normalise the training features (optionally keep a random ``train_fraction`` of them, as the
paper does for ImageNet) and index them: with faiss (``faiss-cpu``, the index of KNN OOD work: an exact
``IndexFlatL2`` in float32) when it is installed, else with scikit-learn's ``NearestNeighbors`` (float64);
``backend`` chooses. Score, higher = more in-distribution: ``-|| z - z_(k) ||_2`` with ``z = x / ||x||`` and
``z_(k)`` its k-th nearest normalised training feature. The paper uses k = 50 on CIFAR-10 and k = 1000 on
ImageNet. Both indexes are exact and hold the whole bank: O(N D) memory.
"""
import numpy as np
from sklearn.neighbors import NearestNeighbors

try:
    import faiss
except ImportError:  # optional: pip install faiss-cpu
    faiss = None

from ..inputs import as_features
from ..normalize import l2_normalize
from .base import Scorer, register_scorer

__all__ = ["KNNScorer"]


@register_scorer("knn")
class KNNScorer(Scorer):
    """Fitted attributes: ``dim_``, ``backend_`` (``"faiss"`` or ``"sklearn"``) and ``index_``."""

    def __init__(self, k: int = 50, normalize: bool = True, train_fraction: float = 1.0, seed: int = 0,
                 n_jobs=None, backend: str = "auto"):
        self.k, self.normalize, self.train_fraction, self.seed = k, normalize, train_fraction, seed
        self.n_jobs = n_jobs
        self.backend = backend

    def check_params(self) -> None:
        if self.k < 1:
            raise ValueError(f"k must be >= 1, got {self.k}")
        if not 0.0 < self.train_fraction <= 1.0:
            raise ValueError(f"train_fraction must be in (0, 1], got {self.train_fraction}")
        if self.backend not in ("auto", "faiss", "sklearn"):
            raise ValueError(f"backend must be 'auto', 'faiss' or 'sklearn', got {self.backend!r}")
        if self.backend == "faiss" and faiss is None:
            raise ValueError("backend='faiss' needs faiss: pip install faiss-cpu")

    def _prepare(self, X, dim=None) -> np.ndarray:
        x = as_features(X, dim=dim)
        return (l2_normalize(x) if self.normalize else x).numpy()

    def fit(self, X, y=None, *, head=None) -> "KNNScorer":
        self.check_params()
        z = self._prepare(X)
        if self.train_fraction < 1.0:
            keep = np.random.default_rng(self.seed).permutation(len(z))[:max(1, int(self.train_fraction * len(z)))]
            z = z[np.sort(keep)]
        if len(z) < self.k:
            raise ValueError(f"knn: k={self.k} exceeds the number of training features ({len(z)})")
        self.dim_ = z.shape[1]
        self.backend_ = "faiss" if self.backend == "faiss" or (self.backend == "auto" and faiss) else "sklearn"
        if self.backend_ == "faiss":
            self.index_ = faiss.IndexFlatL2(self.dim_)
            self.index_.add(np.ascontiguousarray(z, dtype=np.float32))
        else:
            self.index_ = NearestNeighbors(n_neighbors=int(self.k), n_jobs=self.n_jobs).fit(z)
        return self

    def score(self, X) -> np.ndarray:
        self.check_fitted()
        z = self._prepare(X, self.dim_)
        if self.backend_ == "faiss":
            squared, _ = self.index_.search(np.ascontiguousarray(z, dtype=np.float32), int(self.k))
            return -np.sqrt(np.maximum(squared[:, -1].astype(np.float64), 0.0))
        dist, _ = self.index_.kneighbors(z, n_neighbors=int(self.k))
        return -dist[:, -1].astype(np.float64)
