"""Maximum-likelihood training of a flow on a fixed set of features: the one training loop used by the FDE
scorer, the flow-based scorers (residual flow, likelihood ratio, LID) and the benchmarks.

(The detector's FFS flow is built by the same :class:`FlowConfig`, from ``cfg.FFS.FLOW``, and trained
online, one step per detector step, inside :class:`~ffs_det.modeling.roi_heads.FFSROIHeads`.)
"""
import contextlib
from dataclasses import dataclass, fields
from typing import Callable, Dict, Iterator, List, Optional, Tuple, Union

import numpy as np
import torch
from torch import nn

from .flow import FeatureFlow, seeded_init
from .streaming import FeatureRows

__all__ = ["FlowConfig", "minibatches", "train_flow", "fit_flow", "flow_log_prob", "finite_or_floor"]


@dataclass
class FlowConfig:
    """How to build (:class:`~ffs_det.density.flow.FeatureFlow` arguments) and train a flow."""

    coupling: str = "glow"
    blocks: int = 4
    hidden: int = 256
    clamp: float = 2.0
    epochs: Optional[int] = 30  # passes over the data; None: until max_steps (or on_step stops it)
    max_steps: Optional[int] = 3000  # optimizer steps at most, whatever the data size; None: no cap
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.0
    grad_clip: float = 10.0  # max gradient norm; 0: no clipping
    nonfinite: str = "raise"  # a NaN/inf training loss: "raise" a ValueError, or "continue"
    seed: int = 0  # subnet initialisation, permutations and minibatch order
    device: str = "cpu"
    init: str = "identity"  # the coupling subnets' initialisation (FeatureFlow's ``init``)
    permutation_seeds: str = "stream"  # how the permutations are seeded (FeatureFlow's ``permutation_seeds``)

    @classmethod
    def from_options(cls, options) -> "FlowConfig":
        """The configuration of an object's attributes named like the fields (a flow scorer's options); the
        others keep their defaults. Counts become ints and rates floats (``epochs`` and ``max_steps`` may be
        None); a device of None is the CPU."""
        values = {f.name: _like(getattr(options, f.name), f.default) for f in fields(cls) if hasattr(options, f.name)}
        return cls(**{**values, "device": values.get("device") or "cpu"})

    def build(self, dim: int, seeded: bool = True) -> FeatureFlow:
        """The untrained flow on ``device``, seeded without touching the global random state; ``seeded=False``:
        its initial weights come from the CPU generator as it stands (a caller's ``seeded_init`` block that
        initialises other modules after it, as the detector's ROI head does)."""
        with seeded_init(self.seed) if seeded else contextlib.nullcontext():  # subnet initialisation
            flow = FeatureFlow(dim, coupling=self.coupling, blocks=self.blocks, hidden=self.hidden, clamp=self.clamp,
                               seed=self.seed, init=self.init, permutation_seeds=self.permutation_seeds)
        return flow.to(self.device)


def _like(value, default):
    """``value`` as the type of a field's ``default`` (int or float); strings and None as they are."""
    return value if value is None or isinstance(default, str) else type(default)(value)


def minibatches(n: int, batch_size: int, epochs: Optional[int], max_steps: Optional[int],
                generator: torch.Generator) -> Iterator[Tuple[int, torch.Tensor]]:
    """``(epoch, row indices)`` of shuffled minibatches: ``epochs`` passes over ``n`` rows (endless when
    None), at most ``max_steps`` of them."""
    steps, epoch = 0, 0
    while epochs is None or epoch < epochs:
        order = torch.randperm(n, generator=generator)
        for start in range(0, n, batch_size):
            if max_steps is not None and steps == max_steps:
                return
            steps += 1
            yield epoch, order[start:start + batch_size]
        epoch += 1


def train_flow(model: nn.Module, x: Union[torch.Tensor, FeatureRows], config: FlowConfig,
               on_step: Optional[Callable[[int, torch.Tensor], bool]] = None) -> List[Dict[str, float]]:
    """Adam on ``model.nll`` over minibatches of ``x (N, D)`` (float32 on ``config.device``); any module with
    an ``nll(batch)`` method trains this way. ``x`` is a tensor (moved to the device once) or
    :class:`~ffs_det.density.streaming.FeatureRows` (each minibatch read from its source: memory independent
    of ``N`` but for the shuffled order, 8 bytes a row). ``on_step(step, loss)`` runs after each optimizer step
    and stops training by returning True. Returns the mean training NLL of each epoch, ``[{"epoch", "nll"}]``."""
    if config.nonfinite not in ("raise", "continue"):
        raise ValueError(f"nonfinite must be 'raise' or 'continue', got {config.nonfinite!r}")
    streamed = isinstance(x, FeatureRows)
    data = x if streamed else x.to(config.device, torch.float32)
    gen = torch.Generator().manual_seed(config.seed)
    opt = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    model.train()
    history, total, seen, step, current = [], 0.0, 0, 0, 0
    for epoch, idx in minibatches(len(data), config.batch_size, config.epochs, config.max_steps, gen):
        if epoch != current:
            history.append({"epoch": current + 1, "nll": total / seen})
            total, seen, current = 0.0, 0, epoch
        batch = data.take(idx).to(config.device, torch.float32) if streamed else data[idx]
        loss = model.nll(batch)
        if config.nonfinite == "raise" and not torch.isfinite(loss):
            raise ValueError(f"the flow's training loss became {loss.item()} in epoch {epoch + 1}; lower lr "
                             f"(now {config.lr}) or clamp, or change the feature normalisation")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if config.grad_clip > 0:
            nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        opt.step()
        total += loss.item() * idx.numel()
        seen += idx.numel()
        step += 1
        if on_step is not None and on_step(step, loss):
            break
    if seen:
        history.append({"epoch": current + 1, "nll": total / seen})
    return history


def fit_flow(x: Union[torch.Tensor, FeatureRows], config: FlowConfig) -> FeatureFlow:
    """A :class:`FeatureFlow` trained by :func:`train_flow` on ``x (N, D)`` (a tensor or
    :class:`~ffs_det.density.streaming.FeatureRows`), in eval mode. ``epochs == 0`` returns the untrained flow
    (a permutation with a standard-normal density)."""
    flow = config.build(x.dim if isinstance(x, FeatureRows) else x.shape[1])
    if config.epochs != 0:
        train_flow(flow, x, config)
    return flow.eval()


@torch.no_grad()
def flow_log_prob(flow: FeatureFlow, x: Union[torch.Tensor, FeatureRows], batch_size: int = 4096) -> torch.Tensor:
    """``flow.log_prob`` of the rows of ``x`` (a tensor or FeatureRows) in batches, as a float64 CPU tensor
    ``(N,)``."""
    device = next(flow.parameters()).device
    if isinstance(x, FeatureRows):
        return torch.cat([flow_log_prob(flow, block, batch_size) for _, block in x.blocks()])
    out = [flow.log_prob(x[i:i + batch_size].to(device, torch.float32)).double().cpu()
           for i in range(0, x.shape[0], batch_size)]
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.float64)


def finite_or_floor(values: torch.Tensor) -> np.ndarray:
    """Scores as float64 numpy; non-finite log-densities (overflowing flows far from the data) become the
    lowest finite value minus one, so they still rank as least in-distribution."""
    v = values.double().cpu().numpy()
    bad = ~np.isfinite(v)
    if bad.any():
        floor = v[~bad].min() - 1.0 if (~bad).any() else -1e30
        v = np.where(bad, floor, v)
    return v
