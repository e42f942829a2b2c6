"""Normalizing flows over feature vectors, built from FrEIA coupling blocks.

The flow maps a feature ``x`` (any width) to a latent ``z`` with a standard-normal base density, so
``log p(x) = log N(z; 0, I) + log|det dz/dx|`` in nats. It is the density model of FFS (box features),
of FDE-style image-level scoring (classifier features) and of the flow-based scorers.
"""
import contextlib
import math
from typing import Tuple

import numpy as np
import torch
from torch import nn

import FrEIA.framework as Ff
import FrEIA.modules as Fm

__all__ = ["FeatureFlow", "COUPLINGS", "INITS", "PERMUTATION_SEEDS", "standard_normal_log_prob", "seeded_init",
           "full_precision", "widen"]

# name -> (FrEIA block, name of its clamp argument or None when the block has no affine part)
COUPLINGS = {
    "glow": (Fm.GLOWCouplingBlock, "clamp"),
    "realnvp": (Fm.RNVPCouplingBlock, "clamp"),
    "nice": (Fm.NICECouplingBlock, None),
    "allinone": (Fm.AllInOneBlock, "affine_clamping"),
}


# the precisions automatic mixed precision (AMP) computes in
LOW_PRECISION = (torch.float16, torch.bfloat16)


def full_precision(device):
    """Autocast off on ``device``'s type, for densities, log-determinants and Gaussian draws: under AMP they
    would run in half precision (an NLL with 3 significant digits, sample errors of ~0.03 on values ~7.5)."""
    return torch.autocast(device_type=torch.device(device).type, enabled=False)


def widen(x: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``x`` in ``dtype`` when it is in a half precision (an AMP output); as it is otherwise."""
    return x.to(dtype) if x.dtype in LOW_PRECISION else x


@contextlib.contextmanager
def seeded_init(seed: int):
    """Modules built in this block draw their initial weights from the CPU generator seeded with ``seed``; the
    CPU generator's state is restored after, and no CUDA generator is touched (``torch.manual_seed`` would
    seed, or queue a seeding of, every CUDA generator: on a GPU every run would then share one stream for
    detectron2's proposal sampling, whatever its ``SEED``). Build modules on the CPU in this block, then move
    them to their device."""
    with torch.random.fork_rng(devices=[]):
        torch.random.default_generator.manual_seed(int(seed))
        yield


@contextlib.contextmanager
def _numpy_seed(seed):
    """FrEIA draws its permutations from numpy's global RNG; seed it for the block and restore it after.

    With ``seed=None`` the global RNG is used as is and advances, so that successive unseeded flows get
    different permutations (restoring the state would give every unseeded flow the same ones).
    """
    if seed is None:
        yield
        return
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)


# how a new flow's coupling subnets start: "identity" (last layer zeroed: every coupling is the identity, so a
# new flow is exactly N(0, I)) or "default" (PyTorch's default Linear initialisation, as the released FFS code)
INITS = ("identity", "default")
# how the permutations after the couplings are seeded: "stream" (block k's permutation is the k-th draw of one
# numpy stream seeded with ``seed``) or "per_block" (block k's from seed + k, the released FFS code's
# PermuteRandom(seed=k))
PERMUTATION_SEEDS = ("stream", "per_block")


def _subnet(hidden: int, init: str):
    def make(c_in: int, c_out: int) -> nn.Module:
        net = nn.Sequential(nn.Linear(c_in, hidden), nn.ReLU(), nn.Linear(hidden, c_out))
        if init == "identity":
            nn.init.zeros_(net[-1].weight)
            nn.init.zeros_(net[-1].bias)
        return net

    return make


class FeatureFlow(nn.Module):
    """An invertible map ``x -> z`` on ``dim``-wide features with a standard-normal base density.

    Args:
        dim: feature width (the box head's output width in the detector; any width works).
        coupling: ``"glow"``, ``"realnvp"``, ``"nice"`` or ``"allinone"`` (FrEIA's AllInOneBlock).
        blocks: number of coupling blocks.
        hidden: width of each coupling's two-layer subnet.
        clamp: soft clamp of the affine log-scales (ignored by NICE, which is volume preserving).
        permute: put a fixed random permutation after each coupling (AllInOneBlock has its own).
        seed: seed of those permutations, so every process builds the same flow.
        init: ``"identity"`` (each coupling's last subnet layer zeroed, so a new flow is exactly N(0, I)) or
            ``"default"`` (PyTorch's default initialisation, as the released FFS code).
        permutation_seeds: ``"stream"`` (the permutations are successive draws of one numpy stream seeded with
            ``seed``) or ``"per_block"`` (block k's permutation from ``seed + k``, as the released FFS code's
            ``PermuteRandom(seed=k)`` with ``seed`` 0).
    """

    def __init__(self, dim: int, coupling: str = "glow", blocks: int = 2, hidden: int = 2048,
                 clamp: float = 2.0, permute: bool = True, seed: int = 0, init: str = "identity",
                 permutation_seeds: str = "stream"):
        super().__init__()
        if coupling not in COUPLINGS:
            raise ValueError(f"unknown flow coupling {coupling!r}; choose one of {sorted(COUPLINGS)}")
        if init not in INITS:
            raise ValueError(f"unknown flow init {init!r}; choose one of {', '.join(INITS)}")
        if permutation_seeds not in PERMUTATION_SEEDS:
            raise ValueError(f"unknown flow permutation seeding {permutation_seeds!r}; choose one of "
                             f"{', '.join(PERMUTATION_SEEDS)}")
        if dim < 2:
            raise ValueError(f"a coupling flow needs at least 2 feature dimensions, got dim={dim}")
        if blocks < 1 or hidden < 1:
            raise ValueError(f"flow blocks and hidden width must be >= 1, got blocks={blocks}, hidden={hidden}")
        self.config = dict(dim=int(dim), coupling=coupling, blocks=int(blocks), hidden=int(hidden),
                           clamp=float(clamp), permute=bool(permute), seed=seed, init=init,
                           permutation_seeds=permutation_seeds)
        self.dim = int(dim)
        block, clamp_arg = COUPLINGS[coupling]
        kwargs = {"subnet_constructor": _subnet(hidden, init)}
        if clamp_arg is not None:
            kwargs[clamp_arg] = clamp
        self.inn = Ff.SequenceINN(dim)
        with _numpy_seed(seed):
            for k in range(blocks):
                self.inn.append(block, **kwargs)
                # AllInOneBlock permutes internally; the other couplings only mix the two halves if permuted
                if permute and coupling != "allinone":
                    per_block = permutation_seeds == "per_block" and seed is not None
                    self.inn.append(Fm.PermuteRandom, **({"seed": seed + k} if per_block else {}))

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """``x (N, dim) -> (z (N, dim), log|det dz/dx| (N,))``."""
        self._check(x)
        x = widen(x, self._dtype())
        if x.shape[0] == 0:  # FrEIA's AllInOneBlock indexes the first row; an empty batch maps to itself
            return x.clone(), x.new_zeros(0)
        with full_precision(x.device):
            z, log_det = self.inn(x)
            return z, self._per_sample(log_det, x)

    def inverse(self, z: torch.Tensor) -> torch.Tensor:
        """``z (N, dim) -> x (N, dim)``."""
        return self.inverse_with_log_det(z)[0]

    def inverse_with_log_det(self, z: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """``z -> (x, log|det dx/dz|)``; the log-det is minus the forward one at ``x``."""
        self._check(z)
        z = widen(z, self._dtype())
        if z.shape[0] == 0:
            return z.clone(), z.new_zeros(0)
        with full_precision(z.device):
            x, log_det = self.inn(z, rev=True)
            return x, self._per_sample(log_det, z)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """Log-density of each row of ``x`` in nats (in the flow's precision, also under AMP)."""
        z, log_det = self(x)
        with full_precision(z.device):
            return standard_normal_log_prob(z) + log_det

    def nll(self, x: torch.Tensor) -> torch.Tensor:
        """Mean negative log-likelihood (nats per sample); 0 with a live graph for an empty batch.

        For an empty batch the 0 is tied to every trainable parameter, so backward gives each of them a
        (zero) gradient, as distributed data-parallel training needs on a step without foreground boxes.
        """
        if x.shape[0] == 0:
            self._check(x)
            zero = x.sum() * 0.0
            for p in self.parameters():
                if p.requires_grad:
                    zero = zero + (p * 0.0).sum().to(zero.dtype)
            return zero
        return -self.log_prob(x).sum() / x.shape[0]

    @torch.no_grad()
    def sample(self, n: int, temperature: float = 1.0) -> torch.Tensor:
        """Draw ``n`` features: ``z ~ N(0, temperature^2 I)`` mapped through the inverse."""
        z = torch.randn(n, self.dim, device=self._device(), dtype=self._dtype()) * temperature
        return self.inverse(z)

    def save(self, path: str) -> None:
        torch.save({"config": self.config, "state_dict": self.state_dict()}, path)

    @classmethod
    def load(cls, path: str, map_location="cpu") -> "FeatureFlow":
        blob = torch.load(path, map_location=map_location, weights_only=True)
        if not isinstance(blob, dict) or "config" not in blob or "state_dict" not in blob:
            raise ValueError(f"{path}: not a saved FeatureFlow (expected keys 'config' and 'state_dict')")
        flow = cls(**blob["config"])
        # a new flow is built in the default dtype; keep the saved one (e.g. float64) so log_prob is unchanged
        saved = [t for t in blob["state_dict"].values() if torch.is_tensor(t) and t.is_floating_point()]
        if saved:
            flow = flow.to(saved[0].dtype)
        flow.load_state_dict(blob["state_dict"])
        return flow

    def _check(self, x: torch.Tensor) -> None:
        if not torch.is_tensor(x):
            raise ValueError(f"flow expects a torch tensor of shape (N, {self.dim}), got {type(x).__name__}")
        if x.dim() != 2 or x.shape[1] != self.dim:
            raise ValueError(f"flow expects features of shape (N, {self.dim}), got {tuple(x.shape)}")

    @staticmethod
    def _per_sample(log_det, x):
        # FrEIA returns a python 0. for volume-preserving flows (NICE + permutations)
        if not torch.is_tensor(log_det):
            return x.new_zeros(x.shape[0])
        return log_det.reshape(-1).expand(x.shape[0]) if log_det.numel() == 1 else log_det

    def _device(self):
        return next(self.parameters()).device

    def _dtype(self):
        return next(p for p in self.parameters() if p.is_floating_point()).dtype

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.config.items())


def standard_normal_log_prob(z: torch.Tensor) -> torch.Tensor:
    """log N(z; 0, I) per row, in nats."""
    return -0.5 * (z * z).sum(dim=1) - 0.5 * z.shape[1] * math.log(2 * math.pi)

