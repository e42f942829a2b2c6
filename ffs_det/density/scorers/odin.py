"""ODIN (Liang et al., ICLR 2018): temperature scaling plus a small input perturbation.

The input is moved by ``-eps * sign(grad_x CE(f(x) / T, argmax f(x)))`` — the direction that raises the
predicted class's tempered softmax probability — and the score is the maximum tempered softmax
probability of the perturbed input. With ``epsilon = 0`` this is exactly MSP at temperature ``T``.

``score_inputs(model, inputs)`` takes the classifier (returning logits) and a batch of its inputs;
callers score a large set batch by batch.
"""
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .base import InputScorer, register_scorer
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
class ODINScorer(InputScorer):
    """Maximum tempered softmax of ODIN-perturbed inputs."""

    def __init__(self, temperature: float = 1000.0, epsilon: float = 0.0014,
                 input_std: Optional[Sequence[float]] = None):
        self.temperature = temperature
        self.epsilon = epsilon
        self.input_std = input_std

    def check_params(self) -> None:
        check_temperature(self.temperature)
        if not np.isfinite(float(self.epsilon)) or float(self.epsilon) < 0:
            raise ValueError(f"epsilon must be a number >= 0, got {self.epsilon!r}")

    def score_inputs(self, model: nn.Module, inputs) -> np.ndarray:
        self.check_params()
        if not isinstance(model, nn.Module):
            raise ValueError(f"odin needs the classifier (model), a torch.nn.Module returning logits; got "
                             f"{type(model).__name__}")
        if inputs is None:
            raise ValueError("odin needs a batch of the classifier's inputs")
        x = inputs if torch.is_tensor(inputs) else torch.as_tensor(np.asarray(inputs, dtype=np.float32))
        if x.is_floating_point() and x.dtype != torch.float32:
            x = x.float()
        param = next(model.parameters(), None)
        if param is not None:
            x = x.to(param.device)
        temperature, epsilon = float(self.temperature), float(self.epsilon)
        input_std = None if self.input_std is None else [float(s) for s in self.input_std]
        was_training = model.training
        model.eval()
        try:
            if epsilon > 0:
                x = odin_perturb(model, x, temperature, epsilon, input_std)
            with torch.no_grad():
                logits = model(x)
        finally:
            model.train(was_training)
        return max_softmax(logits.detach().to("cpu", torch.float64), temperature).numpy()
