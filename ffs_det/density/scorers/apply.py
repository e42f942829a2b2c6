"""Fit a registered scorer on plain arrays of per-sample (e.g. per-box) features and score several sets.

Made for detector evaluations: the per-box features of the ID training boxes fit the scorer, and each
evaluation set (ID test boxes, OOD boxes, ...) is scored, so that e.g. the box-level energy of the
detector's logits can be compared with a flow likelihood on the same boxes.
"""
import inspect
from typing import Dict, Mapping, Optional

import numpy as np

from .base import SCORERS, build_scorer
from .checks import features_2d, has_linear_head, linear_head

__all__ = ["fit_and_score"]

_ROW_INPUTS = ("features", "logits")


# fit inputs every scorer may be given: the final linear layer (see .checks.linear_head)
_HEAD_INPUTS = ("weight", "bias", "model")


def _named_params(fn) -> set:
    return {k for k, p in inspect.signature(fn).parameters.items()
            if k != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}


def _split_kwargs(name: str, kwargs: dict):
    """Constructor keywords of the scorer vs its fit inputs; ValueError for a keyword that is neither (a
    mistyped option would otherwise be dropped silently and the default used)."""
    if name not in SCORERS:
        raise ValueError(f"unknown scorer {name!r}; available: {', '.join(sorted(SCORERS))}")
    params = inspect.signature(SCORERS[name].__init__).parameters
    takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
    init = {k: v for k, v in kwargs.items() if takes_any or k in params}
    fit = {k: v for k, v in kwargs.items() if k not in init}
    known_fit = _named_params(SCORERS[name].fit) | set(_HEAD_INPUTS)
    unknown = sorted(set(fit) - known_fit)
    if unknown:
        raise ValueError(f"scorer {name!r}: unknown option(s) {', '.join(unknown)}; it takes "
                         f"{', '.join(sorted(_named_params(SCORERS[name].__init__))) or 'no options'} "
                         f"(and the fit inputs {', '.join(sorted(known_fit))})")
    return init, fit


def _inputs(value, head, what: str) -> dict:
    """``{"features": ..., "logits": ...}`` for one set: an array is its features; a dict is taken as is.
    Logits are computed from the final linear layer when one was given and the set has none."""
    inputs = dict(value) if isinstance(value, Mapping) else {"features": value}
    if "features" not in inputs and "logits" not in inputs:
        raise ValueError(f"{what}: give an (N, D) features array or a dict with 'features' and/or 'logits'")
    if head is not None and "logits" not in inputs and "features" in inputs:
        x = features_2d(inputs["features"], f"{what} features", head[0].shape[1])
        inputs["logits"] = (x @ head[0].T + head[1]).float()
    return inputs


def _for(scorer, inputs: dict, extra: Optional[dict] = None) -> dict:
    """Only the inputs the scorer declares (``layer_features`` counts as ``features``), plus ``extra``."""
    wanted = set(scorer.requires) | ({"features"} if "layer_features" in scorer.requires else set())
    chosen = {k: v for k, v in inputs.items() if not wanted or k in wanted}
    return {**chosen, **(extra or {})}


def fit_and_score(name: str, train_features, train_labels=None, test_sets: Optional[Dict[str, object]] = None,
                  **kwargs) -> Dict[str, np.ndarray]:
    """Fit scorer ``name`` on the training set and return ``{set_name: scores (N,)}`` (higher = more ID).

    Args:
        train_features: ``(N, D)`` array/tensor of training features, or a dict of inputs
            (``{"features": ..., "logits": ...}``, or per-layer features for multi-layer scorers under
            ``"features"``).
        train_labels: ``(N,)`` integer labels, for class-conditional scorers.
        test_sets: ``{set_name: features (M, D) or a dict of inputs as above}``.
        **kwargs: the scorer's constructor arguments (e.g. ``k=50``) and extra fit inputs (e.g.
            ``weight``/``bias`` of the final linear layer, ``val_ood_features``). When ``weight``/``bias``
            (or ``model``, the head or the classifier) are given, logits ``x W^T + b`` are added to every
            set that has features but no logits, so logit-based scorers (energy, MSP) work on per-box
            features too.
    """
    if not test_sets:
        raise ValueError("test_sets must be a non-empty dict {set_name: features}")
    init, fit_extra = _split_kwargs(name, kwargs)
    scorer = build_scorer(name, **init)
    head = linear_head(fit_extra, name) if has_linear_head(fit_extra) else None
    if train_labels is not None:
        fit_extra["labels"] = train_labels
    scorer.fit(**_for(scorer, _inputs(train_features, head, "train_features"), fit_extra))
    return {set_name: np.asarray(scorer.score(**_for(scorer, _inputs(v, head, f"test_sets[{set_name!r}]"))),
                                 dtype=np.float64)
            for set_name, v in test_sets.items()}
