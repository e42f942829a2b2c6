"""The one scorer driver: feed any registered scorer what its class attributes say it reads.

Everything that depends on a scorer's ``kind``, ``uses_labels``, ``uses_head`` and ``streams`` is decided here,
for two kinds of callers:

* sets in memory (box-level scoring of detections, :func:`ffs_det.evaluation.box_scores.add_box_scores`):
  :func:`fit_and_score`, or :func:`make_scorer`, :func:`fit_scorer` and :func:`score_samples`. A set is its
  ``(N, D)`` features, or a dict with any of ``"features"``, ``"logits"`` (``(N, C)``), and for input scorers
  ``"model"`` and ``"inputs"``;
* a *source* of named row arrays (the image benchmark's feature stores,
  :func:`ffs_det.image.evaluate.evaluate_scorers`): :func:`fit_source` and :func:`score_source`. A source has
  ``len(source)`` rows and gives each array (``"features"``, ``"logits"``, ``"labels"``) whole in memory
  (``load(key)``), as a row source of :mod:`~ffs_det.density.streaming` (``rows(key)``), or a block of rows
  (``read(key, start, stop)``).
"""
import math
from typing import Dict, Iterable, Mapping, Optional, Tuple

import numpy as np

from .base import Scorer, build_scorer, fit_option_names, scorer_class

__all__ = ["fit_and_score", "make_scorer", "fit_scorer", "score_samples", "fit_option_names", "fit_source",
           "score_source", "streams_fit", "check_stream", "classifier_needs", "STREAMS", "STREAM_AUTO_BYTES"]

STREAMS = ("auto", "always", "never")
STREAM_AUTO_BYTES = 2 << 30  # "auto" streams a fit whose float64 training features would exceed 2 GiB


def make_scorer(name: str, options: Optional[Mapping] = None) -> Tuple[Scorer, dict]:
    """``(scorer, fit options)`` from one dict of options: constructor options and the scorer's own ``fit``
    options (:func:`fit_option_names`); ValueError for a name or option the scorer does not have
    (:func:`~.base.scorer_class`)."""
    options = dict(options or {})
    fit_names = fit_option_names(scorer_class(name, options, fit=True))
    fit_options = {k: options.pop(k) for k in fit_names if k in options}
    return build_scorer(name, **options), fit_options


def classifier_needs(cls) -> tuple:
    """What of the classifier scorer class ``cls`` cannot do without: ``"model"`` (the whole classifier, run on
    ``"inputs"``, the raw inputs of every scored set) for input scorers, ``"head"`` (its final linear layer)
    for those with ``uses_head == "required"``."""
    needs = ("model", "inputs") if cls.kind == "inputs" else ()
    return needs + (("head",) if cls.uses_head == "required" else ())


def fit_scorer(scorer: Scorer, X=None, y=None, head=None, **fit_options) -> Scorer:
    """``scorer.fit`` with labels only for class-conditional scorers; the final linear layer ``head`` goes to
    every scorer (those with ``uses_head == "none"`` ignore it; logit scorers use it to score features)."""
    if scorer.uses_head == "required" and head is None:
        raise ValueError(f"{scorer.name} needs the classifier's final linear layer (head=...)")
    if scorer.kind != "features":  # fit options: an input scorer's in-distribution ``model`` and ``inputs``
        return scorer.fit(None, head=head, **fit_options)
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
        **options: the scorer's constructor options (e.g. ``k=50``) and its own fit options (e.g. ``X_val``;
            an input scorer fitted on in-distribution inputs, AdaSCALE: ``model`` and ``inputs``, with ``X=None``).
    """
    if not test_sets:
        raise ValueError("test_sets must be a non-empty dict {set_name: features}")
    scorer, fit_options = make_scorer(name, options)
    train = _as_set(X, "X")
    fit_scorer(scorer, train.get("features"), y, head=head, **fit_options)
    return {set_name: score_samples(scorer, data, f"test_sets[{set_name!r}]") for set_name, data in test_sets.items()}


def check_stream(stream: str) -> None:
    """ValueError unless ``stream`` is one of :data:`STREAMS`."""
    if stream not in STREAMS:
        raise ValueError(f"stream must be one of {STREAMS}, got {stream!r}")


def streams_fit(cls, source, stream: str = "auto") -> bool:
    """Whether scorer ``cls`` (class or instance) is fitted from ``source`` block by block (``source.rows``)
    rather than from an in-memory copy: never for a scorer that does not fit on features or cannot stream,
    else ``"always"``/``"never"``, or ``"auto"``: when the float64 features exceed :data:`STREAM_AUTO_BYTES`.
    (Streamed and in-memory fits agree to rounding, but for scorers that draw random minibatches or subsets;
    see docs/scorers.md.)"""
    check_stream(stream)
    if cls.kind != "features" or not getattr(cls, "streams", False) or stream == "never":
        return False
    return stream == "always" or 8 * len(source) * math.prod(source.rows("features").shape[1:]) > STREAM_AUTO_BYTES


def fit_source(scorer: Scorer, source, head=None, stream: str = "auto", inputs: Optional[Iterable] = None,
               model=None, **fit_options) -> Scorer:
    """Fit ``scorer`` on a source: feature scorers on its ``features`` (and ``labels``, class-conditional ones),
    read block by block when :func:`streams_fit` says so, else loaded whole. ``head`` goes only to the scorers
    that read it: logit scorers score a source's stored logits, so they need none. An input scorer fitted on
    in-distribution inputs (``requires`` them: AdaSCALE) gets ``model`` and ``inputs`` (the batches of the
    source's raw inputs, as :func:`score_source` takes them); other scorers ignore both."""
    if scorer.kind == "inputs" and "inputs" in scorer.requires:
        fit_options = {"model": model, "inputs": inputs, **fit_options}
    train = {}
    if scorer.kind == "features":
        get = source.rows if streams_fit(scorer, source, stream) else source.load
        train["X"] = get("features")
        if scorer.uses_labels:
            train["y"] = get("labels")
    return fit_scorer(scorer, head=head if scorer.uses_head != "none" else None, **train, **fit_options)


def score_source(scorer: Scorer, source, chunk_size: int = 65536, inputs: Optional[Iterable] = None, model=None,
                 what: str = "samples") -> np.ndarray:
    """Scores ``(len(source),)`` of a source's rows: logit scorers score its ``logits``, feature scorers its
    ``features``, ``chunk_size`` rows at a time; input scorers run ``model`` on the batches of ``inputs`` (the
    raw inputs of the source's rows, in order; iterated by input scorers only)."""
    if scorer.kind == "inputs":
        parts = [score_samples(scorer, {"model": model, "inputs": batch}, what) for batch in inputs]
    else:
        key = "logits" if scorer.kind == "logits" else "features"
        parts = [score_samples(scorer, {key: source.read(key, start, start + chunk_size)}, what)
                 for start in range(0, len(source), chunk_size)]
    scores = np.concatenate(parts) if parts else np.zeros(0)
    if scores.shape != (len(source),):
        raise ValueError(f"{scorer.name} returned {scores.shape[0]} scores for {len(source)} samples of {what}")
    return scores
