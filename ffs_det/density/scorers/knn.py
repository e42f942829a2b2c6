"""Deep nearest neighbours: distance to the k-th nearest L2-normalised training feature.

Sun, Ming, Zhu & Li, "Out-of-Distribution Detection with Deep Nearest Neighbors", ICML 2022.

Fit: L2-normalise the training features (optionally keep a random ``train_fraction`` of them, as the
paper does for ImageNet) and index them: with faiss (``faiss-cpu``, the index of KNN OOD work: an exact
``IndexFlatL2`` in float32) when it is installed, else with scikit-learn's ``NearestNeighbors`` (float64);
``backend`` chooses. Score, higher = more in-distribution: ``-|| z - z_(k) ||_2`` with ``z = x / ||x||`` and
``z_(k)`` its k-th nearest normalised training feature. The paper uses k = 50 on CIFAR-10 and k = 1000 on
ImageNet. Both default indexes are exact and hold the whole bank: O(N D) memory (4 bytes per entry with
faiss); a compressed faiss index (``index="SQ8"``, ``"IVF4096,PQ64"``, any ``faiss.index_factory`` string)
holds less and finds approximate neighbours.
"""
import numpy as np
from sklearn.neighbors import NearestNeighbors

try:
    import faiss
except ImportError:  # optional: pip install faiss-cpu
    faiss = None

from ..inputs import as_features
from ..normalize import l2_normalize
from ..streaming import as_feature_rows, sample_indices
from .base import Scorer, register_scorer

__all__ = ["KNNScorer"]


@register_scorer("knn")
class KNNScorer(Scorer):
    """Fitted attributes: ``dim_``, ``backend_`` (``"faiss"`` or ``"sklearn"``), ``index_`` and
    ``index_bytes_`` (what the index holds: ``N D 4`` bytes exact, less for a compressed faiss index)."""

    streams = True

    def __init__(self, k: int = 50, normalize: bool = True, train_fraction: float = 1.0, seed: int = 0,
                 n_jobs=None, backend: str = "auto", index: str = "Flat", nprobe: int = 16,
                 index_train_rows: int = 100_000):
        self.k, self.normalize, self.train_fraction, self.seed = k, normalize, train_fraction, seed
        self.n_jobs = n_jobs
        self.backend = backend
        self.index, self.nprobe, self.index_train_rows = index, nprobe, index_train_rows

    def check_params(self) -> None:
        if self.k < 1:
            raise ValueError(f"k must be >= 1, got {self.k}")
        if not 0.0 < self.train_fraction <= 1.0:
            raise ValueError(f"train_fraction must be in (0, 1], got {self.train_fraction}")
        if self.backend not in ("auto", "faiss", "sklearn"):
            raise ValueError(f"backend must be 'auto', 'faiss' or 'sklearn', got {self.backend!r}")
        if self.backend == "faiss" and faiss is None:
            raise ValueError("backend='faiss' needs faiss: pip install faiss-cpu")
        if self.index != "Flat" and (self.backend == "sklearn" or faiss is None):
            raise ValueError(f"index={self.index!r} is a faiss index: it needs faiss (pip install faiss-cpu) "
                             f"and backend 'auto' or 'faiss'")
        if self.nprobe < 1 or self.index_train_rows < 1:
            raise ValueError(f"nprobe and index_train_rows must be >= 1, got {self.nprobe}, "
                             f"{self.index_train_rows}")

    def _prepare(self, X, dim=None) -> np.ndarray:
        x = as_features(X, dim=dim)
        return (l2_normalize(x) if self.normalize else x).numpy()

    def fit(self, X, y=None, *, head=None) -> "KNNScorer":
        """``X`` in memory or a row source; with faiss the bank is added block by block, so memory is that of
        the index (``index``: a faiss ``index_factory`` string, e.g. ``"Flat"`` exact, ``"SQ8"`` 4x smaller,
        ``"IVF4096,PQ64"`` ~32x smaller at 2048-d; compressed ones are approximate)."""
        self.check_params()
        rows = as_feature_rows(X)
        if self.normalize:
            rows = rows.map(l2_normalize)
        n = len(rows)
        if self.train_fraction < 1.0:
            keep = np.random.default_rng(self.seed).permutation(n)[:max(1, int(self.train_fraction * n))]
            rows = rows.subset(np.sort(keep))
        if len(rows) < self.k:
            raise ValueError(f"knn: k={self.k} exceeds the number of training features ({len(rows)})")
        self.dim_ = rows.dim
        self.backend_ = "faiss" if self.backend == "faiss" or (self.backend == "auto" and faiss) else "sklearn"
        if self.backend_ == "faiss":
            self.index_ = self._faiss_index(rows)
            self.index_bytes_ = int(self.index_.sa_code_size()) * int(self.index_.ntotal)
        else:
            z = rows.read(0, len(rows)).numpy()
            self.index_ = NearestNeighbors(n_neighbors=int(self.k), n_jobs=self.n_jobs).fit(z)
            self.index_bytes_ = int(z.nbytes)
        return self

    def _faiss_index(self, rows):
        index = faiss.index_factory(self.dim_, self.index)
        if not index.is_trained:
            sample = rows.take(sample_indices(len(rows), int(self.index_train_rows), int(self.seed)))
            index.train(np.ascontiguousarray(sample.numpy(), dtype=np.float32))
        for _, block in rows.blocks():
            index.add(np.ascontiguousarray(block.numpy(), dtype=np.float32))
        if "IVF" in self.index:
            faiss.ParameterSpace().set_index_parameter(index, "nprobe", int(self.nprobe))
        return index

    def score(self, X) -> np.ndarray:
        self.check_fitted()
        z = self._prepare(X, self.dim_)
        if self.backend_ == "faiss":
            squared, _ = self.index_.search(np.ascontiguousarray(z, dtype=np.float32), int(self.k))
            return -np.sqrt(np.maximum(squared[:, -1].astype(np.float64), 0.0))
        dist, _ = self.index_.kneighbors(z, n_neighbors=int(self.k))
        return -dist[:, -1].astype(np.float64)
