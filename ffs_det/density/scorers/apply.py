"""The one scorer driver: feed any registered scorer what its class attributes say it reads.

Used by the image-level benchmark (:func:`ffs_det.image.evaluate.evaluate_scorers`, store by store) and by
box-level scoring of detections (:func:`ffs_det.evaluation.box_scores.add_box_scores`, through
:func:`fit_and_score`). A set of samples is its ``(N, D)`` features, or a dict with any of ``"features"``,
``"logits"`` (``(N, C)``), and for input scorers ``"model"`` and ``"inputs"``.
"""
import inspect
from typing import Dict, Mapping, Optional, Tuple

import numpy as np

from .base import SCORERS, Scorer, build_scorer, option_names

__all__ = ["fit_and_score", "make_scorer", "fit_scorer", "score_samples", "fit_option_names"]


def fit_option_names(cls) -> list:
    """The keyword-only ``fit`` options of a scorer class besides ``head`` (e.g. ``X_val``)."""
    params = inspect.signature(cls.fit).parameters.values()
    return [p.name for p in params if p.kind is p.KEYWORD_ONLY and p.name != "head"]


def make_scorer(name: str, options: Optional[Mapping] = None) -> Tuple[Scorer, dict]:
    """``(scorer, fit options)`` from one dict of options: constructor options and the scorer's own ``fit``
    options (:func:`fit_option_names`); ValueError for a name or option the scorer does not have (a
    mistyped option must not silently leave the default in place)."""
    if name not in SCORERS:
        raise ValueError(f"unknown scorer {name!r}; available: {', '.join(sorted(SCORERS))}")
    options = dict(options or {})
    fit_names = fit_option_names(SCORERS[name])
    unknown = sorted(set(options) - set(option_names(SCORERS[name])) - set(fit_names))
    if unknown:
        takes = option_names(SCORERS[name]) + [f"fit: {k}" for k in fit_names]
        raise ValueError(f"scorer {name!r}: unknown option(s) {', '.join(unknown)}; it takes "
                         f"{', '.join(takes) or 'no options'}")
    fit_options = {k: options.pop(k) for k in fit_names if k in options}
    return build_scorer(name, **options), fit_options


def fit_scorer(scorer: Scorer, X=None, y=None, head=None, **fit_options) -> Scorer:
    """``scorer.fit`` with labels only for class-conditional scorers; the final linear layer ``head`` goes to
    every scorer (those with ``uses_head == "none"`` ignore it; logit scorers use it to score features)."""
    if scorer.uses_head == "required" and head is None:
        raise ValueError(f"{scorer.name} needs the classifier's final linear layer (head=...)")
    if scorer.kind != "features":
        return scorer.fit(None, head=head)
    if X is None:
        raise ValueError(f"{scorer.name} is fitted on in-distribution training features; none were given")
    return scorer.fit(X, y if scorer.uses_labels else None, head=head, **fit_options)


def _as_set(data, what: str) -> dict:
    out = dict(data) if isinstance(data, Mapping) else {"features": data}
    if not {"features", "logits", "inputs"} & set(out):
        raise ValueError(f"{what}: give an (N, D) features array or a dict with 'features' and/or 'logits'")
    return out


def score_samples(scorer: Scorer, data, what: str = "samples") -> np.ndarray:
    """Scores ``(N,)`` float64 of one set: logit scorers read its ``logits`` when it has them (else its
    features through the fitted head), input scorers its ``model`` and ``inputs``, others its features."""
    data = _as_set(data, what)
    if scorer.kind == "inputs":
        scores = scorer.score_inputs(data.get("model"), data.get("inputs"))
    elif scorer.kind == "logits" and data.get("logits") is not None:
        scores = scorer.score_logits(data["logits"])
    elif data.get("features") is None:
        raise ValueError(f"{what}: {scorer.name} scores features; the set has only {sorted(data)}")
    else:
        scores = scorer.score(data["features"])
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 1:
        raise ValueError(f"{scorer.name} returned scores of shape {scores.shape} for {what}")
    return scores


def fit_and_score(name: str, X, y=None, test_sets: Optional[Dict[str, object]] = None, *, head=None,
                  **options) -> Dict[str, np.ndarray]:
    """Fit scorer ``name`` on the training set ``X`` and return ``{set_name: scores (N,)}`` (higher = more ID).

    Args:
        X: training features ``(N, D)`` (``{layer: (N, D_l)}`` for layered scorers), or a dict
            ``{"features": ..., "logits": ...}``.
        y: ``(N,)`` integer labels, for class-conditional scorers.
        test_sets: ``{set_name: features or a dict as for X}``.
        head: the classifier's final linear layer (``nn.Linear``, classifier, ``(weight, bias)``), for the
            scorers that read it and so that logit scorers can score sets without logits.
        **options: the scorer's constructor options (e.g. ``k=50``) and its own fit options (e.g. ``X_val``).
    """
    if not test_sets:
        raise ValueError("test_sets must be a non-empty dict {set_name: features}")
    scorer, fit_options = make_scorer(name, options)
    train = _as_set(X, "X")
    fit_scorer(scorer, train.get("features"), y, head=head, **fit_options)
    return {set_name: score_samples(scorer, data, f"test_sets[{set_name!r}]") for set_name, data in test_sets.items()}
