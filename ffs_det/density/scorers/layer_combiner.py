"""Combining per-layer scores with a logistic regression fitted on a validation split, as done for the
multi-layer Mahalanobis detector (Lee et al., NeurIPS 2018) and the residual flow (Zisselman & Tamar,
CVPR 2020).

The regression separates ID validation samples (label 1) from validation outliers (label 0); its
decision function (log-odds of "in-distribution") is the combined score. Validation outliers are either
given by the user (a held-out OOD set, the papers' "validation on OOD samples") or made from the ID
validation features by :func:`proxy_outliers`:

* ``"noise"`` — each feature plus Gaussian noise with ``noise_scale`` times that dimension's ID standard
  deviation (a gradient-free stand-in for the papers' adversarially perturbed inputs: samples pushed just
  off the ID feature distribution);
* ``"shuffle"`` — every dimension permuted independently across samples: the same marginals as ID, with
  the dependencies between dimensions destroyed.
"""
from typing import Dict

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

__all__ = ["LayerCombiner", "proxy_outliers", "PROXIES"]

PROXIES = ("noise", "shuffle")


def proxy_outliers(features: Dict[str, torch.Tensor], kind: str = "noise", noise_scale: float = 1.0,
                   seed: int = 0) -> Dict[str, torch.Tensor]:
    """Synthetic validation outliers from ID validation features ``{layer: (N, D_l)}`` (see module doc)."""
    if kind not in PROXIES:
        raise ValueError(f"val_proxy must be one of {PROXIES}, got {kind!r}")
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for name, x in features.items():
        if kind == "noise":
            std = x.std(dim=0, keepdim=True) if x.shape[0] > 1 else torch.ones(1, x.shape[1], dtype=x.dtype)
            out[name] = x + noise_scale * std * torch.randn(x.shape, generator=gen, dtype=x.dtype)
        else:
            cols = [x[torch.randperm(x.shape[0], generator=gen), j] for j in range(x.shape[1])]
            out[name] = torch.stack(cols, dim=1)
    return out


class LayerCombiner:
    """Standardise the per-layer scores, then a logistic regression ID (1) vs outlier (0)."""

    def __init__(self, C: float = 1.0):
        self.model = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=1000))
        self.fitted = False

    def fit(self, id_scores: np.ndarray, ood_scores: np.ndarray) -> "LayerCombiner":
        if id_scores.ndim != 2 or ood_scores.ndim != 2 or id_scores.shape[1] != ood_scores.shape[1]:
            raise ValueError(f"per-layer scores must be (N, L) and (M, L), got {id_scores.shape} and "
                             f"{ood_scores.shape}")
        x = np.concatenate([id_scores, ood_scores])
        y = np.r_[np.ones(len(id_scores)), np.zeros(len(ood_scores))]
        self.model.fit(x, y)
        self.fitted = True
        return self

    @property
    def coef(self) -> np.ndarray:
        """Weights of the standardised layer scores."""
        return self.model[-1].coef_[0]

    def __call__(self, scores: np.ndarray) -> np.ndarray:
        if not self.fitted:
            raise ValueError("LayerCombiner: call fit(...) first")
        return self.model.decision_function(scores).astype(np.float64)
