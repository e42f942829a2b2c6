"""Image-level flow fitting: time to a held-out AUROC / NLL, our flow vs an FDE-style Glow.

* Ours: :class:`ffs_det.density.flow.FeatureFlow` (GLOW couplings with MLP subnets; 4 blocks, 512 wide — the
  FDE scorer's defaults) on L2-normalised features scaled to radius ``sqrt(D)``, as the FDE scorer does.
* FDE-style: a normflows Glow as in FDE — the same normalised features reshaped to a small image
  ``(C, S, S)``, 10 Glow blocks (affine coupling with a conv net, alternating checkerboard masks,
  invertible 1x1 convolution, ActNorm) over a standard-normal base.

Both are trained by Adam (same learning rate, batch size and order of minibatches) on the ID training
features. Every ``eval_every`` steps the training clock stops and the held-out ID features and the OOD
features are scored: AUROC (:func:`ffs_det.density.ood_metrics`, log-likelihood as the score) and the
held-out ID NLL (nats per sample; comparable since both are densities over the same ``R^D``).
The target AUROC is the best held-out AUROC the FDE-style Glow reaches minus ``tolerance`` (default 0.01:
with a few hundred held-out samples an evaluation's AUROC moves by about that much from one evaluation to
the next); each flow's time to target is its training time until its first evaluation at or above it.
The target NLL is the Glow's best held-out NLL, without tolerance.

Feature sets: ``"digits_cnn"`` — penultimate features of :class:`ffs_det.image.small_cnn.SmallCNN`
trained briefly on scikit-learn digits 0-4 (ID) with digits 5-9 as OOD; ``"synthetic"`` — a seeded
Gaussian mixture through a random ReLU layer, OOD from shifted mixture means (seconds; for ``--quick``).
"""
import math
import time
from typing import Dict, Optional

import torch
from torch import nn

from ..density.flow_training import FlowConfig, train_flow
from ..density.metrics import ood_metrics
from ..density.normalize import l2_normalize

__all__ = ["synthetic_features", "digits_cnn_features", "image_shape", "build_fde_glow", "fit_race"]


def synthetic_features(dim: int = 64, n_train: int = 4000, n_test: int = 1000, seed: int = 0):
    """(train, held-out ID, OOD) float32 tensors: mixtures of 8 Gaussians in 16-d through a random ReLU
    layer to ``dim``; the OOD mixture's means are drawn independently of the ID ones."""
    gen = torch.Generator().manual_seed(seed)
    latent = 16
    proj = torch.randn(latent, dim, generator=gen) / math.sqrt(latent)
    bias = torch.randn(dim, generator=gen) * 0.5

    def draw(means, n):
        comp = torch.randint(0, means.shape[0], (n,), generator=gen)
        z = means[comp] + 0.6 * torch.randn(n, latent, generator=gen)
        return torch.relu(z @ proj + bias) + 0.05 * torch.randn(n, dim, generator=gen)

    id_means = torch.randn(8, latent, generator=gen) * 1.5
    ood_means = torch.randn(8, latent, generator=gen) * 1.5
    return draw(id_means, n_train), draw(id_means, n_test), draw(ood_means, n_test)


def digits_cnn_features(seed: int = 0, epochs: int = 4, width: int = 128):
    """(train, held-out ID, OOD) penultimate features of a SmallCNN trained on digits 0-4; OOD: digits 5-9."""
    from ..image.bundled import digits_images
    from ..image.extract import FeatureExtractor
    from ..image.small_cnn import SmallCNN

    images, labels = digits_images(28)
    x = torch.as_tensor(images, dtype=torch.float32)[:, None] / 255.0
    y = torch.as_tensor(labels)
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(y), generator=gen)
    x, y = x[order], y[order]
    inlier = y < 5
    x_id, y_id, x_ood = x[inlier], y[inlier], x[~inlier]
    n_train = int(0.7 * len(y_id))
    torch.manual_seed(seed)
    model = SmallCNN(num_classes=5, width=width)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(n_train, generator=gen).split(64):
            loss = nn.functional.cross_entropy(model(x_id[idx]), y_id[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    extractor = FeatureExtractor(model).eval()
    with torch.no_grad():
        train = extractor(x_id[:n_train])[0]
        held_out = extractor(x_id[n_train:])[0]
        ood = extractor(x_ood)[0]
        accuracy = float((extractor(x_id[n_train:])[1].argmax(1) == y_id[n_train:]).float().mean())
    return train, held_out, ood, {"classifier_held_out_accuracy": accuracy}


def image_shape(dim: int):
    """``(C, S, S)`` with ``C * S * S == dim``, the largest even ``S`` that leaves at least 2 channels."""
    for s in range(int(math.isqrt(dim)), 1, -1):
        if s % 2 == 0 and dim % (s * s) == 0 and dim // (s * s) >= 2:
            return dim // (s * s), s, s
    raise ValueError(f"cannot reshape {dim} features into (C >= 2, S, S) with an even S")


def build_fde_glow(dim: int, blocks: int = 10, hidden_channels: int = 64):
    """The FDE-style normflows Glow over features reshaped to ``image_shape(dim)``."""
    import normflows as nf

    shape = image_shape(dim)
    flows = [nf.flows.GlowBlock(shape[0], hidden_channels, split_mode="checkerboard" if i % 2 == 0
                                else "checkerboard_inv", scale=True) for i in range(blocks)]
    return nf.NormalizingFlow(nf.distributions.DiagGaussian(shape, trainable=False), flows), shape


class _Contender:
    """A flow with one interface: ``log_prob(x (N, D))``, ``nll(x)``, ``parameters()`` and ``train()``."""

    def __init__(self, model, shape=None):
        self.model, self.shape = model, shape

    def parameters(self):
        return self.model.parameters()

    def train(self, mode: bool = True):
        self.model.train(mode)
        return self

    def _in(self, x):
        return x.reshape(x.shape[0], *self.shape) if self.shape else x

    def log_prob(self, x):
        return self.model.log_prob(self._in(x))

    def nll(self, x):
        return -self.log_prob(x).mean()


@torch.no_grad()
def _evaluate(contender, held_out, ood, batch=2048):
    contender.model.eval()
    lp_id = torch.cat([contender.log_prob(c) for c in held_out.split(batch)]).double()
    lp_ood = torch.cat([contender.log_prob(c) for c in ood.split(batch)]).double()
    contender.model.train()
    finite = torch.isfinite(lp_id).all() and torch.isfinite(lp_ood).all()
    if not finite:
        return float("nan"), float("nan")
    return ood_metrics(lp_id.numpy(), lp_ood.numpy())["auroc"], float(-lp_id.mean())


def _train(contender, train, held_out, ood, max_steps, max_seconds, eval_every, lr, batch_size, seed, device):
    """Train ``contender`` with :func:`~ffs_det.density.flow_training.train_flow`; the clock runs only during
    training steps (stopped while ``_evaluate`` runs every ``eval_every`` steps)."""
    auroc, nll = _evaluate(contender, held_out, ood)
    curve, clock = [{"step": 0, "seconds": 0.0, "auroc": auroc, "nll": nll}], [0.0]
    resumed = [0.0]

    def on_step(step, loss):
        if device != "cpu":
            torch.cuda.synchronize(device)
        clock[0] += time.perf_counter() - resumed[0]
        if step % eval_every == 0 or step == max_steps or clock[0] >= max_seconds:
            curve.append({"step": step, "seconds": clock[0], **dict(zip(("auroc", "nll"), _evaluate(
                contender, held_out, ood)))})
        resumed[0] = time.perf_counter()
        return clock[0] >= max_seconds

    config = FlowConfig(epochs=None, max_steps=max_steps, batch_size=batch_size, lr=lr, grad_clip=10.0,
                        nonfinite="continue", seed=seed, device=device)
    resumed[0] = time.perf_counter()
    train_flow(contender, train, config, on_step)
    return curve


def _first(curve, key, target, higher_is_better):
    for point in curve:
        v = point[key]
        if not math.isnan(v) and (v >= target if higher_is_better else v <= target):
            return point["seconds"], point["step"]
    return None, None


def fit_race(features: str = "synthetic", max_steps: int = 400, max_seconds: float = 60.0, eval_every: int = 20,
             lr: float = 1e-3, batch_size: int = 256, tolerance: float = 0.01, glow_hidden: int = 64,
             seed: int = 0, device: str = "cpu", feature_kwargs: Optional[dict] = None) -> Dict:
    info = {}
    if features == "synthetic":
        train, held_out, ood = synthetic_features(seed=seed, **(feature_kwargs or {}))
    elif features == "digits_cnn":
        train, held_out, ood, info = digits_cnn_features(seed=seed, **(feature_kwargs or {}))
    else:
        raise ValueError(f"unknown feature set {features!r}; choose 'synthetic' or 'digits_cnn'")
    train, held_out, ood = (l2_normalize(t.float(), math.sqrt(t.shape[1])).to(device)
                            for t in (train, held_out, ood))
    dim = train.shape[1]

    torch.manual_seed(seed)
    ours = _Contender(FlowConfig(coupling="glow", blocks=4, hidden=512, clamp=2.0, seed=seed, device=device).build(dim))
    torch.manual_seed(seed)
    glow_model, shape = build_fde_glow(dim, hidden_channels=glow_hidden)
    glow = _Contender(glow_model.to(device), shape)
    curves = {name: _train(c, train, held_out, ood, max_steps, max_seconds, eval_every, lr, batch_size, seed,
                           device)
              for name, c in (("ours", ours), ("fde_glow", glow))}

    glow_auroc = max((p["auroc"] for p in curves["fde_glow"] if not math.isnan(p["auroc"])), default=float("nan"))
    glow_nll = min((p["nll"] for p in curves["fde_glow"] if not math.isnan(p["nll"])), default=float("nan"))
    target_auroc = glow_auroc - tolerance
    out = {"features": features, "feature_info": info, "dim": dim, "glow_image_shape": list(shape),
           "n_train": int(train.shape[0]), "n_held_out": int(held_out.shape[0]), "n_ood": int(ood.shape[0]),
           "settings": dict(max_steps=max_steps, max_seconds=max_seconds, eval_every=eval_every, lr=lr,
                            batch_size=batch_size, tolerance=tolerance, glow_blocks=10, glow_hidden=glow_hidden,
                            ours_blocks=4, ours_hidden=512),
           "target_auroc": target_auroc, "target_nll": glow_nll}
    for name, model in (("ours", ours.model), ("fde_glow", glow.model)):
        curve = curves[name]
        t_auc, s_auc = _first(curve, "auroc", target_auroc, True)
        t_nll, s_nll = _first(curve, "nll", glow_nll, False)
        out[name] = {"parameters": sum(p.numel() for p in model.parameters()),
                     "steps": curve[-1]["step"], "train_seconds": curve[-1]["seconds"],
                     "seconds_per_step": curve[-1]["seconds"] / max(curve[-1]["step"], 1),
                     "best_auroc": max((p["auroc"] for p in curve if not math.isnan(p["auroc"])), default=None),
                     "best_nll": min((p["nll"] for p in curve if not math.isnan(p["nll"])), default=None),
                     "seconds_to_target_auroc": t_auc, "steps_to_target_auroc": s_auc,
                     "seconds_to_target_nll": t_nll, "steps_to_target_nll": s_nll, "curve": curve}
    t_ours, t_glow = out["ours"]["seconds_to_target_auroc"], out["fde_glow"]["seconds_to_target_auroc"]
    out["ratios"] = {"fde_glow_time/ours_time_to_auroc": (t_glow / t_ours if t_ours and t_glow else None)}
    return out
