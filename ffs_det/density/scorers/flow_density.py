"""FDE: flow density estimation on penultimate features (the flow log-likelihood is the score).

Features are normalised (default: L2 onto the sphere of radius ``sqrt(D)``, so each coordinate has unit
RMS and a fresh flow — exactly N(0, I) — starts at the right scale), a :func:`~ffs_det.density.flow.build_flow`
flow is trained by maximum likelihood with Adam on the in-distribution training features, and a sample's
score is its log-density in the normalised space (nats). Rescaling by a constant shifts every score by the
same amount, so the ranking — and every OOD metric — is that of the unit-sphere density.

Normalisations: ``"l2"``, ``"l2_standardize"`` (L2, then per-dimension z-score with training statistics),
``"standardize"`` and ``"none"``.
"""
import math
from typing import Dict, List, Optional

import numpy as np
import torch

from ..flow import build_flow
from .base import Scorer, as_tensor, register_scorer

__all__ = ["FlowDensityScorer", "NORMALIZATIONS"]

NORMALIZATIONS = ("l2", "l2_standardize", "standardize", "none")


class _Normalizer:
    """Feature normalisation, with z-score statistics fitted on the training features when asked."""

    def __init__(self, kind: str):
        if kind not in NORMALIZATIONS:
            raise ValueError(f"unknown feature normalisation {kind!r}; choose one of {NORMALIZATIONS}")
        self.kind = kind
        self.mean = self.std = None

    def fit(self, x: torch.Tensor) -> "_Normalizer":
        if "standardize" in self.kind:
            y = self._l2(x)
            self.mean = y.mean(0)
            self.std = y.std(0).clamp_min(1e-6)
        return self

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        y = self._l2(x)
        if "standardize" in self.kind:
            y = (y - self.mean) / self.std
        return y

    def _l2(self, x: torch.Tensor) -> torch.Tensor:
        if not self.kind.startswith("l2"):
            return x
        return x / x.norm(dim=1, keepdim=True).clamp_min(1e-12) * math.sqrt(x.shape[1])


@register_scorer("fde")
class FlowDensityScorer(Scorer):
    """Log-likelihood of normalised features under a normalizing flow fitted to ID training features."""

    requires = frozenset({"features"})

    def __init__(self, normalize: str = "l2", epochs: int = 10, lr: float = 1e-3, batch_size: int = 256,
                 coupling: str = "glow", blocks: int = 4, hidden: int = 512, clamp: float = 2.0,
                 weight_decay: float = 0.0, grad_clip: float = 10.0, seed: int = 0,
                 device: Optional[str] = None, score_batch_size: int = 4096):
        if epochs < 1 or batch_size < 1 or score_batch_size < 1:
            raise ValueError(f"epochs, batch_size and score_batch_size must be >= 1, got {epochs}, "
                             f"{batch_size}, {score_batch_size}")
        if not lr > 0:
            raise ValueError(f"lr must be > 0, got {lr!r}")
        self.normalizer = _Normalizer(normalize)
        self.epochs, self.lr, self.batch_size = int(epochs), float(lr), int(batch_size)
        self.flow_kwargs = dict(coupling=coupling, blocks=int(blocks), hidden=int(hidden), clamp=float(clamp),
                                seed=seed)
        self.weight_decay, self.grad_clip, self.seed = float(weight_decay), float(grad_clip), seed
        self.device = torch.device(device) if device else torch.device("cpu")
        self.score_batch_size = int(score_batch_size)
        self.flow = None
        self.history: List[Dict[str, float]] = []

    def fit(self, features=None, **_) -> "FlowDensityScorer":
        x = as_tensor(features, "features", ndim=2).detach().to("cpu", torch.float32)
        if x.shape[0] < 2:
            raise ValueError(f"fde needs at least 2 training features, got {x.shape[0]}")
        x = self.normalizer.fit(x)(x)
        gen = torch.Generator().manual_seed(self.seed)
        with torch.random.fork_rng(devices=[]):  # seeded subnet initialisation, global RNG left untouched
            torch.manual_seed(self.seed)
            self.flow = build_flow(x.shape[1], **self.flow_kwargs).to(self.device)
        opt = torch.optim.Adam(self.flow.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        self.flow.train()
        self.history = []
        for epoch in range(self.epochs):
            total, seen = 0.0, 0
            for idx in torch.randperm(x.shape[0], generator=gen).split(self.batch_size):
                batch = x[idx].to(self.device)
                loss = self.flow.nll(batch)
                if not torch.isfinite(loss):
                    raise ValueError(f"fde: the flow's training loss became {loss.item()} in epoch {epoch + 1}; "
                                     f"lower lr (now {self.lr}) or clamp, or change the normalisation")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if self.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(self.flow.parameters(), self.grad_clip)
                opt.step()
                total += loss.item() * idx.numel()
                seen += idx.numel()
            self.history.append({"epoch": epoch + 1, "nll": total / seen})
        self.flow.eval()
        return self

    @torch.no_grad()
    def score(self, features=None, **_) -> np.ndarray:
        if self.flow is None:
            raise ValueError("fde: call fit() before score()")
        x = as_tensor(features, "features", ndim=2).detach().to("cpu", torch.float32)
        if x.shape[1] != self.flow.dim:
            raise ValueError(f"features have {x.shape[1]} dimensions, the flow was fitted on {self.flow.dim}")
        out = [self.flow.log_prob(self.normalizer(chunk).to(self.device)).double().cpu()
               for chunk in x.split(self.score_batch_size)]
        return torch.cat(out).numpy() if out else np.zeros(0)
