"""The scorer interface and registry shared by image-level benchmarks and detector boxes.

A scorer is fitted on in-distribution training data, then scores new samples; higher = more
in-distribution. Inputs are passed by keyword, and each scorer declares which it needs in ``requires``:

* ``features`` — penultimate features, float tensor ``(N, D)`` (or a dict ``{layer: (N, D_l)}`` for the
  multi-layer scorers that declare ``"layer_features"``),
* ``logits`` — classifier logits ``(N, C)``,
* ``labels`` — integer class labels ``(N,)`` (fit only),
* ``model`` / ``inputs`` — the classifier and a batch of raw inputs, for input-gradient scorers (ODIN).

``fit`` returns ``self``; ``score`` returns a float64 numpy array of shape ``(N,)``.
"""
from typing import Callable, Dict, FrozenSet, Type

import numpy as np
import torch

__all__ = ["Scorer", "SCORERS", "register_scorer", "build_scorer", "as_tensor"]

SCORERS: Dict[str, Type["Scorer"]] = {}


def register_scorer(name: str) -> Callable[[Type["Scorer"]], Type["Scorer"]]:
    """Class decorator: make a scorer available as ``build_scorer(name, ...)``."""

    def deco(cls):
        if name in SCORERS:
            raise ValueError(f"scorer {name!r} is registered twice ({SCORERS[name].__name__}, {cls.__name__})")
        cls.name = name
        SCORERS[name] = cls
        return cls

    return deco


def build_scorer(name: str, **kwargs) -> "Scorer":
    if name not in SCORERS:
        raise ValueError(f"unknown scorer {name!r}; available: {', '.join(sorted(SCORERS))}")
    return SCORERS[name](**kwargs)


def as_tensor(x, name: str, ndim: int = None) -> torch.Tensor:
    """A float32 CPU-or-device tensor from a tensor/array, or a ValueError naming ``name``."""
    if x is None:
        raise ValueError(f"this scorer needs {name!r}")
    t = x if torch.is_tensor(x) else torch.as_tensor(np.asarray(x))
    if t.is_floating_point() and t.dtype != torch.float32:
        t = t.float()
    if ndim is not None and t.dim() != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(t.shape)}")
    return t


class Scorer:
    """Base class; subclasses set ``requires`` and implement ``fit``/``score``."""

    name: str = "?"
    requires: FrozenSet[str] = frozenset()
    requires_fit: bool = True  # False for scorers that only read logits (MSP, energy)

    def fit(self, **inputs) -> "Scorer":
        return self

    def score(self, **inputs) -> np.ndarray:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name})"
