"""FDE: flow density estimation on penultimate features (the flow log-likelihood is the score).

Features are normalised (default: L2 onto the sphere of radius ``sqrt(D)``, so each coordinate has unit
RMS and a fresh flow — exactly N(0, I) — starts at the right scale), a
:class:`~ffs_det.density.flow.FeatureFlow` is trained by maximum likelihood with Adam on the
in-distribution training features (:func:`~ffs_det.density.flow_training.train_flow`), and a sample's score is
its log-density in the normalised space (nats). Rescaling by a constant shifts every score by the same
amount, so the ranking — and every OOD metric — is that of the unit-sphere density.

Normalisations (:class:`~ffs_det.density.normalize.FeatureNormalizer`): ``"l2"``, ``"l2_standardize"`` (L2,
then per-dimension z-score with training statistics), ``"standardize"`` and ``"none"``.
"""
from typing import Optional

import numpy as np
import torch

from ..flow_training import FlowConfig, train_flow
from ..inputs import as_features
from ..normalize import NORMALIZATIONS, FeatureNormalizer
from ..streaming import as_feature_rows, is_streamed
from .base import Scorer, register_scorer

__all__ = ["FlowDensityScorer"]


@register_scorer("fde")
class FlowDensityScorer(Scorer):
    """Log-likelihood of normalised features under a normalizing flow fitted to ID training features.

    Fitted attributes: ``normalizer_``, ``flow_`` and ``history_`` (mean training NLL per epoch).
    """

    streams = True

    def __init__(self, normalize: str = "l2", epochs: int = 10, lr: float = 1e-3, batch_size: int = 256,
                 coupling: str = "glow", blocks: int = 4, hidden: int = 512, clamp: float = 2.0,
                 weight_decay: float = 0.0, grad_clip: float = 10.0, seed: int = 0,
                 device: Optional[str] = None, score_batch_size: int = 4096, max_steps: Optional[int] = None):
        self.normalize = normalize
        self.epochs, self.lr, self.batch_size = epochs, lr, batch_size
        self.coupling, self.blocks, self.hidden, self.clamp = coupling, blocks, hidden, clamp
        self.weight_decay, self.grad_clip, self.seed = weight_decay, grad_clip, seed
        self.device = device
        self.score_batch_size = score_batch_size
        self.max_steps = max_steps  # a cap on the optimizer steps of the ``epochs`` (None: no cap)

    def check_params(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.score_batch_size < 1:
            raise ValueError(f"epochs, batch_size and score_batch_size must be >= 1, got {self.epochs}, "
                             f"{self.batch_size}, {self.score_batch_size}")
        if self.max_steps is not None and int(self.max_steps) < 1:
            raise ValueError(f"max_steps must be >= 1 or None, got {self.max_steps!r}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr!r}")
        if self.normalize not in NORMALIZATIONS:
            raise ValueError(f"unknown feature normalisation {self.normalize!r}; choose one of {NORMALIZATIONS}")

    def fit(self, X, y=None, *, head=None) -> "FlowDensityScorer":
        """``X`` in memory, or a row source (:mod:`~ffs_det.density.streaming`): then each minibatch is read
        from disk and memory does not grow with ``N``."""
        self.check_params()
        streamed = is_streamed(X)
        x = as_feature_rows(X) if streamed else as_features(X).float()
        if len(x) < 2:
            raise ValueError(f"fde needs at least 2 training features, got {len(x)}")
        self.normalizer_ = FeatureNormalizer(self.normalize).fit(x)
        config = FlowConfig.from_options(self)
        self.flow_ = config.build(x.dim if streamed else x.shape[1])
        self.history_ = train_flow(self.flow_, x.map(self.normalizer_) if streamed else self.normalizer_(x),
                                   config)
        self.flow_.eval()
        return self

    @torch.no_grad()
    def score(self, X) -> np.ndarray:
        self.check_fitted()
        x = as_features(X, dim=self.flow_.dim).float()
        device = next(self.flow_.parameters()).device
        out = [self.flow_.log_prob(self.normalizer_(chunk).to(device)).double().cpu()
               for chunk in x.split(int(self.score_batch_size))]
        return torch.cat(out).numpy()
