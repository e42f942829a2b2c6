"""ODIN (Liang et al., ICLR 2018): temperature scaling plus a small input perturbation.

The input is moved by ``-eps * sign(grad_x CE(f(x) / T, argmax f(x)))`` — the direction that raises the
predicted class's tempered softmax probability — and the score is the maximum tempered softmax
probability of the perturbed input. With ``epsilon = 0`` this is exactly MSP at temperature ``T``.

Needs the classifier (``model``, returning logits) and a batch of its inputs (``inputs``); callers score
a large set batch by batch.
"""
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .base import Scorer, as_tensor, register_scorer
from .logits import check_temperature, max_softmax

__all__ = ["ODINScorer", "odin_perturb"]


def odin_perturb(model: nn.Module, x: torch.Tensor, temperature: float, epsilon: float,
                 input_std: Optional[Sequence[float]] = None) -> torch.Tensor:
    """The perturbed inputs ``x - eps * sign(grad)`` (the sign step divided by ``input_std`` per channel
    when the inputs were normalised by it, so that ``eps`` is in raw pixel units)."""
    with torch.enable_grad(), torch.inference_mode(False):
        x = x.detach().clone().requires_grad_(True)
        logits = model(x) / temperature
        loss = F.cross_entropy(logits, logits.argmax(dim=1), reduction="sum")
        (grad,) = torch.autograd.grad(loss, x)  # input gradient only; parameters collect nothing
    step = grad.sign()
    if input_std is not None:
        std = torch.as_tensor(input_std, dtype=step.dtype, device=step.device)
        if step.dim() < 2 or std.numel() != step.shape[1]:
            raise ValueError(f"input_std has {std.numel()} values but the inputs have shape {tuple(step.shape)}")
        step = step / std.view(1, -1, *([1] * (step.dim() - 2)))
    return x.detach() - epsilon * step


@register_scorer("odin")
class ODINScorer(Scorer):
    """Maximum tempered softmax of ODIN-perturbed inputs."""

    requires = frozenset({"model", "inputs"})
    requires_fit = False

    def __init__(self, temperature: float = 1000.0, epsilon: float = 0.0014,
                 input_std: Optional[Sequence[float]] = None):
        self.temperature = check_temperature(temperature)
        self.epsilon = float(epsilon)
        if not np.isfinite(self.epsilon) or self.epsilon < 0:
            raise ValueError(f"epsilon must be a number >= 0, got {epsilon!r}")
        self.input_std = None if input_std is None else [float(s) for s in input_std]

    def score(self, model: nn.Module = None, inputs=None, **_) -> np.ndarray:
        if not isinstance(model, nn.Module):
            raise ValueError(f"odin needs 'model', a torch.nn.Module returning logits; got {type(model).__name__}")
        x = as_tensor(inputs, "inputs")
        param = next(model.parameters(), None)
        if param is not None:
            x = x.to(param.device)
        was_training = model.training
        model.eval()
        try:
            if self.epsilon > 0:
                x = odin_perturb(model, x, self.temperature, self.epsilon, self.input_std)
            with torch.no_grad():
                logits = model(x)
        finally:
            model.train(was_training)
        return max_softmax(logits.detach().to("cpu", torch.float64), self.temperature).numpy()
