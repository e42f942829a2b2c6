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
``fit(..., X_val_ood=...)`` when given (a held-out OOD set), else synthetic proxies made from the ID
validation features (:func:`~ffs_det.density.scorers.layer_combiner.proxy_outliers`: ``"noise"`` or
``"shuffle"``). The ID validation features are ``fit(..., X_val=...)`` when given, else a random
``val_fraction`` of the fit features held out from the Gaussians and flows. With one layer (or ``combine="sum"``) no validation is
used: the score is the layer score (the sum of the layer scores).
"""
from dataclasses import replace
from functools import partial
from typing import Dict, Optional, Sequence

import numpy as np
import torch

from ..flow_training import FlowConfig, finite_or_floor, fit_flow, flow_log_prob
from ..gaussians import fit_class_gaussians
from ..inputs import as_labels, as_layers
from ..streaming import ArrayRows, FeatureRows, as_feature_rows, is_streamed, read_labels
from .base import Scorer, register_scorer
from .layer_combiner import PROXIES, LayerCombiner, proxy_outliers

__all__ = ["ResidualFlowScorer"]

STREAM_VAL_ROWS = 50_000  # validation rows read into memory for the layer combination of a streamed fit


class _LayerModel:
    """The tied Gaussians and per-class flows of one layer; ``x`` a tensor or FeatureRows (then each class's
    flow trains on whitened minibatches read from the source)."""

    def __init__(self, x, labels: np.ndarray, ridge: float, config: FlowConfig):
        # streamed: the labels as a row source, read block by block (no whole-array copies per pass)
        self.gaussians = fit_class_gaussians(x, ArrayRows(labels) if isinstance(x, FeatureRows) else labels,
                                             covariance="tied", ridge=ridge)
        self.half_log_det = 0.5 * float(self.gaussians.log_det()[0])
        self.flows = []
        streamed = isinstance(x, FeatureRows)
        for k, c in enumerate(self.gaussians.component_class):
            if streamed:
                u = x.subset(np.flatnonzero(labels == c)).map(partial(self.gaussians.whiten, k=k))
            else:
                u = self.gaussians.whiten(x[torch.as_tensor(labels == c)], k)
            cfg = config if len(u) >= 2 else replace(config, epochs=0)  # one sample: the Gaussian
            self.flows.append(fit_flow(u, cfg))

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """``max_c log p_c(x)``, ``(N,)``."""
        per_class = [flow_log_prob(flow, self.gaussians.whiten(x, k)) for k, flow in enumerate(self.flows)]
        return torch.stack(per_class, dim=1).max(dim=1).values - self.half_log_det


@register_scorer("residual_flow")
class ResidualFlowScorer(Scorer):
    """See the module docstring. ``X`` is ``{layer: (N, D_l)}`` (or one ``(N, D)`` array). Fitted
    attributes: ``models_`` (``{layer: Gaussians and flows}``), ``dims_`` and ``combiner_`` (None without
    the logistic combination)."""

    uses_labels = True
    layered = True
    streams = True

    def __init__(self, layers: Optional[Sequence[str]] = None, ridge: float = 1e-6, coupling: str = "glow",
                 blocks: int = 2, hidden: int = 128, clamp: float = 2.0, epochs: int = 20,
                 max_steps: int = 3000, batch_size: int = 128, lr: float = 1e-3, weight_decay: float = 0.0,
                 combine: str = "logistic", val_fraction: float = 0.2, val_proxy: str = "noise",
                 noise_scale: float = 1.0, seed: int = 0, device: str = "cpu"):
        self.layers, self.ridge = layers, ridge
        self.coupling, self.blocks, self.hidden, self.clamp = coupling, blocks, hidden, clamp
        self.epochs, self.max_steps, self.batch_size, self.lr = epochs, max_steps, batch_size, lr
        self.weight_decay, self.combine, self.val_fraction, self.val_proxy = weight_decay, combine, val_fraction, \
            val_proxy
        self.noise_scale, self.seed, self.device = noise_scale, seed, device

    def check_params(self) -> None:
        if self.combine not in ("logistic", "sum"):
            raise ValueError(f"combine must be 'logistic' or 'sum', got {self.combine!r}")
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in (0, 1), got {self.val_fraction}")
        if self.val_proxy not in PROXIES:
            raise ValueError(f"val_proxy must be one of {PROXIES}, got {self.val_proxy!r}")

    def fit(self, X, y=None, *, head=None, X_val=None, X_val_ood=None) -> "ResidualFlowScorer":
        """``X_val``: ID validation features for the layer combination (default: a held-out split of ``X``);
        ``X_val_ood``: validation outliers (default: proxies made from the ID validation features)."""
        self.check_params()
        streamed = is_streamed(X) or (isinstance(X, dict) and any(is_streamed(v) for v in X.values()))
        if streamed:
            feats = _row_layers(X, None if self.layers is None else list(self.layers))
            n = len(next(iter(feats.values())))
            labels = read_labels(as_labels(None, n) if y is None else y, n)
        else:
            feats = as_layers(X, "features", None if self.layers is None else list(self.layers))
            labels = as_labels(y, next(iter(feats.values())).shape[0])
        layers = list(feats)
        use_combiner = self.combine == "logistic" and len(layers) > 1
        if use_combiner and X_val is None:
            feats, labels, val = self._split(feats, labels)
            if streamed:  # the layer combination is fitted in memory, on at most STREAM_VAL_ROWS rows
                val = {k: v.read(0, min(len(v), STREAM_VAL_ROWS)) for k, v in val.items()}
        elif use_combiner:
            val = as_layers(X_val, "X_val", layers)
        config = FlowConfig.from_options(self)
        self.models_ = {name: _LayerModel(x, labels, float(self.ridge), config) for name, x in feats.items()}
        self.dims_ = {name: (x.dim if streamed else x.shape[1]) for name, x in feats.items()}
        self.combiner_ = None
        if use_combiner:
            if X_val_ood is not None:
                val_ood = as_layers(X_val_ood, "X_val_ood", layers)
            else:
                val_ood = proxy_outliers(val, self.val_proxy, float(self.noise_scale), int(self.seed))
            self.combiner_ = LayerCombiner().fit(self._stack(self._layer_scores(val)),
                                                 self._stack(self._layer_scores(val_ood)))
        return self

    def layer_scores(self, X) -> Dict[str, np.ndarray]:
        """``{layer: max_c log p_c(x)}`` in nats, before the combination."""
        self.check_fitted()
        return self._layer_scores(as_layers(X, "features", list(self.models_), self.dims_))

    def score(self, X) -> np.ndarray:
        scores = self._stack(self.layer_scores(X))
        if self.combiner_ is not None:
            return self.combiner_(scores)
        return scores.sum(axis=1)

    def _layer_scores(self, feats: Dict[str, torch.Tensor]) -> Dict[str, np.ndarray]:
        return {name: finite_or_floor(self.models_[name].log_prob(x)) for name, x in feats.items()}

    @staticmethod
    def _stack(scores: Dict[str, np.ndarray]) -> np.ndarray:
        return np.stack(list(scores.values()), axis=1)

    def _split(self, feats, y):
        rng = np.random.default_rng(int(self.seed))
        perm = rng.permutation(len(y))
        n_val = max(1, int(round(self.val_fraction * len(y))))
        val_idx, fit_idx = torch.as_tensor(perm[:n_val]), torch.as_tensor(perm[n_val:])
        if fit_idx.numel() == 0 or set(np.unique(y[perm[n_val:]])) != set(np.unique(y)):
            raise ValueError("the validation split leaves a class without fit samples; lower val_fraction or "
                             "pass X_val")
        if any(isinstance(v, FeatureRows) for v in feats.values()):
            fit_rows, val_rows = np.sort(perm[n_val:]), np.sort(perm[:n_val])
            return ({k: v.subset(fit_rows) for k, v in feats.items()}, y[fit_rows],
                    {k: v.subset(val_rows) for k, v in feats.items()})
        return ({k: v[fit_idx] for k, v in feats.items()}, y[perm[n_val:]],
                {k: v[val_idx] for k, v in feats.items()})


def _row_layers(X, layers: Optional[Sequence[str]]) -> Dict[str, FeatureRows]:
    """``{layer: FeatureRows}`` with one N, from a row source or a dict of them (in-memory arrays allowed)."""
    X = X if isinstance(X, dict) else {"features": X}
    names = list(X) if layers is None else list(layers)
    missing = [k for k in names if k not in X]
    if missing:
        raise ValueError(f"features lack layer(s) {missing}; they have {list(X)}")
    out = {k: as_feature_rows(X[k], f"features[{k!r}]") for k in names}
    sizes = {k: len(v) for k, v in out.items()}
    if len(set(sizes.values())) != 1:
        raise ValueError(f"features: every layer needs the same number of rows, got {sizes}")
    return out
