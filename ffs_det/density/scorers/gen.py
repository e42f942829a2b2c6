"""GEN: the generalized entropy of the softmax over the classifier's most probable classes.

Liu, Lochman & Zach, "GEN: Pushing the Limits of Softmax-Based Out-of-Distribution Detection", CVPR 2023.

With ``p = softmax(logits)`` sorted in decreasing order, the paper's score is the generalized entropy of the
``M`` largest probabilities

    G_gamma(p) = sum_{j <= M} p_(j)^gamma (1 - p_(j))^gamma,

large for flat (uncertain) posteriors and small for peaked ones. The score, higher = more in-distribution, is
``-G_gamma(p)`` (the paper's GEN score). Defaults are the paper's ImageNet setting, also OpenOOD's
(``configs/postprocessors/gen.yml``) and the authors' code's: ``gamma = 0.1``, ``M = 100``. ``top_m`` above the
number of classes ``C`` is clipped, ``M = min(top_m, C)`` (as OpenOOD's slice of the sorted probabilities
does), so the default works on a detector's few classes, where it sums over every class.

Computed in float64 from ``log_softmax``: ``p^gamma (1 - p)^gamma = exp(gamma (log p + log(1 - p)))``, with
``log(1 - p)`` of the most probable class taken as ``logsumexp(other logits) - logsumexp(all logits)``, so a
saturated softmax (``1 - p`` below float64's resolution near 1) keeps its exact, nonzero terms. pytorch-ood
0.4.0's ``GEN`` averages instead of sums (a factor ``1/M``) and clamps ``p`` to ``[1e-7, 1 - 1e-7]``, which
changes the values (not only the scale) of saturated rows; tests/density/test_scorers_gen_fdbd_nnguide.py
shows both.
"""
import math
import numbers

import torch

from .base import LogitScorer, register_scorer

__all__ = ["GENScorer", "generalized_entropy"]


def generalized_entropy(logits: torch.Tensor, gamma: float, top_m: int) -> torch.Tensor:
    """``sum_{j <= M} p_(j)^gamma (1 - p_(j))^gamma`` per row over the ``M = min(top_m, C)`` largest softmax
    probabilities (float64 rows of logits ``(N, C)``)."""
    m = min(int(top_m), logits.shape[1])
    log_p, order = torch.log_softmax(logits, dim=1).topk(m, dim=1)
    log_q = torch.log1p(-log_p.exp())  # log(1 - p): exact for p <= 1/2, i.e. every class but the first
    others = logits.scatter(1, order[:, :1], -math.inf)  # the logits without the most probable class
    log_q[:, 0] = torch.logsumexp(others, dim=1) - torch.logsumexp(logits, dim=1)
    return torch.exp(gamma * (log_p + log_q)).sum(dim=1)


@register_scorer("gen")
class GENScorer(LogitScorer):
    """Minus the generalized entropy of the top ``top_m`` softmax probabilities, exponent ``gamma``."""

    def __init__(self, gamma: float = 0.1, top_m: int = 100):
        self.gamma = gamma
        self.top_m = top_m

    def check_params(self) -> None:
        try:
            gamma = float(self.gamma)
        except (TypeError, ValueError):
            gamma = math.nan
        if not math.isfinite(gamma) or gamma <= 0:
            raise ValueError(f"gamma must be a positive number, got {self.gamma!r}")
        if not isinstance(self.top_m, numbers.Integral) or isinstance(self.top_m, bool) or self.top_m < 1:
            raise ValueError(f"top_m must be an integer >= 1, got {self.top_m!r}")

    def _from_logits(self, logits: torch.Tensor) -> torch.Tensor:
        return -generalized_entropy(logits, float(self.gamma), int(self.top_m))
