"""Box-level density scores: fit a registered scorer on ID training box features, score record files.

The detector's own OOD score is the energy of each box's logits. Any scorer of
:mod:`ffs_det.density.scorers` can be compared with it on the same boxes: run ``tools/apply_net.py
--save-features`` on the ID training set and on the test sets, then :func:`add_box_scores` fits the scorer
on the training boxes (those matched to a ground-truth box when the records say so, else those with
``score >= min_score``; labels = predicted classes) and writes a copy of each test records file with one
more array, named after the scorer, for ``tools/eval_ood.py --score-key <name>``. Input files are never
modified.
"""
import logging
import os
from typing import Dict, List, Optional, Sequence

import numpy as np

from ..atomic_io import child_folder
from ..density.scorers import fit_and_score
from .records import load_records, save_records

logger = logging.getLogger(__name__)

__all__ = ["add_box_scores", "compare_box_scores", "fuse_scores", "POSTHOC_SCORERS"]


def _features(arrays, meta, path):
    if "features" not in arrays:
        raise ValueError(f"records {path}: 'features': missing; rerun tools/apply_net.py with --save-features")
    return arrays["features"]


def _inputs(arrays, meta, path) -> Dict[str, np.ndarray]:
    # box features, plus the inlier-class logits for logit-based scorers (msp, energy, react, ...)
    return {"features": _features(arrays, meta, path), "logits": arrays["logits"][:, :-1]}


def add_box_scores(scorer: str, train_records: str, record_paths: Sequence[str], output_dir: str,
                   min_score: float = 0.5, key: str = "", **scorer_kwargs) -> List[str]:
    """Fit ``scorer`` on ``train_records`` and write each of ``record_paths`` with an added ``key`` array
    (default: the scorer's name) to ``output_dir/<dataset>/records.npz``. Returns the written paths."""
    key = key or scorer
    train, train_meta = load_records(train_records)
    feats = _features(train, train_meta, train_records)
    keep = train["gt_matched"] if "gt_matched" in train else train["score"] >= min_score
    if not keep.any():
        rule = "matched to a ground-truth box" if "gt_matched" in train else f"with score >= {min_score}"
        raise ValueError(f"records {train_records}: no training detections {rule} to fit {scorer!r} on")
    loaded = {}
    for path in record_paths:
        arrays, meta = load_records(path)
        if key in arrays:
            raise ValueError(f"records {path}: {key!r}: already present; choose another --key")
        if _features(arrays, meta, path).shape[1] != feats.shape[1]:
            raise ValueError(f"records {path}: 'features': width {arrays['features'].shape[1]} != "
                             f"{feats.shape[1]} of the training records {train_records}")
        loaded[path] = (arrays, meta)
    train_inputs = {k: v[keep] for k, v in _inputs(train, train_meta, train_records).items()}
    scores = fit_and_score(scorer, train_inputs, train["pred_class"][keep],
                           {p: _inputs(a, m, p) for p, (a, m) in loaded.items()}, **scorer_kwargs)
    names = [m.get("dataset") or os.path.splitext(os.path.basename(p))[0] for p, (_, m) in loaded.items()]
    if len(set(names)) != len(names):
        raise ValueError(f"two record files are of the same dataset ({names}); score them separately")
    for path, name in zip(loaded, names):
        child_folder(output_dir, name, f"records {path}: dataset name")  # before anything is written
    written = []
    for (path, (arrays, meta)), name in zip(loaded.items(), names):
        arrays = dict(arrays, **{key: scores[path].astype(np.float32)})
        meta = dict(meta, box_scores={**meta.get("box_scores", {}),
                                      key: {"scorer": scorer, "train_records": os.path.abspath(train_records),
                                            "fitted_on": int(keep.sum())}})
        written.append(save_records(os.path.join(child_folder(output_dir, name), "records.npz"), arrays, meta))
    return written


# the box-level scorers compared with the detector's energy by default
POSTHOC_SCORERS = ("fde", "mahalanobis", "knn", "gmm")
# every CALIBRATION_EVERY-th training image (by image id) calibrates the fused scores; the rest fit the scorers
CALIBRATION_EVERY = 5


def _calibration_split(image_ids: np.ndarray, keep: np.ndarray):
    """``(fit, calibration)`` masks of the kept training detections: the detections of every
    :data:`CALIBRATION_EVERY`-th image (in image-id order) calibrate, the others fit; with too few images,
    every :data:`CALIBRATION_EVERY`-th detection (the last one, with fewer detections than that)."""
    images = np.unique(image_ids[keep])
    calib = keep & np.isin(image_ids, images[CALIBRATION_EVERY - 1::CALIBRATION_EVERY])
    if not calib.any() or not (keep & ~calib).any():
        rows = np.flatnonzero(keep)
        calib = np.zeros_like(keep)
        calib[rows[CALIBRATION_EVERY - 1::CALIBRATION_EVERY] if len(rows) >= CALIBRATION_EVERY else rows[-1:]] = True
    return keep & ~calib, calib


def _zscore(calibration: np.ndarray):
    mean, std = float(np.mean(calibration)), float(np.std(calibration))
    return lambda v: (v - mean) / max(std, 1e-12)


def fuse_scores(calibration: Dict[str, np.ndarray], scores: Dict[str, np.ndarray]) -> np.ndarray:
    """The sum of each part's z-score, each standardised with the mean and standard deviation of its values
    on ID calibration detections ``calibration[part]``: a fused score fitted on in-distribution data only
    (its arguments hold no OOD input)."""
    if set(calibration) != set(scores) or len(scores) < 2:
        raise ValueError(f"fuse_scores needs the same two or more parts in calibration and scores, got "
                         f"{sorted(calibration)} and {sorted(scores)}")
    return sum(_zscore(np.asarray(calibration[k], np.float64))(np.asarray(v, np.float64)) for k, v in scores.items())


def compare_box_scores(train_records: str, id_records: str, ood_records: Sequence[str],
                       scorers: Sequence[str] = POSTHOC_SCORERS, fuse: Sequence[str] = ("fde",),
                       thres: Optional[float] = None, min_score: float = 0.5,
                       options: Optional[Dict[str, dict]] = None, protocol: str = "papers",
                       evaluation=None):
    """Energy, the records' ``flow_loglik`` (FFS models), post-hoc box-level scorers and fused scores, on the
    same kept detections: returns ``(comparison, info)`` with a
    :class:`~ffs_det.density.report.Comparison` of ``{score: {set: kept scores}}``.

    The kept detections, threshold and FPR95 point are those of eval_ood under ``protocol`` (or ``thres``),
    or of ``evaluation`` (an :class:`~ffs_det.evaluation.ood_report.OODEvaluation` of these records, whose
    protocol and threshold then apply) when given. Each scorer is fitted on the box features (``apply_net --save-features``) of the training
    detections matched to ground truth (else ``score >= min_score``; labels = predicted classes), except
    those of every :data:`CALIBRATION_EVERY`-th training image, which calibrate the fused scores:
    ``energy+<score>`` for each ``<score>`` in ``fuse`` (:func:`fuse_scores`). Nothing here sees an OOD
    label; OOD records are only scored.
    """
    from ..density.report import compare
    from .ood_report import RecordSet, detection_confidence, evaluate_ood

    options = options or {}
    unknown = sorted(set(fuse) - set(scorers) - {"flow_loglik"})
    if unknown:
        raise ValueError(f"fuse: {unknown} are not among the scores ({', '.join(scorers)}, flow_loglik)")
    if evaluation is not None:
        given = [evaluation.id_set.path] + [rs.path for rs in evaluation.ood_sets.values()]
        if list(map(os.path.abspath, given)) != list(map(os.path.abspath, [id_records, *ood_records])):
            raise ValueError(f"evaluation is of the records {given}, not of {[id_records, *ood_records]}")
    ev = evaluation or evaluate_ood(id_records, ood_records, thres, protocol=protocol)  # eval_ood's checks and mask
    train = RecordSet.load(train_records)
    feats = _features(train.arrays, train.meta, train_records)
    keep = train.arrays["gt_matched"] if "gt_matched" in train.arrays else train.arrays["score"] >= min_score
    if not keep.any():  # e.g. a barely trained model: the detections eval_ood would keep
        keep = detection_confidence(train, ev.protocol) >= ev.threshold
    fit, calib = _calibration_split(train.arrays["image_id"], keep)
    if fit.sum() < 2 or not calib.any():
        raise ValueError(f"records {train_records}: {int(fit.sum())} training detections to fit on and "
                         f"{int(calib.sum())} to calibrate on; need at least 2 and 1")
    sets = ev.sets
    scores = {"energy": {name: ev.kept_values("energy", name) for name in sets}}
    calibration = {"energy": train.arrays["energy"][calib].astype(np.float64)}
    if all("flow_loglik" in rs.arrays for rs in [train, *sets.values()]):
        scores["flow_loglik"] = {name: ev.kept_values("flow_loglik", name) for name in sets}
        calibration["flow_loglik"] = train.arrays["flow_loglik"][calib].astype(np.float64)
    failed = {}
    for scorer in scorers:
        test = {name: _features(rs.arrays, rs.meta, rs.path)[ev.kept[name]] for name, rs in sets.items()}
        try:
            out = fit_and_score(scorer, feats[fit], train.arrays["pred_class"][fit],
                                {"__calibration__": feats[calib], **test}, **options.get(scorer, {}))
        except ValueError as e:  # e.g. knn's k above the number of training boxes: the other scores go on
            failed[scorer] = str(e)
            logger.warning("box score %s not computed: %s", scorer, e)
            continue
        calibration[scorer] = out.pop("__calibration__")
        scores[scorer] = out
    for part in fuse:
        if part in scores:
            scores[f"energy+{part}"] = {name: fuse_scores({k: calibration[k] for k in ("energy", part)},
                                                          {k: scores[k][name] for k in ("energy", part)})
                                        for name in sets}
    info = {"threshold": ev.threshold, "protocol": ev.protocol, "fit_on": int(fit.sum()),
            "calibrated_on": int(calib.sum()), "id": ev.id_name, "failed": failed}
    return compare(scores, ev.id_name, fpr_point=ev.comparison.fpr_point), info
