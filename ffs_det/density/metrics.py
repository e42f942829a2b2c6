"""OOD detection metrics: the one place they are computed in ffs_det.

Convention: a score is higher for samples that look more in-distribution (ID). ID is the positive class
for AUROC and AUPR-In; AUPR-Out treats OOD as positive with the score negated.

FPR95 is the fraction of OOD samples with score >= t at a threshold t that keeps about 95% of ID samples
(ID score >= t). Where exactly t sits is the ``fpr_point``:

* ``"first"``: the highest t that keeps at least 95% of ID samples (TPR >= 0.95; OpenOOD, scikit-learn's
  ``roc_curve`` read at the first TPR >= 0.95).
* ``"closest"``: the t whose TPR is closest to 0.95, above or below it (the released VOS/FFS evaluation,
  ``fpr_and_fdr_at_recall`` in deeplearning-wisc/vos ``metric_utils.py``, inherited from Outlier Exposure's
  code); among equally close points, the lower threshold (the higher TPR), as that code's scan from the
  highest TPR down picks.

``fpr95_ood_positive`` (OpenOOD's other view) takes the threshold that catches at least 95% of OOD samples
(OOD score <= t) and reports the fraction of ID samples with score <= t.

All of them are computed from one sort of the pooled scores, with tied scores grouped exactly as
scikit-learn's ``roc_curve`` / ``average_precision_score`` do, so AUROC and AUPR equal sklearn's values.
"""
from typing import Dict, Tuple

import numpy as np

from .inputs import as_scores

__all__ = ["ood_metrics", "roc_curve_points", "optimal_f1_threshold", "FPR_POINTS"]

TPR_LEVEL = 0.95
FPR_POINTS = ("first", "closest")


def _grouped_counts(id_scores: np.ndarray, ood_scores: np.ndarray) -> Tuple[np.ndarray, ...]:
    """Distinct thresholds in decreasing order, with the number of ID and OOD samples at each."""
    scores = np.concatenate([id_scores, ood_scores])
    is_id = np.concatenate([np.ones(id_scores.size, bool), np.zeros(ood_scores.size, bool)])
    order = np.argsort(-scores)
    scores, is_id = scores[order], is_id[order]
    last = np.r_[np.flatnonzero(np.diff(scores)), scores.size - 1]  # last index of each tie group
    id_cum = np.cumsum(is_id)[last]
    ood_cum = (last + 1) - id_cum
    return scores[last], id_cum, ood_cum


def _average_precision(tp_cum: np.ndarray, fp_cum: np.ndarray) -> float:
    recall = tp_cum / tp_cum[-1]
    precision = tp_cum / (tp_cum + fp_cum)
    return float(np.sum(np.diff(recall, prepend=0.0) * precision))


def _fpr_at_tpr(tp_cum, fp_cum, thresholds, level):
    """First (highest) threshold whose TPR reaches ``level``: (FPR there, threshold)."""
    k = int(np.searchsorted(tp_cum / tp_cum[-1], level - 1e-12, side="left"))
    return float(fp_cum[k] / fp_cum[-1]), float(thresholds[k])


def _fpr_at_closest_tpr(tp_cum, fp_cum, thresholds, level):
    """The threshold whose TPR is closest to ``level`` (ties: the lower threshold): (FPR there, threshold).

    Only thresholds down to the first one that keeps every positive are candidates, as in the released
    VOS/FFS evaluation."""
    tpr = tp_cum / tp_cum[-1]
    last = int(np.searchsorted(tp_cum, tp_cum[-1], side="left"))
    k = last - int(np.argmin(np.abs(tpr[:last + 1] - level)[::-1]))
    return float(fp_cum[k] / fp_cum[-1]), float(thresholds[k])


def ood_metrics(id_scores, ood_scores, tpr_level: float = TPR_LEVEL, fpr_point: str = "first") -> Dict[str, float]:
    """FPR@95TPR, AUROC, AUPR-In and AUPR-Out of ID vs OOD scores (higher = more ID).

    Returns a dict with ``fpr95`` (at the ``fpr_point`` convention, see the module docstring),
    ``fpr95_threshold``, ``fpr95_ood_positive``, ``auroc``, ``aupr_in``, ``aupr_out`` (fractions in
    [0, 1]), ``n_id`` and ``n_ood``. Raises ValueError on empty, non-finite or non-1-D input.
    """
    if not 0.0 < tpr_level <= 1.0:
        raise ValueError(f"tpr_level must be in (0, 1], got {tpr_level}")
    if fpr_point not in FPR_POINTS:
        raise ValueError(f"fpr_point must be one of {', '.join(FPR_POINTS)}, got {fpr_point!r}")
    id_scores = as_scores(id_scores, "id_scores")
    ood_scores = as_scores(ood_scores, "ood_scores")
    thresholds, id_cum, ood_cum = _grouped_counts(id_scores, ood_scores)

    at_point = _fpr_at_tpr if fpr_point == "first" else _fpr_at_closest_tpr
    fpr95, thr95 = at_point(id_cum, ood_cum, thresholds, tpr_level)
    # OOD-positive view: walk the same groups from the lowest score up
    ood_up = np.cumsum(np.diff(ood_cum, prepend=0)[::-1])
    id_up = np.cumsum(np.diff(id_cum, prepend=0)[::-1])
    fpr95_ood, _ = _fpr_at_tpr(ood_up, id_up, thresholds[::-1], tpr_level)

    tpr = np.r_[0.0, id_cum / id_cum[-1]]
    fpr = np.r_[0.0, ood_cum / ood_cum[-1]]
    auroc = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))
    return {
        "fpr95": fpr95,
        "fpr95_threshold": thr95,
        "fpr95_ood_positive": fpr95_ood,
        "auroc": auroc,
        "aupr_in": _average_precision(id_cum, ood_cum),
        "aupr_out": _average_precision(ood_up, id_up),
        "n_id": int(id_scores.size),
        "n_ood": int(ood_scores.size),
    }


def roc_curve_points(id_scores, ood_scores) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(FPR, TPR, thresholds) with ID as positive, starting at (0, 0) — for plotting ROC curves."""
    id_scores = as_scores(id_scores, "id_scores")
    ood_scores = as_scores(ood_scores, "ood_scores")
    thresholds, id_cum, ood_cum = _grouped_counts(id_scores, ood_scores)
    return (np.r_[0.0, ood_cum / ood_cum[-1]], np.r_[0.0, id_cum / id_cum[-1]],
            np.r_[np.inf, thresholds])


def optimal_f1_threshold(scores, is_positive, n_positive_total=None) -> Tuple[float, float]:
    """The threshold on ``scores`` maximising F1 of ``scores >= t`` against ``is_positive``: (t, F1).

    ``n_positive_total`` is the number of positives that exist (e.g. ground-truth boxes, some of which no
    detection matched); it defaults to ``is_positive.sum()``. Used by the VOS/FFS detection protocol to
    pick the detection-score threshold from the ID set.
    """
    scores = as_scores(scores, "scores")
    if hasattr(is_positive, "detach"):  # torch tensor
        is_positive = is_positive.detach().cpu().numpy()
    pos = np.asarray(is_positive, dtype=bool)
    if pos.shape != scores.shape:
        raise ValueError(f"is_positive has shape {pos.shape}, scores have {scores.shape}")
    total = int(pos.sum()) if n_positive_total is None else int(n_positive_total)
    if total <= 0 or total < pos.sum():
        raise ValueError(f"optimal_f1_threshold: need n_positive_total >= {int(pos.sum())} and > 0, got {total}")
    thresholds, tp, fp = _grouped_counts(scores[pos], scores[~pos])
    f1 = 2 * tp / (2 * tp + fp + (total - tp))
    k = int(np.argmax(f1))
    return float(thresholds[k]), float(f1[k])
