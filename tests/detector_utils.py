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


def train_tiny_id_ood(root, prefix, config, synthesis, num_id, num_ood, id_seed, ood_seed, seed=None, max_iter=6,
                      id_test_seed=None):
    """Write an ID and an OOD tiny set under ``root``, register the ID one as ``<prefix>_train`` and train
    ``config`` on it for ``max_iter`` iterations (all random streams seeded with ``seed`` first, unless None).
    Returns the ``--register-coco`` arguments the CLIs need (``<prefix>_train``, ``<prefix>_id`` — the same
    images, or with ``id_test_seed`` other images of the same classes, under ``root/id_test`` — and
    ``<prefix>_ood``) and the trained weights."""
    from ffs_det.data import register_coco
    from ffs_det.engine import Trainer
    from ffs_det.engine.setup import build_cfg

    id_json, id_root = write_tiny_coco(str(root / "id"), num_images=num_id, seed=id_seed)
    ood_json, ood_root = write_tiny_coco(str(root / "ood"), num_images=num_ood, seed=ood_seed)
    test_json, test_root = (id_json, id_root) if id_test_seed is None else write_tiny_coco(
        str(root / "id_test"), num_images=num_id, seed=id_test_seed)
    register = ["--register-coco", f"{prefix}_train", id_json, id_root, "--register-coco", f"{prefix}_id", test_json,
                test_root, "--register-coco", f"{prefix}_ood", ood_json, ood_root]
    register_coco(f"{prefix}_train", id_json, id_root)
    cfg = build_cfg(config, tiny_opts(root / "model", synthesis, dataset=f"{prefix}_train", max_iter=max_iter))
    if seed is not None:
        from detectron2.utils.env import seed_all_rng
        seed_all_rng(seed)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    return register, os.path.join(cfg.OUTPUT_DIR, "model_final.pth")
