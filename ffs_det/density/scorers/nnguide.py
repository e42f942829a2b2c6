"""NNGuide: the classifier's energy, guided by the sample's nearest in-distribution training features.

Park, Jung & Teoh, "Nearest Neighbor Guidance for Out-of-Distribution Detection", ICCV 2023.

With the energy (the paper's confidence) ``E(x) = logsumexp(W x + b)`` of the final linear layer, the bank
holds each in-distribution training feature normalised and scaled by its confidence, ``b_i = E(z_i) z_i /
||z_i||``. The guidance of a test feature is the mean of its ``k`` largest inner products with the bank,
and the score, higher = more in-distribution, is the energy times the guidance:

    s(x) = E(x) * (1/k) sum_{i in N_k(x)} <x / ||x||, b_i>,   N_k(x): the k bank rows with the largest products.

Options: ``k`` (10: the paper's and the authors' code's, also pytorch-ood's; OpenOOD uses 100); ``bank_size``
(``None``: every training row; else that many rows drawn at random with ``seed``, as the paper keeps a random 1%
of ImageNet's 1.28M training images for speed); ``backend`` (as ``knn``'s).

The search is KNN's exact index (:class:`~.knn.KNNScorer`: faiss ``IndexFlatL2`` in float32, or scikit-learn in
float64), not a second one. Inner products with vectors of different norms become Euclidean distances once
the bank is lifted onto the unit sphere of one more dimension: ``b'_i = [b_i / R, sqrt(1 - ||b_i||^2 / R^2)]``
with ``R = max_i |E(z_i)|`` (``||b_i|| = |E(z_i)|``), and the query ``q = [x / ||x||, 0]`` has
``||q - b'_i||^2 = ||q||^2 + 1 - 2 <x / ||x||, b_i> / R``. The nearest lifted rows are those with the largest
inner products, which are recovered as ``R (||q||^2 + 1 - d^2) / 2`` (to ``~R * 1e-7`` with faiss's float32
distances). The fit is KNN's: from a row source, the bank is added to the index block by block (a first pass
finds ``R``); the index holds ``N (D + 1)`` float32 values.
"""
import numbers
from typing import Optional

import numpy as np
import torch

from ..inputs import as_features, required_head
from ..normalize import l2_normalize
from ..streaming import as_feature_rows, sample_indices
from .base import Scorer, register_scorer
from .knn import KNNScorer

__all__ = ["NNGuideScorer"]


def _is_count(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= 1


@register_scorer("nnguide")
class NNGuideScorer(Scorer):
    """Fitted attributes: ``head_``, ``radius_`` (``R``), ``bank_rows_`` and ``index_`` (the fitted
    :class:`~.knn.KNNScorer` holding the lifted bank)."""

    uses_head = "required"
    streams = True

    def __init__(self, k: int = 10, bank_size: Optional[int] = None, seed: int = 0, backend: str = "auto"):
        self.k = k
        self.bank_size = bank_size
        self.seed = seed
        self.backend = backend

    def check_params(self) -> None:
        if not _is_count(self.k):
            raise ValueError(f"k must be an integer >= 1, got {self.k!r}")
        if self.bank_size is not None and not _is_count(self.bank_size):
            raise ValueError(f"bank_size must be None (every row) or an integer >= 1, got {self.bank_size!r}")
        KNNScorer(backend=self.backend).check_params()

    def _energy(self, x: torch.Tensor) -> torch.Tensor:
        return torch.logsumexp(self.head_.logits(x), dim=1)

    def _lift(self, z: torch.Tensor) -> torch.Tensor:
        """Bank rows ``E(z) z / ||z||`` scaled by ``1 / R`` and lifted onto the unit sphere in ``D + 1``."""
        scaled = l2_normalize(z) * (self._energy(z) / self.radius_)[:, None]
        rest = (1.0 - scaled.pow(2).sum(dim=1, keepdim=True)).clamp(min=0.0).sqrt()
        return torch.cat([scaled, rest], dim=1)

    def fit(self, X, y=None, *, head=None) -> "NNGuideScorer":
        """``X`` in memory or a row source: one pass for ``R``, one to add the bank to the index."""
        self.check_params()
        rows = as_feature_rows(X)
        self.head_ = required_head(self.name, head, rows.dim)
        if self.bank_size is not None:
            rows = rows.subset(sample_indices(len(rows), int(self.bank_size), int(self.seed)))
        if len(rows) < self.k:
            raise ValueError(f"nnguide: k={self.k} exceeds the number of bank features ({len(rows)})")
        radius = max(float(self._energy(block).abs().max()) for _, block in rows.blocks())
        self.radius_ = radius if radius > 0 else 1.0  # all energies 0: an all-zero bank, any R works
        self.bank_rows_ = len(rows)
        self.index_ = KNNScorer(k=int(self.k), normalize=False, backend=self.backend).fit(rows.map(self._lift))
        return self

    def _squared_distances(self, q: np.ndarray) -> np.ndarray:
        """Squared distances ``(N, k)`` from the lifted queries to their ``k`` nearest lifted bank rows."""
        index = self.index_
        if index.backend_ == "faiss":
            squared, _ = index.index_.search(np.ascontiguousarray(q, dtype=np.float32), int(self.k))
            return squared.astype(np.float64)
        dist, _ = index.index_.kneighbors(q, n_neighbors=int(self.k))
        return dist ** 2

    def score(self, X) -> np.ndarray:
        self.check_fitted()
        x = as_features(X, dim=self.head_.in_features)
        unit = l2_normalize(x)
        q = torch.cat([unit, torch.zeros(len(x), 1, dtype=torch.float64)], dim=1).numpy()
        q_sq = unit.pow(2).sum(dim=1).numpy()[:, None]  # 1, or 0 for a zero feature
        products = self.radius_ * (q_sq + 1.0 - self._squared_distances(q)) / 2.0
        return products.mean(axis=1) * self._energy(x).numpy()
