"""ReAct (Sun et al., NeurIPS 2021): clip penultimate activations, then score energy.

``fit`` takes the clip value ``c`` as a percentile of all in-distribution training activations and copies
the weight and bias of the classifier's final linear layer; ``score`` returns
``T * logsumexp((min(f, c) W^T + b) / T)`` for penultimate features ``f``.
"""
import numpy as np
import torch
from torch import nn

from .base import Scorer, register_scorer
from .logits import as_float64, check_temperature, negative_energy

__all__ = ["ReActScorer", "final_linear"]


def final_linear(model) -> nn.Linear:
    """``model`` itself when it is an ``nn.Linear``, else its last registered ``nn.Linear`` submodule
    (the classification head of torchvision classifiers: ``fc``, ``classifier[-1]``, ``heads.head``)."""
    if isinstance(model, nn.Linear):
        return model
    if not isinstance(model, nn.Module):
        raise ValueError(f"expected the classifier (torch.nn.Module) as 'model', got {type(model).__name__}")
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(f"{type(model).__name__} has no nn.Linear layer to use as the final classifier layer")
    return linears[-1]


@register_scorer("react")
class ReActScorer(Scorer):
    """Energy of the logits recomputed from clipped penultimate features."""

    requires = frozenset({"features", "model"})

    def __init__(self, percentile: float = 90.0, temperature: float = 1.0):
        self.percentile = float(percentile)
        if not 0 < self.percentile <= 100:
            raise ValueError(f"percentile must be in (0, 100], got {percentile!r}")
        self.temperature = check_temperature(temperature)
        self.threshold_ = None

    def fit(self, features=None, model=None, **_) -> "ReActScorer":
        feats = as_float64(features, "features", ndim=2)
        head = final_linear(model)
        if head.in_features != feats.shape[1]:
            raise ValueError(f"features have {feats.shape[1]} dimensions but the final linear layer expects "
                             f"{head.in_features}")
        self.threshold_ = float(np.percentile(feats.numpy().reshape(-1), self.percentile))
        self.weight_ = head.weight.detach().to("cpu", torch.float64).clone()
        bias = head.bias if head.bias is not None else torch.zeros(head.out_features)
        self.bias_ = bias.detach().to("cpu", torch.float64).clone()
        return self

    def score(self, features=None, **_) -> np.ndarray:
        if self.threshold_ is None:
            raise ValueError("react: call fit() before score()")
        feats = as_float64(features, "features", ndim=2)
        if feats.shape[1] != self.weight_.shape[1]:
            raise ValueError(f"features have {feats.shape[1]} dimensions, fitted on {self.weight_.shape[1]}")
        logits = feats.clamp(max=self.threshold_) @ self.weight_.T + self.bias_
        return negative_energy(logits, self.temperature).numpy()
