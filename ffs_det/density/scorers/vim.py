"""ViM: a virtual logit from the feature residual outside the principal subspace.

Wang, Li, Feng & Zhang, "ViM: Out-Of-Distribution with Virtual-logit Matching", CVPR 2022.

Fit (needs the final linear layer ``logits = W x + b``: ``weight``/``bias``, or ``model`` — an ``nn.Linear``
or a classifier whose last ``nn.Linear`` is the head): the
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

from .base import Scorer, register_scorer
from .checks import features_2d, linear_head, require_fitted

__all__ = ["ViMScorer"]


@register_scorer("vim")
class ViMScorer(Scorer):
    requires = frozenset({"features", "model"})

    def __init__(self, d: Optional[int] = None):
        if d is not None and d < 1:
            raise ValueError(f"d must be >= 1, got {d}")
        self.d = d
        self.residual_basis = None

    def fit(self, features=None, **inputs) -> "ViMScorer":
        x = features_2d(features)
        self.weight, self.bias = linear_head(inputs, "vim")
        if self.weight.shape[1] != x.shape[1]:
            raise ValueError(f"weight has width {self.weight.shape[1]}, features have {x.shape[1]}")
        d = x.shape[1] // 2 if self.d is None else self.d
        if not 1 <= d < x.shape[1]:
            raise ValueError(f"vim: d={d} must be below the feature width {x.shape[1]}")
        self.origin = -torch.linalg.pinv(self.weight) @ self.bias
        centred = x - self.origin
        _, vecs = torch.linalg.eigh(centred.T @ centred / x.shape[0])  # ascending eigenvalues
        self.residual_basis = vecs[:, : x.shape[1] - d]
        self.d_used = d
        logits = x @ self.weight.T + self.bias
        residual_norm = (centred @ self.residual_basis).norm(dim=1)
        self.alpha = float(logits.max(dim=1).values.mean() / residual_norm.mean())
        return self

    def score(self, features=None, **_) -> np.ndarray:
        require_fitted(self, "residual_basis")
        x = features_2d(features, dim=self.weight.shape[1])
        virtual = self.alpha * ((x - self.origin) @ self.residual_basis).norm(dim=1)
        return (torch.logsumexp(x @ self.weight.T + self.bias, dim=1) - virtual).numpy()
