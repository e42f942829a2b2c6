"""docs/records.md stays true: its Python block writes records of another detector's outputs on a tiny set, and
its eval_ood command evaluates them."""
import json
import os
import re
import shlex

import numpy as np

from detector_utils import CLASSES, write_tiny_coco
from repo_paths import REPO_ROOT, load_tool


def _blocks(kind):
    with open(os.path.join(REPO_ROOT, "docs", "records.md"), encoding="utf-8") as f:
        return re.findall(rf"```{kind}\n(.*?)```", f.read(), flags=re.S)


def _outputs(json_path, seed, ood):
    """A stand-in detector's outputs over a set: a box per ground-truth object (confident and right on the ID
    set, unsure on the OOD set) plus two background boxes per image, as (image_id, boxes, logits)."""
    rng = np.random.default_rng(seed)
    with open(json_path) as f:
        data = json.load(f)
    k = len(CLASSES)
    image_id, boxes, logits = [], [], []
    for ann in data["annotations"]:
        x, y, w, h = ann["bbox"]
        row = rng.normal(0, 1, k + 1)
        if not ood:
            row[ann["category_id"] - 1] += 4.0
        image_id.append(ann["image_id"])
        boxes.append([x, y, x + w, y + h])
        logits.append(row)
    for image in data["images"]:
        for _ in range(2):
            x, y = rng.uniform(0, 60, 2)
            image_id.append(image["id"])
            boxes.append([x, y, x + 30, y + 30])
            logits.append(rng.normal(0, 1, k + 1) + np.r_[np.zeros(k), 2.0])
    return np.array(image_id), np.array(boxes, np.float32), np.array(logits, np.float32)


def test_the_records_page_writes_and_evaluates_records_of_another_detector(tmp_path, monkeypatch):
    id_json, id_images = write_tiny_coco(str(tmp_path / "id"), num_images=12, seed=1)
    ood_json, _ = write_tiny_coco(str(tmp_path / "ood"), num_images=12, seed=2)
    (id_image_id, id_boxes, id_logits), (ood_image_id, ood_boxes, ood_logits) = (
        _outputs(id_json, 3, ood=False), _outputs(ood_json, 4, ood=True))
    monkeypatch.chdir(tmp_path)
    python, = _blocks("python")
    namespace = {"CLASSES": list(CLASSES), "ID_JSON": id_json, "ID_IMAGES": id_images,
                 "id_image_id": id_image_id, "id_boxes": id_boxes, "id_logits": id_logits,
                 "ood_image_id": ood_image_id, "ood_boxes": ood_boxes, "ood_logits": ood_logits}
    exec(compile(python, "docs/records.md", "exec"), namespace)
    bash, = _blocks("bash")
    argv = shlex.split(bash.strip())
    assert argv[:2] == [".venv/bin/python", "tools/eval_ood.py"]
    assert load_tool("eval_ood").main(argv[2:]) == 0
    metrics = json.loads((tmp_path / "my_report" / "metrics.json").read_text())["my_ood"]
    assert metrics["auroc"] > 0.8 and metrics["n_id"] > 0  # the confident ID boxes score above the unsure OOD ones
