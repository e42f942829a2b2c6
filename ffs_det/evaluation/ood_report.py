"""The VOS/FFS OOD-detection report: ID and OOD records -> FPR95 / AUROC / AUPR table, files and plots.

Protocol: a detection counts when its ``score`` (probability of its predicted inlier class) is >= a
threshold. By default the threshold is the one maximising F1 of "kept" vs ``gt_matched`` on the ID
records, with every ground-truth box counted as a positive (``meta["num_gt"]``); unannotated ID records
need an explicit threshold. Kept ID detections are the positives and kept OOD detections the negatives of
an OOD score (``energy`` by default, or ``score`` or any other 1-D array in the records; higher = more
ID), and :func:`ffs_det.density.metrics.ood_metrics` computes the metrics.

Everything is loaded, checked and rendered before anything is written, so a bad input leaves no output;
the output folder is then written as one generation (:func:`ffs_det.atomic_io.replace_folder`): a rerun into
it replaces the previous report whole (no stale plot or drawing stays), and a folder holding other files
(e.g. an apply_net dataset folder) is refused.
"""
import json
import logging
import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..atomic_io import check_replaceable_folder, replace_folder
from ..density.metrics import optimal_f1_threshold
from ..density.report import METRIC_KEYS, compare, comparison_csv, comparison_table, hist_png, roc_png, \
    safe_name
from .records import load_records

__all__ = ["RecordSet", "detection_threshold", "kept_scores", "evaluate_ood", "format_table", "render_report",
           "write_report", "run_report", "METRIC_KEYS"]

logger = logging.getLogger(__name__)

# written into every report folder (with the list of its files); marks a folder a rerun may replace
REPORT_MARKER = ".ffs_det_ood_report"
_NOT_SCORES = ("image_id", "pred_class", "gt_matched")


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
        return cls(path, arrays, meta)


def detection_threshold(id_set: RecordSet, thres: Optional[float] = None) -> Tuple[float, str, Optional[float]]:
    """``(threshold, how it was chosen, F1 on the ID set or None)``."""
    if thres is not None:
        if not np.isfinite(thres):
            raise ValueError(f"--thres must be a finite number, got {thres}")
        return float(thres), "given (--thres)", None
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
    return t, "optimal F1 on the ID records", f1


def kept_scores(rs: RecordSet, threshold: float, score_key: str, role: str) -> np.ndarray:
    """The ``score_key`` values (float64) of the detections with ``score >= threshold``."""
    arr = rs.arrays.get(score_key)
    usable = sorted(k for k, v in rs.arrays.items() if v.ndim == 1 and v.dtype.kind == "f" and k not in _NOT_SCORES)
    if arr is None or score_key in _NOT_SCORES or arr.ndim != 1 or arr.dtype.kind != "f":
        what = "has no" if arr is None else "has a non-score"
        raise ValueError(f"{role} records {rs.path} {what} array {score_key!r}; usable --score-key values: "
                         f"{', '.join(usable)}")
    keep = rs.arrays["score"] >= threshold
    if not keep.any():
        raise ValueError(f"{role} records {rs.path} ({rs.name}): none of its {keep.size} detections has "
                         f"score >= {threshold:.6g}; nothing to evaluate (lower --thres?)")
    vals = arr[keep].astype(np.float64)
    if not np.all(np.isfinite(vals)):
        raise ValueError(f"{role} records {rs.path}: {score_key!r} has NaN or infinite values among kept detections")
    return vals


def _same_detections(a: RecordSet, b: RecordSet) -> bool:
    keys = ("image_id", "score", "boxes")
    return all(k in a.arrays and k in b.arrays and np.array_equal(a.arrays[k], b.arrays[k]) for k in keys)


def _set_names(ood_sets: Sequence[RecordSet]) -> List[str]:
    names = [rs.name for rs in ood_sets]
    for i, name in enumerate(names):
        if names.index(name) != i:
            raise ValueError(f"two --ood records are for dataset {name!r} ({ood_sets[names.index(name)].path}, "
                             f"{ood_sets[i].path}); give each OOD set once")
    return names


def evaluate_ood(id_path: str, ood_paths: Sequence[str], thres: Optional[float] = None,
                 score_key: str = "energy") -> dict:
    """Load and check every records file, pick the threshold, and compute the metrics of each OOD set.

    Returns ``{"id": {...}, "threshold": t, "threshold_source": str, "f1": f1 or None, "score_key": key,
    "sets": {name: {"path", "metrics", "id_scores", "ood_scores", "records"}}}`` (metrics as written to
    metrics.json; records the loaded :class:`RecordSet`).
    """
    if not ood_paths:
        raise ValueError("give at least one --ood records file")
    if len(set(map(os.path.abspath, ood_paths))) != len(ood_paths):
        raise ValueError("the same --ood records file is given twice")
    id_set = RecordSet.load(id_path)
    ood_sets = [RecordSet.load(p) for p in ood_paths]
    names = _set_names(ood_sets)
    for rs in ood_sets:
        if os.path.abspath(rs.path) == os.path.abspath(id_path) or rs.name == id_set.name:
            raise ValueError(f"OOD records {rs.path} are of the ID set {id_set.name!r} ({id_path}); give the records "
                             "of an OOD set")
        if _same_detections(rs, id_set):
            raise ValueError(f"OOD records {rs.path} hold the same detections as the ID records {id_path} "
                             f"(a copy under another dataset name, {rs.name!r}?); give the records of an OOD set")
        if rs.meta["class_names"] != id_set.meta["class_names"]:
            raise ValueError(f"OOD records {rs.path} come from a model with classes {rs.meta['class_names']}, "
                             f"the ID records {id_path} from one with {id_set.meta['class_names']}")
        sha = rs.meta.get("weights_sha256"), id_set.meta.get("weights_sha256")
        if None not in sha and sha[0] != sha[1]:
            raise ValueError(f"OOD records {rs.path} come from another checkpoint than the ID records {id_path} "
                             f"(weights sha256 {sha[0][:12]}... vs {sha[1][:12]}..., "
                             f"{rs.meta.get('weights')} vs {id_set.meta.get('weights')}); rerun apply_net on both "
                             "sets with one checkpoint")
        if rs.meta["model"] != id_set.meta["model"]:
            logger.warning("OOD records %s are from model %r, ID records from %r", rs.path, rs.meta["model"],
                           id_set.meta["model"])
    threshold, source, f1 = detection_threshold(id_set, thres)
    id_scores = kept_scores(id_set, threshold, score_key, "ID")
    kept = {name: kept_scores(rs, threshold, score_key, "OOD") for name, rs in zip(names, ood_sets)}
    comparison = compare({score_key: {id_set.name: id_scores, **kept}}, id_set.name)
    report = {"id": {"path": id_path, "dataset": id_set.name, "model": id_set.meta["model"],
                     "n_detections": int(id_set.arrays["score"].size), "records": id_set},
              "threshold": threshold, "threshold_source": source, "f1": f1, "score_key": score_key, "sets": {},
              "comparison": comparison}
    for name, rs in zip(names, ood_sets):
        m = comparison.metrics[score_key][name]
        metrics = {k: m[k] for k in METRIC_KEYS}
        metrics.update(threshold=threshold, n_id=m["n_id"], n_ood=m["n_ood"], score_key=score_key,
                       score_at_tpr95=m["fpr95_threshold"])
        report["sets"][name] = {"path": rs.path, "metrics": metrics, "id_scores": id_scores, "ood_scores": kept[name],
                                "records": rs}
    return report


def format_table(report: dict) -> str:
    f1 = f", F1 {report['f1']:.3f}" if report["f1"] is not None else ""
    title = (f"ID: {report['id']['dataset']} ({report['id']['model']}); detection score >= "
             f"{report['threshold']:.4f} ({report['threshold_source']}{f1}); OOD score: {report['score_key']} "
             "(higher = more ID); counts of kept detections")
    return comparison_table(report["comparison"], title, "score", "detections kept").rstrip("\n")


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


def _drawings(report: dict, max_images: int, dataset_dir: Optional[str]) -> Dict[str, bytes]:
    """images/<set>/<image id>.png for the ID set and each OOD set whose images are found."""
    from .draw import draw_detections

    cut = next(iter(report["sets"].values()))["metrics"]["score_at_tpr95"]  # depends on the ID scores only
    out = {}
    sets = [report["id"]["records"]] + [s["records"] for s in report["sets"].values()]
    for rs in sets:
        files = _image_files(rs, dataset_dir)
        if not files:
            continue
        pngs = draw_detections(rs.arrays, files, rs.meta["class_names"], report["threshold"],
                               report["score_key"], cut, max_images)
        out.update({f"images/{safe_name(rs.name)}/{i:08d}.png": data for i, data in pngs.items()})
    return out


def render_report(report: dict, draw: int = 0, dataset_dir: Optional[str] = None) -> Dict[str, bytes]:
    """File name -> contents: metrics.json, metrics.csv, roc.png, hist_<set>.png, and with ``draw`` > 0
    up to that many images per set with the kept detections drawn (images/<set>/<image id>.png)."""
    metrics = {name: s["metrics"] for name, s in report["sets"].items()}
    files = {"metrics.json": (json.dumps(metrics, indent=2) + "\n").encode()}
    key, id_name = report["score_key"], report["id"]["dataset"]
    files["metrics.csv"] = comparison_csv(report["comparison"], "score_key", {key: {"threshold": report["threshold"]}},
                                    ["threshold"]).encode()
    files["roc.png"] = roc_png({name: (s["id_scores"], s["ood_scores"]) for name, s in report["sets"].items()},
                               f"ROC, {key}: {id_name} vs OOD", xlabel="FPR (OOD detections kept)",
                               ylabel="TPR (ID detections kept)")
    for name, s in report["sets"].items():
        fname, i = f"hist_{safe_name(name)}.png", 1
        while fname in files:  # two set names that differ only in unsafe characters
            i += 1
            fname = f"hist_{safe_name(name)}_{i}.png"
        m = s["metrics"]
        files[fname] = hist_png({f"ID: {id_name}": s["id_scores"], f"OOD: {name}": s["ood_scores"]},
                                f"FPR95 {100 * m['fpr95']:.1f}%, AUROC {100 * m['auroc']:.1f}%",
                                f"{key} (higher = more ID)", cut=m["score_at_tpr95"])
    if draw > 0:
        files.update(_drawings(report, draw, dataset_dir))
    return files


def write_report(report: dict, output_dir: str, draw: int = 0, dataset_dir: Optional[str] = None) -> List[str]:
    """Render the report, then write it as the whole content of ``output_dir`` (one generation)."""
    files = render_report(report, draw, dataset_dir)  # render everything first: nothing is written if this fails
    return replace_folder(output_dir, files, REPORT_MARKER)


def run_report(id_path: str, ood_paths: Sequence[str], output_dir: str, thres: Optional[float] = None,
               score_key: str = "energy", draw: int = 0, dataset_dir: Optional[str] = None) -> Tuple[dict, List[str]]:
    """Evaluate and write the report; returns ``(report, written paths)``."""
    check_replaceable_folder(output_dir, REPORT_MARKER)  # before any work
    report = evaluate_ood(id_path, ood_paths, thres, score_key)
    return report, write_report(report, output_dir, draw, dataset_dir)
