"""Input checks shared by the feature-space scorers: every bad input fails with a ValueError naming it."""
from typing import Dict, Optional, Sequence

import numpy as np
import torch

__all__ = ["features_2d", "labels_1d", "layer_dict", "has_linear_head", "linear_head", "l2_normalize", "require_fitted"]


def features_2d(x, name: str = "features", dim: Optional[int] = None) -> torch.Tensor:
    """``x`` as a float64 CPU tensor ``(N, D)``.

    Feature maps ``(N, C, H, W, ...)`` are global-average pooled to ``(N, C)``. ``dim`` checks the width
    against the one seen at fit.
    """
    if x is None:
        raise ValueError(f"this scorer needs {name!r}")
    if torch.is_tensor(x):
        t = x.detach().to("cpu", torch.float64)
    else:
        try:
            t = torch.as_tensor(np.asarray(x, dtype=np.float64))
        except (TypeError, ValueError) as e:
            raise ValueError(f"{name} must be numeric ({e})") from None
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


def labels_1d(labels, n: int, name: str = "labels") -> np.ndarray:
    """Integer class labels of shape ``(n,)`` as int64 numpy."""
    if labels is None:
        raise ValueError(f"this scorer needs {name!r} at fit (class-conditional)")
    arr = labels.detach().cpu().numpy() if torch.is_tensor(labels) else np.asarray(labels)
    if arr.ndim != 1 or arr.shape[0] != n:
        raise ValueError(f"{name} must have shape ({n},) to match the features, got {arr.shape}")
    if not (np.issubdtype(arr.dtype, np.integer) or np.all(np.mod(arr, 1) == 0)):
        raise ValueError(f"{name} must be integer class indices")
    return arr.astype(np.int64)


def layer_dict(features, name: str = "features", layers: Optional[Sequence[str]] = None,
               dims: Optional[Dict[str, int]] = None) -> Dict[str, torch.Tensor]:
    """``{layer: (N, D_l)}`` float64 tensors with one N; a single tensor/array becomes ``{"features": x}``."""
    if not isinstance(features, dict):
        features = {"features": features}
    if not features:
        raise ValueError(f"{name} is an empty dict; pass {{layer: (N, D_l)}}")
    names = list(features) if layers is None else list(layers)
    missing = [k for k in names if k not in features]
    if missing:
        raise ValueError(f"{name} lacks layer(s) {missing}; it has {list(features)}")
    out = {k: features_2d(features[k], f"{name}[{k!r}]", None if dims is None else dims[k]) for k in names}
    sizes = {k: v.shape[0] for k, v in out.items()}
    if len(set(sizes.values())) != 1:
        raise ValueError(f"{name}: every layer needs the same number of rows, got {sizes}")
    return out


def has_linear_head(inputs: dict) -> bool:
    """Whether ``inputs`` carry a final linear layer for :func:`linear_head`."""
    return inputs.get("weight") is not None or isinstance(inputs.get("model"), torch.nn.Module)


def linear_head(inputs: dict, scorer: str):
    """The final linear layer ``(W (C, D), b (C,))`` as float64 tensors, from ``weight``/``bias``, or from
    ``model``: an ``nn.Linear``, or a classifier whose last ``nn.Linear`` submodule is its head."""
    weight, bias, model = inputs.get("weight"), inputs.get("bias"), inputs.get("model")
    if weight is None and isinstance(model, torch.nn.Module):
        linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
        if not linears:
            raise ValueError(f"{scorer}: model {type(model).__name__} has no nn.Linear layer to use as the head")
        weight = linears[-1].weight
        bias = linears[-1].bias if linears[-1].bias is not None else torch.zeros(linears[-1].out_features)
    if weight is None or bias is None:
        raise ValueError(f"{scorer}: fit needs the classifier's final linear layer: pass weight=(C, D) and "
                         f"bias=(C,), or model=<torch.nn.Linear or classifier>")
    w = features_2d(weight, "weight")
    b = torch.as_tensor(bias.detach().cpu().numpy() if torch.is_tensor(bias) else np.asarray(bias),
                        dtype=torch.float64)
    if b.shape != (w.shape[0],):
        raise ValueError(f"bias must have shape ({w.shape[0]},) to match weight {tuple(w.shape)}, "
                         f"got {tuple(b.shape)}")
    return w, b


def l2_normalize(x: torch.Tensor) -> torch.Tensor:
    """Rows scaled to unit Euclidean norm (zero rows stay finite)."""
    return x / x.norm(dim=1, keepdim=True).clamp(min=1e-12)


def require_fitted(scorer, attribute: str) -> None:
    if getattr(scorer, attribute, None) is None:
        raise ValueError(f"{scorer.name}: call fit(...) before score(...)")
