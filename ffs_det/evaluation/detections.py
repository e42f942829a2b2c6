"""A detectron2 DatasetEvaluator that keeps every detection as a per-box record for OOD evaluation.

Records (see :mod:`ffs_det.evaluation.records` for the file format) hold, per detection: image id, box,
class, score, energy, logits, and each optional array of the format that the model's output carries under its
name (box features, FFS's flow log-density, SAFE's features). On annotated sets each
detection is also marked ``gt_matched`` when it matches a ground-truth box of its class at IoU >= 0.5
(greedy in decreasing score, each ground-truth box matched at most once, crowd boxes ignored), which the
``global-f1`` protocol of eval_ood uses to pick its optimal-F1 score threshold.
"""
import itertools
import logging
from typing import Dict, List

import numpy as np
import torch

from detectron2.evaluation import DatasetEvaluator
from detectron2.structures import Boxes, BoxMode, pairwise_iou
from detectron2.utils import comm

from .records import OPTIONAL, as_record_array

__all__ = ["RecordsEvaluator", "match_to_ground_truth", "annotate_matches", "ground_truth"]

logger = logging.getLogger(__name__)

MATCH_IOU = 0.5
# the optional records arrays a model's output Instances carry under the same name (gt_matched is added after)
_MODEL_ARRAYS = tuple(k for k in OPTIONAL if k != "gt_matched")


def match_to_ground_truth(boxes: np.ndarray, classes: np.ndarray, scores: np.ndarray, gt_boxes: np.ndarray,
                          gt_classes: np.ndarray, iou_threshold: float = MATCH_IOU) -> np.ndarray:
    """Boolean ``(N,)``: detection matched an unmatched ground truth of its class at IoU >= threshold."""
    matched = np.zeros(len(boxes), dtype=bool)
    if len(boxes) == 0 or len(gt_boxes) == 0:
        return matched
    iou = pairwise_iou(Boxes(torch.as_tensor(boxes)), Boxes(torch.as_tensor(gt_boxes))).numpy()
    iou[classes[:, None] != gt_classes[None, :]] = -1.0
    taken = np.zeros(len(gt_boxes), dtype=bool)
    for i in np.argsort(-scores, kind="stable"):
        candidates = np.where(taken, -1.0, iou[i])
        j = int(np.argmax(candidates))
        if candidates[j] >= iou_threshold:
            matched[i] = taken[j] = True
    return matched


class RecordsEvaluator(DatasetEvaluator):
    """Collect per-detection records of ``dataset_name``; ``evaluate()`` returns them as numpy arrays."""

    def __init__(self, dataset_name: str):
        self.dataset_name = dataset_name
        self._chunks: List[Dict[str, np.ndarray]] = []

    def reset(self):
        self._chunks = []

    def process(self, inputs, outputs):
        for inp, out in zip(inputs, outputs):
            inst = out["instances"].to("cpu")
            for field in ("energy", "logits"):
                if not inst.has(field):
                    raise ValueError(f"model outputs carry no '{field}': build it with ROI_HEADS.NAME FFSROIHeads")
            n = len(inst)
            try:
                image_id = int(inp["image_id"])
            except (KeyError, TypeError, ValueError):
                raise ValueError(f"{self.dataset_name}: records need integer image ids, got "
                                 f"{inp.get('image_id')!r}") from None
            arrays = {"image_id": np.full(n, image_id), "boxes": inst.pred_boxes.tensor.numpy(),
                      "pred_class": inst.pred_classes.numpy(), "score": inst.scores.numpy(),
                      "energy": inst.energy.numpy(), "logits": inst.logits.numpy(),
                      **{k: inst.get(k).numpy() for k in _MODEL_ARRAYS if inst.has(k)}}
            chunk = {k: as_record_array(k, v) for k, v in arrays.items()}
            self._chunks.append(chunk)

    def evaluate(self):
        chunks = list(itertools.chain(*comm.gather(self._chunks, dst=0)))
        if not comm.is_main_process():
            return {}
        if not chunks:
            raise ValueError(f"{self.dataset_name}: no images were processed")
        keys = set(chunks[0])
        return {"records": {k: np.concatenate([c[k] for c in chunks]) for k in sorted(keys)}}


def ground_truth(record: dict):
    """``(boxes (M, 4) float32 XYXY, classes (M,) int64)`` of the non-crowd annotations of a dataset record."""
    anns = [a for a in record.get("annotations", []) if not a.get("iscrowd", 0)]
    boxes = np.array([BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS) for a in anns],
                     dtype=np.float32).reshape(-1, 4)
    return boxes, np.array([a["category_id"] for a in anns], dtype=np.int64)


def annotate_matches(arrays: Dict[str, np.ndarray], dicts: List[dict]):
    """Add ``gt_matched`` to ``arrays`` (matched against the dataset ``dicts``); return the number of
    (non-crowd) ground-truth boxes, or None when the dataset has no annotations."""
    if not any("annotations" in d for d in dicts):
        return None
    truths = [ground_truth(d) for d in dicts]
    gt = {int(d["image_id"]): truth for d, truth in zip(dicts, truths)}
    num_gt = sum(len(classes) for _, classes in truths)
    matched = np.zeros(len(arrays["image_id"]), dtype=bool)
    for image_id in np.unique(arrays["image_id"]):
        idx = np.flatnonzero(arrays["image_id"] == image_id)
        gt_boxes, gt_classes = gt.get(int(image_id), (np.zeros((0, 4), np.float32), np.zeros(0, np.int64)))
        matched[idx] = match_to_ground_truth(arrays["boxes"][idx], arrays["pred_class"][idx],
                                             arrays["score"][idx], gt_boxes, gt_classes)
    arrays["gt_matched"] = matched
    return num_gt
