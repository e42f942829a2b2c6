"""The object-level OOD report: ID and OOD records -> which detections count -> FPR95 / AUROC / AUPR files.

Two protocols decide which detections count and where FPR95 is read (``--protocol``); both then treat the
kept ID detections as positives and the kept OOD detections as negatives of an OOD score (``energy`` by
default, ``msp`` (computed from the logits when not stored), or any other 1-D float array of the records;
higher = more ID), and
:func:`ffs_det.density.metrics.ood_metrics` computes the metrics:

* ``papers`` (default) — the released VOS/FFS evaluation (deeplearning-wisc/vos 6dd9c27, which FFS evaluates
  with; docs/paper_parity.md): the threshold is the one apply_net computed with COCOeval on the annotated ID
  set (records' meta ``papers_threshold``, :mod:`.coco_eval`); a detection is kept when the maximum
  inlier-class probability of its box (softmax over all logits, background dropped) is >= the threshold, so
  the detections of one box in two classes are kept or dropped together; FPR95 at the TPR closest to 95%.
* ``global-f1`` — the threshold maximising one F1 over all classes of the ID detections matched to ground
  truth at IoU 0.5 (greedy, ``gt_matched`` / ``num_gt``); a detection is kept when its own class score is
  >= the threshold; FPR95 at the first TPR >= 95%.

``--thres`` replaces either protocol's threshold (needed for unannotated ID records). Everything is
evaluated once into an :class:`OODEvaluation` (the kept mask of every set, the threshold and the metrics)
that the report files, box-level scoring and the demo read. Everything is loaded, checked and rendered
before anything is written, so a bad input leaves no output; the output folder is then written as one
generation (:func:`ffs_det.atomic_io.replace_folder`): a rerun into it replaces the previous report whole
(no stale plot or drawing stays), and a folder holding other files (e.g. an apply_net dataset folder) is
refused.
"""
import logging
import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from scipy.special import softmax

from ..atomic_io import check_replaceable_folder, json_bytes, replace_folder
from ..density.metrics import optimal_f1_threshold
from ..density.report import METRIC_KEYS, Comparison, compare, comparison_csv, comparison_table, hist_png, \
    roc_png, safe_name
from .records import check_detections, check_same_model, config_datasets, load_records, same_detections

__all__ = ["RecordSet", "PROTOCOLS", "OODEvaluation", "detection_threshold", "detection_confidence",
           "kept_detections", "evaluate_ood", "format_table", "render_report", "write_report", "run_report",
           "METRIC_KEYS"]

logger = logging.getLogger(__name__)

# written into every report folder (with the list of its files); marks a folder a rerun may replace
REPORT_MARKER = ".ffs_det_ood_report"
_NOT_SCORES = ("image_id", "pred_class", "gt_matched")
# protocol -> (where FPR95 is read, one line for the report)
PROTOCOLS = {
    "papers": ("closest", "the released VOS/FFS evaluation: COCOeval per-class optimal-F1 threshold, a box kept "
                          "when its maximum inlier-class probability reaches it, FPR at the TPR closest to 95%"),
    "global-f1": ("first", "one optimal F1 at IoU 0.5 over all classes, a detection kept when its own class score "
                           "reaches it, FPR at the first TPR >= 95%"),
}


@dataclass
class RecordSet:
    path: str
    arrays: Dict[str, np.ndarray]
    meta: dict

    @property
    def name(self) -> str:
        return str(self.meta["dataset"])

    @classmethod
    def load(cls, path: str) -> "RecordSet":
        arrays, meta = load_records(path)
        check_detections(path, meta)
        return cls(path, arrays, meta)


def _check_protocol(protocol: str) -> None:
    if protocol not in PROTOCOLS:
        raise ValueError(f"--protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")


def detection_confidence(rs: RecordSet, protocol: str = "papers") -> np.ndarray:
    """What the keep rule compares with the threshold, per detection: ``papers``: the maximum inlier-class
    probability of the detection's box (softmax over all K + 1 logits, float64, background dropped);
    ``global-f1``: the detection's own class score."""
    _check_protocol(protocol)
    if protocol == "global-f1":
        return rs.arrays["score"]
    return softmax(rs.arrays["logits"].astype(np.float64), axis=1)[:, :-1].max(axis=1)


def _papers_threshold(id_set: RecordSet) -> Tuple[float, str, Optional[float]]:
    found = id_set.meta.get("papers_threshold")
    if found is None:
        why = ("are unannotated" if "num_gt" not in id_set.meta else
               "carry no 'papers_threshold' in their meta (records written before apply_net computed it, or no "
               "class had a COCOeval threshold)")
        raise ValueError(f"ID records {id_set.path} ({id_set.name}) {why}, so the papers' detection threshold is "
                         "unknown: rerun tools/apply_net.py on the annotated ID set, pass --thres, or use "
                         "--protocol global-f1")
    t = found.get("threshold") if isinstance(found, dict) else None
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not np.isfinite(t):
        raise ValueError(f"ID records {id_set.path}: meta 'papers_threshold': 'threshold' must be a finite number, "
                         f"got {t!r}")
    return float(t), "COCOeval per-class optimal F1 on the ID set (apply_net)", None


def _global_f1_threshold(id_set: RecordSet) -> Tuple[float, str, Optional[float]]:
    if "gt_matched" not in id_set.arrays or "num_gt" not in id_set.meta:
        raise ValueError(f"ID records {id_set.path} ({id_set.name}) are unannotated (no gt_matched / num_gt), so "
                         "the optimal-F1 detection threshold cannot be computed: pass --thres")
    if id_set.arrays["score"].size == 0:
        raise ValueError(f"ID records {id_set.path} ({id_set.name}) hold no detections")
    if id_set.meta["num_gt"] == 0:
        raise ValueError(f"ID records {id_set.path} ({id_set.name}) have num_gt = 0: no ground truth to pick the "
                         "optimal-F1 threshold from; pass --thres")
    t, f1 = optimal_f1_threshold(id_set.arrays["score"], id_set.arrays["gt_matched"],
                                 n_positive_total=id_set.meta["num_gt"])
    if not f1 > 0:
        raise ValueError(f"ID records {id_set.path} ({id_set.name}): none of its {id_set.arrays['score'].size} "
                         f"detections matches one of the {id_set.meta['num_gt']} ground-truth boxes (F1 = 0), so "
                         "there is no optimal-F1 threshold; is it the model's ID set? (or pass --thres)")
    return t, "optimal F1 at IoU 0.5 on the ID records", f1


def detection_threshold(id_set: RecordSet, thres: Optional[float] = None,
                        protocol: str = "papers") -> Tuple[float, str, Optional[float]]:
    """``(threshold, how it was chosen, F1 on the ID set or None)`` under ``protocol``, or ``thres``."""
    _check_protocol(protocol)
    if thres is not None:
        if not np.isfinite(thres):
            raise ValueError(f"--thres must be a finite number, got {thres}")
        return float(thres), "given (--thres)", None
    return _papers_threshold(id_set) if protocol == "papers" else _global_f1_threshold(id_set)


def kept_detections(rs: RecordSet, threshold: float, protocol: str = "papers") -> np.ndarray:
    """Boolean ``(N,)``: the detections of ``rs`` that count under ``protocol`` at the detection ``threshold``,
    those whose :func:`detection_confidence` reaches it. The one keep rule of eval_ood, box-level scoring and
    the demo."""
    return detection_confidence(rs, protocol) >= threshold


def _kept_mask(rs: RecordSet, threshold: float, protocol: str, role: str) -> np.ndarray:
    keep = kept_detections(rs, threshold, protocol)
    if not keep.any():
        raise ValueError(f"{role} records {rs.path} ({rs.name}): none of its {keep.size} detections reaches the "
                         f"detection threshold {threshold:.6g}; nothing to evaluate (lower --thres?)")
    return keep


def _add_derived_scores(rs: RecordSet, score_key: str) -> None:
    """``msp``, when asked for and not stored: the maximum softmax probability over the K inlier logits
    (background dropped before the softmax), the MSP baseline of the released VOS/FFS evaluation."""
    if score_key == "msp" and "msp" not in rs.arrays:
        rs.arrays["msp"] = softmax(rs.arrays["logits"][:, :-1].astype(np.float64), axis=1).max(axis=1)


def _check_score_key(rs: RecordSet, score_key: str, role: str) -> None:
    _add_derived_scores(rs, score_key)
    arr = rs.arrays.get(score_key)
    if arr is None or score_key in _NOT_SCORES or arr.ndim != 1 or arr.dtype.kind != "f":
        usable = sorted(k for k, v in rs.arrays.items() if v.ndim == 1 and v.dtype.kind == "f" and k not in _NOT_SCORES)
        what = "has no" if arr is None else "has a non-score"
        raise ValueError(f"{role} records {rs.path} {what} array {score_key!r}; usable --score-key values: "
                         f"{', '.join(usable + ([] if 'msp' in usable else ['msp']))}")


@dataclass
class OODEvaluation:
    """One evaluation of ID vs OOD records: what every report, box-level scoring and the demo read."""

    protocol: str
    id_set: RecordSet
    ood_sets: Dict[str, RecordSet]  # OOD set name -> records
    threshold: float
    threshold_source: str
    f1: Optional[float]  # F1 at the threshold (global-f1 protocol only)
    score_key: str
    kept: Dict[str, np.ndarray]  # set name (the ID set and each OOD set) -> bool mask of the detections that count
    comparison: Comparison  # {score_key: {set: kept scores}}

    @property
    def id_name(self) -> str:
        return self.id_set.name

    @property
    def sets(self) -> Dict[str, RecordSet]:
        """Every set by name, the ID set first."""
        return {self.id_name: self.id_set, **self.ood_sets}

    def kept_values(self, key: str, name: str) -> np.ndarray:
        """Array ``key`` of set ``name`` on its kept detections (float64 for 1-D float arrays)."""
        values = self.sets[name].arrays[key][self.kept[name]]
        return values.astype(np.float64) if values.ndim == 1 and values.dtype.kind == "f" else values

    def metrics(self, name: str) -> dict:
        """The metrics.json entry of OOD set ``name``."""
        m = self.comparison.metrics[self.score_key][name]
        out = {k: m[k] for k in METRIC_KEYS}
        out.update(threshold=self.threshold, n_id=m["n_id"], n_ood=m["n_ood"], score_key=self.score_key,
                   score_at_tpr95=m["fpr95_threshold"], protocol=self.protocol)
        return out


def _set_names(ood_sets: Sequence[RecordSet]) -> List[str]:
    names = [rs.name for rs in ood_sets]
    for i, name in enumerate(names):
        if names.index(name) != i:
            raise ValueError(f"two --ood records are for dataset {name!r} ({ood_sets[names.index(name)].path}, "
                             f"{ood_sets[i].path}); give each OOD set once")
    return names


def _check_pair(id_set: RecordSet, rs: RecordSet) -> None:
    if os.path.abspath(rs.path) == os.path.abspath(id_set.path) or rs.name == id_set.name:
        raise ValueError(f"OOD records {rs.path} are of the ID set {id_set.name!r} ({id_set.path}); give the "
                         "records of an OOD set")
    if same_detections(rs.arrays, id_set.arrays):
        raise ValueError(f"OOD records {rs.path} hold the same detections as the ID records {id_set.path} "
                         f"(a copy under another dataset name, {rs.name!r}?); give the records of an OOD set")
    check_same_model("ID", id_set.path, id_set.meta, "OOD", rs.path, rs.meta)
    if rs.name in config_datasets(id_set.meta, "TRAIN"):
        raise ValueError(f"OOD records {rs.path} are of {rs.name!r}, a training set of the model (DATASETS.TRAIN); "
                         "give the records of an OOD set")
    if rs.meta["model"] != id_set.meta["model"]:
        logger.warning("OOD records %s are from model %r, ID records from %r", rs.path, rs.meta["model"],
                       id_set.meta["model"])


def evaluate_ood(id_path: str, ood_paths: Sequence[str], thres: Optional[float] = None,
                 score_key: str = "energy", protocol: str = "papers") -> OODEvaluation:
    """Load and check every records file, pick the threshold and the kept detections under ``protocol``, and
    compute the metrics of each OOD set (module docstring)."""
    _check_protocol(protocol)
    if not ood_paths:
        raise ValueError("give at least one --ood records file")
    if len(set(map(os.path.abspath, ood_paths))) != len(ood_paths):
        raise ValueError("the same --ood records file is given twice")
    id_set = RecordSet.load(id_path)
    ood_list = [RecordSet.load(p) for p in ood_paths]
    names = _set_names(ood_list)
    for rs in ood_list:
        _check_pair(id_set, rs)
    roles = [(id_set, "ID")] + [(rs, "OOD") for rs in ood_list]
    for rs, role in roles:
        _check_score_key(rs, score_key, role)
    threshold, source, f1 = detection_threshold(id_set, thres, protocol)
    kept = {rs.name: _kept_mask(rs, threshold, protocol, role) for rs, role in roles}
    for rs, role in roles:
        if not np.all(np.isfinite(rs.arrays[score_key][kept[rs.name]])):
            raise ValueError(f"{role} records {rs.path}: {score_key!r} has NaN or infinite values among kept "
                             "detections")
    scores = {rs.name: rs.arrays[score_key][kept[rs.name]].astype(np.float64) for rs, _ in roles}
    comparison = compare({score_key: scores}, id_set.name, fpr_point=PROTOCOLS[protocol][0])
    return OODEvaluation(protocol=protocol, id_set=id_set, ood_sets=dict(zip(names, ood_list)), threshold=threshold,
                         threshold_source=source, f1=f1, score_key=score_key, kept=kept, comparison=comparison)


def format_table(ev: OODEvaluation) -> str:
    f1 = f", F1 {ev.f1:.3f}" if ev.f1 is not None else ""
    rule = "max inlier-class probability" if ev.protocol == "papers" else "detection score"
    title = (f"ID: {ev.id_name} ({ev.id_set.meta['model']}); protocol {ev.protocol} ({PROTOCOLS[ev.protocol][1]}); "
             f"kept: {rule} >= {ev.threshold:.4f} ({ev.threshold_source}{f1}); OOD score: {ev.score_key} "
             "(higher = more ID); counts of kept detections")
    return comparison_table(ev.comparison, title, "score", "detections kept").rstrip("\n")


def _image_files(rs: RecordSet, dataset_dir: Optional[str]) -> Dict[int, str]:
    """image id -> file, from the records (apply_net writes them), else from a built-in dataset's json."""
    if isinstance(rs.meta.get("image_files"), dict):
        return {int(k): str(v) for k, v in rs.meta["image_files"].items()}
    from ..data.builtin import BUILTIN_DATASETS, dataset_paths
    from .draw import image_files

    json_file, image_root = dataset_paths(rs.name, dataset_dir) if rs.name in BUILTIN_DATASETS else (None, None)
    if json_file is None or not os.path.isfile(json_file):
        logger.warning("not drawing %s: its records name no image files, it is not a built-in dataset, or %s is "
                       "missing", rs.name, json_file)
        return {}
    return image_files(json_file, image_root)


def _drawings(ev: OODEvaluation, max_images: int, dataset_dir: Optional[str]) -> Dict[str, bytes]:
    """images/<set>/<image id>.png for the ID set and each OOD set whose images are found."""
    from .draw import draw_detections

    # the 95%-TPR cut of each OOD set (under fpr_point "closest" it can depend on the OOD scores too); the ID
    # set is drawn with the first OOD set's
    cuts = {name: ev.metrics(name)["score_at_tpr95"] for name in ev.ood_sets}
    cuts[ev.id_name] = next(iter(cuts.values()))
    out = {}
    for name, rs in ev.sets.items():
        files = _image_files(rs, dataset_dir)
        if not files:
            continue
        pngs = draw_detections(rs.arrays, files, rs.meta["class_names"], ev.kept[name], ev.score_key, cuts[name],
                               max_images)
        out.update({f"images/{safe_name(name)}/{i:08d}.png": data for i, data in pngs.items()})
    return out


def render_report(ev: OODEvaluation, draw: int = 0, dataset_dir: Optional[str] = None) -> Dict[str, bytes]:
    """File name -> contents: metrics.json, metrics.csv, roc.png, hist_<set>.png, and with ``draw`` > 0
    up to that many images per set with the kept detections drawn (images/<set>/<image id>.png)."""
    files = {"metrics.json": json_bytes({name: ev.metrics(name) for name in ev.ood_sets}, indent=2)}
    key, id_name = ev.score_key, ev.id_name
    id_scores = ev.kept_values(key, id_name)
    files["metrics.csv"] = comparison_csv(ev.comparison, "score_key",
                                          {key: {"protocol": ev.protocol, "threshold": ev.threshold}},
                                          ["protocol", "threshold"]).encode()
    files["roc.png"] = roc_png({name: (id_scores, ev.kept_values(key, name)) for name in ev.ood_sets},
                               f"ROC, {key}: {id_name} vs OOD ({ev.protocol} protocol)",
                               xlabel="FPR (OOD detections kept)", ylabel="TPR (ID detections kept)")
    for name in ev.ood_sets:
        fname, i = f"hist_{safe_name(name)}.png", 1
        while fname in files:  # two set names that differ only in unsafe characters
            i += 1
            fname = f"hist_{safe_name(name)}_{i}.png"
        m = ev.metrics(name)
        files[fname] = hist_png({f"ID: {id_name}": id_scores, f"OOD: {name}": ev.kept_values(key, name)},
                                f"FPR95 {100 * m['fpr95']:.1f}%, AUROC {100 * m['auroc']:.1f}% ({ev.protocol})",
                                f"{key} (higher = more ID)", cut=m["score_at_tpr95"])
    if draw > 0:
        files.update(_drawings(ev, draw, dataset_dir))
    return files


def write_report(ev: OODEvaluation, output_dir: str, draw: int = 0, dataset_dir: Optional[str] = None) -> List[str]:
    """Render the report, then write it as the whole content of ``output_dir`` (one generation)."""
    files = render_report(ev, draw, dataset_dir)  # render everything first: nothing is written if this fails
    return replace_folder(output_dir, files, REPORT_MARKER)


def run_report(id_path: str, ood_paths: Sequence[str], output_dir: str, thres: Optional[float] = None,
               score_key: str = "energy", draw: int = 0, dataset_dir: Optional[str] = None,
               protocol: str = "papers") -> Tuple[OODEvaluation, List[str]]:
    """Evaluate and write the report; returns ``(evaluation, written paths)``."""
    check_replaceable_folder(output_dir, REPORT_MARKER)  # before any work
    ev = evaluate_ood(id_path, ood_paths, thres, score_key, protocol)
    return ev, write_report(ev, output_dir, draw, dataset_dir)
