"""Box-level OOD scores: post-hoc densities of box features beside the detector's energy, and their fusion.

The detector's own OOD score is the energy of each box's logits. Any scorer of :mod:`ffs_det.density.scorers`
can be compared with it on the same kept detections. Inputs, all from ``tools/apply_net.py --save-features``:
the records of the ID training set, the ID test set and the OOD test sets, and (``--proposals-of`` on the
training set) its ``proposals.npz``.

**The training split** (:func:`training_boxes`, one rule for :func:`add_box_scores`, :func:`compare_box_scores`
and ``tools/compare_scores.py``). The training images are split by image id: every
:data:`CALIBRATION_EVERY`-th image (in image-id order, among the images with a kept training detection)
*calibrates*, the others *fit*:

* scorers are fitted on the foreground proposals and ground-truth boxes (labels: their ground-truth class) of the
  fit images when the proposals are given, else on the fit images' training detections matched to ground truth
  (else ``score >= min_score``; labels: predicted classes). Proposals give a density many boxes per object
  (about 23k on the shapes world's 600 training images against about 1.5k matched detections);
* the fused score is calibrated on the calibration images' matched training detections (the kind of box that
  is scored at test time), with the calibration images' background proposals as in-image negatives.

**The fused score** (:func:`fuse_scores`): a weighted sum of the parts' z-scores, each standardised on the
calibration detections; a part's weight is its separation ``d' = sqrt(2) * Phi^-1(AUROC)`` of the calibration
detections from the background proposals (clipped at 0), so a part that tells nothing apart weighs nothing.
Nothing here sees an OOD label; OOD records are only scored.

**Scorers that read the classifier's final linear layer** (:func:`reads_head`: react, vim, ash, scale, fdbd,
nnguide; heat with its energy prior) get the box classifier's inlier rows (:func:`box_head`, read from the
checkpoint that wrote the records, only when such a scorer runs) and the features that layer reads: the box
head's output, i.e. the ReLU of ``"preactivation"`` features. Every other scorer reads the stored features.
"""
import logging
import os
import re
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import numpy as np
from scipy.stats import norm

from ..atomic_io import check_folder_path, child_folder, file_sha256, json_bytes
from ..density.metrics import ood_metrics
from ..density.scorers import fit_and_score, make_scorer
from .records import PROPOSALS_KIND, RESERVED_KEYS, check_detections, check_same_model, config_datasets, \
    feature_space, load_records, proposal_foreground, same_detections, save_records

logger = logging.getLogger(__name__)

__all__ = ["add_box_scores", "compare_box_scores", "check_training_set", "fuse_scores", "fusion_weights", "training_boxes",
           "box_head", "reads_head", "TrainingBoxes", "CLS_SCORE", "POSTHOC_SCORERS", "DEFAULT_FUSE", "CALIBRATION_EVERY"]

# the box-level scorers compared with the detector's energy by default
POSTHOC_SCORERS = ("fde", "knn", "gmm", "mahalanobis")
# the fused scores by default: the parts of each
DEFAULT_FUSE = (("energy", "fde"), ("energy", "fde", "knn"))
# every CALIBRATION_EVERY-th training image (by image id) calibrates the fused scores; the rest fit the scorers
CALIBRATION_EVERY = 5
# the scores that are stored in records rather than fitted
STORED_SCORES = ("energy", "flow_loglik")
# detectron2's box classification layer in a checkpoint's state dict: K + 1 rows, the last one background
CLS_SCORE = "roi_heads.box_predictor.cls_score"


def _features(arrays, meta, path):
    if "features" not in arrays:
        raise ValueError(f"records {path}: 'features': missing; rerun tools/apply_net.py with --save-features")
    return arrays["features"]


def _checked_features(arrays, meta, path):
    """:func:`_features`, after checking every row is finite: once per records file, where it is loaded (the
    later reads of its rows skip the full pass)."""
    bad = ~np.isfinite(_features(arrays, meta, path)).all(axis=1)
    if bad.any():
        raise ValueError(f"records {path}: 'features': {int(bad.sum())} of {len(bad)} rows hold NaN or infinite "
                         f"values (e.g. row {int(np.flatnonzero(bad)[0])}); the model that wrote them diverged?")
    return arrays["features"]


def _inputs(arrays, meta, path, rows=None) -> Dict[str, np.ndarray]:
    # box features, plus the inlier-class logits for logit-based scorers (msp, energy, react, ...)
    rows = slice(None) if rows is None else rows
    return {"features": _features(arrays, meta, path)[rows], "logits": arrays["logits"][rows, :-1]}


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


@dataclass
class TrainingBoxes:
    """The training boxes of box-level scoring (:func:`training_boxes`): what scorers are fitted on, what the
    fused score is calibrated on, and the in-image negatives of its weights."""

    fit: Dict[str, np.ndarray]  # {"features", "logits"} of the boxes the scorers are fitted on
    labels: np.ndarray  # their classes
    calibration: Dict[str, np.ndarray]  # {"features", "logits", + stored scores} of the calibration detections
    negatives: Dict[str, np.ndarray] = field(default_factory=dict)  # the same of background proposals (or empty)
    source: str = "detections"  # what the scorers are fitted on: "proposals" or "detections"
    feature_space: str = "output"
    # SAFE's inputs, when the training records have them: "fit" (every detection of the fit images),
    # "adversarial" (the same boxes in the perturbed images), "calibration" (the calibration detections)
    safe: Dict[str, np.ndarray] = field(default_factory=dict)

    def summary(self) -> dict:
        out = {"fit_source": self.source, "fit_on": int(len(self.labels)),
               "calibrated_on": int(len(self.calibration["features"])),
               "negatives": int(len(self.negatives.get("features", ()))), "feature_space": self.feature_space}
        if self.safe:
            out["safe_fit_on"] = {"clean": int(len(self.safe["fit"])),
                                  "perturbed": int(np.isfinite(self.safe["adversarial"]).all(1).sum())}
        return out


def _safe_inputs(train, calib) -> Dict[str, np.ndarray]:
    """SAFE's training inputs (:attr:`TrainingBoxes.safe`): as SAFE, every detection of the fit images (not only
    those matched to ground truth), paired with its box in the perturbed image."""
    if "safe_features" not in train or "safe_features_adv" not in train:
        return {}
    fit = ~np.isin(train["image_id"], np.unique(train["image_id"][calib]))
    return {"fit": train["safe_features"][fit], "adversarial": train["safe_features_adv"][fit],
            "calibration": train["safe_features"][calib]}


def _scorer_inputs(scorer: str, arrays, meta, path, rows=None) -> Dict[str, np.ndarray]:
    """What ``scorer`` scores of the records' ``rows``: SAFE its ``safe_features``, the others :func:`_inputs`."""
    if scorer != "safe":
        return _inputs(arrays, meta, path, rows)
    if "safe_features" not in arrays:
        raise ValueError(f"records {path}: 'safe_features': missing; rerun tools/apply_net.py with --safe")
    return {"features": arrays["safe_features"][slice(None) if rows is None else rows]}


def _fit_inputs(scorer: str, boxes: "TrainingBoxes", train_records: str):
    """``(X, y, extra fit options, calibration inputs)`` that ``scorer`` is fitted and calibrated on."""
    if scorer != "safe":
        return boxes.fit, boxes.labels, {}, boxes.calibration
    if not boxes.safe:
        raise ValueError(f"records {train_records}: no 'safe_features_adv' to fit SAFE on; apply the ID training "
                         "set with tools/apply_net.py --safe-fit-of")
    return (boxes.safe["fit"], None, {"adversarial": boxes.safe["adversarial"]},
            {"features": boxes.safe["calibration"]})


def reads_head(scorer: str, options: Optional[dict] = None) -> bool:
    """Whether ``scorer`` (with ``options``) reads the classifier's final linear layer on boxes: every scorer that
    requires it, and HEAT when its ``priors`` name ``"energy"`` (its default priors stay the head-free GMM prior
    on boxes, so that a HEAT run without that option is the same as without a head)."""
    built, _ = make_scorer(scorer, options)
    if built.uses_head == "required":
        return True
    priors = getattr(built, "priors", "auto")
    return built.uses_head == "optional" and priors != "auto" and \
        "energy" in ([priors] if isinstance(priors, str) else list(priors))


def box_head(records: str, meta: dict, weights: Optional[str] = None):
    """``(weight (K, D), bias (K,))``: the inlier rows of the box classification layer (:data:`CLS_SCORE`,
    detectron2's background row, the last, dropped) of the checkpoint that wrote ``records`` (meta ``weights``;
    ``weights``: the same file at another path): the layer whose outputs are the records' inlier logits. The file
    must have the records' ``weights_sha256`` (so the head is that of the model that made the features) and is
    read with ``torch.load(weights_only=True)``, which runs no code from it (a ``.pkl``, readable only with
    pickle, is refused). ValueError naming the file and what to do."""
    import torch

    path = weights or meta.get("weights")
    redo = "pass --weights with the checkpoint that wrote them"
    if not path:
        raise ValueError(f"records {records}: meta names no checkpoint ('weights') to read the classifier from; {redo}")
    given = "--weights" if weights else f"meta 'weights' of {records}"
    if not os.path.isfile(path):
        raise ValueError(f"checkpoint {path} ({given}): not found; the classifier's final layer is read from it: "
                         f"{redo} (e.g. where it was moved)")
    if path.endswith(".pkl"):
        raise ValueError(f"checkpoint {path} ({given}): a .pkl file can only be read with pickle, which runs code "
                         "from the file; convert it once to a .pth state dict and apply the model with that file")
    expected = meta.get("weights_sha256")
    if not expected:
        raise ValueError(f"records {records}: meta holds no weights_sha256 (the model's weights were not a local "
                         f"file when applied), so checkpoint {path} cannot be checked; apply it from a local file")
    actual = file_sha256(path)
    if actual != expected:
        raise ValueError(f"checkpoint {path} ({given}): SHA-256 {actual[:16]}... is not the {expected[:16]}... of the "
                         f"checkpoint that wrote {records}; {redo}")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a pickle that weights_only refuses, or not a torch file
        raise ValueError(f"checkpoint {path}: cannot be read with torch.load(weights_only=True) "
                         f"({type(e).__name__})") from None
    state = data.get("model", data) if isinstance(data, dict) else None
    keys = (f"{CLS_SCORE}.weight", f"{CLS_SCORE}.bias")
    if not isinstance(state, dict) or any(not torch.is_tensor(state.get(k)) for k in keys):
        raise ValueError(f"checkpoint {path}: holds no {keys[0]} and {keys[1]} (a detectron2 box predictor)")
    weight, bias = (state[k].detach().float().numpy() for k in keys)
    k = meta.get("num_classes")
    if weight.ndim != 2 or weight.shape[0] != k + 1 or bias.shape != (k + 1,):
        raise ValueError(f"checkpoint {path}: {keys[0]} of shape {tuple(weight.shape)}, bias {tuple(bias.shape)}; "
                         f"the records' {k} classes need {k + 1} rows (the last: background)")
    return weight[:-1], bias[:-1]


def _relu_features(inputs: Dict[str, np.ndarray], space: str) -> Dict[str, np.ndarray]:
    """``inputs`` with the features the classifier reads: the ReLU of pre-activation features (the box head's
    output); output features as they are."""
    if space != "preactivation" or "features" not in inputs:
        return inputs
    return dict(inputs, features=np.maximum(inputs["features"], 0.0))


def _head_inputs(head, space: str, fit_x, fit_extra: dict, sets: Dict[str, dict]):
    """``(fit_x, fit_extra, sets)`` of a scorer that reads the classifier's final layer: the features that layer
    reads (:func:`_relu_features`) in the fit and every scored set, and ``head`` among the fit options."""
    return (_relu_features(fit_x, space), dict(fit_extra, head=head),
            {name: _relu_features(data, space) for name, data in sets.items()})


def _check_weights_used(weights: Optional[str], heads: Sequence[str], scorers: Sequence[str]) -> None:
    if weights is not None and not heads:
        raise ValueError(f"--weights {weights}: only scorers that read the classifier's final layer use it (e.g. "
                         f"react, vim, ash, scale, fdbd, nnguide); none of {', '.join(scorers)} does")


def _stored(arrays, rows) -> Dict[str, np.ndarray]:
    return {k: arrays[k][rows].astype(np.float64) for k in STORED_SCORES if k in arrays}


def _training_kept(arrays: Dict[str, np.ndarray], min_score: float) -> np.ndarray:
    """The training detections that count by default: those matched to ground truth, else (unannotated
    records) those with ``score >= min_score``."""
    return arrays["gt_matched"] if "gt_matched" in arrays else arrays["score"] >= min_score


def training_boxes(train_records: str, proposals: Optional[str] = None, min_score: float = 0.5,
                   keep: Optional[np.ndarray] = None) -> TrainingBoxes:
    """The fit / calibration split of the module doc from the training records (and their proposals).
    ``keep``: which training detections count (default: matched to ground truth, else ``score >= min_score``).
    Raises ValueError naming the file when there is too little to fit or calibrate on, or when the proposals
    are of another model, set or feature space."""
    train, meta = load_records(train_records)
    check_detections(train_records, meta)
    feats = _checked_features(train, meta, train_records)
    if keep is None:
        keep = _training_kept(train, min_score)
    if not keep.any():
        rule = "matched to a ground-truth box" if "gt_matched" in train else f"with score >= {min_score}"
        raise ValueError(f"records {train_records}: no training detections {rule} to fit on")
    fit, calib = _calibration_split(train["image_id"], keep)
    calibration = dict(_inputs(train, meta, train_records, calib), **_stored(train, calib))
    if proposals is None:
        if fit.sum() < 2:
            raise ValueError(f"records {train_records}: {int(fit.sum())} training detections to fit on; need at "
                             "least 2")
        return TrainingBoxes(_inputs(train, meta, train_records, fit), train["pred_class"][fit], calibration,
                             feature_space=feature_space(meta), safe=_safe_inputs(train, calib))
    prop, pmeta = load_records(proposals)
    if pmeta.get("kind") != PROPOSALS_KIND or "gt_class" not in prop:
        raise ValueError(f"records {proposals}: not proposal records (meta kind {pmeta.get('kind')!r}); write them "
                         "with tools/apply_net.py --proposals-of")
    for key in ("dataset", "weights_sha256", "num_classes"):
        if pmeta.get(key) != meta.get(key):
            raise ValueError(f"records {proposals}: meta {key} {pmeta.get(key)!r} differs from the training records "
                             f"{train_records} ({meta.get(key)!r}): proposals of another model or set")
    check_same_model("training", train_records, meta, "proposal", proposals, pmeta)
    space = feature_space(meta)
    if feature_space(pmeta) != space or _checked_features(prop, pmeta, proposals).shape[1] != feats.shape[1]:
        raise ValueError(f"records {proposals}: features in the {feature_space(pmeta)!r} space (width "
                         f"{prop['features'].shape[1]}), the training records {train_records} in the {space!r} "
                         f"space (width {feats.shape[1]}); save both with the same --feature-space")
    calib_images = np.unique(train["image_id"][calib])
    in_calib = np.isin(prop["image_id"], calib_images)
    foreground = proposal_foreground(prop, pmeta["num_classes"])
    rows = foreground & ~in_calib
    if rows.sum() < 2:
        raise ValueError(f"records {proposals}: {int(rows.sum())} foreground proposals outside the calibration "
                         "images to fit on; need at least 2")
    negatives = ~foreground & in_calib
    neg = dict(_inputs(prop, pmeta, proposals, negatives), **_stored(prop, negatives)) if negatives.any() else {}
    return TrainingBoxes(_inputs(prop, pmeta, proposals, rows), prop["gt_class"][rows], calibration, neg,
                         source="proposals", feature_space=feature_space(pmeta), safe=_safe_inputs(train, calib))


def check_training_set(train_records: str, scored: Dict[str, tuple]) -> None:
    """ValueError unless ``train_records`` are the training records of the model that made every scored records
    file (``{path: (arrays, meta)}``): the same checkpoint and inference settings
    (:func:`~.records.check_same_model`), not one of the scored sets (by dataset name or detections), and not
    a set the model's config lists as a test set only (``DATASETS.TEST``, not ``DATASETS.TRAIN``)."""
    arrays, meta = load_records(train_records)
    name, train_sets = meta.get("dataset"), config_datasets(meta, "TRAIN")
    if name in config_datasets(meta, "TEST") and name not in train_sets:
        raise ValueError(f"training records {train_records} are of {name!r}, a test set of the model's config "
                         f"(DATASETS.TEST), not a training set (DATASETS.TRAIN: {', '.join(train_sets) or 'none'}); "
                         "give the records of the ID training set (apply_net --test-dataset on it)")
    for path, (other, other_meta) in scored.items():
        check_same_model("training", train_records, meta, "scored", path, other_meta)
        if os.path.abspath(path) == os.path.abspath(train_records) or other_meta.get("dataset") == name or \
                same_detections(arrays, other):
            raise ValueError(f"training records {train_records} are of the set {name!r} that the records {path} "
                             f"are of ({other_meta.get('dataset')!r}): fit on the ID training set, not on a set "
                             "that is scored")


def _check_space(boxes: TrainingBoxes, meta: dict, path: str, width: int) -> None:
    if feature_space(meta) != boxes.feature_space or width != boxes.fit["features"].shape[1]:
        raise ValueError(f"records {path}: features in the {feature_space(meta)!r} space (width {width}), the "
                         f"training boxes in the {boxes.feature_space!r} space (width "
                         f"{boxes.fit['features'].shape[1]}); save every set with the same --feature-space")


def add_box_scores(scorer: str, train_records: str, record_paths: Sequence[str], output_dir: str,
                   min_score: float = 0.5, key: str = "", proposals: Optional[str] = None,
                   weights: Optional[str] = None, **scorer_kwargs) -> List[str]:
    """Fit ``scorer`` on the training boxes (:func:`training_boxes`) and write each of ``record_paths`` with an
    added ``key`` array (default: the scorer's name) to ``output_dir/<dataset>/records.npz``. Returns the
    written paths. A scorer that reads the classifier's final layer gets it from the records' checkpoint
    (:func:`box_head`; ``weights``: that checkpoint moved)."""
    key = key or scorer
    if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.+-]*", key) or key in RESERVED_KEYS + ("meta",):
        raise ValueError(f"--key {key!r}: a records array name is letters, digits and _ . + - (not starting with . "
                         "+ or -)")
    boxes = training_boxes(train_records, proposals, min_score)
    loaded = {}
    for path in record_paths:
        arrays, meta = load_records(path)
        check_detections(path, meta)
        if key in arrays:
            raise ValueError(f"records {path}: {key!r}: already present; choose another --key")
        _check_space(boxes, meta, path, _checked_features(arrays, meta, path).shape[1])
        loaded[path] = (arrays, meta)
    check_training_set(train_records, loaded)
    names = [m.get("dataset") or os.path.splitext(os.path.basename(p))[0] for p, (_, m) in loaded.items()]
    if len(set(names)) != len(names):
        raise ValueError(f"two record files are of the same dataset ({names}); score them separately")
    inputs = {os.path.realpath(p) for p in [train_records, *([proposals] if proposals else []), *record_paths]}
    for path, name in zip(loaded, names):  # before anything is fitted or written
        folder = child_folder(output_dir, name, f"records {path}: dataset name")
        check_folder_path(folder)
        target = os.path.join(folder, "records.npz")
        if os.path.realpath(target) in inputs:
            raise ValueError(f"--output-dir {output_dir}: {target} is an input of this command; write the scored "
                             "records to another folder")
    heads = [scorer] if reads_head(scorer, scorer_kwargs) else []
    _check_weights_used(weights, heads, [scorer])
    fit_x, fit_y, fit_extra, _ = _fit_inputs(scorer, boxes, train_records)
    sets = {p: _scorer_inputs(scorer, a, m, p) for p, (a, m) in loaded.items()}
    if heads:  # the scored records' checkpoint is the training records' (check_training_set): no reload
        first, (_, first_meta) = next(iter(loaded.items()))
        head = box_head(first, first_meta, weights)
        fit_x, fit_extra, sets = _head_inputs(head, boxes.feature_space, fit_x, fit_extra, sets)
    scores = fit_and_score(scorer, fit_x, fit_y, sets, **fit_extra, **scorer_kwargs)
    written = []
    for (path, (arrays, meta)), name in zip(loaded.items(), names):
        arrays = dict(arrays, **{key: scores[path].astype(np.float32)})
        meta = dict(meta, box_scores={**meta.get("box_scores", {}),
                                      key: {"scorer": scorer, "train_records": os.path.abspath(train_records),
                                            "proposals": os.path.abspath(proposals) if proposals else None,
                                            "fitted_on": int(len(fit_x["features"] if isinstance(fit_x, dict)
                                                                 else fit_x)),
                                            "fit_source": "detections and their FGSM copies" if scorer == "safe"
                                            else boxes.source}})
        written.append(save_records(os.path.join(child_folder(output_dir, name), "records.npz"), arrays, meta))
    return written


def _zscore(calibration: np.ndarray):
    mean, std = float(np.mean(calibration)), float(np.std(calibration))
    return lambda v: (v - mean) / max(std, 1e-12)


def fusion_weights(calibration: Dict[str, np.ndarray], negatives: Dict[str, np.ndarray]) -> Dict[str, float]:
    """Each part's weight ``max(0, sqrt(2) * Phi^-1(AUROC))``: how far its scores on ID calibration detections
    lie above those on in-image negatives (background proposals of the same images), as the ``d'`` of two
    equal-variance Gaussians with that AUROC (capped at AUROC 0.9999). 0 for a part that does not separate
    them (or reverses them)."""
    out = {}
    for part in calibration:
        auroc = min(ood_metrics(calibration[part], negatives[part])["auroc"], 0.9999)
        out[part] = max(0.0, float(np.sqrt(2.0) * norm.ppf(auroc)))
    return out


def fuse_scores(calibration: Dict[str, np.ndarray], scores: Dict[str, np.ndarray],
                weights: Optional[Dict[str, float]] = None) -> np.ndarray:
    """The weighted sum of each part's z-score, each standardised with the mean and standard deviation of its
    values on ID calibration detections ``calibration[part]``, divided by the sum of the weights (default:
    every weight 1). Fitted on in-distribution data only (its arguments hold no OOD input)."""
    if set(calibration) != set(scores) or len(scores) < 2:
        raise ValueError(f"fuse_scores needs the same two or more parts in calibration and scores, got "
                         f"{sorted(calibration)} and {sorted(scores)}")
    weights = weights or {k: 1.0 for k in scores}
    total = sum(weights[k] for k in scores)
    if not total > 0:
        raise ValueError(f"fuse_scores: the weights {weights} sum to {total}; at least one part must weigh > 0")
    return sum(weights[k] * _zscore(np.asarray(calibration[k], np.float64))(np.asarray(v, np.float64))
               for k, v in scores.items()) / total


def _fused(parts, calibration, negatives, scores, sets):
    """``(fused scores per set, weights)`` of ``parts``; weights 1 without negatives."""
    cal = {k: calibration[k] for k in parts}
    weights = fusion_weights(cal, {k: negatives[k] for k in parts}) if negatives else {k: 1.0 for k in parts}
    if not sum(weights.values()) > 0:
        logger.warning("fused score %s: no part separates calibration detections from background proposals "
                       "(weights %s); equal weights used", "+".join(parts), weights)
        weights = {k: 1.0 for k in parts}
    return {name: fuse_scores(cal, {k: scores[k][name] for k in parts}, weights) for name in sets}, weights


def compare_box_scores(train_records: str, id_records: str, ood_records: Sequence[str],
                       scorers: Sequence[str] = POSTHOC_SCORERS, fuse: Optional[Sequence[Sequence[str]]] = None,
                       thres: Optional[float] = None, min_score: float = 0.5,
                       options: Optional[Dict[str, dict]] = None, protocol: str = "papers",
                       evaluation=None, proposals: Optional[str] = None, weights: Optional[str] = None):
    """Energy, the records' ``flow_loglik`` (FFS models), post-hoc box-level scorers and fused scores, on the
    same kept detections: returns ``(comparison, info)`` with a :class:`~ffs_det.density.report.Comparison` of
    ``{score: {set: kept scores}}``. ``fuse``: the parts of each fused score (two or more of those scores each,
    named ``"+".join(parts)``; ``()``: none; None: those of :data:`DEFAULT_FUSE` whose parts are all among the
    scores).

    The kept detections, threshold and FPR95 point are those of eval_ood under ``protocol`` (or ``thres``),
    or of ``evaluation`` (an :class:`~ffs_det.evaluation.ood_report.OODEvaluation` of these records, whose
    protocol and threshold then apply) when given. Scorers are fitted and the fused score calibrated as the
    module doc says (:func:`training_boxes`; ``proposals``: the training set's proposals.npz). Scorers that read
    the classifier's final layer (:func:`reads_head`) get it from the records' checkpoint (:func:`box_head`,
    read only when such a scorer runs; ``weights``: that checkpoint moved) and the box head's output features.
    """
    from ..density.report import compare
    from .ood_report import RecordSet, evaluate_ood, kept_detections

    options = options or {}
    for scorer in scorers:  # a wrong scorer name or option is an error before any fitting
        make_scorer(scorer, options.get(scorer, {}))
    unknown = sorted(set(options) - set(scorers))
    if unknown:
        raise ValueError(f"options for {unknown}: not among the scorers ({', '.join(scorers)})")
    heads = [scorer for scorer in scorers if reads_head(scorer, options.get(scorer, {}))]
    _check_weights_used(weights, heads, scorers)
    if fuse is None:
        fuse = [parts for parts in DEFAULT_FUSE if set(parts) <= set(scorers) | set(STORED_SCORES)]
    if isinstance(fuse, str) or any(isinstance(parts, str) for parts in fuse):
        raise ValueError(f"fuse: give a list of part lists, e.g. [('energy', 'fde')], got {fuse!r}")
    fuse = [tuple(parts) for parts in fuse]
    for parts in fuse:
        unknown = sorted(set(parts) - set(scorers) - set(STORED_SCORES))
        if unknown:
            raise ValueError(f"fuse: {unknown} are not among the scores ({', '.join((*STORED_SCORES, *scorers))})")
        if len(set(parts)) < 2:
            raise ValueError(f"fuse: a fused score needs two or more parts, got {list(parts)}")
    if evaluation is not None:
        given = [evaluation.id_set.path] + [rs.path for rs in evaluation.ood_sets.values()]
        if list(map(os.path.abspath, given)) != list(map(os.path.abspath, [id_records, *ood_records])):
            raise ValueError(f"evaluation is of the records {given}, not of {[id_records, *ood_records]}")
    ev = evaluation or evaluate_ood(id_records, ood_records, thres, protocol=protocol)  # eval_ood's checks and mask
    train = RecordSet.load(train_records)
    keep = _training_kept(train.arrays, min_score)
    if not keep.any():  # e.g. a barely trained model: the detections eval_ood would keep
        keep = kept_detections(train, ev.threshold, ev.protocol)
    boxes = training_boxes(train_records, proposals, min_score, keep=keep)
    if not len(boxes.calibration["features"]):
        raise ValueError(f"records {train_records}: no training detection to calibrate on")
    sets = ev.sets
    check_training_set(train_records, {rs.path: (rs.arrays, rs.meta) for rs in sets.values()})
    for name, rs in sets.items():
        _check_space(boxes, rs.meta, rs.path, _checked_features(rs.arrays, rs.meta, rs.path).shape[1])
    head = box_head(train_records, train.meta, weights) if heads else None  # before any fitting
    scores, calibration, negatives = {}, {}, {}
    for key in STORED_SCORES:
        if all(key in rs.arrays for rs in sets.values()) and key in boxes.calibration:
            scores[key] = {name: ev.kept_values(key, name) for name in sets}
            calibration[key] = boxes.calibration[key]
            if key in boxes.negatives:
                negatives[key] = boxes.negatives[key]
    failed = {}
    for scorer in scorers:
        fit_x, fit_y, fit_extra, calib = _fit_inputs(scorer, boxes, train_records)
        extra = {"__calibration__": calib, **({"__negatives__": boxes.negatives}
                                              if boxes.negatives and scorer != "safe" else {})}
        test = {name: _scorer_inputs(scorer, rs.arrays, rs.meta, rs.path, ev.kept[name]) for name, rs in sets.items()}
        if scorer in heads:
            fit_x, fit_extra, test = _head_inputs(head, boxes.feature_space, fit_x, fit_extra, {**extra, **test})
            extra = {}
        try:
            out = fit_and_score(scorer, fit_x, fit_y, {**extra, **test}, **fit_extra, **options.get(scorer, {}))
        except ValueError as e:  # e.g. knn's k above the number of training boxes: the other scores go on
            failed[scorer] = str(e)
            logger.warning("box score %s not computed: %s", scorer, e)
            continue
        calibration[scorer] = out.pop("__calibration__")
        if "__negatives__" in out:
            negatives[scorer] = out.pop("__negatives__")
        scores[scorer] = out
    weights = {}
    for parts in fuse:
        name = "+".join(parts)
        if not all(part in scores for part in parts):
            missing = [p for p in parts if p not in scores]
            failed[name] = (f"parts not computed: {missing}" + (" (flow_loglik is in the records of FFS models "
                            "applied with apply_net --flow-loglik)" if "flow_loglik" in missing else ""))
            continue
        usable = negatives if all(part in negatives for part in parts) else {}
        scores[name], weights[name] = _fused(parts, calibration, usable, scores, sets)
    info = dict(boxes.summary(), threshold=ev.threshold, protocol=ev.protocol, id=ev.id_name, failed=failed,
                fusion_weights=weights)
    return compare(scores, ev.id_name, fpr_point=ev.comparison.fpr_point), info


# the marker of a compare_scores report folder (the files it wrote; a rerun replaces only such a folder)
REPORT_MARKER = ".ffs_det_box_scores.json"


def render_box_scores(comparison, info: dict) -> Dict[str, bytes]:
    """File name -> contents of a box-score report: ``scores.md`` (the table), ``scores.csv``, ``scores.json``
    (metrics per score and OOD set, and how the scores were fitted), ``roc_<ood set>.png`` (every score's ROC in
    one plot) and ``hist_<score>_<ood set>.png``."""
    from ..density.report import comparison_csv, comparison_table, hist_png, roc_png, safe_name

    title = (f"ID: {comparison.id_name}; protocol {info['protocol']}, kept detections (threshold "
             f"{info['threshold']:.4f}); scorers fitted on {info['fit_on']} {info['fit_source']} "
             f"({info['feature_space']} features), fused score calibrated on {info['calibrated_on']} ID detections; "
             "higher = more ID")
    table = comparison_table(comparison, title, "score", "detections kept")
    files = {"scores.md": ("```\n" + table + "```\n").encode(),
             "scores.csv": comparison_csv(comparison, "score").encode()}
    metrics = {score: {o: {k: v for k, v in m.items() if not isinstance(v, np.ndarray)} for o, m in sets.items()}
               for score, sets in comparison.metrics.items()}
    files["scores.json"] = json_bytes({"metrics": metrics, "info": info}, indent=2, default=float)
    for ood in comparison.ood_names:
        curves = {m: (i, o) for m, oo, i, o, _ in comparison.pairs(ood=ood)}
        files[f"roc_{safe_name(ood)}.png"] = roc_png(curves, f"ROC: {comparison.id_name} vs {ood} (kept detections)",
                                                     xlabel="FPR (OOD detections kept)",
                                                     ylabel="TPR (ID detections kept)")
        for m, _, i, o, r in comparison.pairs(ood=ood):
            files[f"hist_{safe_name(m)}_{safe_name(ood)}.png"] = hist_png(
                {f"ID: {comparison.id_name}": i, f"OOD: {ood}": o},
                f"{m}: FPR95 {100 * r['fpr95']:.1f}%, AUROC {100 * r['auroc']:.1f}%", f"{m} (higher = more ID)",
                cut=r["fpr95_threshold"])
    return files
