"""Youtube-VIS 2021 video annotations -> per-frame COCO json (``vis21_train`` / ``vis21_val``).

The public Youtube-VIS validation set has no annotations, so the annotated *train* videos are split by
video into train and val (``--val-fraction``, seeded, every frame of a video on one side). Each annotated
frame becomes an image ``<video folder>/<frame>.jpg`` relative to ``train/JPEGImages`` (with ``video_id`` and
``frame_id``), each per-frame box of an instance an annotation. All 40 categories are kept with their ids
(see :data:`ffs_det.data.classes.VIS21_CLASSES`). ``--frame-stride k`` keeps every k-th frame.
"""
import argparse
import json
import logging
import os
from collections import defaultdict
from typing import Dict

import numpy as np

from ..coco_json import CocoJsonBuilder

__all__ = ["split_videos", "convert_ytvis", "main"]

logger = logging.getLogger(__name__)


def split_videos(video_ids, val_fraction: float, seed: int):
    """(train ids, val ids): a seeded shuffle of the sorted ids, the first ``round(fraction * n)`` are val."""
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val fraction must be in [0, 1), got {val_fraction}")
    ids = sorted(video_ids)
    order = np.random.default_rng(seed).permutation(len(ids))
    n_val = int(round(val_fraction * len(ids)))
    val = {ids[i] for i in order[:n_val]}
    return [v for v in ids if v not in val], sorted(val)


def _frames_json(data: dict, video_ids, by_video, stride: int, out_json: str, split: str) -> Dict:
    info = {"description": f"Youtube-VIS 2021 train videos, {split} split, frame stride {stride}"}
    builder = CocoJsonBuilder([(c["id"], c["name"]) for c in data["categories"]], info=info)
    videos = {v["id"]: v for v in data["videos"]}
    for vid in video_ids:
        video = videos[vid]
        for t in range(0, len(video["file_names"]), stride):
            image_id = builder.add_image(video["file_names"][t], video["width"], video["height"],
                                         video_id=vid, frame_id=t)
            for ann in by_video[vid]:
                boxes = ann.get("bboxes") or []
                if t < len(boxes) and boxes[t]:
                    builder.add_box(image_id, int(ann["category_id"]), boxes[t], iscrowd=ann.get("iscrowd", 0),
                                    track_id=ann["id"])
    return builder.write(out_json)


def convert_ytvis(instances_json: str, output_dir: str, val_fraction: float = 0.1, seed: int = 0,
                  frame_stride: int = 1) -> Dict[str, Dict]:
    if frame_stride < 1:
        raise ValueError(f"frame stride must be >= 1, got {frame_stride}")
    with open(instances_json) as f:
        data = json.load(f)
    for key in ("videos", "annotations", "categories"):
        if key not in data:
            raise ValueError(f"{instances_json}: not a Youtube-VIS annotation file (no {key!r})")
    by_video = defaultdict(list)
    for ann in data["annotations"]:
        by_video[ann["video_id"]].append(ann)
    train, val = split_videos([v["id"] for v in data["videos"]], val_fraction, seed)
    return {
        "train": _frames_json(data, train, by_video, frame_stride, os.path.join(output_dir, "instances_train.json"),
                              "train"),
        "val": _frames_json(data, val, by_video, frame_stride, os.path.join(output_dir, "instances_val.json"),
                            "val"),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Youtube-VIS 2021 train videos -> per-frame COCO json, split by video.")
    p.add_argument("--annotations", required=True, help="Youtube-VIS train/instances.json")
    p.add_argument("--output", help="output folder (default: the folder of --annotations)")
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--frame-stride", type=int, default=1)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    out = convert_ytvis(args.annotations, args.output or os.path.dirname(os.path.abspath(args.annotations)),
                        args.val_fraction, args.seed, args.frame_stride)
    for split, s in out.items():
        print(f"{split}: {s['images']} frames, {s['boxes']} boxes ({s['boxes_dropped']} dropped) -> {s['json']}")
    return 0
