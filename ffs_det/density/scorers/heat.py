"""HEAT: a residual energy learned on top of prior OOD energies, and the composition of several of them.

Lafon, Ramzi, Rambour & Thome, "Hybrid Energy Based Model in the Feature Space for Out-of-Distribution
Detection", ICML 2023.

For each prior ``s`` — ``"gmm"``: ``E_s(z) = -log p_GMM(z)`` on L2-normalised features (the ``"gmm"``
scorer); ``"energy"``: ``E_s(z) = -logsumexp(W z + b)`` on raw features (needs the final linear layer at
fit: ``head``) — a small MLP ``E_theta`` learns a
correction:

    E(z) = E_theta(z) / T + E_s(z) / T_s.

``E_theta``'s last layer starts at zero, so an untrained HEAT energy is the prior energy. ``T_s="auto"``
divides the prior energy by its standard deviation on the fit features, which puts it on the MLP's scale.

Training (``epochs`` passes or ``max_steps`` Adam steps, whichever ends first) is contrastive divergence, i.e.
stochastic maximum likelihood of ``p(z) ~ exp(-E(z))``: minimise ``mean E(z+) - <E(z-)> + reg * (mean
E_theta(z+)^2 + mean E_theta(z-)^2)``, where the L2 term keeps the residual bounded and only ``E_theta`` has
parameters. Positives ``z+`` are the fit features. Negatives ``z-`` start as draws from a Gaussian proposal
``q`` — the class-conditional GMM itself for ``"gmm"``, class Gaussians with a tied covariance on the raw
features for ``"energy"`` — and are turned into samples of the current model in one of two ways:

* ``negatives="prior"`` (default): ``<E(z-)>`` is the self-normalised importance-weighted mean with weights
  ``exp(-E(z-)) / q(z-)`` (no gradient through the weights), which makes the two phases a consistent
  estimate of the likelihood gradient (exact as the batch grows). Cheap; the weights degenerate in high dimension.
* ``negatives="sgld"``: ``sgld_steps`` Langevin steps on ``E`` from the proposal draws (diagonally
  preconditioned by the per-dimension feature variance), then the plain mean — short-run CD.

``priors="auto"`` (default) uses both priors when the final linear layer is given at fit, else the GMM
alone.

Composition (HEAT sums its hybrid energies after putting them on a common scale): each corrected energy
is standardised by its mean and standard deviation on the fit features, and the standardised energies are
summed. Score, higher = more in-distribution: minus that sum.
"""
from typing import Dict, Sequence, Union

import numpy as np
import torch
from torch import nn

from ..flow import seeded_init
from ..flow_training import minibatches
from ..gaussians import fit_class_gaussians
from ..inputs import as_features, as_labels, linear_head
from ..streaming import FeatureRows, Rows, as_feature_rows, column_mean_std, is_streamed
from .base import Scorer, register_scorer
from .gmm import GMMScorer

__all__ = ["HEATScorer", "PRIORS"]

PRIORS = ("gmm", "energy")


class _GMMPrior:
    def __init__(self, x, y, covariance, ridge, seed):
        self.gmm = GMMScorer(normalize=True, covariance=covariance, ridge=ridge, seed=seed).fit(x, y)
        self.proposal = self.gmm.gaussians_

    def prepare(self, x):
        return self.gmm.prepare_rows(x) if isinstance(x, FeatureRows) else self.gmm.prepare(x)

    def energy(self, z):
        return -self.gmm.log_prob(z)


class _EnergyLogitPrior:
    def __init__(self, x, y, head, ridge):
        self.head = head
        self.proposal = fit_class_gaussians(x, y, covariance="tied", ridge=ridge)

    def prepare(self, x):
        return x

    def energy(self, z):
        return -torch.logsumexp(self.head.logits(z), dim=1)


class _Residual(nn.Module):
    """``E_theta``: an MLP on standardised features, last layer zero-initialised."""

    def __init__(self, mean, std, hidden):
        super().__init__()
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)
        self.net = nn.Sequential(nn.Linear(mean.numel(), hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                                 nn.Linear(hidden, 1))
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, z):
        return self.net((z - self.mean) / self.std).squeeze(1)


def _mean_std(z, fn=None):
    """Mean and (unbiased) standard deviation over rows of ``z`` (or of ``fn(z)``), a tensor or FeatureRows."""
    if isinstance(z, FeatureRows):
        return column_mean_std(z, fn)
    v = z if fn is None else fn(z)
    return v.mean(dim=0), v.std(dim=0)


class _HybridEnergy:
    """One prior with its learned residual: ``E(z) = E_theta(z)/T + E_prior(z)/T_prior``."""

    def __init__(self, prior, z, cfg: dict, gen: torch.Generator):
        """``z``: the prepared fit features, a tensor or FeatureRows (statistics then take passes over blocks)."""
        self.prior = prior
        self.cfg = cfg
        mean, std = _mean_std(z)
        std = std.clamp(min=1e-8)
        t_prior = cfg["prior_temperature"]
        with torch.no_grad():
            self.t_prior = float(_mean_std(z, prior.energy)[1].clamp(min=1e-8)) if t_prior == "auto" else \
                float(t_prior)
        self.residual = _Residual(mean, std, cfg["hidden"]).double()
        self._train(z, std, gen)
        with torch.no_grad():
            e_mean, e_std = _mean_std(z, self.energy)
        self.mean, self.scale = float(e_mean), float(e_std.clamp(min=1e-8))

    def energy(self, z):
        return self.residual(z) / self.cfg["temperature"] + self.prior.energy(z) / self.t_prior

    def _negatives(self, n, std, gen):
        z = self.prior.proposal.sample(n, generator=gen)
        if self.cfg["negatives"] == "sgld":
            step, noise, var = self.cfg["sgld_step"], self.cfg["sgld_noise"], std ** 2
            for _ in range(self.cfg["sgld_steps"]):
                z = z.detach().requires_grad_(True)
                (grad,) = torch.autograd.grad(self.energy(z).sum(), z)
                z = z - step * var * grad + noise * (2 * step) ** 0.5 * std * torch.randn(
                    z.shape, generator=gen, dtype=z.dtype)
        return z.detach()

    def _train(self, z, std, gen):
        cfg = self.cfg
        opt = torch.optim.Adam(self.residual.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"])
        for _, idx in minibatches(len(z), cfg["batch_size"], cfg["epochs"], cfg["max_steps"], gen):
            pos = z.take(idx) if isinstance(z, FeatureRows) else z[idx]
            neg = self._negatives(pos.shape[0], std, gen)
            r_pos, r_neg = self.residual(pos), self.residual(neg)
            if cfg["negatives"] == "prior":  # self-normalised importance weights p_model / q
                with torch.no_grad():
                    weights = torch.softmax(-self.energy(neg) - self.prior.proposal.log_prob(neg), dim=0)
                neg_phase = (weights * r_neg).sum()
            else:
                neg_phase = r_neg.mean()
            loss = (r_pos.mean() - neg_phase) / cfg["temperature"] + cfg["reg"] * (
                (r_pos ** 2).mean() + (r_neg ** 2).mean())
            opt.zero_grad()
            loss.backward()
            opt.step()
        self.residual.eval()


@register_scorer("heat")
class HEATScorer(Scorer):
    """See the module docstring. Fitted attributes: ``dim_`` and ``energies_`` (``{prior: hybrid energy}``)."""

    uses_labels = True
    uses_head = "optional"
    streams = True

    def __init__(self, priors: Union[str, Sequence[str]] = "auto", hidden: int = 128, temperature: float = 1.0,
                 prior_temperature="auto", epochs: int = 50, max_steps: int = 2000, batch_size: int = 256,
                 lr: float = 1e-3, weight_decay: float = 0.0, reg: float = 0.1, negatives: str = "prior",
                 sgld_steps: int = 20, sgld_step: float = 1e-2, sgld_noise: float = 1.0,
                 gmm_covariance: str = "full", ridge: float = 1e-6, seed: int = 0):
        self.priors, self.hidden, self.temperature, self.prior_temperature = priors, hidden, temperature, \
            prior_temperature
        self.epochs, self.max_steps, self.batch_size, self.lr = epochs, max_steps, batch_size, lr
        self.weight_decay, self.reg, self.negatives = weight_decay, reg, negatives
        self.sgld_steps, self.sgld_step, self.sgld_noise = sgld_steps, sgld_step, sgld_noise
        self.gmm_covariance, self.ridge, self.seed = gmm_covariance, ridge, seed

    def _priors(self):
        if self.priors == "auto":
            return "auto"
        return (self.priors,) if isinstance(self.priors, str) else tuple(self.priors)

    def check_params(self) -> None:
        priors = self._priors()
        if priors != "auto" and (not priors or any(p not in PRIORS for p in priors)):
            raise ValueError(f"priors must be 'auto' or a non-empty subset of {PRIORS}, got {priors}")
        if self.negatives not in ("prior", "sgld"):
            raise ValueError(f"negatives must be 'prior' or 'sgld', got {self.negatives!r}")
        if self.prior_temperature != "auto" and float(self.prior_temperature) <= 0:
            raise ValueError(f"prior_temperature must be 'auto' or > 0, got {self.prior_temperature}")

    def fit(self, X, y=None, *, head=None) -> "HEATScorer":
        """``X`` in memory or a row source: the priors, statistics and positives are then read block by
        block / minibatch by minibatch, so memory does not grow with ``N``."""
        self.check_params()
        x = as_feature_rows(X) if is_streamed(X) else as_features(X)
        labels = y if isinstance(y, Rows) else as_labels(y, len(x))
        dim = x.dim if isinstance(x, FeatureRows) else x.shape[1]
        priors = self._priors()
        if priors == "auto":
            priors = PRIORS if head is not None else ("gmm",)
        if "energy" in priors:
            if head is None:
                raise ValueError("heat (prior 'energy'): fit needs the classifier's final linear layer (head=...)")
            head = linear_head(head)
            if head.in_features != dim:
                raise ValueError(f"weight has width {head.in_features}, features have {dim}")
        cfg = dict(hidden=int(self.hidden), temperature=float(self.temperature),
                   prior_temperature=self.prior_temperature, epochs=int(self.epochs), max_steps=int(self.max_steps),
                   batch_size=int(self.batch_size), lr=self.lr, weight_decay=self.weight_decay, reg=float(self.reg),
                   negatives=self.negatives, sgld_steps=int(self.sgld_steps), sgld_step=float(self.sgld_step),
                   sgld_noise=float(self.sgld_noise))
        gen = torch.Generator().manual_seed(int(self.seed))
        energies = {}
        with seeded_init(int(self.seed)):  # MLP initialisation
            for name in priors:
                if name == "gmm":
                    prior = _GMMPrior(x, labels, self.gmm_covariance, float(self.ridge), int(self.seed))
                else:
                    prior = _EnergyLogitPrior(x, labels, head, ridge=float(self.ridge))
                energies[name] = _HybridEnergy(prior, prior.prepare(x), cfg, gen)
        self.dim_, self.energies_ = dim, energies
        return self

    @torch.no_grad()
    def energies(self, X) -> Dict[str, np.ndarray]:
        """The corrected energy ``E(z)`` of each prior (lower = more in-distribution), not standardised."""
        self.check_fitted()
        x = as_features(X, dim=self.dim_)
        return {name: h.energy(h.prior.prepare(x)).numpy() for name, h in self.energies_.items()}

    def score(self, X) -> np.ndarray:
        total = 0.0
        for name, e in self.energies(X).items():
            h = self.energies_[name]
            total = total + (e - h.mean) / h.scale
        return -np.asarray(total, dtype=np.float64)
