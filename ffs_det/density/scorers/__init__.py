"""Registry of OOD scorers (``fit`` on ID data, ``score`` -> higher = more in-distribution)."""
from .base import SCORERS, Scorer, as_tensor, build_scorer, register_scorer

__all__ = ["SCORERS", "Scorer", "as_tensor", "build_scorer", "register_scorer"]

# scorer modules: importing them registers their scorers
from . import flow_density, logits, odin, react  # noqa: E402,F401
from . import gmm, heat, knn, lid, likelihood_ratio, mahalanobis, residual_flow, vim  # noqa: E402,F401
from .apply import fit_and_score  # noqa: E402

__all__ += ["fit_and_score"]
