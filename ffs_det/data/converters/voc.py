"""PASCAL VOC XML -> COCO json, laid out as VOS's ``VOC_0712_converted``.

Train = VOC2007 trainval + VOC2012 trainval (``voc0712_train_all.json``), val = VOC2007 test
(``val_coco_format.json``); all images are linked (or copied) into one ``JPEGImages`` folder. Class ids are
``1..20`` in :data:`ffs_det.data.classes.VOC_CLASSES` order. VOC boxes are 1-based inclusive pixel indices:
``[xmin - 1, ymin - 1, xmax - xmin + 1, ymax - ymin + 1]`` in COCO terms. "difficult" objects are kept
(marked ``difficult: 1``) unless ``--drop-difficult``.
"""
import argparse
import logging
import os
import xml.etree.ElementTree as ET
from collections import Counter
from typing import Dict, List, Sequence, Tuple

from ..classes import VOC_CLASSES, VOC_XML_NAMES
from ..coco_json import CocoJsonBuilder
from .files import LINK_MODES, image_size, place_file

__all__ = ["read_voc_xml", "convert_voc_sets", "prepare_voc0712", "main"]

logger = logging.getLogger(__name__)

DEFAULT_TRAIN = ("VOC2007/trainval", "VOC2012/trainval")
DEFAULT_VAL = ("VOC2007/test",)


def read_voc_xml(path: str) -> Tuple[Tuple[int, int], List[dict]]:
    """``((width, height) or (0, 0) if absent, [{"name", "bbox" (COCO xywh), "difficult"}, ...])``."""
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as e:
        raise ValueError(f"{path}: not a valid VOC XML file ({e})") from None
    size = root.find("size")
    w = int(float(size.findtext("width", "0"))) if size is not None else 0
    h = int(float(size.findtext("height", "0"))) if size is not None else 0
    objects = []
    for obj in root.iter("object"):
        bb = obj.find("bndbox")
        if bb is None:
            continue
        try:
            x0, y0, x1, y1 = (float(bb.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax"))
        except (TypeError, ValueError):
            x0 = y0 = x1 = y1 = float("nan")  # the box rule drops it
        name = (obj.findtext("name") or "").strip().lower()
        objects.append({"name": VOC_XML_NAMES.get(name, name), "difficult": int(obj.findtext("difficult", "0") or 0),
                        "bbox": [x0 - 1, y0 - 1, x1 - x0 + 1, y1 - y0 + 1]})
    return (w, h), objects


def _read_ids(devkit: str, set_spec: str) -> Tuple[str, List[str]]:
    year, split = set_spec.split("/")
    list_file = os.path.join(devkit, year, "ImageSets", "Main", f"{split}.txt")
    if not os.path.isfile(list_file):
        raise FileNotFoundError(f"VOC image list not found: {list_file}")
    with open(list_file) as f:
        return os.path.join(devkit, year), [line.split()[0] for line in f if line.strip()]


def convert_voc_sets(devkit: str, sets: Sequence[str], out_json: str, image_dir: str, link_mode: str = "symlink",
                     drop_difficult: bool = False) -> Dict:
    """Convert the VOC image sets ``sets`` (e.g. ``"VOC2007/trainval"``) into one COCO json."""
    builder = CocoJsonBuilder(VOC_CLASSES, info={"description": "PASCAL VOC " + " + ".join(sets)})
    unknown, missing, difficult = Counter(), 0, 0
    for set_spec in sets:
        year_dir, ids = _read_ids(devkit, set_spec)
        for stem in ids:
            src = os.path.join(year_dir, "JPEGImages", stem + ".jpg")
            if not os.path.isfile(src):
                missing += 1
                continue
            (w, h), objects = read_voc_xml(os.path.join(year_dir, "Annotations", stem + ".xml"))
            if w <= 0 or h <= 0:
                w, h = image_size(src)
            place_file(src, os.path.join(image_dir, stem + ".jpg"), link_mode)
            image_id = builder.add_image(stem + ".jpg", w, h)
            for obj in objects:
                if obj["name"] not in VOC_CLASSES:
                    unknown[obj["name"]] += 1
                    continue
                if obj["difficult"] and drop_difficult:
                    difficult += 1
                    continue
                builder.add_box(image_id, obj["name"], obj["bbox"], difficult=obj["difficult"])
    if missing:
        logger.warning("%s: skipped %d listed images whose JPEG is missing", out_json, missing)
    if unknown:
        logger.warning("%s: skipped objects of unknown classes: %s", out_json, dict(unknown))
    summary = builder.write(out_json)
    summary.update(missing_images=missing, unknown_objects=sum(unknown.values()), dropped_difficult=difficult)
    return summary


def prepare_voc0712(devkit: str, output_dir: str, train_sets: Sequence[str] = DEFAULT_TRAIN,
                    val_sets: Sequence[str] = DEFAULT_VAL, link_mode: str = "symlink",
                    drop_difficult: bool = False) -> Dict[str, Dict]:
    image_dir = os.path.join(output_dir, "JPEGImages")
    os.makedirs(image_dir, exist_ok=True)
    return {
        "train": convert_voc_sets(devkit, train_sets, os.path.join(output_dir, "voc0712_train_all.json"), image_dir,
                                  link_mode, drop_difficult),
        "val": convert_voc_sets(devkit, val_sets, os.path.join(output_dir, "val_coco_format.json"), image_dir,
                                link_mode, drop_difficult),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="PASCAL VOC XML -> COCO json (VOC_0712_converted layout).")
    p.add_argument("--devkit", required=True, help="VOCdevkit folder holding VOC2007/ and VOC2012/")
    p.add_argument("--output", required=True, help="output folder, e.g. datasets/VOC_0712_converted")
    p.add_argument("--train-sets", nargs="+", default=list(DEFAULT_TRAIN), metavar="YEAR/SPLIT")
    p.add_argument("--val-sets", nargs="+", default=list(DEFAULT_VAL), metavar="YEAR/SPLIT")
    p.add_argument("--images", choices=LINK_MODES, default="symlink", help="how to place images in JPEGImages/")
    p.add_argument("--drop-difficult", action="store_true", help="leave out objects marked difficult")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    out = prepare_voc0712(args.devkit, args.output, args.train_sets, args.val_sets, args.images,
                          args.drop_difficult)
    for split, s in out.items():
        print(f"{split}: {s['images']} images, {s['boxes']} boxes ({s['boxes_dropped']} dropped, "
              f"{s['boxes_clipped']} clipped) -> {s['json']}")
    return 0
