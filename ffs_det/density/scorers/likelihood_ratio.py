"""Likelihood ratio against a background model, in feature space.

Ren, Liu, Fertig, Snoek, Poplin, DePristo, Dillon & Lakshminarayanan, "Likelihood Ratios for
Out-of-Distribution Detection", NeurIPS 2019.

Two flows (``FeatureFlow``) are trained by maximum likelihood on the standardised ID features: the
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

from ..flow_training import FlowConfig, finite_or_floor, fit_flow, flow_log_prob
from ..inputs import as_features
from ..normalize import Standardizer
from ..streaming import as_feature_rows, is_streamed
from .base import Scorer, register_scorer

__all__ = ["LikelihoodRatioScorer", "mutate"]


def mutate(x: torch.Tensor, rate: float, generator: torch.Generator) -> torch.Tensor:
    """Replace each entry of ``x (N, D)`` with probability ``rate`` by the same column of a random row."""
    n, d = x.shape
    mask = torch.rand(n, d, generator=generator, dtype=torch.float64) < rate
    donors = torch.randint(0, n, (n, d), generator=generator)
    return torch.where(mask, x.gather(0, donors), x)


@register_scorer("likelihood_ratio")
class LikelihoodRatioScorer(Scorer):
    """Fitted attributes: ``standardizer_``, ``foreground_`` and ``background_`` (the two flows)."""

    streams = True

    def __init__(self, mutation_rate: float = 0.2, background_weight_decay: float = 1e-4,
                 coupling: str = "glow", blocks: int = 4, hidden: int = 256, clamp: float = 2.0,
                 epochs: int = 30, max_steps: int = 3000, batch_size: int = 256, lr: float = 1e-3, seed: int = 0,
                 device: str = "cpu"):
        self.mutation_rate, self.background_weight_decay = mutation_rate, background_weight_decay
        self.coupling, self.blocks, self.hidden, self.clamp = coupling, blocks, hidden, clamp
        self.epochs, self.max_steps, self.batch_size, self.lr = epochs, max_steps, batch_size, lr
        self.seed, self.device = seed, device

    def check_params(self) -> None:
        if not 0.0 < self.mutation_rate <= 1.0:
            raise ValueError(f"mutation_rate must be in (0, 1], got {self.mutation_rate}")

    def fit(self, X, y=None, *, head=None) -> "LikelihoodRatioScorer":
        """``X`` in memory, or a row source: then the flows train on minibatches read from it, and each
        background minibatch is perturbed afresh with donors drawn from the same minibatch (a sample of each
        coordinate's marginal), instead of one perturbed copy of the whole set."""
        self.check_params()
        config = FlowConfig.from_options(self)
        background = replace(config, weight_decay=float(self.background_weight_decay))
        gen = torch.Generator().manual_seed(int(self.seed))
        if is_streamed(X):
            x = as_feature_rows(X)
            self.standardizer_ = Standardizer().fit(x)
            xs = x.map(self.standardizer_)
            self.foreground_ = fit_flow(xs, config)
            self.background_ = fit_flow(xs.map(lambda b: mutate(b, float(self.mutation_rate), gen)), background)
            return self
        x = as_features(X)
        self.standardizer_ = Standardizer().fit(x)
        xs = self.standardizer_(x)
        perturbed = mutate(xs, float(self.mutation_rate), gen)
        self.foreground_ = fit_flow(xs, config)
        self.background_ = fit_flow(perturbed, background)
        return self

    def log_likelihoods(self, X):
        """``(log p_fg(x), log p_bg(x))`` in nats of the raw features, float64 tensors ``(N,)``."""
        self.check_fitted()
        xs = self.standardizer_(as_features(X, dim=self.standardizer_.mean_.numel()))
        ld = self.standardizer_.log_det
        return flow_log_prob(self.foreground_, xs) + ld, flow_log_prob(self.background_, xs) + ld

    def score(self, X) -> np.ndarray:
        fg, bg = self.log_likelihoods(X)
        return finite_or_floor(fg - bg)
