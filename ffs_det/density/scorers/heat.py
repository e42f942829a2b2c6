"""HEAT: a residual energy learned on top of prior OOD energies, and the composition of several of them.

Lafon, Ramzi, Rambour & Thome, "Hybrid Energy Based Model in the Feature Space for Out-of-Distribution
Detection", ICML 2023.

For each prior ``s`` — ``"gmm"``: ``E_s(z) = -log p_GMM(z)`` on L2-normalised features (the ``"gmm"``
scorer); ``"energy"``: ``E_s(z) = -logsumexp(W z + b)`` on raw features (needs the final linear layer at
fit: ``weight``/``bias``, or ``model``, the head or the classifier) — a small MLP ``E_theta`` learns a
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
alone; ``model`` is listed in ``requires`` so that benchmark runners hand the classifier over.

Composition (HEAT sums its hybrid energies after putting them on a common scale): each corrected energy
is standardised by its mean and standard deviation on the fit features, and the standardised energies are
summed. Score, higher = more in-distribution: minus that sum.
"""
from typing import Dict, Sequence, Union

import numpy as np
import torch
from torch import nn

from .base import Scorer, register_scorer
from .checks import features_2d, has_linear_head, labels_1d, linear_head, require_fitted
from .flow_fitting import minibatches
from .gaussians import fit_class_gaussians
from .gmm import GMMScorer

__all__ = ["HEATScorer", "PRIORS"]

PRIORS = ("gmm", "energy")


class _GMMPrior:
    def __init__(self, x, y, covariance, ridge, seed):
        self.gmm = GMMScorer(normalize=True, covariance=covariance, ridge=ridge, seed=seed).fit(features=x,
                                                                                            labels=y)
        self.proposal = self.gmm.gaussians

    def prepare(self, x):
        return self.gmm.prepare(x)

    def energy(self, z):
        return -self.gmm.log_prob(z)


class _EnergyLogitPrior:
    def __init__(self, x, y, weight, bias, ridge):
        self.weight, self.bias = weight, bias
        self.proposal = fit_class_gaussians(x, y, covariance="tied", ridge=ridge)

    def prepare(self, x):
        return x

    def energy(self, z):
        return -torch.logsumexp(z @ self.weight.T + self.bias, dim=1)


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


class _HybridEnergy:
    """One prior with its learned residual: ``E(z) = E_theta(z)/T + E_prior(z)/T_prior``."""

    def __init__(self, prior, z, cfg: dict, gen: torch.Generator):
        self.prior = prior
        self.cfg = cfg
        std = z.std(dim=0).clamp(min=1e-8)
        with torch.no_grad():
            e_prior = prior.energy(z)
        t_prior = cfg["prior_temperature"]
        self.t_prior = float(e_prior.std().clamp(min=1e-8)) if t_prior == "auto" else float(t_prior)
        self.residual = _Residual(z.mean(dim=0), std, cfg["hidden"]).double()
        self._train(z, std, gen)
        with torch.no_grad():
            e = self.energy(z)
        self.mean, self.scale = float(e.mean()), float(e.std().clamp(min=1e-8))

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
        for idx in minibatches(z.shape[0], cfg["batch_size"], cfg["epochs"], cfg["max_steps"], gen):
            pos = z[idx]
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
    """See the module docstring."""

    requires = frozenset({"features", "labels", "model"})

    def __init__(self, priors: Union[str, Sequence[str]] = "auto", hidden: int = 128, temperature: float = 1.0,
                 prior_temperature="auto", epochs: int = 50, max_steps: int = 2000, batch_size: int = 256,
                 lr: float = 1e-3,
                 weight_decay: float = 0.0, reg: float = 0.1, negatives: str = "prior", sgld_steps: int = 20,
                 sgld_step: float = 1e-2, sgld_noise: float = 1.0, gmm_covariance: str = "full",
                 ridge: float = 1e-6, seed: int = 0):
        if priors != "auto":
            priors = (priors,) if isinstance(priors, str) else tuple(priors)
            if not priors or any(p not in PRIORS for p in priors):
                raise ValueError(f"priors must be 'auto' or a non-empty subset of {PRIORS}, got {priors}")
        if negatives not in ("prior", "sgld"):
            raise ValueError(f"negatives must be 'prior' or 'sgld', got {negatives!r}")
        if prior_temperature != "auto" and float(prior_temperature) <= 0:
            raise ValueError(f"prior_temperature must be 'auto' or > 0, got {prior_temperature}")
        self.priors = priors
        self.gmm_covariance, self.ridge, self.seed = gmm_covariance, float(ridge), int(seed)
        self.cfg = dict(hidden=hidden, temperature=float(temperature), prior_temperature=prior_temperature,
                        epochs=int(epochs), max_steps=int(max_steps), batch_size=int(batch_size), lr=lr,
                        weight_decay=weight_decay,
                        reg=float(reg), negatives=negatives, sgld_steps=int(sgld_steps),
                        sgld_step=float(sgld_step), sgld_noise=float(sgld_noise))
        self.energies_: Dict[str, _HybridEnergy] = None

    def fit(self, features=None, labels=None, **inputs) -> "HEATScorer":
        x = features_2d(features)
        y = labels_1d(labels, x.shape[0])
        priors = self.priors
        if priors == "auto":
            priors = PRIORS if has_linear_head(inputs) else ("gmm",)
        head = linear_head(inputs, "heat (prior 'energy')") if "energy" in priors else None
        if head is not None and head[0].shape[1] != x.shape[1]:
            raise ValueError(f"weight has width {head[0].shape[1]}, features have {x.shape[1]}")
        self.dim = x.shape[1]
        gen = torch.Generator().manual_seed(self.seed)
        self.energies_ = {}
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)  # MLP initialisation
            for name in priors:
                if name == "gmm":
                    prior = _GMMPrior(x, y, self.gmm_covariance, self.ridge, self.seed)
                else:
                    prior = _EnergyLogitPrior(x, y, *head, ridge=self.ridge)
                self.energies_[name] = _HybridEnergy(prior, prior.prepare(x), self.cfg, gen)
        return self

    @torch.no_grad()
    def energies(self, features=None, **_) -> Dict[str, np.ndarray]:
        """The corrected energy ``E(z)`` of each prior (lower = more in-distribution), not standardised."""
        require_fitted(self, "energies_")
        x = features_2d(features, dim=self.dim)
        return {name: h.energy(h.prior.prepare(x)).numpy() for name, h in self.energies_.items()}

    def score(self, features=None, **_) -> np.ndarray:
        total = 0.0
        for name, e in self.energies(features).items():
            h = self.energies_[name]
            total = total + (e - h.mean) / h.scale
        return -np.asarray(total, dtype=np.float64)
