"""Outlier synthesis in feature space, behind one interface.

Every strategy is an ``nn.Module`` (so its state — a flow, or feature queues — is checkpointed with the
model that owns it) with two methods:

* ``observe(features, labels) -> dict of losses``: shows the strategy this step's inlier features
  (e.g. foreground box features and their classes). The flow strategy returns its NLL loss
  (``loss_flow_nll``) on the detached features; the Gaussian strategy updates its queues.
* ``sample(generator=None) -> Tensor (M, dim)``: synthetic outlier features, detached; ``M == 0`` when the
  strategy cannot produce any yet. With a ``seed`` the draws come from the strategy's own generator (seeded
  with ``seed`` + process rank, on the features' device); its state is part of the module's state dict, so a
  resumed training continues the stream instead of replaying it.
* ``log_prob(features) -> Tensor (N,)``: the strategy's log-density of features (nats), for diagnostics such
  as where the outliers lie among the inliers; NaN where the strategy has no density (yet).

Strategies:

* ``"flow"`` (FFS, Kumar et al., CVPR 2023): draw ``sample_from`` latents from N(0, I), keep the ``select``
  with the lowest likelihood under the flow, return their inverse images. Optionally the features are
  standardised with running per-dimension statistics before the flow (``standardize``), so the flow sees
  unit-scale inputs while the detector's features drift during training; densities and samples are those of
  the unstandardised features.
* ``"gaussian"`` (VOS, Du et al., ICLR 2022): class-conditional Gaussians with one shared covariance
  (:class:`~ffs_det.density.gaussians.Gaussians`), estimated from per-class FIFO queues of ``queue_size``
  features; ``sample_from`` draws per class, keep the ``select`` lowest-density ones per class. Nothing
  until every queue is full. The covariance is accumulated in float64 (from running sums, or recomputed
  every step: ``covariance``) and floored when it is not positive definite (:func:`covariance_factor`).
* ``"none"``: no outliers (plain training).
"""
import hashlib
import logging
from typing import Dict, Optional, Tuple

import torch
from torch import nn

from .flow import FeatureFlow, full_precision, standard_normal_log_prob, widen
from .gaussians import Gaussians, ridge_cholesky

__all__ = ["OutlierSynthesizer", "NoSynthesis", "FlowTailSynthesizer", "GaussianTailSynthesizer",
           "build_synthesizer", "shared_covariance_factor", "covariance_factor", "SYNTHESIS_KINDS",
           "COVARIANCE_UPDATES"]

logger = logging.getLogger(__name__)

SYNTHESIS_KINDS = ("flow", "gaussian", "none")
# how VOS keeps its shared covariance: "exact" (recomputed from the queues every step, as the released code) or
# "running" (float64 sums updated with the rows entering and leaving the queues; the same covariance up to
# float64 rounding, rebuilt exactly every REFRESH updates)
COVARIANCE_UPDATES = ("running", "exact")
REFRESH = 1000


# a checkpointed draw stream: version, device type code, rank (int32), state length (uint32), state, zero padding;
# fixed size, so checkpoint loading (which compares shapes) always accepts it. 5056 bytes: the CPU generator's
# state; CUDA's is 16
_STREAM_BYTES = 8192
_STREAM_HEADER = 10
_STREAM_DEVICES = (None, "cpu", "cuda")


def _process_rank() -> int:
    dist = torch.distributed
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def _encode_stream(device_type: Optional[str], rank: int, state: Optional[torch.Tensor]) -> torch.Tensor:
    out = torch.zeros(_STREAM_BYTES, dtype=torch.uint8)
    if state is None or device_type not in _STREAM_DEVICES or state.numel() > _STREAM_BYTES - _STREAM_HEADER:
        return out  # no stream yet (or a device whose state is not kept): a resumed run starts a new one
    out[0] = 1
    out[1] = _STREAM_DEVICES.index(device_type)
    out[2:6] = torch.tensor(list(int(rank).to_bytes(4, "little")), dtype=torch.uint8)
    out[6:10] = torch.tensor(list(state.numel().to_bytes(4, "little")), dtype=torch.uint8)
    out[_STREAM_HEADER:_STREAM_HEADER + state.numel()] = state.to(torch.uint8).flatten()
    return out


def _decode_stream(state) -> Optional[Tuple[str, int, torch.Tensor]]:
    """``(device type, rank, generator state)`` of :func:`_encode_stream`'s tensor; None for no stream or a
    tensor that is not one (then a new stream starts)."""
    if not torch.is_tensor(state) or state.dtype != torch.uint8 or state.numel() != _STREAM_BYTES:
        return None
    raw = state.detach().cpu().flatten()
    if int(raw[0]) != 1 or not 1 <= int(raw[1]) < len(_STREAM_DEVICES):
        return None
    size = int.from_bytes(bytes(raw[6:10].tolist()), "little")
    if size > _STREAM_BYTES - _STREAM_HEADER:
        return None
    rank = int.from_bytes(bytes(raw[2:6].tolist()), "little")
    return _STREAM_DEVICES[int(raw[1])], rank, raw[_STREAM_HEADER:_STREAM_HEADER + size].clone()


class OutlierSynthesizer(nn.Module):
    """Base class: see the module docstring for the contract."""

    kind = "none"

    def __init__(self, dim: int, seed: Optional[int] = None):
        super().__init__()
        if int(dim) < 1:
            raise ValueError(f"feature width must be >= 1, got dim={dim}")
        self.dim = int(dim)
        self.seed = None if seed is None else int(seed)

    def observe(self, features: torch.Tensor, labels: torch.Tensor) -> Dict[str, torch.Tensor]:
        return {}

    def sample(self, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Synthetic outliers ``(M, dim)``; their random draws come from ``generator`` when given, else from
        the synthesizer's own stream (with a ``seed``) or the global one."""
        return self._empty()

    def log_prob(self, features: torch.Tensor) -> torch.Tensor:
        return features.new_full(features.shape[:1], float("nan"))

    @property
    def ready(self) -> bool:
        return False

    def _empty(self) -> torch.Tensor:
        ref = next((t for t in self.buffers() if t.is_floating_point()), None)
        if ref is None:
            ref = next((p for p in self.parameters() if p.is_floating_point()), torch.empty(0))
        return torch.zeros(0, self.dim, device=ref.device, dtype=ref.dtype)


class SampledSynthesizer(OutlierSynthesizer):
    """Base of the strategies that draw random samples: their draw stream and its checkpointed state."""

    def __init__(self, dim: int, seed: Optional[int] = None):
        super().__init__(dim, seed)
        self._generator: Optional[torch.Generator] = None
        self._saved_stream: Optional[Tuple[str, int, torch.Tensor]] = None  # restored from a checkpoint, unused yet

    def _stream(self, device) -> Optional[torch.Generator]:
        """The generator of ``sample()``'s draws on ``device``: with a ``seed``, the synthesizer's own stream
        (seeded with ``seed + process rank``), so sampling leaves the global random streams -- and with them the
        detector's proposal sampling and augmentation, on every device -- exactly as without synthesis; None
        (the global stream) without one. A stream restored from a checkpoint continues where it was saved when
        the device type and rank match; otherwise it is reseeded from that saved state (a new stream, not a
        replay of the first one)."""
        if self.seed is None:
            return None
        device = torch.device(device)
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        if self._generator is not None and self._generator.device == device:
            return self._generator
        rank = _process_rank()
        gen = torch.Generator(device=device)
        saved, self._saved_stream = self._saved_stream, None
        if saved is not None and saved[0] == device.type and saved[1] == rank:
            gen.set_state(saved[2])
        elif saved is not None:
            digest = hashlib.sha256(bytes([*saved[0].encode(), 0]) + saved[2].numpy().tobytes()
                                    + f"{self.seed}:{rank}".encode()).digest()
            gen.manual_seed(int.from_bytes(digest[:8], "little"))
            logger.info("synthesis stream saved on %s rank %d, resumed on %s rank %d: reseeded from its saved state",
                        saved[0], saved[1], device.type, rank)
        else:
            gen.manual_seed(self.seed + rank)
        self._generator = gen
        return gen

    def get_extra_state(self) -> torch.Tensor:
        """The draw stream's state, checkpointed with the model (a fixed-size uint8 tensor, see
        :func:`_encode_stream`), so that ``--resume`` continues the stream instead of replaying it."""
        if self._generator is not None:
            gen = self._generator
            return _encode_stream(gen.device.type, _process_rank(), gen.get_state())
        if self._saved_stream is not None:
            return _encode_stream(*self._saved_stream)
        return _encode_stream(None, 0, None)

    def set_extra_state(self, state) -> None:
        self._saved_stream = _decode_stream(state)
        self._generator = None


class NoSynthesis(OutlierSynthesizer):
    """Plain training: observes nothing, synthesizes nothing."""


class FlowTailSynthesizer(SampledSynthesizer):
    """FFS: low-likelihood samples of a normalizing flow trained on the inlier features."""

    kind = "flow"

    def __init__(self, flow: FeatureFlow, sample_from: int = 200, select: int = 1, standardize: bool = False,
                 momentum: float = 0.05, seed: Optional[int] = None):
        super().__init__(flow.dim, seed)
        if not 1 <= select <= sample_from:
            raise ValueError(f"need 1 <= select <= sample_from, got select={select}, sample_from={sample_from}")
        if not 0.0 < momentum <= 1.0:
            raise ValueError(f"running-statistics momentum must be in (0, 1], got {momentum}")
        self.flow = flow
        self.sample_from = int(sample_from)
        self.select = int(select)
        self.standardize = bool(standardize)
        self.momentum = float(momentum)
        # running statistics of the observed features (used when standardize); checkpointed with the model
        self.register_buffer("running_mean", torch.zeros(self.dim))
        self.register_buffer("running_var", torch.ones(self.dim))
        self.register_buffer("stats_count", torch.zeros((), dtype=torch.long))

    def observe(self, features, labels):
        features = widen(features.detach(), self.flow._dtype())  # AMP: the flow learns in its own precision
        if self.standardize and self.training:
            self._update_stats(features)
        with full_precision(features.device):
            u, log_scale = self._standardized(features)
            nll = self.flow.nll(u)
            # change of variables x = mean + scale * u: -log p(x) = -log p(u) + sum log scale
            return {"loss_flow_nll": nll + log_scale if features.shape[0] else nll}

    @torch.no_grad()
    def _update_stats(self, features: torch.Tensor) -> None:
        """Fold this step's feature mean/variance into the running statistics. Under torch.distributed the
        sums are all-reduced first (every process calls this at every step, with or without features), so all
        processes keep the same statistics."""
        x = features.to(torch.float64)
        packed = torch.cat([x.sum(0), (x * x).sum(0), x.new_full((1,), x.shape[0])])
        if torch.distributed.is_available() and torch.distributed.is_initialized() \
                and torch.distributed.get_world_size() > 1:
            torch.distributed.all_reduce(packed)
        n = float(packed[-1])
        if n < 2:
            return
        mean = packed[:self.dim] / n
        var = ((packed[self.dim:2 * self.dim] / n - mean * mean).clamp_min(0.0) * (n / (n - 1)))
        m = 1.0 if int(self.stats_count) == 0 else self.momentum  # the first batch sets the statistics
        self.running_mean.lerp_(mean.to(self.running_mean.dtype), m)
        self.running_var.lerp_(var.to(self.running_var.dtype), m)
        self.stats_count += 1

    def _scale(self) -> torch.Tensor:
        # floor: 1e-3 of the mean variance, so a (nearly) constant dimension cannot blow the flow's inputs up
        return torch.maximum(self.running_var, 1e-3 * self.running_var.mean() + 1e-12).sqrt()

    def _standardized(self, features: torch.Tensor):
        """``(u, sum of log scales)``: the features the flow sees, and the log-det of ``u -> features``."""
        if not self.standardize:
            return features, features.new_zeros(())
        scale = self._scale().to(features.dtype)
        return (features - self.running_mean.to(features.dtype)) / scale, scale.log().sum()

    def log_prob(self, features: torch.Tensor) -> torch.Tensor:
        features = widen(features, self.flow._dtype())
        with full_precision(features.device):
            u, log_scale = self._standardized(features)
            return self.flow.log_prob(u) - log_scale

    @property
    def ready(self) -> bool:
        return True

    @torch.no_grad()
    def sample(self, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        device = self.flow._device()
        z = torch.randn(self.sample_from, self.dim, device=device, dtype=self.flow._dtype(),
                        generator=generator or self._stream(device))
        with full_precision(device):
            x, log_det_inverse = self.flow.inverse_with_log_det(z)
            # log p(x) = log N(z) + log|det dz/dx| = log N(z) - log|det dx/dz|; the standardisation adds the
            # same constant to every candidate, so it does not change which ones are the least likely
            log_px = standard_normal_log_prob(z) - log_det_inverse
            keep = torch.topk(log_px, self.select, largest=False).indices
            x = x[keep]
            if self.standardize:
                x = self.running_mean.to(x.dtype) + self._scale().to(x.dtype) * x
            return x.detach()


class GaussianTailSynthesizer(SampledSynthesizer):
    """VOS: tail samples of class-conditional Gaussians with a shared covariance.

    Under torch.distributed every process keeps its own queues, filled with its own images' boxes, and samples
    from them, as the released VOS code does (deeplearning-wisc/vos 6dd9c27,
    ``detection/modeling/roihead_gmm.py``: a per-process ``data_dict``); the queues are buffers that DDP does
    not broadcast (``broadcast_buffers=False``). A checkpoint holds the main process's queues, which every
    process starts from on ``--resume``.
    """

    kind = "gaussian"

    def __init__(self, dim: int, num_classes: int, queue_size: int = 1000, sample_from: int = 10000,
                 select: int = 1, eps: float = 1e-4, seed: Optional[int] = None, covariance: str = "running"):
        super().__init__(dim, seed)
        if covariance not in COVARIANCE_UPDATES:
            raise ValueError(f"covariance update must be one of {COVARIANCE_UPDATES}, got {covariance!r}")
        self.covariance = covariance
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
        self._warned_floor = False
        self._ready = False
        # "running": float64 sums of the queued rows per class (C, D) and of their outer products over all classes
        # (D, D), on the queues' device, kept in step with the queues by observe. Not state: None until first
        # needed, after a load or a move to another device; then, and every REFRESH updates, rebuilt from the queues
        self._sums: Optional[Tuple[torch.Tensor, torch.Tensor]] = None
        self._updates = 0

    def observe(self, features, labels):
        if features.dim() != 2 or features.shape[1] != self.dim:
            raise ValueError(f"features must have shape (N, {self.dim}), got {tuple(features.shape)}")
        if labels.shape != features.shape[:1]:
            raise ValueError(f"labels must have shape ({features.shape[0]},), got {tuple(labels.shape)}")
        if labels.is_floating_point() or labels.is_complex():
            raise ValueError(f"labels must be integer class indices, got dtype {labels.dtype}")
        features = features.detach().to(device=self.queue.device, dtype=self.queue.dtype)
        labels = labels.to(features.device)
        if labels.numel() == 0:
            return {}
        # two host synchronisations per step (label range, per-class counts), not two per class
        low, high = torch.stack([labels.min(), labels.max()]).tolist()
        # validate every label before touching any queue, so a bad batch leaves the state unchanged
        if low < 0 or high >= self.num_classes:
            bad = sorted(set(torch.unique(labels).tolist()) - set(range(self.num_classes)))
            raise ValueError(f"class label {bad[0]} outside [0, {self.num_classes})")
        per_class = torch.bincount(labels, minlength=self.num_classes).tolist()
        # running sums to update; None: they are rebuilt from the queues when next needed
        sums = self._sums if self.covariance == "running" and self._sums is not None \
            and self._sums[1].device == self.queue.device else None
        # each class's rows in their order in the batch
        by_class = features[torch.argsort(labels, stable=True)].split(per_class)
        entering, leaving = [], []
        for c, rows in enumerate(by_class):
            if not per_class[c]:
                continue
            new = rows[-self.queue_size:]
            n = new.shape[0]
            if sums is not None:
                dropped = self.queue[c, :n].clone()  # zeros while the queue is not full: they add nothing
                entering.append(new)
                leaving.append(dropped)
                sums[0][c] += new.sum(0, dtype=torch.float64) - dropped.sum(0, dtype=torch.float64)
            # FIFO: drop the n oldest rows, append the new ones at the end
            self.queue[c] = torch.cat([self.queue[c, n:], new], dim=0)
            self.count[c].add_(n).clamp_(max=self.queue_size)
        if entering:
            new, old = torch.cat(entering).to(torch.float64), torch.cat(leaving).to(torch.float64)
            sums[1].add_(new.T @ new - old.T @ old)
            self._updates += 1
        return {}

    @property
    def ready(self) -> bool:
        # queues only fill up, so once ready the answer is kept (no host synchronisation per step); a loaded
        # state dict asks again
        if not self._ready:
            self._ready = bool((self.count >= self.queue_size).all())
        return self._ready

    def _load_from_state_dict(self, *args, **kwargs):
        self._ready = False
        self._sums = None  # rebuilt from the loaded queues
        super()._load_from_state_dict(*args, **kwargs)

    def _moments(self):
        """Class means ``(C, D)`` and the shared covariance ``(D, D)`` of the queues, float64: recomputed from the
        queues (``covariance="exact"``), or from the running sums (``"running"``: ``(sum x x^T - Q sum_c mu_c
        mu_c^T) / (C Q)``, a ``C Q``-th of the work for each row that entered the queues since the last step)."""
        if self.covariance == "exact":
            return queue_moments(self.queue)
        if self._sums is None or self._sums[1].device != self.queue.device or self._updates >= REFRESH:
            x = self.queue.detach().to(torch.float64)  # rebuilt exactly, so rounding cannot accumulate
            flat = x.reshape(-1, self.dim)
            self._sums, self._updates = (x.sum(dim=1), flat.T @ flat), 0
        q = self.queue_size
        means = self._sums[0] / q
        cov = (self._sums[1] - q * (means.T @ means)) / (self.num_classes * q)
        return means, (cov + cov.T) / 2

    @torch.no_grad()
    def sample(self, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """The ``select`` least likely of ``sample_from`` draws from each class Gaussian, ``(C select, D)``."""
        if not self.ready:
            return self._empty()
        gaussians = self.gaussians()
        device = gaussians.means.device
        generator = generator or self._stream(device)
        with full_precision(device):
            return gaussians.tail_sample(self.sample_from, self.select, generator).reshape(-1, self.dim)

    def gaussians(self) -> Gaussians:
        """The class Gaussians of the queues, with their shared covariance, in the queue's dtype (see
        :func:`shared_covariance_factor`)."""
        means, cov = self._moments()
        chol, floored = covariance_factor(cov, self.eps)
        if floored and not self._warned_floor:
            logger.warning("VOS: the shared covariance of the %d x %d queued features is not positive definite "
                           "(rank-deficient queues?); its eigenvalues were floored (logged once)",
                           self.num_classes * self.queue_size, self.dim)
            self._warned_floor = True
        return Gaussians.shared_covariance(means.to(self.queue.dtype), chol.to(self.queue.dtype))

    @torch.no_grad()
    def log_prob(self, features: torch.Tensor) -> torch.Tensor:
        """Log-density under the most likely class Gaussian (NaN until every queue is full)."""
        if not self.ready:
            return super().log_prob(features)
        gaussians = self.gaussians()
        with full_precision(gaussians.means.device):
            x = features.to(gaussians.means.dtype)
            return gaussians.nearest_log_prob(x).to(widen(features).dtype)


def shared_covariance_factor(queue: torch.Tensor, eps: float, floor: float = 1e-6):
    """Class means and a lower Cholesky factor of the shared covariance of per-class features ``queue (C, Q, D)``.

    Means and covariance ``(1/(C Q)) sum_c sum_i (x_ci - mu_c)(x_ci - mu_c)^T + eps I`` are accumulated in
    float64; :func:`covariance_factor` factors it. Returns ``(means (C, D), chol (D, D), floored)``, float64.
    """
    means, cov = queue_moments(queue)
    chol, floored = covariance_factor(cov, eps, floor)
    return means, chol, floored


def queue_moments(queue: torch.Tensor):
    """Class means ``(C, D)`` and shared covariance ``(D, D)`` (without ridge) of ``queue (C, Q, D)``, in float64."""
    x = queue.detach().to(torch.float64)
    means = x.mean(dim=1)
    centered = (x - means[:, None]).reshape(-1, x.shape[-1])
    return means, centered.T @ centered / centered.shape[0]


def covariance_factor(cov: torch.Tensor, eps: float, floor: float = 1e-6):
    """A lower Cholesky factor of ``cov + eps I`` (float64) and whether it had to be floored: when that matrix is
    not positive definite (``eps`` too small for rank-deficient queues: fewer features than dimensions,
    duplicated rows, or an ill-conditioned float32 queue), its eigenvalues are floored at
    ``max(eps, floor * largest eigenvalue)`` and the Cholesky factor of the floored matrix is returned.
    One host synchronisation (the factorisation's status) when it succeeds."""
    cov, chol, info = ridge_cholesky(cov, eps)
    if int(info) == 0:
        return chol, False
    if not torch.isfinite(cov).all():
        raise ValueError("VOS: the queued features contain NaN or infinite values")
    vals, vecs = torch.linalg.eigh((cov + cov.T) / 2)
    vals = vals.clamp_min(max(float(eps), floor * float(vals[-1].clamp_min(0)), torch.finfo(torch.float64).tiny))
    floored_cov = (vecs * vals) @ vecs.T
    chol, info = torch.linalg.cholesky_ex((floored_cov + floored_cov.T) / 2)
    if int(info) != 0:  # rounding in the reconstruction: a (non-triangular) square root would break log_prob
        eye = torch.eye(cov.shape[-1], device=cov.device, dtype=torch.float64)
        chol, info = torch.linalg.cholesky_ex((floored_cov + floored_cov.T) / 2 + float(vals[0]) * eye)
    if int(info) != 0:
        raise ValueError(f"VOS: could not factor the shared covariance even after flooring its eigenvalues "
                         f"(largest {float(vals[-1]):.3g}); the queued features may be non-finite")
    return chol, True


def build_synthesizer(kind: str, dim: int, num_classes: int = 1, *, flow: Optional[FeatureFlow] = None,
                      sample_from: int = 200, select: int = 1, queue_size: int = 1000,
                      eps: float = 1e-4, standardize: bool = False, momentum: float = 0.05,
                      seed: Optional[int] = None, covariance: str = "running") -> OutlierSynthesizer:
    """Build the synthesis strategy ``kind`` (one of :data:`SYNTHESIS_KINDS`)."""
    if kind == "flow":
        if flow is None:
            raise ValueError("flow synthesis needs a flow (see ffs_det.density.flow.FeatureFlow)")
        if flow.dim != dim:
            raise ValueError(f"flow width {flow.dim} != feature width {dim}")
        return FlowTailSynthesizer(flow, sample_from=sample_from, select=select, standardize=standardize,
                                   momentum=momentum, seed=seed)
    if kind == "gaussian":
        return GaussianTailSynthesizer(dim, num_classes, queue_size=queue_size, sample_from=sample_from,
                                       select=select, eps=eps, seed=seed, covariance=covariance)
    if kind == "none":
        return NoSynthesis(dim)
    raise ValueError(f"unknown synthesis {kind!r}; choose one of {SYNTHESIS_KINDS}")
