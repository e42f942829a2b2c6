"""Likelihood ratio against a background model, in feature space.

Ren, Liu, Fertig, Snoek, Poplin, DePristo, Dillon & Lakshminarayanan, "Likelihood Ratios for
Out-of-Distribution Detection", NeurIPS 2019.

Two flows (``build_flow``) are trained by maximum likelihood on the standardised ID features: the
foreground flow on the features themselves, the background flow on *perturbed* features with an extra L2
penalty (``background_weight_decay``), so that it captures the generic statistics of the features but not
their fine structure. Perturbation, the feature-space counterpart of the paper's random input mutations:
each coordinate of each (standardised) training feature is, independently with probability
``mutation_rate``, replaced by the same coordinate of a uniformly drawn training feature — a draw from that
coordinate's empirical marginal. A fresh perturbation is drawn once, with ``seed``.

Score, higher = more in-distribution: ``log p_fg(x) - log p_bg(x)`` (the standardisation's Jacobian is
common to both and cancels).
"""
from dataclasses import replace

import numpy as np
import torch

from .base import Scorer, register_scorer
from .checks import features_2d, require_fitted
from .flow_fitting import FlowConfig, Standardizer, finite_or_floor, fit_flow, flow_log_prob

__all__ = ["LikelihoodRatioScorer", "mutate"]


def mutate(x: torch.Tensor, rate: float, generator: torch.Generator) -> torch.Tensor:
    """Replace each entry of ``x (N, D)`` with probability ``rate`` by the same column of a random row."""
    n, d = x.shape
    mask = torch.rand(n, d, generator=generator, dtype=torch.float64) < rate
    donors = torch.randint(0, n, (n, d), generator=generator)
    return torch.where(mask, x.gather(0, donors), x)


@register_scorer("likelihood_ratio")
class LikelihoodRatioScorer(Scorer):
    requires = frozenset({"features"})

    def __init__(self, mutation_rate: float = 0.2, background_weight_decay: float = 1e-4,
                 coupling: str = "glow", blocks: int = 4, hidden: int = 256, clamp: float = 2.0,
                 epochs: int = 30, max_steps: int = 3000, batch_size: int = 256, lr: float = 1e-3, seed: int = 0,
                 device: str = "cpu"):
        if not 0.0 < mutation_rate <= 1.0:
            raise ValueError(f"mutation_rate must be in (0, 1], got {mutation_rate}")
        self.mutation_rate = float(mutation_rate)
        self.seed = int(seed)
        self.config = FlowConfig(coupling=coupling, blocks=blocks, hidden=hidden, clamp=clamp, epochs=epochs,
                                 max_steps=max_steps, batch_size=batch_size, lr=lr, seed=seed, device=device)
        self.background_config = replace(self.config, weight_decay=background_weight_decay)
        self.foreground = None

    def fit(self, features=None, **_) -> "LikelihoodRatioScorer":
        x = features_2d(features)
        self.standardize = Standardizer(x)
        xs = self.standardize(x)
        perturbed = mutate(xs, self.mutation_rate, torch.Generator().manual_seed(self.seed))
        self.foreground = fit_flow(xs, self.config)
        self.background = fit_flow(perturbed, self.background_config)
        return self

    def log_likelihoods(self, features=None, **_):
        """``(log p_fg(x), log p_bg(x))`` in nats of the raw features, float64 tensors ``(N,)``."""
        require_fitted(self, "foreground")
        xs = self.standardize(features_2d(features, dim=self.standardize.mean.numel()))
        ld = self.standardize.log_det
        return flow_log_prob(self.foreground, xs) + ld, flow_log_prob(self.background, xs) + ld

    def score(self, features=None, **_) -> np.ndarray:
        fg, bg = self.log_likelihoods(features)
        return finite_or_floor(fg - bg)
