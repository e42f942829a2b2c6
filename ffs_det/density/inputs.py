"""The one place the density toolbox checks and converts what it is given.

Every function raises a ``ValueError`` that names the bad input. Features, labels and scores come in as
torch tensors, numpy arrays or nested lists; features leave as float64 CPU tensors, scores and labels as
numpy arrays. The classifier's final linear layer (the *head*) comes in as an ``nn.Linear``, a classifier
whose last ``nn.Linear`` submodule is its head, a ``(weight, bias)`` pair or a :class:`LinearHead`.
"""
from dataclasses import dataclass
from typing import Dict, Optional, Sequence

import numpy as np
import torch
from torch import nn

__all__ = ["required_head", "as_float64", "as_features", "as_layers", "as_labels", "as_scores", "LinearHead", "final_linear",
           "linear_head"]


def as_float64(x, name: str) -> torch.Tensor:
    """``x`` as a float64 CPU tensor (any shape); real numbers only (numpy would parse ``"0.5"``)."""
    if x is None:
        raise ValueError(f"{name} is missing")
    if torch.is_tensor(x):  # via torch, as numpy has no bfloat16
        return x.detach().to("cpu", torch.float64)
    try:
        raw = np.asarray(x)
    except (TypeError, ValueError) as e:  # e.g. ragged nested lists
        raise ValueError(f"{name}: must be numbers ({e})") from None
    if raw.dtype.kind not in "biufO" or (raw.dtype.kind == "O" and any(
            isinstance(v, (str, bytes)) for v in raw.reshape(-1))):
        raise ValueError(f"{name}: must be real numbers, got dtype {raw.dtype}")
    try:
        return torch.from_numpy(raw.astype(np.float64))
    except (TypeError, ValueError) as e:
        raise ValueError(f"{name}: must be numbers ({e})") from None


def as_features(x, name: str = "features", dim: Optional[int] = None) -> torch.Tensor:
    """Finite float64 features ``(N, D)``, N >= 1. Feature maps ``(N, C, H, W, ...)`` are global-average
    pooled to ``(N, C)``; ``dim`` checks the width against the one seen at fit."""
    t = as_float64(x, name)
    if t.dim() > 2:
        t = t.flatten(2).mean(dim=2)
    if t.dim() != 2:
        raise ValueError(f"{name} must have shape (N, D) (or (N, C, H, W) to be pooled), got {tuple(t.shape)}")
    if t.shape[0] == 0:
        raise ValueError(f"{name} is empty (0 rows)")
    if dim is not None and t.shape[1] != dim:
        raise ValueError(f"{name} has width {t.shape[1]}, but the scorer was fitted on width {dim}")
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return t


def as_layers(x, name: str = "features", layers: Optional[Sequence[str]] = None,
              dims: Optional[Dict[str, int]] = None) -> Dict[str, torch.Tensor]:
    """``{layer: (N, D_l)}`` float64 features with one N; a single array becomes ``{"features": x}``."""
    if not isinstance(x, dict):
        x = {"features": x}
    if not x:
        raise ValueError(f"{name} is an empty dict; pass {{layer: (N, D_l)}}")
    names = list(x) if layers is None else list(layers)
    missing = [k for k in names if k not in x]
    if missing:
        raise ValueError(f"{name} lacks layer(s) {missing}; it has {list(x)}")
    out = {k: as_features(x[k], f"{name}[{k!r}]", None if dims is None else dims[k]) for k in names}
    sizes = {k: v.shape[0] for k, v in out.items()}
    if len(set(sizes.values())) != 1:
        raise ValueError(f"{name}: every layer needs the same number of rows, got {sizes}")
    return out


def as_labels(labels, n: int, name: str = "labels") -> np.ndarray:
    """Integer class labels ``(n,)`` as int64 numpy."""
    if labels is None:
        raise ValueError(f"{name} are missing: this scorer is class-conditional, fit(X, y) needs them")
    arr = labels.detach().cpu().numpy() if torch.is_tensor(labels) else np.asarray(labels)
    if arr.ndim != 1 or arr.shape[0] != n:
        raise ValueError(f"{name} must have shape ({n},) to match the features, got {arr.shape}")
    if not (np.issubdtype(arr.dtype, np.integer) or np.all(np.mod(arr, 1) == 0)):
        raise ValueError(f"{name} must be integer class indices")
    return arr.astype(np.int64)


def as_scores(scores, name: str) -> np.ndarray:
    """Finite scores as a non-empty 1-D float64 numpy array."""
    arr = as_float64(scores, f"{name}: scores").numpy()
    if arr.ndim != 1:
        raise ValueError(f"{name}: scores must be a 1-D array, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name}: no scores (empty array)")
    bad = ~np.isfinite(arr)
    if bad.any():
        raise ValueError(f"{name}: {int(bad.sum())} of {arr.size} scores are NaN or infinite "
                         f"(first at index {int(np.argmax(bad))})")
    return arr


@dataclass(frozen=True)
class LinearHead:
    """A classifier's final linear layer, ``logits = x W^T + b``, in float64."""

    weight: torch.Tensor  # (C, D)
    bias: torch.Tensor  # (C,)

    @property
    def in_features(self) -> int:
        return self.weight.shape[1]

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight.T + self.bias


def final_linear(model) -> nn.Linear:
    """``model`` itself when it is an ``nn.Linear``, else its last registered ``nn.Linear`` submodule (the
    classification head of torchvision classifiers: ``fc``, ``classifier[-1]``, ``heads.head``)."""
    if isinstance(model, nn.Linear):
        return model
    if not isinstance(model, nn.Module):
        raise ValueError(f"expected the classifier (torch.nn.Module), got {type(model).__name__}")
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(f"{type(model).__name__} has no nn.Linear layer to use as the final classifier layer")
    return linears[-1]


def linear_head(head, name: str = "head") -> LinearHead:
    """A :class:`LinearHead` from an ``nn.Linear``, a classifier (its last ``nn.Linear``), a ``(weight,
    bias)`` pair or a :class:`LinearHead`."""
    if isinstance(head, LinearHead):
        return head
    if isinstance(head, nn.Module):
        layer = final_linear(head)
        weight = layer.weight
        bias = layer.bias if layer.bias is not None else torch.zeros(layer.out_features)
    elif isinstance(head, (tuple, list)) and len(head) == 2:
        weight, bias = head
    else:
        raise ValueError(f"{name}: expected the classifier's final linear layer: an nn.Linear, a classifier, "
                         f"or a (weight (C, D), bias (C,)) pair; got {type(head).__name__}")
    w = as_features(weight, f"{name} weight")
    b = as_float64(bias, f"{name} bias")
    if b.shape != (w.shape[0],):
        raise ValueError(f"{name} bias must have shape ({w.shape[0]},) to match weight {tuple(w.shape)}, "
                         f"got {tuple(b.shape)}")
    return LinearHead(w, b)


def required_head(name: str, head, dim: int) -> LinearHead:
    """The final linear layer ``head`` (see :func:`linear_head`) of a scorer that cannot
    do without it, checked against the width ``dim`` of the features; ValueError naming scorer ``name``."""
    if head is None:
        raise ValueError(f"{name}: fit needs the classifier's final linear layer (head=...)")
    head = linear_head(head)
    if head.in_features != dim:
        raise ValueError(f"{name}: features have {dim} dimensions but the final linear layer expects "
                         f"{head.in_features}")
    return head
