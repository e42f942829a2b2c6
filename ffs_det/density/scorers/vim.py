"""ViM: a virtual logit from the feature residual outside the principal subspace.

Wang, Li, Feng & Zhang, "ViM: Out-Of-Distribution with Virtual-logit Matching", CVPR 2022.

Fit (needs the final linear layer ``logits = W x + b`` as ``head``): the
origin ``u = -pinv(W) b``; the principal subspace ``P`` spanned by the ``d`` leading eigenvectors of
``(1/N) sum_i (x_i - u)(x_i - u)^T``; ``alpha = mean_i max_c logit_ic / mean_i ||(x_i - u)^{P-perp}||``.
Score, higher = more in-distribution:

    s(x) = logsumexp_c logit_c(x) - alpha * ||(x - u)^{P-perp}||

i.e. the log-odds against the virtual class in the paper's softmax over ``[logits, virtual logit]``
(the paper's score ``-log p(virtual class)`` is a monotone function of it). ``d`` defaults to ``D // 2``;
the paper's choices include d = 1000 for 2048-wide ResNet-50 features and d = 512 for 768-wide ViT ones.
"""
from typing import Optional

import numpy as np
import torch

from ..inputs import as_features, required_head
from ..streaming import as_feature_rows
from .base import Scorer, register_scorer

__all__ = ["ViMScorer"]


@register_scorer("vim")
class ViMScorer(Scorer):
    """Fitted attributes: ``head_``, ``origin_``, ``residual_basis_``, ``d_`` and ``alpha_``."""

    uses_head = "required"
    streams = True

    def __init__(self, d: Optional[int] = None):
        self.d = d

    def check_params(self) -> None:
        if self.d is not None and self.d < 1:
            raise ValueError(f"d must be >= 1, got {self.d}")

    def fit(self, X, y=None, *, head=None) -> "ViMScorer":
        """``X`` in memory or a row source: two passes over its blocks, ``O(D^2)`` memory."""
        self.check_params()
        x = as_feature_rows(X)
        dim = x.dim
        head = required_head(self.name, head, dim)
        d = dim // 2 if self.d is None else int(self.d)
        if not 1 <= d < dim:
            raise ValueError(f"vim: d={d} must be below the feature width {dim}")
        origin = -torch.linalg.pinv(head.weight) @ head.bias
        second = torch.zeros(dim, dim, dtype=torch.float64)
        for _, block in x.blocks():
            centred = block - origin
            second += centred.T @ centred
        _, vecs = torch.linalg.eigh(second / len(x))  # ascending eigenvalues
        basis = vecs[:, : dim - d]
        max_logit, residual = 0.0, 0.0
        for _, block in x.blocks():
            max_logit += float(head.logits(block).max(dim=1).values.sum())
            residual += float(((block - origin) @ basis).norm(dim=1).sum())
        self.alpha_ = max_logit / residual
        self.head_, self.origin_, self.residual_basis_, self.d_ = head, origin, basis, d
        return self

    def score(self, X) -> np.ndarray:
        self.check_fitted()
        x = as_features(X, dim=self.head_.in_features)
        virtual = self.alpha_ * ((x - self.origin_) @ self.residual_basis_).norm(dim=1)
        return (torch.logsumexp(self.head_.logits(x), dim=1) - virtual).numpy()
