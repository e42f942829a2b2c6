"""fDBD: the distance of a feature to the classifier's decision boundaries, relative to its deviation from the
mean of the in-distribution features.

Liu & Qin, "Fast Decision Boundary based Out-of-Distribution Detector", ICML 2024.

For a linear head ``logits = W z + b`` and the predicted class ``p = argmax_c logit_c``, the distance from
``z`` to the boundary between ``p`` and ``c`` is estimated in closed form by the distance to the hyperplane
``logit_p = logit_c`` (the paper proves it a tight lower bound):

    d_c(z) = |(w_p - w_c)^T z + (b_p - b_c)| / ||w_p - w_c||_2 = (logit_p - logit_c) / ||w_p - w_c||_2.

The paper's score (the average of these distances, regularised by the feature's deviation from the mean
``mu`` of the in-distribution training features), higher = more in-distribution:

    s(z) = (1 / (C - 1)) sum_{c != p} d_c(z) / ||z - mu||_2.

``fit(X, head=...)`` keeps the head, ``mu`` (one pass over ``X``; a row source streams) and the ``C x C``
norms ``||w_i - w_j||_2``. No options: the method has no hyperparameters. The authors' code sums instead of
averaging (a constant factor); OpenOOD's version may divide by ``||z||_2`` instead of ``||z - mu||_2``
(chosen on validation data), which departs from the paper; pytorch-ood 0.4.0's ``fDBD`` is the paper's formula
in float32. A feature exactly at ``mu`` has no defined score; its distance is floored at 1e-12.
"""
import numpy as np
import torch

from ..inputs import as_features, required_head
from ..streaming import as_feature_rows
from .base import Scorer, register_scorer

__all__ = ["FDBDScorer"]


@register_scorer("fdbd")
class FDBDScorer(Scorer):
    """Fitted attributes: ``head_``, ``mean_`` (``mu``) and ``weight_gaps_`` (``||w_i - w_j||_2``, 1 on the
    diagonal, whose distance term is 0)."""

    uses_head = "required"
    streams = True

    def __init__(self) -> None:
        pass

    def fit(self, X, y=None, *, head=None) -> "FDBDScorer":
        """``X`` in memory or a row source: one pass over its blocks, ``O(D)`` memory besides the head."""
        self.check_params()
        x = as_feature_rows(X)
        head = required_head(self.name, head, x.dim)
        n_classes = head.weight.shape[0]
        if n_classes < 2:
            raise ValueError("fdbd: the final linear layer needs at least 2 classes (a decision boundary)")
        gaps = torch.cdist(head.weight, head.weight, compute_mode="donot_use_mm_for_euclid_dist")
        same = (gaps == 0) & ~torch.eye(n_classes, dtype=torch.bool)
        if same.any():
            i, j = (int(v) for v in same.nonzero()[0])
            raise ValueError(f"fdbd: classes {i} and {j} have the same weight vector, so no decision boundary "
                             f"between them")
        total = torch.zeros(x.dim, dtype=torch.float64)
        for _, block in x.blocks():
            total += block.sum(dim=0)
        self.head_, self.mean_ = head, total / len(x)
        self.weight_gaps_ = gaps.fill_diagonal_(1.0)
        return self

    def score(self, X) -> np.ndarray:
        self.check_fitted()
        x = as_features(X, dim=self.head_.in_features)
        logits = self.head_.logits(x)
        top, pred = logits.max(dim=1)
        distances = (top[:, None] - logits) / self.weight_gaps_[pred]  # 0 for the predicted class itself
        average = distances.sum(dim=1) / (logits.shape[1] - 1)
        return (average / (x - self.mean_).norm(dim=1).clamp(min=1e-12)).numpy()
