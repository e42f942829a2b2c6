"""Outlier synthesis in feature space, behind one interface.

Every strategy is an ``nn.Module`` (so its state — a flow, or feature queues — is checkpointed with the
model that owns it) with two methods:

* ``observe(features, labels) -> dict of losses``: shows the strategy this step's inlier features
  (e.g. foreground box features and their classes). The flow strategy returns its NLL loss
  (``loss_flow_nll``) on the detached features; the Gaussian strategy updates its queues.
* ``sample() -> Tensor (M, dim)``: synthetic outlier features, detached; ``M == 0`` when the strategy
  cannot produce any yet.

Strategies:

* ``"flow"`` (FFS, Kumar et al., CVPR 2023): draw ``sample_from`` latents from N(0, I), keep the ``select``
  with the lowest likelihood under the flow, return their inverse images.
* ``"gaussian"`` (VOS, Du et al., ICLR 2022): class-conditional Gaussians with one shared covariance,
  estimated from per-class FIFO queues of ``queue_size`` features; ``sample_from`` draws per class, keep
  the ``select`` lowest-density ones per class. Nothing until every queue is full.
* ``"none"``: no outliers (plain training).
"""
from typing import Dict, Optional

import torch
from torch import nn

from .flow import FeatureFlow, standard_normal_log_prob

__all__ = ["OutlierSynthesizer", "NoSynthesis", "FlowTailSynthesizer", "GaussianTailSynthesizer",
           "build_synthesizer", "SYNTHESIS_KINDS"]

SYNTHESIS_KINDS = ("flow", "gaussian", "none")


class OutlierSynthesizer(nn.Module):
    """Base class: see the module docstring for the contract."""

    kind = "none"

    def __init__(self, dim: int):
        super().__init__()
        if int(dim) < 1:
            raise ValueError(f"feature width must be >= 1, got dim={dim}")
        self.dim = int(dim)

    def observe(self, features: torch.Tensor, labels: torch.Tensor) -> Dict[str, torch.Tensor]:
        return {}

    def sample(self) -> torch.Tensor:
        return self._empty()

    @property
    def ready(self) -> bool:
        return False

    def _empty(self) -> torch.Tensor:
        ref = next((t for t in self.buffers() if t.is_floating_point()), None)
        if ref is None:
            ref = next((p for p in self.parameters() if p.is_floating_point()), torch.empty(0))
        return torch.zeros(0, self.dim, device=ref.device, dtype=ref.dtype)


class NoSynthesis(OutlierSynthesizer):
    """Plain training: observes nothing, synthesizes nothing."""


class FlowTailSynthesizer(OutlierSynthesizer):
    """FFS: low-likelihood samples of a normalizing flow trained on the inlier features."""

    kind = "flow"

    def __init__(self, flow: FeatureFlow, sample_from: int = 200, select: int = 1):
        super().__init__(flow.dim)
        if not 1 <= select <= sample_from:
            raise ValueError(f"need 1 <= select <= sample_from, got select={select}, sample_from={sample_from}")
        self.flow = flow
        self.sample_from = int(sample_from)
        self.select = int(select)

    def observe(self, features, labels):
        return {"loss_flow_nll": self.flow.nll(features.detach())}

    @property
    def ready(self) -> bool:
        return True

    @torch.no_grad()
    def sample(self) -> torch.Tensor:
        z = torch.randn(self.sample_from, self.dim, device=self.flow._device(), dtype=self.flow._dtype())
        x, log_det_inverse = self.flow.inverse_with_log_det(z)
        # log p(x) = log N(z) + log|det dz/dx| = log N(z) - log|det dx/dz|
        log_px = standard_normal_log_prob(z) - log_det_inverse
        keep = torch.topk(log_px, self.select, largest=False).indices
        return x[keep].detach()


class GaussianTailSynthesizer(OutlierSynthesizer):
    """VOS: tail samples of class-conditional Gaussians with a shared covariance."""

    kind = "gaussian"

    def __init__(self, dim: int, num_classes: int, queue_size: int = 1000, sample_from: int = 10000,
                 select: int = 1, eps: float = 1e-4):
        super().__init__(dim)
        if not 1 <= select <= sample_from:
            raise ValueError(f"need 1 <= select <= sample_from, got select={select}, sample_from={sample_from}")
        if num_classes < 1 or queue_size < 1:
            raise ValueError(f"need num_classes >= 1 and queue_size >= 1, got {num_classes}, {queue_size}")
        self.num_classes = int(num_classes)
        self.queue_size = int(queue_size)
        self.sample_from = int(sample_from)
        self.select = int(select)
        self.eps = float(eps)
        # buffers, so queues are saved in checkpoints and a resumed run continues with them
        self.register_buffer("queue", torch.zeros(num_classes, queue_size, dim))
        self.register_buffer("count", torch.zeros(num_classes, dtype=torch.long))

    def observe(self, features, labels):
        if features.dim() != 2 or features.shape[1] != self.dim:
            raise ValueError(f"features must have shape (N, {self.dim}), got {tuple(features.shape)}")
        if labels.shape != features.shape[:1]:
            raise ValueError(f"labels must have shape ({features.shape[0]},), got {tuple(labels.shape)}")
        if labels.is_floating_point() or labels.is_complex():
            raise ValueError(f"labels must be integer class indices, got dtype {labels.dtype}")
        features = features.detach().to(device=self.queue.device, dtype=self.queue.dtype)
        labels = labels.to(features.device)
        classes = torch.unique(labels).tolist()
        # validate every label before touching any queue, so a bad batch leaves the state unchanged
        bad = [c for c in classes if not 0 <= c < self.num_classes]
        if bad:
            raise ValueError(f"class label {bad[0]} outside [0, {self.num_classes})")
        for c in classes:
            new = features[labels == c][-self.queue_size:]
            n = new.shape[0]
            # FIFO: drop the n oldest rows, append the new ones at the end
            self.queue[c] = torch.cat([self.queue[c, n:], new], dim=0)
            self.count[c] = min(self.queue_size, int(self.count[c]) + n)
        return {}

    @property
    def ready(self) -> bool:
        return bool((self.count >= self.queue_size).all())

    @torch.no_grad()
    def sample(self) -> torch.Tensor:
        if not self.ready:
            return self._empty()
        means = self.queue.mean(dim=1)  # (C, D)
        centered = (self.queue - means[:, None]).reshape(-1, self.dim)
        cov = centered.T @ centered / centered.shape[0]
        cov += self.eps * torch.eye(self.dim, device=cov.device, dtype=cov.dtype)
        chol = torch.linalg.cholesky(cov)
        e = self._tail_noise(cov.device, cov.dtype)  # (C, select, D)
        return (means[:, None] + e @ chol.T).reshape(-1, self.dim)

    def _tail_noise(self, device, dtype) -> torch.Tensor:
        """For each class, the ``select`` largest-norm of ``sample_from`` draws ``e ~ N(0, I_D)``: ``(C, select, D)``.

        With a shared covariance a class density is monotone in ``|e|^2``, so these are the lowest-density
        draws. For ``e ~ N(0, I)`` the squared norm (chi-square with ``D`` degrees of freedom) is independent
        of the direction ``e / |e|`` (uniform on the sphere); so drawing ``sample_from`` squared norms,
        keeping the largest ``select`` and giving each a uniform direction has exactly the same distribution
        as drawing ``sample_from`` full vectors and keeping the largest — without the ``sample_from x D``
        normal draws that dominated this step.
        """
        shape = (self.num_classes, self.sample_from)
        sq_norms = torch.distributions.Chi2(torch.tensor(float(self.dim), device=device, dtype=dtype)).sample(shape)
        tail = torch.topk(sq_norms, self.select, dim=1, largest=True).values  # (C, select)
        directions = torch.randn(self.num_classes, self.select, self.dim, device=device, dtype=dtype)
        directions = directions / directions.norm(dim=2, keepdim=True).clamp_min(torch.finfo(dtype).tiny)
        return directions * tail.sqrt()[..., None]


def build_synthesizer(kind: str, dim: int, num_classes: int = 1, *, flow: Optional[FeatureFlow] = None,
                      sample_from: int = 200, select: int = 1, queue_size: int = 1000,
                      eps: float = 1e-4) -> OutlierSynthesizer:
    """Build the synthesis strategy ``kind`` (one of :data:`SYNTHESIS_KINDS`)."""
    if kind == "flow":
        if flow is None:
            raise ValueError("flow synthesis needs a flow (see ffs_det.density.flow.build_flow)")
        if flow.dim != dim:
            raise ValueError(f"flow width {flow.dim} != feature width {dim}")
        return FlowTailSynthesizer(flow, sample_from=sample_from, select=select)
    if kind == "gaussian":
        return GaussianTailSynthesizer(dim, num_classes, queue_size=queue_size, sample_from=sample_from,
                                       select=select, eps=eps)
    if kind == "none":
        return NoSynthesis(dim)
    raise ValueError(f"unknown synthesis {kind!r}; choose one of {SYNTHESIS_KINDS}")
