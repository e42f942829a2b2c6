"""The energy-margin regulariser of VOS/FFS: separate inlier from synthetic-outlier energies.

The energy of a box is a weighted log-sum-exp of its inlier-class logits at temperature ``T``,
``E_T(l) = T log sum_k relu(w_k) exp(l_k / T)`` (higher = more in-distribution), with learnable per-class
weights ``w`` (initialised to 1, i.e. the plain log-sum-exp, or U(0, 1) as in the released VOS/FFS code).
Inliers are scored at ``T = 1``; outliers at ``outlier_temperature`` (1 in the released VOS and FFS code; an
earlier FFS snapshot, a17f845, uses 40, which spreads the outliers' gradient over all classes instead of the
largest logit). A one-input logistic regression on ``E`` is trained to tell inlier boxes (label 1) from
synthetic outliers (label 0); its cross-entropy is the loss, averaged over all boxes (``reduction="mean"``,
as in VOS/FFS) or as the mean of the inlier and the outlier averages (``"balanced"``, so one outlier per step
weighs as much as a hundred inliers).
"""
from typing import Dict

import torch
import torch.nn.functional as F
from torch import nn

from ..density.flow import full_precision, widen

__all__ = ["EnergyMargin", "MARGIN_REDUCTIONS"]

MARGIN_REDUCTIONS = ("mean", "balanced")
WEIGHT_INITS = ("ones", "uniform")


class EnergyMargin(nn.Module):
    def __init__(self, num_classes: int, outlier_temperature: float = 1.0, reduction: str = "mean",
                 weight_init: str = "ones"):
        super().__init__()
        if weight_init not in WEIGHT_INITS:
            raise ValueError(f"FFS.ENERGY_WEIGHT_INIT must be one of {WEIGHT_INITS}, got {weight_init!r}")
        if not outlier_temperature > 0:
            raise ValueError(f"FFS.OUTLIER_TEMPERATURE must be > 0, got {outlier_temperature}")
        if reduction not in MARGIN_REDUCTIONS:
            raise ValueError(f"FFS.MARGIN_REDUCTION must be one of {MARGIN_REDUCTIONS}, got {reduction!r}")
        self.outlier_temperature = float(outlier_temperature)
        self.reduction = reduction
        self.class_weights = nn.Parameter(torch.ones(num_classes) if weight_init == "ones" else torch.rand(num_classes))
        self.logistic = nn.Linear(1, 2)

    def energy(self, logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
        """Weighted log-sum-exp over the inlier-class logits ``(N, K)`` at ``temperature`` -> ``(N,)``."""
        scaled = logits / temperature if temperature != 1.0 else logits
        peak = scaled.max(dim=1, keepdim=True).values.detach() if scaled.numel() else scaled.new_zeros(0, 1)
        weighted = (F.relu(self.class_weights) * torch.exp(scaled - peak)).sum(dim=1)
        return temperature * (peak.squeeze(1) + torch.log(weighted.clamp_min(1e-30)))

    def _inputs(self, inlier_logits: torch.Tensor, outlier_logits: torch.Tensor):
        energies = torch.cat([self.energy(inlier_logits), self.energy(outlier_logits, self.outlier_temperature)])
        targets = torch.cat([
            torch.ones(inlier_logits.shape[0], dtype=torch.long, device=energies.device),
            torch.zeros(outlier_logits.shape[0], dtype=torch.long, device=energies.device),
        ])
        return energies, targets

    def forward(self, inlier_logits: torch.Tensor, outlier_logits: torch.Tensor) -> torch.Tensor:
        """Logistic loss of inlier (label 1) vs outlier (label 0) energies; in float32 under AMP (in half
        precision the weighted log-sum-exp's floor underflows to log 0)."""
        with full_precision(inlier_logits.device):
            energies, targets = self._inputs(widen(inlier_logits), widen(outlier_logits))
            lr_logits = self.logistic(energies[:, None])
            if self.reduction == "balanced":
                ce = F.cross_entropy(lr_logits, targets, reduction="none")
                parts = [ce[targets == label].mean() for label in (1, 0) if bool((targets == label).any())]
                return sum(parts) / len(parts) if parts else ce.sum()
            return F.cross_entropy(lr_logits, targets, reduction="sum") / max(energies.shape[0], 1)

    @torch.no_grad()
    def diagnostics(self, inlier_logits: torch.Tensor, outlier_logits: torch.Tensor) -> Dict[str, float]:
        """Mean inlier / outlier energies (as the loss scores them) and the logistic regression's accuracy on
        each side: ``margin_inlier_accuracy``, ``margin_outlier_accuracy`` and their mean,
        ``margin_accuracy`` (balanced: with one outlier per ~100 inliers, plain accuracy would say 99% for
        a margin that calls everything an inlier)."""
        with full_precision(inlier_logits.device):
            energies, targets = self._inputs(widen(inlier_logits), widen(outlier_logits))
            correct = self.logistic(energies[:, None]).argmax(dim=1) == targets
        out = {}
        for side, label in (("inlier", 1), ("outlier", 0)):
            sel = targets == label
            out[f"margin_{side}_accuracy"] = float(correct[sel].float().mean()) if sel.any() else float("nan")
            out[f"energy_{side}"] = float(energies[sel].mean()) if sel.any() else float("nan")
        sides = [v for k, v in out.items() if k.endswith("_accuracy") and v == v]
        out["margin_accuracy"] = sum(sides) / len(sides) if sides else float("nan")
        return out
