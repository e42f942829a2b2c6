"""Box features of the foreground proposals of an annotated set: many boxes per object to fit a density on.

A post-hoc density of box features needs many training boxes: a trained detector keeps about one detection per
object, while the FFS flow saw about a hundred foreground proposals per step during training. For every image
of an annotated set (the ID training set), :func:`proposal_records` runs the detector's backbone and RPN as at
inference, takes the RPN's proposals whose IoU with a ground-truth box is at least ``iou`` (the foreground rule
of detectron2's ROI heads, ``MODEL.ROI_HEADS.IOU_THRESHOLDS``), at most ``max_per_image`` of them (a seeded
random choice per image, the same on every run), the image's ground-truth boxes themselves, and at most
``max_background_per_image`` background proposals (IoU below ``iou`` with every ground-truth box: clutter, parts
and loose boxes around objects; they are never fitted on, but serve as in-image negatives), and computes
their box features (in ``space``: the box head's output or its pre-activation, see
:meth:`~ffs_det.modeling.roi_heads.FFSROIHeads.head_features`), logits and energy, and, for an FFS model, their
log-density under its flow.

The result is a records file (:mod:`.records`) with ``meta["kind"] = "proposals"``, ``meta["feature_space"]``,
and two more arrays: ``gt_class`` (int64, the class of the best-overlapping ground-truth box: the label the
class-conditional scorers fit on; K, the background index, for background proposals) and ``iou`` (float32, that
overlap; 1 for the ground-truth boxes). ``boxes``
are in the image's own pixels; ``pred_class``/``score`` are the classifier's inlier argmax and its probability.

Memory: ``features`` hold ``images x (max_per_image + objects + background per image) x D`` float32 values.
``max_boxes`` bounds the foreground proposals of the whole set: on a set of more than ``max_boxes /
max_per_image`` images the per-image cap is lowered to ``max_boxes // images`` (at least 1), e.g. to 12 on the
16.5k VOC training images with the default 200k, about 16.5k x (12 + 2.4 + 10) x 1024 x 4 B = 1.6 GB.
"""
import logging
from typing import Dict, List

import numpy as np
import torch

from detectron2.data import DatasetCatalog, build_detection_test_loader
from detectron2.data.samplers import InferenceSampler
from detectron2.structures import Boxes, pairwise_iou
from detectron2.utils import comm

from ..data.validate import CheckedDatasetMapper, check_image_files
from .detections import ground_truth
from .records import as_record_array, proposal_foreground

__all__ = ["proposal_records", "DEFAULT_MAX_PER_IMAGE", "DEFAULT_MAX_BACKGROUND_PER_IMAGE", "DEFAULT_MAX_BOXES"]

logger = logging.getLogger(__name__)

DEFAULT_MAX_PER_IMAGE = 50
DEFAULT_MAX_BACKGROUND_PER_IMAGE = 10
DEFAULT_MAX_BOXES = 200_000


def _choose(num: int, max_per_image: int, seed: int, image_id: int, stream: int) -> np.ndarray:
    """Indices of at most ``max_per_image`` of ``num`` candidates: a random choice seeded by (seed, image id,
    stream)."""
    if num <= max_per_image:
        return np.arange(num)
    rng = np.random.default_rng([int(seed), int(image_id) & 0x7FFFFFFF, stream])
    return np.sort(rng.choice(num, size=max_per_image, replace=False))


@torch.no_grad()
def _image_chunk(model, inp: dict, record: dict, max_per_image: int, max_background: int, iou: float,
                 space: str, seed: int):
    heads = model.roi_heads
    images = model.preprocess_image([inp])
    features = model.backbone(images.tensor)
    proposals, _ = model.proposal_generator(images, features, None)
    height, width = images.image_sizes[0]
    sx, sy = width / record["width"], height / record["height"]
    scale = torch.tensor([sx, sy, sx, sy], dtype=torch.float32)
    gt_boxes, gt_classes = ground_truth(record)
    if len(gt_boxes) == 0:
        return None
    gt = torch.as_tensor(gt_boxes) * scale
    candidates = proposals[0].proposal_boxes.tensor.cpu()
    overlap = pairwise_iou(Boxes(candidates), Boxes(gt))
    best, match = overlap.max(dim=1)
    fg = torch.nonzero(best >= iou).flatten().numpy()
    fg = fg[_choose(len(fg), max_per_image, seed, record["image_id"], 0)]
    bg = torch.nonzero(best < iou).flatten().numpy()
    bg = bg[_choose(len(bg), max_background, seed, record["image_id"], 1)]
    boxes = torch.cat([candidates[fg], gt, candidates[bg]])
    best = torch.cat([best[fg], torch.ones(len(gt)), best[bg]])
    background = heads.num_classes
    labels = np.concatenate([gt_classes[match[fg].numpy()], gt_classes, np.full(len(bg), background)])
    device = images.tensor.device
    pooled = heads.box_pooler([features[f] for f in heads.box_in_features], [Boxes(boxes.to(device))])
    output, pre = heads.head_features(pooled)
    feats = output if space == "output" else pre
    logits = heads.box_predictor(output)[0]
    probs = torch.softmax(logits, dim=1)[:, :-1]
    score, pred = probs.max(dim=1)
    arrays = {"image_id": np.full(len(boxes), int(record["image_id"])), "boxes": (boxes / scale).numpy(),
              "pred_class": pred.cpu().numpy(), "score": score.cpu().numpy(),
              "energy": torch.logsumexp(logits[:, :-1], dim=1).cpu().numpy(), "logits": logits.cpu().numpy(),
              "features": feats.cpu().numpy(), "gt_class": labels, "iou": best.numpy()}
    if getattr(heads, "synthesizer", None) is not None and heads.synthesizer.kind == "flow":
        space_feats = output if heads.feature_space == "output" else pre
        arrays["flow_loglik"] = heads.synthesizer.log_prob(space_feats).cpu().numpy()
    return {k: as_record_array(k, v) for k, v in arrays.items()}


def proposal_records(cfg, model, dataset_name: str, max_per_image: int = DEFAULT_MAX_PER_IMAGE,
                     max_background_per_image: int = DEFAULT_MAX_BACKGROUND_PER_IMAGE, iou: float = 0.5,
                     space: str = "preactivation", seed: int = 0, max_boxes: int = DEFAULT_MAX_BOXES):
    """``(arrays, info)``: the records arrays of the foreground proposals of ``dataset_name`` (see the module
    doc) and ``{"num_images", "num_boxes", "num_gt"}``. ``model`` is an :class:`FFSROIHeads` detector in eval
    mode. Raises ValueError when the set has no annotated object."""
    if max_per_image < 0 or max_background_per_image < 0:
        raise ValueError(f"max_per_image and max_background_per_image must be >= 0, got {max_per_image}, "
                         f"{max_background_per_image}")
    if not 0.0 < iou <= 1.0:
        raise ValueError(f"iou must be in (0, 1], got {iou}")
    if getattr(model, "proposal_generator", None) is None:
        raise ValueError("proposal features need a detector with a proposal generator (an RPN); this model has none")
    if space == "preactivation" and not getattr(model.roi_heads, "has_preactivation", False):
        raise ValueError("proposal features in the 'preactivation' space need a box head whose last layer is a ReLU "
                         f"(e.g. FastRCNNConvFCHead); got {type(model.roi_heads.box_head).__name__}")
    if max_boxes < 1:
        raise ValueError(f"max_boxes must be >= 1, got {max_boxes}")
    dicts = DatasetCatalog.get(dataset_name)
    check_image_files(dicts, f"dataset {dataset_name!r}")
    if len(dicts) * max_per_image > max_boxes:
        lowered = max(1, max_boxes // len(dicts))
        logger.info("%s: %d images x %d proposals per image is over max_boxes %d: %d per image",
                    dataset_name, len(dicts), max_per_image, max_boxes, lowered)
        max_per_image = lowered
    by_id = {int(d["image_id"]): d for d in dicts}
    loader = build_detection_test_loader(dicts, mapper=CheckedDatasetMapper(cfg, False),
                                         sampler=InferenceSampler(len(dicts)), num_workers=cfg.DATALOADER.NUM_WORKERS)
    chunks: List[Dict[str, np.ndarray]] = []
    was_training = model.training
    model.eval()
    try:
        for batch in loader:
            for inp in batch:
                chunk = _image_chunk(model, inp, by_id[int(inp["image_id"])], max_per_image,
                                     max_background_per_image, iou, space, seed)
                if chunk is not None:
                    chunks.append(chunk)
    finally:
        model.train(was_training)
    chunks = [c for part in comm.gather(chunks, dst=0) for c in part]
    if not comm.is_main_process():
        return {}, {}
    if not chunks:
        raise ValueError(f"dataset {dataset_name!r}: no annotated object in any image: proposal features need "
                         "the ID training set with its annotations")
    arrays = {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}
    num_fg = int(proposal_foreground(arrays, model.roi_heads.num_classes).sum())
    info = {"num_images": len(dicts), "max_per_image_used": max_per_image, "num_foreground": num_fg, "num_background": int(len(arrays["image_id"])) - num_fg,
            "num_gt": sum(len(ground_truth(d)[0]) for d in dicts)}
    return arrays, info
