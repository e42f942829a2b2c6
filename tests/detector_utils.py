"""Small generated detection data and configs for the detector tests (CPU, seconds)."""
import json
import os

import numpy as np
from PIL import Image, ImageDraw

CLASSES = ["disc", "block", "wedge"]


def write_tiny_coco(root, num_images=8, size=128, seed=0, empty_images=0):
    """Write ``num_images`` PNGs with 1-3 coloured shapes each (+ ``empty_images`` without objects) and a
    COCO json; returns (json_path, image_root)."""
    rng = np.random.default_rng(seed)
    image_root = os.path.join(root, "images")
    os.makedirs(image_root, exist_ok=True)
    images, annotations = [], []
    for i in range(num_images + empty_images):
        img = Image.fromarray(rng.integers(0, 80, (size, size, 3), dtype=np.uint8))
        draw = ImageDraw.Draw(img)
        n = 0 if i >= num_images else int(rng.integers(1, 4))
        for _ in range(n):
            c = int(rng.integers(0, len(CLASSES)))
            w, h = rng.integers(size // 5, size // 2, 2)
            x, y = rng.integers(0, size - w), rng.integers(0, size - h)
            box = [int(x), int(y), int(x + w), int(y + h)]
            color = tuple(int(v) for v in rng.integers(120, 256, 3))
            if c == 0:
                draw.ellipse(box, fill=color)
            elif c == 1:
                draw.rectangle(box, fill=color)
            else:
                draw.polygon([(box[0], box[3]), (box[2], box[3]), ((box[0] + box[2]) // 2, box[1])], fill=color)
            annotations.append({"id": len(annotations) + 1, "image_id": i + 1, "category_id": c + 1,
                                "bbox": [box[0], box[1], int(w), int(h)], "area": float(w * h), "iscrowd": 0})
        name = f"{i:04d}.png"
        img.save(os.path.join(image_root, name))
        images.append({"id": i + 1, "file_name": name, "width": size, "height": size})
    categories = [{"id": k + 1, "name": n} for k, n in enumerate(CLASSES)]
    json_path = os.path.join(root, "annotations.json")
    with open(json_path, "w") as f:
        json.dump({"images": images, "annotations": annotations, "categories": categories}, f)
    return json_path, image_root


def register_tiny_coco(root, name, num_images):
    """Write a tiny set under ``root`` (see :func:`write_tiny_coco`) and register it in detectron2's catalog
    as ``name`` unless that name exists; returns (json_path, image_root)."""
    from detectron2.data import DatasetCatalog
    from detectron2.data.datasets import register_coco_instances

    json_path, image_root = write_tiny_coco(str(root), num_images=num_images)
    if name not in DatasetCatalog.list():
        register_coco_instances(name, {}, json_path, image_root)
    return json_path, image_root


def tiny_opts(output_dir, synthesis, dataset="tiny_train", max_iter=4, start_iter=2):
    """Config overrides that make the shapes config train in seconds on the tiny set."""
    return [
        "DATASETS.TRAIN", f"('{dataset}',)", "DATASETS.TEST", "()",
        "FFS.SYNTHESIS", synthesis, "FFS.START_ITER", str(start_iter), "FFS.QUEUE_SIZE", "4",
        "FFS.SAMPLE_FROM", "50", "FFS.FLOW.HIDDEN", "64",
        "SOLVER.IMS_PER_BATCH", "2", "SOLVER.MAX_ITER", str(max_iter), "SOLVER.STEPS", "()",
        "SOLVER.WARMUP_ITERS", "0", "SOLVER.CHECKPOINT_PERIOD", str(max_iter), "SOLVER.BASE_LR", "0.005",
        "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "32", "MODEL.RPN.BATCH_SIZE_PER_IMAGE", "64",
        "INPUT.MIN_SIZE_TRAIN", "(128,)", "INPUT.MIN_SIZE_TEST", "128",
        "DATALOADER.NUM_WORKERS", "0", "OUTPUT_DIR", str(output_dir),
    ]
