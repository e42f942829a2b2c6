"""The scorer contract and registry, shared by the image-level benchmarks and detector boxes.

A scorer follows scikit-learn's estimator conventions:

* ``__init__`` only stores its options (keyword arguments with defaults; an unknown one is a TypeError);
  :meth:`Scorer.check_params` validates them, at ``fit`` and when :func:`build_scorer` makes the scorer;
* ``fit(X, y=None, *, head=None)`` learns from in-distribution training features ``X (N, D)`` (labels ``y``
  for class-conditional scorers, the classifier's final linear layer ``head`` for those that read it) and
  returns ``self``; what it learns is stored in attributes ending in ``_``;
* ``score(X)`` returns a float64 numpy array ``(N,)``, higher = more in-distribution; before ``fit`` it
  raises :class:`NotFittedError`.

Class attributes say what a scorer needs, so that one driver (:mod:`.apply`) can feed every scorer:
``kind`` (``"features"``; ``"logits"``: :class:`LogitScorer`; ``"inputs"``: :class:`InputScorer`),
``uses_labels``, ``uses_head`` (``"none"``, ``"optional"``, ``"required"``), ``layered`` (``X`` may be
``{layer: (N, D_l)}``), ``streams`` (``fit`` also takes ``X`` and ``y`` as row sources of
:mod:`~ffs_det.density.streaming`, e.g. a feature store's arrays on disk, with memory independent of ``N``) and
``requires`` (keyword-only ``fit`` inputs it cannot do without, e.g. SAFE's perturbed objects; a driver that has
none of them, such as the image benchmark, leaves it out of "all").

Scorer names and options are checked in one place, :func:`scorer_class`: :func:`build_scorer`, the driver's
``make_scorer`` and the image benchmark's choice of scorers all go through it.
"""
import inspect
from typing import Callable, Dict, Iterable, Type

import numpy as np
import torch

from ..inputs import as_features, as_float64, linear_head

__all__ = ["Scorer", "LogitScorer", "InputScorer", "NotFittedError", "SCORERS", "register_scorer",
           "build_scorer", "scorer_class", "option_names", "fit_option_names"]

SCORERS: Dict[str, Type["Scorer"]] = {}


class NotFittedError(ValueError):
    """``score`` was called before ``fit``."""


def register_scorer(name: str) -> Callable[[Type["Scorer"]], Type["Scorer"]]:
    """Class decorator: make a scorer available as ``build_scorer(name, ...)``."""

    def deco(cls):
        if name in SCORERS:
            raise ValueError(f"scorer {name!r} is registered twice ({SCORERS[name].__name__}, {cls.__name__})")
        cls.name = name
        SCORERS[name] = cls
        return cls

    return deco


def option_names(cls: Type["Scorer"]) -> list:
    """The constructor options of a scorer class."""
    return [k for k in inspect.signature(cls.__init__).parameters if k != "self"]


def fit_option_names(cls: Type["Scorer"]) -> list:
    """The keyword-only ``fit`` options of a scorer class besides ``head`` (e.g. ``X_val``)."""
    params = inspect.signature(cls.fit).parameters.values()
    return [p.name for p in params if p.kind is p.KEYWORD_ONLY and p.name != "head"]


def scorer_class(name: str, options: Iterable[str] = (), fit: bool = False) -> Type["Scorer"]:
    """The registered class of scorer ``name``, once every name in ``options`` is one of its constructor options
    (with ``fit``: or of its own ``fit`` options, :func:`fit_option_names`). The one place that refuses an
    unknown scorer or option, with a ValueError naming it and what there is: a mistyped option must not
    silently leave the default in place."""
    if name not in SCORERS:
        raise ValueError(f"unknown scorer {name!r}; available: {', '.join(sorted(SCORERS))}")
    cls = SCORERS[name]
    fit_names = fit_option_names(cls) if fit else []
    unknown = sorted(set(options) - set(option_names(cls)) - set(fit_names))
    if unknown:
        takes = option_names(cls) + [f"fit: {k}" for k in fit_names]
        raise ValueError(f"scorer {name!r}: unknown option(s) {', '.join(unknown)}; it takes "
                         f"{', '.join(takes) or 'no options'}")
    return cls


def build_scorer(name: str, **options) -> "Scorer":
    """The registered scorer ``name`` with constructor ``options``; ValueError for an unknown name or option
    (:func:`scorer_class`), or a bad value."""
    scorer = scorer_class(name, options)(**options)
    scorer.check_params()
    return scorer


class Scorer:
    """Base class of the feature scorers; see the module docstring for the contract."""

    name: str = "?"
    kind: str = "features"
    uses_labels: bool = False
    uses_head: str = "none"
    layered: bool = False
    streams: bool = False
    requires: tuple = ()  # fit inputs it cannot do without besides X, y, head (SAFE: "adversarial")

    def check_params(self) -> None:
        """Raise a ValueError naming a bad option (subclasses check theirs)."""

    def fit(self, X, y=None, *, head=None) -> "Scorer":
        raise NotImplementedError

    def score(self, X) -> np.ndarray:
        raise NotImplementedError

    def is_fitted(self) -> bool:
        return any(k.endswith("_") and not k.startswith("__") for k in vars(self))

    def check_fitted(self) -> None:
        if not self.is_fitted():
            raise NotFittedError(f"{self.name}: call fit(X, ...) before score(X)")

    def get_params(self) -> dict:
        return {k: getattr(self, k) for k in option_names(type(self))}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"


class LogitScorer(Scorer):
    """A scorer of the classifier's logits: :meth:`score_logits` needs no fitting. ``fit(head=...)`` keeps
    the final linear layer so that :meth:`score` takes features (``logits = X W^T + b``)."""

    kind = "logits"  # uses_head "none": stored logits need no head (fit_scorer passes one anyway)

    def fit(self, X=None, y=None, *, head=None) -> "LogitScorer":
        self.check_params()
        self.head_ = None if head is None else linear_head(head)
        return self

    def score(self, X) -> np.ndarray:
        if getattr(self, "head_", None) is None:
            raise NotFittedError(f"{self.name} scores logits: call score_logits(logits), or fit(head=<final "
                                 f"linear layer>) first to score features")
        return self.score_logits(self.head_.logits(as_features(X, dim=self.head_.in_features)))

    def score_logits(self, logits) -> np.ndarray:
        self.check_params()
        t = as_float64(logits, "logits")
        if t.dim() != 2 or t.shape[1] < 1:
            raise ValueError(f"logits must have shape (N, C) with C >= 1, got {tuple(t.shape)}")
        return self._from_logits(t).numpy()

    def _from_logits(self, logits: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class InputScorer(Scorer):
    """A scorer that runs the classifier on (perturbed) raw inputs: :meth:`score_inputs`; no fitting, unless it
    learns in-distribution statistics from inputs: then its ``fit`` takes the classifier and the inputs as
    keyword-only ``model`` and ``inputs``, which it lists in ``requires`` (AdaSCALE)."""

    kind = "inputs"

    def fit(self, X=None, y=None, *, head=None) -> "InputScorer":
        self.check_params()
        return self

    def score(self, X) -> np.ndarray:
        raise ValueError(f"{self.name} perturbs the classifier's inputs: call score_inputs(model, inputs)")

    def score_inputs(self, model: torch.nn.Module, inputs) -> np.ndarray:
        raise NotImplementedError
