"""``ood_metrics`` vs scikit-learn on the same scores.

scikit-learn's side is what a caller would otherwise run for the same numbers: ``roc_auc_score`` and
``average_precision_score`` with ID as positive (AUPR-In) and with OOD as positive on negated scores
(AUPR-Out). ``ood_metrics`` returns those three plus both FPR95 conventions from one sort.
"""
from typing import Dict

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score

from ..density.metrics import ood_metrics
from .timing import interleaved, paired_ratio, summarize

__all__ = ["make_scores", "sklearn_metrics", "time_metrics"]


def make_scores(n: int, seed: int = 0, decimals: int = 3):
    """``n`` scores, half ID ~ N(1, 1) and half OOD ~ N(0, 1), rounded to ``decimals`` so there are ties
    (as with quantised detector scores)."""
    rng = np.random.default_rng(seed)
    id_scores = np.round(rng.normal(1.0, 1.0, n // 2), decimals)
    ood_scores = np.round(rng.normal(0.0, 1.0, n - n // 2), decimals)
    return id_scores, ood_scores


def sklearn_metrics(id_scores: np.ndarray, ood_scores: np.ndarray) -> Dict[str, float]:
    scores = np.concatenate([id_scores, ood_scores])
    is_id = np.r_[np.ones(id_scores.size, bool), np.zeros(ood_scores.size, bool)]
    return {"auroc": float(roc_auc_score(is_id, scores)),
            "aupr_in": float(average_precision_score(is_id, scores)),
            "aupr_out": float(average_precision_score(~is_id, -scores))}


def time_metrics(n: int, warmup: int, repeats: int, seed: int = 0) -> Dict:
    id_scores, ood_scores = make_scores(n, seed)
    values = {}

    def ours():
        values["ours"] = ood_metrics(id_scores, ood_scores)

    def sklearn():
        values["sklearn"] = sklearn_metrics(id_scores, ood_scores)

    times = interleaved({"ours": ours, "sklearn": sklearn}, warmup, repeats)
    diff = max(abs(values["ours"][k] - values["sklearn"][k]) for k in values["sklearn"])
    return {"n_scores": int(n), "ours": summarize(times["ours"]), "sklearn": summarize(times["sklearn"]),
            "max_abs_difference": diff, "values": values,
            "ratios": {"ours/sklearn": paired_ratio(times["ours"], times["sklearn"])}}
