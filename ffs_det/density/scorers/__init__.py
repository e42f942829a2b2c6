"""Registry of OOD scorers: ``fit(X, y=None, *, head=None)`` on ID data, ``score(X)`` -> higher = more
in-distribution (see :mod:`.base` for the contract and :mod:`.apply` for the driver)."""
from .base import (SCORERS, InputScorer, LogitScorer, NotFittedError, Scorer, build_scorer, register_scorer,
                   scorer_class)

# scorer modules: importing them registers their scorers
from . import flow_density, logits, odin, react  # noqa: E402,F401
from . import gmm, heat, knn, lid, likelihood_ratio, mahalanobis, residual_flow, safe, vim  # noqa: E402,F401
from . import adascale, shaping  # noqa: E402,F401
from . import fdbd, gen, nnguide  # noqa: E402,F401
from .apply import (STREAMS, check_stream, classifier_needs, fit_and_score, fit_scorer, fit_source,  # noqa: E402
                    make_scorer, score_samples, score_source, streams_fit)

__all__ = ["SCORERS", "Scorer", "LogitScorer", "InputScorer", "NotFittedError", "build_scorer", "register_scorer",
           "scorer_class", "fit_and_score", "fit_scorer", "make_scorer", "score_samples", "fit_source",
           "score_source", "streams_fit", "check_stream", "classifier_needs", "STREAMS"]
