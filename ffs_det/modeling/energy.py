"""The energy-margin regulariser of VOS/FFS: separate inlier from synthetic-outlier energies.

The energy of a box is a weighted log-sum-exp of its inlier-class logits,
``E(l) = log sum_k relu(w_k) exp(l_k)`` (higher = more in-distribution), with learnable per-class weights
``w`` (initialised to 1, i.e. the plain log-sum-exp). A one-input logistic regression on ``E`` is trained to
tell inlier boxes (label 1) from synthetic outliers (label 0); its cross-entropy is the loss.
"""
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["EnergyMargin"]


class EnergyMargin(nn.Module):
    def __init__(self, num_classes: int):
        super().__init__()
        self.class_weights = nn.Parameter(torch.ones(num_classes))
        self.logistic = nn.Linear(1, 2)

    def energy(self, logits: torch.Tensor) -> torch.Tensor:
        """Weighted log-sum-exp over the inlier-class logits ``(N, K)`` -> ``(N,)``."""
        peak = logits.max(dim=1, keepdim=True).values.detach() if logits.numel() else logits.new_zeros(0, 1)
        weighted = (F.relu(self.class_weights) * torch.exp(logits - peak)).sum(dim=1)
        return peak.squeeze(1) + torch.log(weighted.clamp_min(1e-30))

    def forward(self, inlier_logits: torch.Tensor, outlier_logits: torch.Tensor) -> torch.Tensor:
        """Logistic loss of inlier (label 1) vs outlier (label 0) energies; mean over all boxes."""
        energies = torch.cat([self.energy(inlier_logits), self.energy(outlier_logits)])
        targets = torch.cat([
            torch.ones(inlier_logits.shape[0], dtype=torch.long, device=energies.device),
            torch.zeros(outlier_logits.shape[0], dtype=torch.long, device=energies.device),
        ])
        ce = F.cross_entropy(self.logistic(energies[:, None]), targets, reduction="sum")
        return ce / max(energies.shape[0], 1)
