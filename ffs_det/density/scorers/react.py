"""ReAct (Sun et al., NeurIPS 2021): clip penultimate activations, then score energy.

``fit(X, head=...)`` takes the clip value ``c`` as a percentile of all in-distribution training activations
(from a row source: the same value, by :func:`~ffs_det.density.streaming.percentile`, in memory independent
of ``N``) and keeps the classifier's final linear layer; ``score(X)`` returns
``T * logsumexp((min(x, c) W^T + b) / T)``.
"""
import numpy as np

from ..inputs import as_features, required_head
from ..streaming import as_feature_rows, is_streamed, percentile
from .base import Scorer, register_scorer
from .logits import check_temperature, negative_energy

__all__ = ["ReActScorer"]


@register_scorer("react")
class ReActScorer(Scorer):
    """Energy of the logits recomputed from clipped penultimate features."""

    uses_head = "required"
    streams = True

    def __init__(self, percentile: float = 90.0, temperature: float = 1.0):
        self.percentile = percentile
        self.temperature = temperature

    def check_params(self) -> None:
        if not 0 < float(self.percentile) <= 100:
            raise ValueError(f"percentile must be in (0, 100], got {self.percentile!r}")
        check_temperature(self.temperature)

    def fit(self, X, y=None, *, head=None) -> "ReActScorer":
        self.check_params()
        x = as_feature_rows(X) if is_streamed(X) else as_features(X)
        self.head_ = required_head(self.name, head, x.dim if is_streamed(X) else x.shape[1])
        if is_streamed(X):
            self.threshold_ = percentile(x, float(self.percentile))
        else:
            self.threshold_ = float(np.percentile(x.numpy().reshape(-1), float(self.percentile)))
        return self

    def score(self, X) -> np.ndarray:
        self.check_fitted()
        x = as_features(X, dim=self.head_.in_features)
        logits = self.head_.logits(x.clamp(max=self.threshold_))
        return negative_energy(logits, float(self.temperature)).numpy()
