"""OpenImages OOD subset -> COCO json, laid out as VOS's ``OpenImages/ood_classes_rm_overlap``.

Input: an OpenImages box file (``validation-annotations-bbox.csv`` / ``test-annotations-bbox.csv``: ImageID,
Source, LabelName, Confidence, XMin, XMax, YMin, YMax, IsOccluded, IsTruncated, IsGroupOf, ...; coordinates
normalised to [0, 1]), the class descriptions (``class-descriptions-boxable.csv``: LabelName,DisplayName) and
the folder of ``<ImageID>.jpg`` images. An image is kept when it has boxes, none of them of a class that
overlaps an ID benchmark (default: VOC and BDD together, since ``openimages_ood_val`` serves both;
:data:`ffs_det.data.classes.OPENIMAGES_OVERLAP`), and its file exists. Group boxes become ``iscrowd: 1``.
Categories are the display names of the kept boxes, sorted, ids ``1..K``.

Output: ``<output>/images/<ImageID>.jpg`` (links or copies) and ``<output>/COCO-Format/val_coco_format.json``.
"""
import argparse
import csv
import logging
import os
from collections import defaultdict
from typing import Dict, Iterable, Optional

import numpy as np

from ..classes import OPENIMAGES_OVERLAP, openimages_overlap
from ..coco_json import CocoJsonBuilder
from .files import LINK_MODES, image_size, place_file

__all__ = ["read_class_descriptions", "make_openimages_ood", "main"]

logger = logging.getLogger(__name__)

_BOX_COLUMNS = ("ImageID", "LabelName", "XMin", "XMax", "YMin", "YMax")


def read_class_descriptions(path: str) -> Dict[str, str]:
    """LabelName (e.g. ``/m/01g317``) -> DisplayName; with or without a header row."""
    out = {}
    with open(path, newline="", encoding="utf-8") as f:
        for row in csv.reader(f):
            if len(row) >= 2 and row[0] != "LabelName":
                out[row[0]] = row[1]
    return out


def make_openimages_ood(boxes_csv: str, class_csv: str, image_src: str, output_dir: str,
                        exclude_classes: Iterable[str], max_images: Optional[int] = None, seed: int = 0,
                        link_mode: str = "symlink") -> Dict:
    names = read_class_descriptions(class_csv)
    exclude = {n.lower() for n in exclude_classes}
    boxes = defaultdict(list)
    with open(boxes_csv, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing_cols = [c for c in _BOX_COLUMNS if c not in (reader.fieldnames or [])]
        if missing_cols:
            raise ValueError(f"{boxes_csv}: not an OpenImages box file (missing columns {missing_cols})")
        for row in reader:
            boxes[row["ImageID"]].append(row)
    keep, excluded, missing = [], 0, 0
    for image_id in sorted(boxes):
        if any(names.get(r["LabelName"], r["LabelName"]).lower() in exclude for r in boxes[image_id]):
            excluded += 1
        elif not os.path.isfile(os.path.join(image_src, image_id + ".jpg")):
            missing += 1
        else:
            keep.append(image_id)
    if max_images is not None and len(keep) > max_images:
        keep = sorted(np.random.default_rng(seed).choice(keep, max_images, replace=False).tolist())
    if missing:
        logger.warning("%s: %d images with boxes are not in %s; skipped", boxes_csv, missing, image_src)
    classes = sorted({names.get(r["LabelName"], r["LabelName"]) for i in keep for r in boxes[i]})
    builder = CocoJsonBuilder(classes, info={"description": f"OpenImages OOD subset of {os.path.basename(boxes_csv)}",
                                             "excluded_classes": sorted(exclude)})
    image_dir = os.path.join(output_dir, "images")
    os.makedirs(image_dir, exist_ok=True)
    for image_id in keep:
        src = os.path.join(image_src, image_id + ".jpg")
        w, h = image_size(src)
        place_file(src, os.path.join(image_dir, image_id + ".jpg"), link_mode)
        iid = builder.add_image(image_id + ".jpg", w, h)
        for r in boxes[image_id]:
            try:
                x0, x1, y0, y1 = (float(r[k]) for k in ("XMin", "XMax", "YMin", "YMax"))
            except ValueError:
                x0 = x1 = y0 = y1 = float("nan")  # the box rule drops it
            builder.add_box(iid, names.get(r["LabelName"], r["LabelName"]),
                            [x0 * w, y0 * h, (x1 - x0) * w, (y1 - y0) * h],
                            iscrowd=int(r.get("IsGroupOf", "0") == "1"))
    summary = builder.write(os.path.join(output_dir, "COCO-Format", "val_coco_format.json"))
    summary.update(excluded_images=excluded, missing_images=missing)
    return summary


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="OpenImages images without ID-benchmark classes -> COCO json.")
    p.add_argument("--boxes", required=True, help="OpenImages box csv, e.g. validation-annotations-bbox.csv")
    p.add_argument("--class-descriptions", required=True, help="class-descriptions-boxable.csv")
    p.add_argument("--images", required=True, help="folder of <ImageID>.jpg")
    p.add_argument("--output", required=True, help="e.g. datasets/OpenImages/ood_classes_rm_overlap")
    p.add_argument("--id-benchmarks", nargs="+", choices=sorted(OPENIMAGES_OVERLAP), default=["voc", "bdd"])
    p.add_argument("--exclude-classes-file", help="extra display names to exclude, one per line")
    p.add_argument("--max-images", type=int, help="keep a random subset of this many images (seeded)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--link", choices=LINK_MODES, default="symlink", help="how to place images in images/")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    exclude = set().union(*(openimages_overlap(b) for b in args.id_benchmarks))
    if args.exclude_classes_file:
        with open(args.exclude_classes_file, encoding="utf-8") as f:
            exclude |= {line.strip() for line in f if line.strip()}
    s = make_openimages_ood(args.boxes, args.class_descriptions, args.images, args.output, exclude,
                            args.max_images, args.seed, args.link)
    print(f"{s['images']} images ({s['excluded_images']} excluded for ID classes, {s['missing_images']} missing), "
          f"{s['boxes']} boxes ({s['boxes_dropped']} dropped) -> {s['json']}")
    return 0
