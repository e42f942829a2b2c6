"""Residual flow: class-conditional Gaussians refined by normalizing flows, one per class and layer.

Zisselman & Tamar, "Deep Residual Flow for Out of Distribution Detection", CVPR 2020.

Per layer ``l`` the features get the Mahalanobis model (class means ``mu_c``, tied covariance
``Sigma = L L^T``). Per class ``c`` a :class:`~ffs_det.density.flow.FeatureFlow` ``g_c`` is trained by
maximum likelihood on the whitened residuals ``u = L^{-1}(x - mu_c)`` of that class, so

    log p_c(x) = log N(g_c(u); 0, I) + log|det dg_c/du| - 1/2 log det Sigma.

The flow is the non-linear *residual* on top of the Gaussian: its coupling subnets end in zero-initialised
layers, so an untrained ``g_c`` is a fixed permutation with unit Jacobian and ``log p_c`` is exactly the
Gaussian. The layer score is ``max_c log p_c(x)``; untrained (``epochs=0``) it equals the
``"mahalanobis"`` score plus the constant ``-(D_l/2) log 2 pi - (1/2) log det Sigma``
(:meth:`MahalanobisScorer.log_normalizer`).

Layers are combined as in the paper (and Lee et al. 2018): a logistic regression over the per-layer
scores, fitted on a validation split — ID validation features against validation outliers, which are
``val_ood_features`` when given (a held-out OOD set), else synthetic proxies made from the ID validation
features (:func:`~ffs_det.density.scorers.layer_combiner.proxy_outliers`: ``"noise"`` or ``"shuffle"``).
The ID validation features are ``val_features`` when given, else a random ``val_fraction`` of the fit
features held out from the Gaussians and flows. With one layer (or ``combine="sum"``) no validation is
used: the score is the layer score (the sum of the layer scores).
"""
from dataclasses import replace
from typing import Dict, Optional, Sequence

import numpy as np
import torch

from .base import Scorer, register_scorer
from .checks import labels_1d, layer_dict, require_fitted
from .flow_fitting import FlowConfig, finite_or_floor, fit_flow, flow_log_prob
from .gaussians import fit_class_gaussians
from .layer_combiner import PROXIES, LayerCombiner, proxy_outliers

__all__ = ["ResidualFlowScorer"]


class _LayerModel:
    """The tied Gaussians and per-class flows of one layer."""

    def __init__(self, x: torch.Tensor, labels: np.ndarray, ridge: float, config: FlowConfig):
        self.gaussians = fit_class_gaussians(x, labels, covariance="tied", ridge=ridge)
        self.half_log_det = 0.5 * float(self.gaussians.log_det()[0])
        self.flows = []
        for k, c in enumerate(self.gaussians.component_class):
            u = self.gaussians.whiten(x[torch.as_tensor(labels == c)], k)
            cfg = config if u.shape[0] >= 2 else replace(config, epochs=0)  # one sample: the Gaussian
            self.flows.append(fit_flow(u, cfg))

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """``max_c log p_c(x)``, ``(N,)``."""
        per_class = [flow_log_prob(flow, self.gaussians.whiten(x, k)) for k, flow in enumerate(self.flows)]
        return torch.stack(per_class, dim=1).max(dim=1).values - self.half_log_det


@register_scorer("residual_flow")
class ResidualFlowScorer(Scorer):
    """See the module docstring. ``features`` is ``{layer: (N, D_l)}`` (or one ``(N, D)`` tensor)."""

    requires = frozenset({"layer_features", "labels"})

    def __init__(self, layers: Optional[Sequence[str]] = None, ridge: float = 1e-6, coupling: str = "glow",
                 blocks: int = 2, hidden: int = 128, clamp: float = 2.0, epochs: int = 20,
                 max_steps: int = 3000,
                 batch_size: int = 128, lr: float = 1e-3, weight_decay: float = 0.0,
                 combine: str = "logistic", val_fraction: float = 0.2, val_proxy: str = "noise",
                 noise_scale: float = 1.0, seed: int = 0, device: str = "cpu"):
        if combine not in ("logistic", "sum"):
            raise ValueError(f"combine must be 'logistic' or 'sum', got {combine!r}")
        if not 0.0 < val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
        if val_proxy not in PROXIES:
            raise ValueError(f"val_proxy must be one of {PROXIES}, got {val_proxy!r}")
        self.layers = None if layers is None else list(layers)
        self.ridge = float(ridge)
        self.combine = combine
        self.val_fraction = float(val_fraction)
        self.val_proxy = val_proxy
        self.noise_scale = float(noise_scale)
        self.seed = int(seed)
        self.flow_config = FlowConfig(coupling=coupling, blocks=blocks, hidden=hidden, clamp=clamp,
                                      epochs=epochs, max_steps=max_steps, batch_size=batch_size, lr=lr,
                                      weight_decay=weight_decay,
                                      seed=seed, device=device)
        self.models: Optional[Dict[str, _LayerModel]] = None
        self.combiner: Optional[LayerCombiner] = None

    def fit(self, features=None, labels=None, val_features=None, val_ood_features=None,
            **_) -> "ResidualFlowScorer":
        feats = layer_dict(features, "features", self.layers)
        layers = list(feats)
        y = labels_1d(labels, next(iter(feats.values())).shape[0])
        use_combiner = self.combine == "logistic" and len(layers) > 1
        if use_combiner and val_features is None:
            feats, y, val = self._split(feats, y)
        elif use_combiner:
            val = layer_dict(val_features, "val_features", layers)
        self.models = {name: _LayerModel(x, y, self.ridge, self.flow_config) for name, x in feats.items()}
        self.dims = {name: x.shape[1] for name, x in feats.items()}
        self.combiner = None
        if use_combiner:
            if val_ood_features is not None:
                val_ood = layer_dict(val_ood_features, "val_ood_features", layers)
            else:
                val_ood = proxy_outliers(val, self.val_proxy, self.noise_scale, self.seed)
            self.combiner = LayerCombiner().fit(self._stack(self._layer_scores(val)),
                                                self._stack(self._layer_scores(val_ood)))
        return self

    def layer_scores(self, features=None, **_) -> Dict[str, np.ndarray]:
        """``{layer: max_c log p_c(x)}`` in nats, before the combination."""
        require_fitted(self, "models")
        return self._layer_scores(layer_dict(features, "features", list(self.models), self.dims))

    def score(self, features=None, **_) -> np.ndarray:
        scores = self._stack(self.layer_scores(features))
        if self.combiner is not None:
            return self.combiner(scores)
        return scores.sum(axis=1)

    def _layer_scores(self, feats: Dict[str, torch.Tensor]) -> Dict[str, np.ndarray]:
        return {name: finite_or_floor(self.models[name].log_prob(x)) for name, x in feats.items()}

    @staticmethod
    def _stack(scores: Dict[str, np.ndarray]) -> np.ndarray:
        return np.stack(list(scores.values()), axis=1)

    def _split(self, feats, y):
        rng = np.random.default_rng(self.seed)
        perm = rng.permutation(len(y))
        n_val = max(1, int(round(self.val_fraction * len(y))))
        val_idx, fit_idx = torch.as_tensor(perm[:n_val]), torch.as_tensor(perm[n_val:])
        if fit_idx.numel() == 0 or set(np.unique(y[perm[n_val:]])) != set(np.unique(y)):
            raise ValueError("the validation split leaves a class without fit samples; lower val_fraction or "
                             "pass val_features")
        return ({k: v[fit_idx] for k, v in feats.items()}, y[perm[n_val:]],
                {k: v[val_idx] for k, v in feats.items()})
