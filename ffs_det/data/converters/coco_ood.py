"""COCO OOD subsets: the val2017 images in which no object belongs to a class of the ID benchmark.

An image is kept when none of its annotations (crowd ones included) is of a category overlapping the ID
classes (:data:`ffs_det.data.classes.COCO_OVERLAP`), and it has at least one annotation (``--keep-empty``
keeps unannotated images too). Its annotations are kept as they are (all of OOD classes); the category list
stays COCO's full list. Default output names follow VOS/FFS/STUD:

* voc -> ``instances_val2017_ood_rm_overlap.json``           (dataset ``coco_ood_val``)
* bdd -> ``instances_val2017_ood_wrt_bdd_rm_overlap.json``   (dataset ``coco_ood_val_bdd``)
* vis -> ``instances_val2017_ood_wrt_vis.json``              (dataset ``vis_coco_ood``)
"""
import argparse
import json
import logging
import os
from collections import defaultdict
from typing import Dict, Iterable, Optional

from ..classes import COCO_OVERLAP, coco_overlap
from ..coco_json import CocoJsonBuilder

__all__ = ["OUTPUT_NAMES", "make_coco_ood", "main"]

logger = logging.getLogger(__name__)

OUTPUT_NAMES = {
    "voc": "instances_val2017_ood_rm_overlap.json",
    "bdd": "instances_val2017_ood_wrt_bdd_rm_overlap.json",
    "vis": "instances_val2017_ood_wrt_vis.json",
}


def make_coco_ood(instances_json: str, out_json: str, exclude_classes: Iterable[str],
                  keep_empty: bool = False, description: Optional[str] = None) -> Dict:
    """Write the subset of ``instances_json`` whose images contain none of ``exclude_classes``."""
    with open(instances_json) as f:
        data = json.load(f)
    for key in ("images", "annotations", "categories"):
        if key not in data:
            raise ValueError(f"{instances_json}: not a COCO instances file (no {key!r})")
    exclude = set(exclude_classes)
    names = {c["id"]: c["name"] for c in data["categories"]}
    unknown = exclude - set(names.values())
    if unknown:
        logger.warning("%s has no categories named %s", instances_json, sorted(unknown))
    by_image = defaultdict(list)
    for ann in data["annotations"]:
        by_image[ann["image_id"]].append(ann)
    builder = CocoJsonBuilder([(c["id"], c["name"]) for c in data["categories"]],
                              info={"description": description or f"{os.path.basename(instances_json)} images "
                                    f"without {', '.join(sorted(exclude))}"})
    for img in sorted(data["images"], key=lambda im: im["id"]):
        anns = by_image.get(img["id"], [])
        if any(names.get(a["category_id"]) in exclude for a in anns) or (not anns and not keep_empty):
            continue
        builder.add_image(img["file_name"], img["width"], img["height"], image_id=img["id"])
        for a in anns:
            builder.add_box(img["id"], int(a["category_id"]), a["bbox"], iscrowd=a.get("iscrowd", 0),
                            area=a.get("area"))
    summary = builder.write(out_json)
    summary["source_images"] = len(data["images"])
    return summary


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="COCO images with no object of the ID benchmark's classes.")
    p.add_argument("--instances", required=True,
                   help="COCO instances json, e.g. COCO/annotations/instances_val2017.json")
    p.add_argument("--id-benchmark", choices=sorted(COCO_OVERLAP), default="voc")
    p.add_argument("--output", help="output json (default: the VOS/FFS name next to --instances)")
    p.add_argument("--exclude-classes", nargs="+", metavar="NAME",
                   help="COCO category names to exclude instead of the ID benchmark's overlap list")
    p.add_argument("--keep-empty", action="store_true", help="also keep images with no annotation")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    out = args.output or os.path.join(os.path.dirname(args.instances), OUTPUT_NAMES[args.id_benchmark])
    exclude = args.exclude_classes or coco_overlap(args.id_benchmark)
    s = make_coco_ood(args.instances, out, exclude, args.keep_empty)
    print(f"{s['images']} of {s['source_images']} images, {s['boxes']} boxes ({s['boxes_dropped']} dropped) -> {out}")
    return 0
