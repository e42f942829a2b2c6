"""Run a trained detector on a registered dataset and write its per-detection records.

For each (model, dataset) pair, into ``output_dir``:

* ``records.npz`` — per-detection records for :mod:`tools/eval_ood.py` (format in :mod:`.records`);
* ``coco_detections.json`` — the detections in COCO result format (category ids of the dataset's json
  when it has them, else ``class + 1``);
* ``metrics.json`` — COCO box AP when the dataset is annotated with the model's classes, plus counts;
* ``proposals.npz`` — on request (``proposals=``), the box features of the set's foreground proposals
  (:mod:`.proposals`), for fitting post-hoc densities on many boxes.

The records' meta names the space of the saved ``features`` (``feature_space``: ``FFS.OUTPUT_FEATURE_SPACE``).
A stock detectron2 Faster R-CNN config (``ROI_HEADS.NAME: StandardROIHeads``) runs as an
:class:`~ffs_det.modeling.FFSROIHeads` with ``FFS.SYNTHESIS none``, which has the same weights and detections
and adds the records' energy, logits and features (:func:`records_cfg`).

On a set annotated in the model's classes one pycocotools ``COCOeval`` (:mod:`.coco_eval`) gives both the
box AP and the papers' detection threshold, which the records' meta keeps (``papers_threshold``: the value,
rounded as the released VOS/FFS evaluation uses it, and its per-class values) for eval_ood's default
protocol; each detection is also marked ``gt_matched`` (greedy IoU 0.5) for the ``global-f1`` protocol.

The folder is written as one generation (:func:`ffs_det.atomic_io.atomic_dir`): a run that fails or is
killed leaves the previous folder whole, never the new records beside the old metrics. The records' meta
carries the checkpoint's SHA-256 (``weights_sha256``), so eval_ood refuses ID and OOD records of two
checkpoints even when they share a path.
"""
import logging
import os
import time
from typing import Dict, List, Optional

import numpy as np

from detectron2.data import DatasetCatalog, MetadataCatalog, build_detection_test_loader
from detectron2.data.samplers import InferenceSampler
from detectron2.evaluation import inference_on_dataset
from detectron2.modeling import build_model

from ..atomic_io import atomic_dir, atomic_write_json, check_replaceable_folder, file_sha256
from ..data.validate import CheckedDatasetMapper, check_image_files
from ..engine.checkpoint import SafeCheckpointer, pickle_refused
from .coco_eval import evaluate_boxes
from .detections import RecordsEvaluator, annotate_matches
from .records import proposal_meta, save_records

__all__ = ["apply_model", "check_dataset", "load_model", "records_cfg", "OUTPUT_FILES"]

logger = logging.getLogger(__name__)

# what apply_model writes into a dataset folder; a folder holding anything else is not replaced
OUTPUT_FILES = ("records.npz", "coco_detections.json", "metrics.json")
PROPOSALS_FILE = "proposals.npz"


def records_cfg(cfg):
    """``cfg``, or for a stock detectron2 config (``MODEL.ROI_HEADS.NAME: StandardROIHeads``) a copy that builds
    :class:`~ffs_det.modeling.FFSROIHeads` with ``FFS.SYNTHESIS none``: the same modules and state dict (no
    parameter is added), the same detections, plus each box's energy, logits and features for the records."""
    if cfg.MODEL.ROI_HEADS.NAME != "StandardROIHeads":
        return cfg
    cfg = cfg.clone()
    cfg.defrost()
    cfg.MODEL.ROI_HEADS.NAME = "FFSROIHeads"
    cfg.FFS.SYNTHESIS = "none"
    cfg.freeze()
    logger.info("MODEL.ROI_HEADS.NAME StandardROIHeads: run as FFSROIHeads with FFS.SYNTHESIS none (same weights "
                "and detections, plus energy, logits and features per box)")
    return cfg


def load_model(cfg, allow_pickle: bool = False):
    """Build the model of ``cfg`` (:func:`records_cfg`) and load ``cfg.MODEL.WEIGHTS``: FileNotFoundError when
    the file is missing, ValueError when it is unreadable, does not fit the model (another architecture or
    NUM_CLASSES), or is a ``.pkl`` (read with pickle, which runs code from the file) without ``allow_pickle``."""
    weights = cfg.MODEL.WEIGHTS
    if not weights or not os.path.isfile(weights):
        raise FileNotFoundError(f"MODEL.WEIGHTS: checkpoint not found: {weights or repr(weights)}")
    if weights.endswith(".pkl") and not allow_pickle:  # before the model is built; SafeCheckpointer refuses it too
        raise ValueError(f"MODEL.WEIGHTS: {pickle_refused(weights)}")
    cfg = records_cfg(cfg)
    model = build_model(cfg)
    extra = SafeCheckpointer(model, full_model=True, allow_pickle=allow_pickle).load(weights)
    names = extra.get("class_names") if isinstance(extra, dict) else None
    valid = (isinstance(names, list) and len(names) == cfg.MODEL.ROI_HEADS.NUM_CLASSES
             and all(isinstance(n, str) for n in names))
    model.class_names = names if valid else None  # None: a checkpoint saved without them
    model.eval()
    return model


def _has_model_annotations(meta, dicts: List[dict], num_classes: int, class_names: Optional[List[str]]) -> bool:
    """Whether the dataset (its metadata and dicts) is annotated in the model's classes: not marked OOD, and
    its classes are the model's (by name when the model carries its class names, else by count)."""
    if getattr(meta, "is_ood", False):
        return False
    classes = list(getattr(meta, "thing_classes", []))
    same_classes = classes == class_names if class_names else len(classes) == num_classes
    return same_classes and any(d.get("annotations") for d in dicts)


def _model_class_names(cfg, model, annotated_dataset: Optional[str]):
    """The model's class names: those its checkpoint carries, else an annotated test set's, else the
    training set's, else the class indices."""
    if getattr(model, "class_names", None):
        return list(model.class_names)
    num_classes = cfg.MODEL.ROI_HEADS.NUM_CLASSES
    for name in [annotated_dataset, *cfg.DATASETS.TRAIN]:
        if name and name in MetadataCatalog.list():
            classes = getattr(MetadataCatalog.get(name), "thing_classes", None)
            if classes and len(classes) == num_classes:
                return list(classes)
    return [str(k) for k in range(num_classes)]


def _coco_detections(arrays: Dict[str, np.ndarray], meta):
    to_dataset_id = {v: k for k, v in getattr(meta, "thing_dataset_id_to_contiguous_id", {}).items()}
    boxes = arrays["boxes"].astype(float)
    return [
        {"image_id": int(i), "category_id": int(to_dataset_id.get(int(c), int(c) + 1)),
         "bbox": [round(b[0], 2), round(b[1], 2), round(b[2] - b[0], 2), round(b[3] - b[1], 2)],
         "score": round(float(s), 5)}
        for i, c, b, s in zip(arrays["image_id"], arrays["pred_class"], boxes, arrays["score"])
    ]


def _check_output_dir(output_dir: str) -> None:
    check_replaceable_folder(output_dir, allowed=OUTPUT_FILES + (PROPOSALS_FILE,), tool="apply_net")


def check_dataset(dataset_name: str, output_dir: str, annotated_for=None) -> List[dict]:
    """The checks of :func:`apply_model` that need no inference, and the dataset's dicts: ``output_dir`` may be
    replaced (absent, empty or written by apply_net), the dataset is registered, its json valid and its image
    files exist, and with ``annotated_for=(cfg, model, what)`` it is annotated in the model's classes (``what``,
    e.g. proposal features, needs that). A caller with several datasets checks them all before writing any."""
    _check_output_dir(output_dir)
    dicts = DatasetCatalog.get(dataset_name)  # unknown name / missing files: detectron2's or ffs_det's clear error
    check_image_files(dicts, f"dataset {dataset_name!r}")
    if annotated_for is not None:
        cfg, model, what = annotated_for
        if not _has_model_annotations(MetadataCatalog.get(dataset_name), dicts, cfg.MODEL.ROI_HEADS.NUM_CLASSES,
                                      getattr(model, "class_names", None)):
            raise ValueError(f"dataset {dataset_name!r}: {what} need a set annotated in the model's classes (the "
                             "ID training set); this one is an OOD set, unannotated, or in other classes")
    return dicts


def apply_model(cfg, dataset_name: str, output_dir: str, model=None, model_name: Optional[str] = None,
                proposals: Optional[Dict] = None, dicts: Optional[List[dict]] = None,
                safe: Optional[Dict] = None) -> Dict:
    """Run ``model`` (default: built from ``cfg``) on ``dataset_name``; write records, detections and mAP, and
    with ``proposals`` (keyword arguments of :func:`.proposals.proposal_records`, e.g.
    ``{"max_per_image": 50}``) the features of the set's foreground proposals.

    The dataset's dicts are read from the catalog once and handed to the loader, the ground-truth matching
    and the records (which keep each image's file name, ``meta["image_files"]``); ``dicts``: those
    :func:`check_dataset` returned (default: checked and read here). ``safe``: also SAFE's box features
    (:mod:`.safe`), ``{"adversarial": bool, "epsilon": float, "layers": list or None}``; with ``adversarial``
    (the ID training set) also those of the same boxes in FGSM-perturbed images."""
    _check_output_dir(output_dir)  # before the model is loaded
    cfg = records_cfg(cfg)
    model = model if model is not None else load_model(cfg)
    if dicts is None:  # before the work, not after
        needs = [w for w, on in (("proposal features", proposals is not None),
                                 ("SAFE's perturbed objects", bool(safe and safe.get("adversarial")))) if on]
        dicts = check_dataset(dataset_name, output_dir, (cfg, model, " and ".join(needs)) if needs else None)
    else:
        _check_output_dir(output_dir)
    dataset_meta = MetadataCatalog.get(dataset_name)
    num_classes = cfg.MODEL.ROI_HEADS.NUM_CLASSES
    with_map = _has_model_annotations(dataset_meta, dicts, num_classes, getattr(model, "class_names", None))
    loader = build_detection_test_loader(dicts, mapper=CheckedDatasetMapper(cfg, False),
                                         sampler=InferenceSampler(len(dicts)), num_workers=cfg.DATALOADER.NUM_WORKERS)
    runner, safe_meta = model, None
    if safe is not None:
        from .safe import DEFAULT_EPSILON, SafeFeatureModel

        epsilon = float(safe.get("epsilon", DEFAULT_EPSILON))
        runner = SafeFeatureModel(model, safe.get("layers"), epsilon=epsilon,
                                  records={int(d["image_id"]): d for d in dicts} if safe.get("adversarial") else None)
        safe_meta = {"layers": runner.layers, "adversarial": bool(safe.get("adversarial")), "epsilon": epsilon}
    start = time.perf_counter()
    arrays = inference_on_dataset(runner, loader, RecordsEvaluator(dataset_name))["records"]
    seconds = time.perf_counter() - start
    class_names = _model_class_names(cfg, model, dataset_name if with_map else None)
    # ground-truth matches and box AP only make sense for annotations in the model's own classes
    num_gt = annotate_matches(arrays, dicts) if with_map else None
    coco = evaluate_boxes(dataset_name, arrays, [d["image_id"] for d in dicts], class_names) if with_map else {}
    num_images = len(dicts)
    meta = {
        "dataset": dataset_name,
        "model": model_name or os.path.basename(os.path.dirname(cfg.MODEL.WEIGHTS)) or "model",
        "weights": cfg.MODEL.WEIGHTS,
        "weights_sha256": file_sha256(cfg.MODEL.WEIGHTS) if os.path.isfile(cfg.MODEL.WEIGHTS) else None,
        "num_classes": num_classes,
        "class_names": class_names,
        "num_images": num_images,
        "image_files": {str(int(d["image_id"])): d["file_name"] for d in dicts},
        "config": cfg.dump(),
    }
    if "features" in arrays:
        meta["feature_space"] = cfg.FFS.OUTPUT_FEATURE_SPACE
    if safe_meta is not None:
        meta["safe"] = safe_meta
    if num_gt is not None:
        meta["num_gt"] = num_gt
    if coco.get("papers_threshold"):
        meta["papers_threshold"] = coco["papers_threshold"]
    summary = {"dataset": dataset_name, "num_images": num_images, "num_detections": int(len(arrays["score"])),
               "seconds": round(seconds, 2), "images_per_second": round(num_images / max(seconds, 1e-9), 2)}
    if coco:
        summary["bbox"] = coco["bbox"]
        summary["papers_threshold"] = coco["papers_threshold"]
    proposal_arrays = None
    if proposals is not None:
        from .proposals import DEFAULT_MAX_BACKGROUND_PER_IMAGE, DEFAULT_MAX_PER_IMAGE, proposal_records

        settings = dict({"max_per_image": DEFAULT_MAX_PER_IMAGE, "max_background_per_image":
                         DEFAULT_MAX_BACKGROUND_PER_IMAGE, "iou": 0.5, "space": cfg.FFS.OUTPUT_FEATURE_SPACE,
                         "seed": 0}, **proposals)
        proposal_arrays, info = proposal_records(cfg, model, dataset_name, **settings)
        summary["proposals"] = dict(info, **settings)
        pmeta = proposal_meta(meta, settings)
    _check_output_dir(output_dir)
    with atomic_dir(output_dir) as tmp:
        records, detections, metrics = (os.path.join(tmp, name) for name in OUTPUT_FILES)
        save_records(records, arrays, meta)
        atomic_write_json(detections, _coco_detections(arrays, dataset_meta))
        atomic_write_json(metrics, summary, indent=2)
        if proposal_arrays is not None:
            save_records(os.path.join(tmp, PROPOSALS_FILE), proposal_arrays, pmeta)
    paths = {kind: os.path.join(output_dir, name) for kind, name in zip(("records", "detections", "metrics"),
                                                                         OUTPUT_FILES)}
    if proposal_arrays is not None:
        paths["proposals"] = os.path.join(output_dir, PROPOSALS_FILE)
    return {"paths": paths, "summary": summary}
