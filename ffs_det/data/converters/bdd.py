"""BDD100K detection labels -> COCO json (VOS's ``BDD100k/{train,val}_bdd_converted.json``).

Reads either release's per-image label list: ``bdd100k_labels_images_{train,val}.json`` (2018; labels
``person``, ``bike``, ``motor``, ... plus non-box labels such as lanes) or ``det_20/det_{train,val}.json``
(labels already named as :data:`ffs_det.data.classes.BDD_CLASSES`). Labels without ``box2d`` and classes
outside the 10 detection classes are skipped (counted per class in the log). Image sizes are read from the
images when ``--images`` holds them, else 1280x720 (the BDD100K frame size). Images without boxes stay.
"""
import argparse
import json
import logging
import os
from collections import Counter
from typing import Dict, Optional

from ..classes import BDD_CLASSES, BDD_LABEL_ALIASES
from ..coco_json import CocoJsonBuilder
from .files import image_size

__all__ = ["BDD_FRAME_SIZE", "convert_bdd", "main"]

logger = logging.getLogger(__name__)

BDD_FRAME_SIZE = (1280, 720)


def convert_bdd(labels_json: str, out_json: str, image_dir: Optional[str] = None) -> Dict:
    with open(labels_json) as f:
        frames = json.load(f)
    if not isinstance(frames, list):
        raise ValueError(f"{labels_json}: expected a list of per-image label records")
    builder = CocoJsonBuilder(BDD_CLASSES, info={"description": f"BDD100K {os.path.basename(labels_json)}"})
    skipped, sized_from_file = Counter(), 0
    for frame in frames:
        name = frame["name"]
        w, h = BDD_FRAME_SIZE
        if image_dir and os.path.isfile(os.path.join(image_dir, name)):
            w, h = image_size(os.path.join(image_dir, name))
            sized_from_file += 1
        image_id = builder.add_image(name, w, h)
        for label in frame.get("labels") or []:
            cat = BDD_LABEL_ALIASES.get(label.get("category"), label.get("category"))
            box = label.get("box2d")
            if cat not in BDD_CLASSES or not box:
                skipped[label.get("category")] += 1
                continue
            attrs = label.get("attributes") or {}
            builder.add_box(image_id, cat, [box["x1"], box["y1"], box["x2"] - box["x1"], box["y2"] - box["y1"]],
                            occluded=int(bool(attrs.get("occluded", False))),
                            truncated=int(bool(attrs.get("truncated", False))))
    if skipped:
        logger.info("%s: skipped labels that are not detection boxes: %s", labels_json, dict(skipped))
    summary = builder.write(out_json)
    summary.update(skipped_labels=sum(skipped.values()), sized_from_file=sized_from_file)
    return summary


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="BDD100K detection labels -> COCO json (10 classes).")
    p.add_argument("--labels", required=True, help="bdd100k_labels_images_train.json or det_20/det_train.json")
    p.add_argument("--output", required=True, help="e.g. datasets/BDD100k/train_bdd_converted.json")
    p.add_argument("--images", help="image folder (e.g. BDD100k/images/100k/train) to read image sizes from")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    s = convert_bdd(args.labels, args.output, args.images)
    print(f"{s['images']} images, {s['boxes']} boxes ({s['boxes_dropped']} dropped, {s['boxes_clipped']} clipped) "
          f"-> {s['json']}")
    return 0
