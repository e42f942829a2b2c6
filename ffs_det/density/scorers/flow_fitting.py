"""Maximum-likelihood fitting of a :class:`~ffs_det.density.flow.FeatureFlow` for the flow-based scorers
(residual flow, likelihood ratio, LID), and a fixed feature standardisation they share."""
from dataclasses import dataclass

import numpy as np
import torch

from ..flow import FeatureFlow, build_flow

__all__ = ["FlowConfig", "Standardizer", "minibatches", "fit_flow", "flow_log_prob", "finite_or_floor"]


@dataclass
class FlowConfig:
    """How to build (``build_flow`` arguments) and train a scorer's flow."""

    coupling: str = "glow"
    blocks: int = 4
    hidden: int = 256
    clamp: float = 2.0
    epochs: int = 30
    max_steps: int = 3000  # optimizer steps at most, whatever the data size
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.0
    seed: int = 0
    device: str = "cpu"

    def build(self, dim: int) -> FeatureFlow:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)  # subnet initialisation
            flow = build_flow(dim, coupling=self.coupling, blocks=self.blocks, hidden=self.hidden,
                              clamp=self.clamp, seed=self.seed)
        return flow.to(self.device)


class Standardizer:
    """``x -> (x - mean) / std`` per dimension, fitted once; its log-Jacobian is ``-sum(log std)``."""

    def __init__(self, x: torch.Tensor, eps: float = 1e-8):
        self.mean = x.mean(dim=0)
        self.std = x.std(dim=0).clamp(min=eps) if x.shape[0] > 1 else torch.ones_like(self.mean)
        self.log_det = float(-self.std.log().sum())

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def minibatches(n: int, batch_size: int, epochs: int, max_steps: int, generator: torch.Generator):
    """Index tensors of shuffled minibatches: ``epochs`` passes over ``n`` rows, at most ``max_steps`` of them."""
    steps = 0
    for _ in range(epochs):
        order = torch.randperm(n, generator=generator)
        for start in range(0, n, batch_size):
            if steps == max_steps:
                return
            steps += 1
            yield order[start:start + batch_size]


def fit_flow(x: torch.Tensor, config: FlowConfig) -> FeatureFlow:
    """A flow trained by Adam on the negative log-likelihood of ``x (N, D)``; returned in eval mode.

    Training runs ``config.epochs`` passes over the data or ``config.max_steps`` optimizer steps, whichever
    ends first; ``epochs == 0`` returns the untrained flow (a permutation with a standard-normal density).
    """
    flow = config.build(x.shape[1])
    if config.epochs > 0:
        data = x.to(config.device, torch.float32)
        gen = torch.Generator().manual_seed(config.seed)
        opt = torch.optim.Adam(flow.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        flow.train()
        for idx in minibatches(data.shape[0], config.batch_size, config.epochs, config.max_steps, gen):
            loss = flow.nll(data[idx])
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(flow.parameters(), 10.0)
            opt.step()
    return flow.eval()


@torch.no_grad()
def flow_log_prob(flow: FeatureFlow, x: torch.Tensor, batch_size: int = 4096) -> torch.Tensor:
    """``flow.log_prob`` of the rows of ``x`` in batches, as a float64 CPU tensor ``(N,)``."""
    device = next(flow.parameters()).device
    out = [flow.log_prob(x[i:i + batch_size].to(device, torch.float32)).double().cpu()
           for i in range(0, x.shape[0], batch_size)]
    return torch.cat(out)


def finite_or_floor(values: torch.Tensor) -> np.ndarray:
    """Scores as float64 numpy; non-finite log-densities (overflowing flows far from the data) become the
    lowest finite value minus one, so they still rank as least in-distribution."""
    v = values.double().cpu().numpy()
    bad = ~np.isfinite(v)
    if bad.any():
        floor = v[~bad].min() - 1.0 if (~bad).any() else -1e30
        v = np.where(bad, floor, v)
    return v
