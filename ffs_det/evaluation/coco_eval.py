"""One COCOeval of a detector's boxes on an annotated set: its box AP and the papers' detection threshold.

apply_net runs pycocotools' ``COCOeval`` once per annotated set (in the model's classes) and reads two things
from it:

* **box AP** — the numbers detectron2's ``COCOEvaluator`` reports (AP, AP50, AP75, APs, APm, APl and
  ``AP-<class>``, in %), from the same ground truth (the set's json when registered from one, else
  detectron2's ``convert_to_coco_dict``);
* **the papers' detection threshold** — as the released VOS/FFS evaluation computes it
  (deeplearning-wisc/vos 6dd9c27, ``detection/offline_evaluation/compute_average_precision.py``): precision
  ``eval["precision"]`` averaged over the ten IoU thresholds 0.50:0.95 (area "all", maxDets 100), F1
  against each recall threshold ``params.recThrs``, per class the score ``eval["scores"]`` (also averaged
  over IoU thresholds) at the maximum F1, zeros dropped, the mean over classes; then rounded to 4 decimals,
  as ``compute_ood_probabilistic_metrics.py`` does when it reads that value back. One deliberate
  difference: a class COCOeval marks -1 (no ground truth in the set) is left out of the mean and reported as
  ``None``; the released code would average its -1 in. (A class with ground truth but no detection scores 0
  and is dropped with the zeros, as in the released code.)

Detections are evaluated unrounded (apply_net's ``coco_detections.json`` rounds them for size).
"""
import contextlib
import io
import logging
import os
from typing import Dict, List, Optional

import numpy as np

from detectron2.data import MetadataCatalog

__all__ = ["COCO_METRICS", "evaluate_boxes", "papers_threshold", "box_ap"]

logger = logging.getLogger(__name__)

COCO_METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
# decimals the released evaluation keeps of the threshold (round(float(...), 4) when it is read back)
THRESHOLD_DECIMALS = 4


def _ground_truth(dataset_name: str):
    from pycocotools.coco import COCO

    meta = MetadataCatalog.get(dataset_name)
    json_file = getattr(meta, "json_file", None)
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        if json_file and os.path.isfile(json_file):
            return COCO(json_file)
        from detectron2.data.datasets.coco import convert_to_coco_dict

        api = COCO()
        api.dataset = convert_to_coco_dict(dataset_name)
        api.createIndex()
    return api


def _dataset_category_ids(dataset_name: str, gt, num_classes: int) -> List[int]:
    """The json category id of each contiguous class: detectron2's mapping when the set has one (set when its
    dicts are loaded), else the json's ids in increasing order (how detectron2's load_coco_json maps them)."""
    meta = MetadataCatalog.get(dataset_name)
    mapping = getattr(meta, "thing_dataset_id_to_contiguous_id", None)
    if mapping:
        to_dataset = {v: k for k, v in mapping.items()}
        return [int(to_dataset[c]) for c in range(num_classes)]
    ids = sorted(int(i) for i in gt.getCatIds())
    if getattr(meta, "json_file", None) and len(ids) == num_classes:
        return ids
    return list(range(num_classes))  # convert_to_coco_dict keeps contiguous ids


def box_ap(coco_eval, class_names: List[str]) -> Dict[str, float]:
    """The AP numbers (in %) detectron2's COCOEvaluator derives from a summarised ``COCOeval``."""
    out = {k: float(100 * v) if v >= 0 else float("nan") for k, v in zip(COCO_METRICS, coco_eval.stats)}
    precision = coco_eval.eval["precision"]  # (IoU, recall, class, area, maxDets)
    for k, name in enumerate(class_names):
        p = precision[:, :, k, 0, -1]
        p = p[p > -1]
        out[f"AP-{name}"] = float(100 * p.mean()) if p.size else float("nan")
    return out


def papers_threshold(coco_eval, class_names: List[str]) -> Optional[dict]:
    """The released VOS/FFS detection threshold from an accumulated ``COCOeval`` (module docstring).

    Returns ``{"threshold": rounded to 4 decimals, "unrounded": mean, "per_class": {name: score or None}}``,
    or None when no class yields one."""
    precision = coco_eval.eval["precision"].mean(0)[:, :, 0, 2]  # (recall thresholds, classes)
    scores = coco_eval.eval["scores"].mean(0)[:, :, 0, 2]
    recalls = np.asarray(coco_eval.params.recThrs)[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):  # 0/0 at recall 0, as in the released code
        f1 = 2 * (precision * recalls) / (precision + recalls)
    best = f1.argmax(0)
    per_class = scores[best, np.arange(scores.shape[1])]
    evaluated = ~np.all(precision == -1, axis=0)  # -1: COCOeval skipped the class (no ground truth)
    usable = evaluated & (per_class != 0)
    named = {name: (float(per_class[k]) if evaluated[k] else None) for k, name in enumerate(class_names)}
    if not usable.any():
        return None
    unrounded = float(per_class[usable].mean())
    return {"threshold": round(unrounded, THRESHOLD_DECIMALS), "unrounded": unrounded, "per_class": named}


def evaluate_boxes(dataset_name: str, arrays: Dict[str, np.ndarray], image_ids: List[int],
                   class_names: List[str]) -> Dict:
    """COCOeval of the records ``arrays`` on ``dataset_name`` over ``image_ids``: ``{"bbox": box AP,
    "papers_threshold": papers_threshold(...) or None}`` (AP NaN and no threshold without detections)."""
    from pycocotools.cocoeval import COCOeval

    if len(arrays["score"]) == 0:
        logger.warning("%s: no detections; box AP is NaN and there is no detection threshold", dataset_name)
        return {"bbox": {k: float("nan") for k in COCO_METRICS}, "papers_threshold": None}
    gt = _ground_truth(dataset_name)
    cat_ids = _dataset_category_ids(dataset_name, gt, len(class_names))
    boxes = arrays["boxes"].astype(np.float64)
    results = [{"image_id": int(i), "category_id": cat_ids[int(c)], "score": float(s),
                "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]]}
               for i, c, b, s in zip(arrays["image_id"], arrays["pred_class"], boxes.tolist(), arrays["score"])]
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        ev = COCOeval(gt, gt.loadRes(results), iouType="bbox")
        ev.params.imgIds = sorted(int(i) for i in image_ids)
        ev.params.catIds = sorted(cat_ids)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    logger.info("COCOeval of %s:\n%s", dataset_name, printed.getvalue().rstrip())
    axis_names = [class_names[k] for k in np.argsort(cat_ids, kind="stable")]  # COCOeval's class axis: sorted ids
    return {"bbox": box_ap(ev, axis_names), "papers_threshold": papers_threshold(ev, axis_names)}
