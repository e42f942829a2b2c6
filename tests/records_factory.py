"""Synthetic records (ffs_det/evaluation/records.py) for the tests of the OOD evaluation and its tools: one
generator whose options give an ID or OOD set, annotated or not, with scores tied to the logits or not, and box
features that cluster by class or not."""
import numpy as np

from ffs_det.evaluation.records import as_record_array, save_records

CLASS_NAMES = ["a", "b", "c"]
K = len(CLASS_NAMES)


def records_meta(dataset, class_names=CLASS_NAMES, **more):
    """The required meta of records of ``dataset`` by model ``"m"`` (no config), plus ``more``."""
    return {"dataset": dataset, "model": "m", "num_classes": len(class_names), "class_names": list(class_names),
            "config": "", **more}


def synthetic_records(n, seed=0, *, dataset="set", shift=0.0, score=None, features=8, clusters=0.0,
                      feature_shift=0.0, matched="score", missed=0, images=None, image_size=None, extra_scores=(),
                      **meta):
    """``(arrays, meta)`` of ``n`` detections in ``K`` classes, drawn from ``seed`` (an int, or a numpy Generator
    that the draws advance) in this order:

    * ``logits``: standard normal, the inlier columns raised by ``shift`` (an ID set's energy above an OOD set's);
      ``pred_class`` is their argmax, ``energy`` their logsumexp;
    * ``score``: the softmax probability of ``pred_class``, or with ``score=(low, high)`` a uniform draw (a score
      that differs from the box's maximum inlier probability, which the papers' keep rule reads);
    * ``boxes``: XYXY, top-left corner uniform in [0, 100) on both axes, sides 5 to 40 (clipped to
      ``[0, image_size]`` when given);
    * ``features`` (that many columns; none when 0): ``clusters`` times the one-hot of ``pred_class``, plus
      ``feature_shift`` (an OOD set off the class clusters), plus standard normal noise;
    * ``gt_matched``: with ``matched="score"`` each detection with probability its score, ``"all"`` every one,
      None: unannotated records; ``meta["num_gt"]`` is the matches plus ``missed`` boxes no detection found;
    * ``extra_scores``: more 1-D arrays of those names (a box-level scorer's output), normal around ``shift``.

    ``image_id`` is ``1 + i % images`` (default: an image per detection); ``meta`` adds meta keys (``config``,
    ``papers_threshold``, ...)."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 1, (n, K + 1)).astype(np.float32)
    logits[:, :K] += shift
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    pred = probs[:, :K].argmax(1)
    arrays = {"image_id": 1 + (np.arange(n) % images if images else np.arange(n))}
    conf = probs[np.arange(n), pred] if score is None else rng.uniform(*score, n).astype(np.float32)
    xy = rng.uniform(0, 100, (n, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(5, 40, (n, 2))], 1)
    arrays.update(boxes=boxes if image_size is None else np.clip(boxes, 0, image_size), pred_class=pred,
                  score=conf, energy=np.log(np.exp(logits[:, :K]).sum(1)), logits=logits)
    if features:
        arrays["features"] = np.eye(K, features)[pred] * clusters + feature_shift + rng.normal(0, 1, (n, features))
    arrays = {k: as_record_array(k, v) for k, v in arrays.items()}
    meta = records_meta(dataset, **meta)
    if matched is not None:
        arrays["gt_matched"] = rng.uniform(0, 1, n) < arrays["score"] if matched == "score" else np.ones(n, bool)
        meta["num_gt"] = int(arrays["gt_matched"].sum()) + missed
    for key in extra_scores:
        arrays[key] = rng.normal(shift, 1, n).astype(np.float32)
    return arrays, meta


def write_records(path, n, seed=0, **options):
    """:func:`synthetic_records` saved to ``path``; returns the path as a string."""
    return save_records(str(path), *synthetic_records(n, seed, **options))
