"""Class-conditional Gaussians in closed form: the shared density behind Mahalanobis, the residual flow,
the GMM scorer, HEAT's GMM prior and VOS outlier synthesis (:mod:`~ffs_det.density.synthesis`).

A :class:`Gaussians` holds ``K`` components ``N(mu_k, Sigma_k)`` with log mixing weights; each covariance is
kept as its lower Cholesky factor ``L_k`` (``Sigma_k = L_k L_k^T``), and a tied covariance is stored once.
Fitted to features (:func:`fit_class_gaussians`) everything is float64 on the CPU; VOS's class Gaussians
(:meth:`Gaussians.shared_covariance`) are in its queues' dtype, on their device.
"""
import math
from typing import Optional

import numpy as np
import torch

from .streaming import (FeatureRows, as_feature_rows, class_counts, default_block_rows, label_blocks, read_labels,
                         sample_indices)

__all__ = ["Gaussians", "fit_class_gaussians", "ridge_cholesky"]


class Gaussians:
    def __init__(self, means: torch.Tensor, chols: torch.Tensor, log_weights: torch.Tensor,
                 component_class: np.ndarray):
        self.means = means  # (K, D)
        self.chols = chols  # (K, D, D), or (1, D, D) when tied
        self.log_weights = log_weights  # (K,)
        self.component_class = component_class  # (K,) class label of each component
        self.tied = chols.shape[0] == 1 and means.shape[0] > 1

    @classmethod
    def shared_covariance(cls, means: torch.Tensor, chol: torch.Tensor) -> "Gaussians":
        """Equally weighted components with ``means (K, D)`` and one covariance ``chol chol^T`` (``chol (D, D)``
        lower triangular), labelled ``0 .. K-1``: classes of equal size, as VOS's queues."""
        k = means.shape[0]
        return cls(means, chol[None], torch.full((k,), -math.log(k), dtype=means.dtype, device=means.device),
                   np.arange(k))

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    def _chol(self, k: int) -> torch.Tensor:
        return self.chols[0 if self.chols.shape[0] == 1 else k]

    def log_det(self) -> torch.Tensor:
        """``log det Sigma_k`` for each component, ``(K,)``."""
        ld = 2 * self.chols.diagonal(dim1=1, dim2=2).log().sum(dim=1)
        return ld.expand(self.means.shape[0]) if ld.shape[0] == 1 else ld

    def whiten(self, x: torch.Tensor, k: int) -> torch.Tensor:
        """The whitened residual ``L_k^{-1} (x - mu_k)``, ``(N, D)``."""
        r = (x - self.means[k]).T
        return torch.linalg.solve_triangular(self._chol(k), r, upper=False).T

    def sq_mahalanobis(self, x: torch.Tensor, whiten_residuals: bool = False) -> torch.Tensor:
        """Squared Mahalanobis distance of each row to each component, ``(N, K)``.

        With one covariance the rows and the means are whitened apart (a triangular solve of ``N + K``
        columns), or with ``whiten_residuals`` each residual ``x - mu_k`` (one solve of ``N K`` columns: no
        cancellation between a whitened row and a whitened mean far from the origin, for VOS's float32
        queues). With one covariance per component each residual is whitened."""
        if self.chols.shape[0] > 1:
            return torch.stack([(self.whiten(x, k) ** 2).sum(dim=1) for k in range(self.means.shape[0])], dim=1)
        L = self.chols[0]
        if whiten_residuals:
            r = (x[:, None, :] - self.means[None]).reshape(-1, self.dim)  # (N K, D)
            w = torch.linalg.solve_triangular(L, r.T, upper=False)
            return (w * w).sum(0).reshape(x.shape[0], -1)
        y = torch.linalg.solve_triangular(L, x.T, upper=False).T
        m = torch.linalg.solve_triangular(L, self.means.T, upper=False).T
        return torch.stack([((y - m[k]) ** 2).sum(dim=1) for k in range(m.shape[0])], dim=1)

    def component_log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """``log N(x; mu_k, Sigma_k)`` in nats, ``(N, K)`` (mixing weights not included)."""
        d2 = self.sq_mahalanobis(x)
        return -0.5 * (d2 + self.log_det() + self.dim * math.log(2 * math.pi))

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """Mixture log-density ``log sum_k pi_k N(x; mu_k, Sigma_k)``, ``(N,)``."""
        return torch.logsumexp(self.component_log_prob(x) + self.log_weights, dim=1)

    def nearest_log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """``max_k log N(x; mu_k, Sigma_k)``, ``(N,)``: the log-density under the most likely component
        (mixing weights not included), from the whitened residuals (:meth:`sq_mahalanobis`)."""
        d2 = self.sq_mahalanobis(x, whiten_residuals=True)
        return (-0.5 * (d2 + (self.dim * math.log(2 * math.pi) + self.log_det()))).max(dim=1).values

    def tail_sample(self, draws: int, keep: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """For each component, the ``keep`` least likely of ``draws`` draws from it: ``(K, keep, D)``.

        A draw is ``mu_k + L_k e`` with ``e ~ N(0, I_D)``, and its density is monotone in ``|e|^2``. For ``e ~
        N(0, I)`` the squared norm (chi-square with ``D`` degrees of freedom) is independent of the direction
        ``e / |e|`` (uniform on the sphere); so drawing ``draws`` squared norms, keeping the largest ``keep``
        and giving each a uniform direction has exactly the same distribution as drawing ``draws`` full
        vectors and keeping the largest -- without the ``draws x D`` normal draws that would dominate.
        """
        k, device, dtype = self.means.shape[0], self.means.device, self.means.dtype
        # chi-square with D degrees of freedom = 2 Gamma(D / 2, 1), as torch.distributions.Chi2 draws it, but from
        # ``generator`` and without the distribution's argument validation (a host synchronisation per call)
        half_dof = torch.full((k, draws), self.dim / 2, device=device, dtype=dtype)
        sq_norms = (torch._standard_gamma(half_dof, generator=generator) * 2).clamp_min_(torch.finfo(dtype).tiny)
        tail = torch.topk(sq_norms, keep, dim=1, largest=True).values  # (K, keep)
        directions = torch.randn(k, keep, self.dim, device=device, dtype=dtype, generator=generator)
        directions = directions / directions.norm(dim=2, keepdim=True).clamp_min(torch.finfo(dtype).tiny)
        e = directions * tail.sqrt()[..., None]
        if self.chols.shape[0] == 1:
            return self.means[:, None] + e @ self.chols[0].T
        return self.means[:, None] + e @ self.chols.transpose(1, 2)

    def sample(self, n: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """``n`` draws from the mixture, ``(n, D)``."""
        k = torch.multinomial(self.log_weights.exp(), n, replacement=True, generator=generator)
        eps = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        out = torch.empty_like(eps)
        for j in k.unique().tolist():
            rows = k == j
            out[rows] = self.means[j] + eps[rows] @ self._chol(j).T
        return out


def ridge_cholesky(cov: torch.Tensor, ridge: float):
    """``(cov + ridge I, its lower Cholesky factor, info)`` in float64 on ``cov``'s device; ``info`` (a tensor)
    is non-zero when that matrix is not positive definite."""
    eye = torch.eye(cov.shape[-1], device=cov.device, dtype=torch.float64)
    cov = cov.to(torch.float64) + float(ridge) * eye
    return (cov, *torch.linalg.cholesky_ex(cov))


def _cholesky(cov: torch.Tensor, ridge: float, what: str) -> torch.Tensor:
    _, chol, info = ridge_cholesky(cov, ridge)
    if int(info) != 0:
        raise ValueError(f"the covariance of {what} is not positive definite; increase ridge (now {ridge})")
    return chol


def _aligned_blocks(rows: FeatureRows, y, n: int):
    """``(features block, labels block)`` over the same rows."""
    block_rows = rows.block_rows or default_block_rows(rows.raw_dim)
    rows = FeatureRows(rows.source, rows.name, rows.transform, block_rows)
    for (_, xb), (_, yb) in zip(rows.blocks(), label_blocks(y, n, block_rows)):
        yield xb, yb


def fit_class_gaussians(x, labels, covariance: str = "tied", ridge: float = 1e-6, n_components: int = 1,
                        seed: int = 0, mixture_rows: Optional[int] = 100_000) -> Gaussians:
    """Maximum-likelihood Gaussians per class of ``x (N, D)``.

    ``x`` is a float64 tensor or :class:`~ffs_det.density.streaming.FeatureRows` (read block by block),
    ``labels`` an ``(N,)`` array or a row source; ``None``: one class. With one component per class the fit
    takes two passes over the blocks (class means, then the scatter about them, in float64), so memory is
    ``O(K D^2)`` whatever ``N``.

    Args:
        covariance: ``"tied"`` — one covariance ``(1/N) sum_c sum_{i in c} (x_i - mu_c)(x_i - mu_c)^T``
            shared by all classes (LDA / Mahalanobis); ``"full"`` — one covariance per class.
        ridge: added to the diagonal of every covariance.
        n_components: components per class; above 1 each class is fitted by scikit-learn's
            ``GaussianMixture`` (full covariances, ``reg_covar=ridge``) in memory, on a random subset of
            ``mixture_rows`` rows when there are more (None: all rows).
    Mixing weights are the class frequencies (times the within-class weights).
    """
    if covariance not in ("tied", "full"):
        raise ValueError(f"covariance must be 'tied' or 'full', got {covariance!r}")
    if n_components < 1:
        raise ValueError(f"n_components must be >= 1, got {n_components}")
    if n_components > 1 and covariance != "full":
        raise ValueError("n_components > 1 needs covariance='full'")
    rows = as_feature_rows(x)
    n = len(rows)
    if n_components > 1:
        return _fit_mixtures(rows, labels, n, ridge, n_components, seed, mixture_rows)
    classes, counts = class_counts(labels, n)
    d = rows.dim
    sums = torch.zeros(len(classes), d, dtype=torch.float64)
    for xb, yb in _aligned_blocks(rows, labels, n):
        sums.index_add_(0, torch.as_tensor(np.searchsorted(classes, yb)), xb)
    means = sums / torch.as_tensor(counts, dtype=torch.float64)[:, None]
    scatter = torch.zeros(1 if covariance == "tied" else len(classes), d, d, dtype=torch.float64)
    for xb, yb in _aligned_blocks(rows, labels, n):
        k = torch.as_tensor(np.searchsorted(classes, yb))
        r = xb - means[k]
        if covariance == "tied":
            scatter[0] += r.T @ r
        else:
            for j in k.unique().tolist():
                rj = r[k == j]
                scatter[j] += rj.T @ rj
    spread, size = float(scatter.diagonal(dim1=1, dim2=2).sum()), float((means ** 2).sum(1).max()) * n
    if not spread > 1e-12 * max(size, 1e-300):  # the covariance would be the ridge alone: distances meaningless
        raise ValueError(f"{n} training rows in {len(classes)} classes have no spread about their class means (one "
                         "row per class, or constant features): a covariance cannot be estimated; fit on more, "
                         "varied rows")
    if covariance == "tied":
        chols = [_cholesky(scatter[0] / n, ridge, "the classes (tied)")]
    else:
        chols = [_cholesky(scatter[j] / int(n_c), ridge, f"class {c}")
                 for j, (c, n_c) in enumerate(zip(classes, counts))]
    log_w = torch.as_tensor(np.log(counts / n), dtype=torch.float64)
    return Gaussians(means, torch.stack(chols), log_w, classes)


def _fit_mixtures(rows: FeatureRows, labels, n: int, ridge: float, n_components: int, seed: int,
                  mixture_rows: Optional[int]) -> Gaussians:
    from sklearn.mixture import GaussianMixture

    keep = np.arange(n) if mixture_rows is None else sample_indices(n, int(mixture_rows), seed)
    x = rows.take(keep) if len(keep) < n else rows.read(0, n)
    y = read_labels(labels, n)[keep]
    classes, counts = np.unique(y, return_counts=True)
    means, chols, log_w, comp_class = [], [], [], []
    for c, n_c in zip(classes, counts):
        if n_c < n_components:
            raise ValueError(f"class {c} has {n_c} samples, fewer than n_components={n_components}")
        gm = GaussianMixture(n_components, covariance_type="full", reg_covar=ridge, random_state=seed)
        gm.fit(x[torch.as_tensor(y == c)].numpy())
        for j in range(n_components):
            means.append(torch.as_tensor(gm.means_[j]))
            chols.append(_cholesky(torch.as_tensor(gm.covariances_[j]), 0.0, f"class {c}, component {j}"))
            log_w.append(math.log(n_c / len(y)) + math.log(gm.weights_[j]))
            comp_class.append(c)
    return Gaussians(torch.stack(means), torch.stack(chols), torch.tensor(log_w, dtype=torch.float64),
                     np.asarray(comp_class))
