"""Local intrinsic dimension (LID) from a flow's Jacobian, combined with its likelihood.

Kamkari, Ross, Cresswell, Caterini, Krishnan & Loaiza-Ganem, "A Geometric Explanation of the Likelihood
OOD Detection Paradox", ICML 2024.

Their observation: OOD data can get *higher* likelihood than ID data when it sits on a low-dimensional
region of high density but negligible probability mass; LID tells these apart. Their detector is a dual
threshold: in-distribution iff the log-likelihood is high *and* the LID is high.

LID estimate: a flow ``f: x -> z`` (``build_flow``, trained on the standardised ID features, or a given
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
from .base import Scorer, register_scorer
from .checks import features_2d, require_fitted
from .flow_fitting import FlowConfig, Standardizer, finite_or_floor, fit_flow, flow_log_prob

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
    requires = frozenset({"features"})

    def __init__(self, sigma: float = 0.1, combine: str = "dual", flow: Optional[FeatureFlow] = None,
                 coupling: str = "glow", blocks: int = 4, hidden: int = 256, clamp: float = 2.0, epochs: int = 30,
                 max_steps: int = 3000, batch_size: int = 256, lr: float = 1e-3, calibration_rows: int = 2000,
                 seed: int = 0, device: str = "cpu"):
        if sigma <= 0:
            raise ValueError(f"sigma must be > 0, got {sigma}")
        if combine not in ("dual", "likelihood", "lid"):
            raise ValueError(f"combine must be 'dual', 'likelihood' or 'lid', got {combine!r}")
        self.sigma, self.combine, self.given_flow = float(sigma), combine, flow
        self.config = FlowConfig(coupling=coupling, blocks=blocks, hidden=hidden, clamp=clamp, epochs=epochs,
                                 max_steps=max_steps, batch_size=batch_size, lr=lr, seed=seed, device=device)
        self.calibration_rows, self.seed = int(calibration_rows), int(seed)
        self.flow = None

    def fit(self, features=None, **_) -> "LIDScorer":
        x = features_2d(features)
        if self.given_flow is not None:
            if self.given_flow.dim != x.shape[1]:
                raise ValueError(f"the given flow has dim {self.given_flow.dim}, features have {x.shape[1]}")
            self.standardize, self.flow = None, self.given_flow.eval()
        else:
            self.standardize = Standardizer(x)
            self.flow = fit_flow(self.standardize(x), self.config)
        self.dim = x.shape[1]
        if x.shape[0] > self.calibration_rows:  # the Jacobians are the costly part: calibrate on a subset
            keep = np.random.default_rng(self.seed).permutation(x.shape[0])[:self.calibration_rows]
            x = x[torch.as_tensor(np.sort(keep))]
        ll, lid = self.components(x)
        self.stats = {"loglik": (ll.mean(), ll.std() + 1e-12), "lid": (lid.mean(), lid.std() + 1e-12)}
        return self

    def components(self, features=None, **_):
        """``(log-likelihood in nats of the (standardised) features, LID)``, float64 numpy ``(N,)`` each."""
        require_fitted(self, "flow")
        x = features_2d(features, dim=self.dim)
        if self.standardize is not None:
            x = self.standardize(x)
        return finite_or_floor(flow_log_prob(self.flow, x)), flow_lid(self.flow, x, self.sigma).numpy()

    def score(self, features=None, **_) -> np.ndarray:
        ll, lid = self.components(features)
        if self.combine == "likelihood":
            return ll
        if self.combine == "lid":
            return lid
        (m_l, s_l), (m_d, s_d) = self.stats["loglik"], self.stats["lid"]
        return np.minimum((ll - m_l) / s_l, (lid - m_d) / s_d)
