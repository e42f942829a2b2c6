"""SAFE: a small MLP that tells clean in-distribution objects from the same objects in adversarially perturbed
images, on sensitivity-aware features.

Wilson, Fischer, Dayoub, Miller & Sünderhauf, "SAFE: Sensitivity-Aware Features for Out-of-Distribution
Object Detection", ICCV 2023 (repository SamWilso/SAFE_Official). The features of a box are the per-channel
means over the box of the outputs of a few residual convolution + batch-norm layers of the backbone
(:mod:`ffs_det.evaluation.safe` extracts them, and the same boxes on an FGSM-perturbed copy of each training
image). No OOD data is used: the perturbed objects stand in for outliers.

Fit (as the paper's code, ``SAFE/shared/metaclassifier.py`` and ``SAFE/train.py``): features centred on the
mean of the clean training objects; ``Linear(D, D/2) -> Linear(D/2, D/4) -> Dropout(0.5) -> Linear(D/4, 1)``
(no activation between the linear layers), Xavier-uniform weights, biases 0.01; binary cross-entropy with
clean objects as the positive class; SGD (lr 0.001, momentum 0.9) for 5 epochs. Score, higher = more
in-distribution: the MLP's logit (the paper's score is its sigmoid; the logit ranks the same without the
float32 ties of a saturated sigmoid). Departures from the released code: minibatches of ``batch_size`` rows
(each a clean object and its perturbed copy) instead of 32 images with all their objects; the model of the last
epoch instead of the released selection (which saves when the training loss improves but compares with the
validation loss), so no 20% of the training objects is held out; a seeded generator for initialisation and
shuffling.
"""
import numpy as np
import torch
from torch import nn

from ..inputs import as_features
from .base import Scorer, register_scorer

__all__ = ["SafeScorer", "safe_mlp"]


def safe_mlp(dim: int, dropout: float = 0.5) -> nn.Sequential:
    """The paper's meta-classifier (one logit), initialised as its code does."""
    if dim < 4:
        raise ValueError(f"safe needs features of width >= 4, got {dim}")
    net = nn.Sequential(nn.Linear(dim, dim // 2), nn.Linear(dim // 2, dim // 4), nn.Dropout(dropout),
                        nn.Linear(dim // 4, 1))
    for layer in net:
        if isinstance(layer, nn.Linear):
            nn.init.xavier_uniform_(layer.weight)
            nn.init.constant_(layer.bias, 0.01)
    return net


@register_scorer("safe")
class SafeScorer(Scorer):
    """Fitted attributes: ``mean_`` (of the clean training features), ``net_`` (the MLP), ``history_`` (mean
    training loss per epoch). ``fit(X, adversarial=X_adv)``: ``X`` the clean objects' features, ``X_adv`` the
    features of the same boxes in the perturbed images (rows paired with ``X``; rows with a non-finite value,
    e.g. of images without ground truth to attack, are left out of the negatives)."""

    requires = ("adversarial",)  # box-level only: the records' safe_features_adv (apply_net --safe-fit-of)

    def __init__(self, epochs: int = 5, lr: float = 1e-3, momentum: float = 0.9, batch_size: int = 256,
                 dropout: float = 0.5, seed: int = 0):
        self.epochs = epochs
        self.lr = lr
        self.momentum = momentum
        self.batch_size = batch_size
        self.dropout = dropout
        self.seed = seed

    def check_params(self) -> None:
        if int(self.epochs) < 1 or int(self.batch_size) < 1:
            raise ValueError(f"safe: epochs and batch_size must be >= 1, got {self.epochs}, {self.batch_size}")
        if not 0.0 <= float(self.dropout) < 1.0 or not float(self.lr) > 0:
            raise ValueError(f"safe: dropout must be in [0, 1) and lr > 0, got {self.dropout}, {self.lr}")

    def fit(self, X, y=None, *, head=None, adversarial=None) -> "SafeScorer":
        self.check_params()
        clean = as_features(X).float()
        if adversarial is None:
            raise ValueError("safe is fitted on clean and adversarially perturbed objects: give adversarial=... "
                             "(the records' safe_features_adv, apply_net --safe-fit-of)")
        adv = np.asarray(adversarial, dtype=np.float32)
        if adv.shape != tuple(clean.shape):
            raise ValueError(f"safe: adversarial features {adv.shape} must pair with the clean ones "
                             f"{tuple(clean.shape)}")
        adv = torch.from_numpy(adv[np.isfinite(adv).all(1)])
        if len(clean) < 2 or len(adv) < 2:
            raise ValueError(f"safe needs at least 2 clean and 2 perturbed training objects, got {len(clean)} and "
                             f"{len(adv)}")
        gen = torch.Generator().manual_seed(int(self.seed))
        self.mean_ = clean.mean(0)
        x = torch.cat([clean, adv]) - self.mean_
        target = torch.cat([torch.ones(len(clean)), torch.zeros(len(adv))])
        with torch.random.fork_rng(devices=[]):  # dropout draws from the global generator: seed it, then restore
            torch.default_generator.manual_seed(int(self.seed))  # the CPU stream only (the MLP runs on the CPU)
            net = safe_mlp(x.shape[1], float(self.dropout))
            opt = torch.optim.SGD(net.parameters(), lr=float(self.lr), momentum=float(self.momentum))
            loss_fn = nn.BCEWithLogitsLoss()
            net.train()
            self.history_ = []
            for _ in range(int(self.epochs)):
                order = torch.randperm(len(x), generator=gen)
                total = 0.0
                for idx in order.split(int(self.batch_size)):
                    opt.zero_grad()
                    loss = loss_fn(net(x[idx]).squeeze(1), target[idx])
                    loss.backward()
                    opt.step()
                    total += loss.item() * len(idx)
                self.history_.append(total / len(x))
        self.net_ = net.eval()
        return self

    @torch.no_grad()
    def score(self, X) -> np.ndarray:
        self.check_fitted()
        x = as_features(X, dim=self.mean_.shape[0]).float()
        return self.net_(x - self.mean_).squeeze(1).double().numpy()
