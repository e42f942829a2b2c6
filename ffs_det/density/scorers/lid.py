"""Local intrinsic dimension (LID) from a flow's Jacobian, combined with its likelihood.

Kamkari, Ross, Cresswell, Caterini, Krishnan & Loaiza-Ganem, "A Geometric Explanation of the Likelihood
OOD Detection Paradox", ICML 2024.

Their observation: OOD data can get *higher* likelihood than ID data when it sits on a low-dimensional
region of high density but negligible probability mass; LID tells these apart. Their detector is a dual
threshold: in-distribution iff the log-likelihood is high *and* the LID is high.

LID estimate: a flow ``f: x -> z`` (``FeatureFlow``, trained on the standardised ID features, or a given
trained flow used on the raw features) has the decoder ``f^{-1}`` whose Jacobian at ``z = f(x)`` has
singular values ``s_i = 1 / e_i``, with ``e_i`` the singular values of the encoder Jacobian ``df/dx``.
Convolving the model with ``N(0, sigma^2 I)`` and linearising the decoder gives the rate-of-change
estimator ``LID_sigma(x) = sum_i s_i^2 / (s_i^2 + sigma^2) = sum_i 1 / (1 + sigma^2 e_i^2)``: a soft count of
the decoder's singular values above ``sigma`` (``sigma`` in standardised feature units when the flow is
trained here). The encoder Jacobian is computed exactly (:func:`encoder_jacobian`).

Combination (``combine="dual"``): both quantities are standardised by their mean and standard deviation on the
fit features (on a random ``calibration_rows`` of them), and the score is ``min(z_loglik, z_lid)`` — its
super-level sets ``{score >= t}`` are exactly the dual-threshold regions ``{loglik >= m_l + t s_l and LID >=
m_d + t s_d}``, so sweeping ``t`` traces the dual-threshold detectors with both thresholds at the same
standardised level. ``combine="likelihood"`` / ``"lid"`` score by one of them alone. Higher = more
in-distribution.
"""
from typing import Optional

import numpy as np
import torch

from ..flow import FeatureFlow
from ..flow_training import FlowConfig, finite_or_floor, fit_flow, flow_log_prob
from ..inputs import as_features
from ..normalize import Standardizer
from ..streaming import as_feature_rows, is_streamed, sample_indices
from .base import Scorer, register_scorer

__all__ = ["LIDScorer", "encoder_jacobian", "flow_lid"]


def encoder_jacobian(flow: FeatureFlow, x: torch.Tensor) -> torch.Tensor:
    """``dz/dx`` at each row of ``x (n, D)``, ``(n, D, D)``: one backward pass per output dimension ``j``
    gives row ``j`` for the whole batch at once, since the rows of a flow do not interact."""
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        z, _ = flow(x)
        d = z.shape[1]
        rows = [torch.autograd.grad(z[:, j].sum(), x, retain_graph=j + 1 < d)[0] for j in range(d)]
    return torch.stack(rows, dim=1)


def flow_lid(flow: FeatureFlow, x: torch.Tensor, sigma: float, batch_size: int = 256) -> torch.Tensor:
    """``LID_sigma`` (see module doc) of each row of ``x`` under ``flow``, float64 ``(N,)``."""
    device = next(flow.parameters()).device
    out = []
    for start in range(0, x.shape[0], batch_size):
        jac = encoder_jacobian(flow, x[start:start + batch_size].to(device, torch.float32))
        encoder_sv = torch.linalg.svdvals(jac.double().cpu())  # (n, D)
        out.append((1.0 / (1.0 + (sigma * encoder_sv) ** 2)).sum(dim=1))
    return torch.cat(out)


@register_scorer("lid")
class LIDScorer(Scorer):
    """Fitted attributes: ``flow_``, ``standardizer_`` (None with a given flow), ``dim_`` and ``stats_``
    (mean and standard deviation of both components on the calibration rows)."""

    streams = True

    def __init__(self, sigma: float = 0.1, combine: str = "dual", flow: Optional[FeatureFlow] = None,
                 coupling: str = "glow", blocks: int = 4, hidden: int = 256, clamp: float = 2.0, epochs: int = 30,
                 max_steps: int = 3000, batch_size: int = 256, lr: float = 1e-3, calibration_rows: int = 2000,
                 seed: int = 0, device: str = "cpu"):
        self.sigma, self.combine, self.flow = sigma, combine, flow
        self.coupling, self.blocks, self.hidden, self.clamp = coupling, blocks, hidden, clamp
        self.epochs, self.max_steps, self.batch_size, self.lr = epochs, max_steps, batch_size, lr
        self.calibration_rows, self.seed, self.device = calibration_rows, seed, device

    def check_params(self) -> None:
        if self.sigma <= 0:
            raise ValueError(f"sigma must be > 0, got {self.sigma}")
        if self.combine not in ("dual", "likelihood", "lid"):
            raise ValueError(f"combine must be 'dual', 'likelihood' or 'lid', got {self.combine!r}")

    def fit(self, X, y=None, *, head=None) -> "LIDScorer":
        """``X`` in memory or a row source (the flow trains on minibatches read from it; the calibration
        rows are read at the end)."""
        self.check_params()
        x = as_feature_rows(X)
        dim = x.dim
        if self.flow is not None:
            if self.flow.dim != dim:
                raise ValueError(f"the given flow has dim {self.flow.dim}, features have {dim}")
            self.standardizer_, self.flow_ = None, self.flow.eval()
        else:
            config = FlowConfig.from_options(self)
            if is_streamed(X):
                self.standardizer_ = Standardizer().fit(x)
                self.flow_ = fit_flow(x.map(self.standardizer_), config)
            else:
                full = x.read(0, len(x))
                self.standardizer_ = Standardizer().fit(full)
                self.flow_ = fit_flow(self.standardizer_(full), config)
        self.dim_ = dim
        # the Jacobians are the costly part: calibrate on a subset
        keep = sample_indices(len(x), int(self.calibration_rows), int(self.seed))
        ll, lid = self.components(x.take(keep))
        self.stats_ = {"loglik": (ll.mean(), ll.std() + 1e-12), "lid": (lid.mean(), lid.std() + 1e-12)}
        return self

    def components(self, X):
        """``(log-likelihood in nats of the (standardised) features, LID)``, float64 numpy ``(N,)`` each."""
        self.check_fitted()
        x = as_features(X, dim=self.dim_)
        if self.standardizer_ is not None:
            x = self.standardizer_(x)
        return finite_or_floor(flow_log_prob(self.flow_, x)), flow_lid(self.flow_, x, float(self.sigma)).numpy()

    def score(self, X) -> np.ndarray:
        ll, lid = self.components(X)
        if self.combine == "likelihood":
            return ll
        if self.combine == "lid":
            return lid
        (m_l, s_l), (m_d, s_d) = self.stats_["loglik"], self.stats_["lid"]
        return np.minimum((ll - m_l) / s_l, (lid - m_d) / s_d)
