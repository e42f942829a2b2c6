"""The synthetic shapes world: determinism, valid COCO json, layout, and that only shape separates ID from OOD."""
import contextlib
import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO

from ffs_det.data.shapes import FAR_OOD_CLASSES, ID_CLASSES, IMAGE_SIZE, OOD_CLASSES, generate_world, render_scene
from repo_paths import REPO_ROOT as ROOT

SMALL = {"train": 8, "val": 4, "ood": 4, "far_ood": 3}


def _pixels(path):
    return np.asarray(Image.open(path))


def _coco(path):
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(path)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("w") / "shapes"
    generate_world(str(root), SMALL, seed=7)
    return root


def test_layout_and_valid_coco(world):
    for split, n in SMALL.items():
        coco = _coco(str(world / "annotations" / f"{split}.json"))
        classes = {"ood": OOD_CLASSES, "far_ood": FAR_OOD_CLASSES}.get(split, ID_CLASSES)
        assert [c["name"] for c in coco.loadCats(sorted(coco.getCatIds()))] == list(classes)
        assert sorted(coco.getImgIds()) == list(range(1, n + 1))
        if split == "far_ood":  # crops of real photographs, no box
            assert len(coco.getAnnIds()) == 0
        else:
            assert len(coco.getAnnIds()) >= n  # 1-4 objects per scene
        for img in coco.loadImgs(coco.getImgIds()):
            pix = _pixels(world / split / img["file_name"])
            assert pix.shape == (img["height"], img["width"], 3) and pix.dtype == np.uint8
            assert IMAGE_SIZE[0] <= img["width"] <= IMAGE_SIZE[1] and IMAGE_SIZE[0] <= img["height"] <= IMAGE_SIZE[1]
            for a in coco.loadAnns(coco.getAnnIds(imgIds=img["id"])):
                x, y, w, h = a["bbox"]
                assert x >= 0 and y >= 0 and x + w <= img["width"] and y + h <= img["height"]
                assert w >= 1 and h >= 1 and 0 < a["area"] <= w * h and a["iscrowd"] == 0
        assert sorted(os.listdir(world / split)) == [f"{i:06d}.png" for i in range(1, n + 1)]


def test_same_seed_same_world_other_seed_other_world(world, tmp_path):
    again = tmp_path / "again"
    generate_world(str(again), SMALL, seed=7)
    other = tmp_path / "other"
    generate_world(str(other), SMALL, seed=8)
    for split in SMALL:
        a = json.loads((world / "annotations" / f"{split}.json").read_text())
        assert json.loads((again / "annotations" / f"{split}.json").read_text()) == a
        if split != "far_ood":  # far_ood has no annotations; its pixels differ (below)
            assert json.loads((other / "annotations" / f"{split}.json").read_text())["annotations"] != a["annotations"]
        for name in os.listdir(world / split):
            assert np.array_equal(_pixels(world / split / name), _pixels(again / split / name))
        assert not np.array_equal(_pixels(world / split / "000001.png"), _pixels(other / split / "000001.png"))
    # each image has its own random stream: a bigger world starts with the same images
    bigger = tmp_path / "bigger"
    generate_world(str(bigger), {"train": 10, "val": 0, "ood": 0, "far_ood": 0}, seed=7)
    assert np.array_equal(_pixels(bigger / "train" / "000008.png"), _pixels(world / "train" / "000008.png"))


def test_up_to_date_splits_are_kept_and_stale_images_removed(tmp_path):
    root = tmp_path / "shapes"
    first = generate_world(str(root), {"train": 5, "val": 2, "ood": 2, "far_ood": 0}, seed=1)
    assert not any(r.get("skipped") for r in first.values())
    again = generate_world(str(root), {"train": 5, "val": 2, "ood": 2, "far_ood": 0}, seed=1)
    assert all(r.get("skipped") for r in again.values())
    smaller = generate_world(str(root), {"train": 3, "val": 2, "ood": 2, "far_ood": 0}, seed=1)
    assert not smaller["train"].get("skipped") and smaller["val"].get("skipped")
    assert sorted(os.listdir(root / "train")) == ["000001.png", "000002.png", "000003.png"]
    assert generate_world(str(root), {"train": 3, "val": 2, "ood": 2, "far_ood": 0}, seed=1, force=True)["val"]["images"] == 2


def _box_features(rng, classes, n_scenes):
    """Appearance of every object box and its image, with no access to the outline."""
    rows = []
    for _ in range(n_scenes):
        pix, objects = render_scene(rng, classes)
        img = pix.reshape(-1, 3).astype(float)
        for _, (x, y, w, h), _ in objects:
            crop = pix[y:y + h, x:x + w].reshape(-1, 3).astype(float)
            rows.append(np.r_[crop.mean(0), crop.std(0), w, h, w / h, img.mean(0), img.std(0), pix.shape[:2]])
    return np.array(rows)


def test_id_and_ood_differ_only_in_shape():
    """Colour, texture statistics, box size and background must not tell ID from OOD objects."""
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import cross_val_predict

    id_x = _box_features(np.random.default_rng(0), ID_CLASSES, 70)
    ood_x = _box_features(np.random.default_rng(1), OOD_CLASSES, 70)
    x = np.r_[id_x, ood_x]
    y = np.r_[np.zeros(len(id_x)), np.ones(len(ood_x))]
    prob = cross_val_predict(RandomForestClassifier(100, random_state=0), x, y, cv=4, method="predict_proba")[:, 1]
    assert roc_auc_score(y, prob) < 0.65  # 0.55 here; a size or background leak shows as 0.66-0.73


def test_cli(tmp_path):
    out = tmp_path / "cli_shapes"
    cmd = [sys.executable, os.path.join(ROOT, "datasets", "make_shapes.py"), "--output", str(out), "--num-train", "3",
           "--num-val", "2", "--num-ood", "2", "--num-far-ood", "2", "--seed", "5"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "train: 3 images" in proc.stdout
    assert len(_coco(str(out / "annotations" / "ood.json")).getImgIds()) == 2
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert "up to date" in proc.stdout
    bad = subprocess.run(cmd[:2] + ["--output", str(out), "--num-val", "-1"], capture_output=True, text=True)
    assert bad.returncode == 2 and "--num-val must be >= 0" in bad.stderr


def test_far_ood_images_are_crops_of_the_bundled_photographs(world):
    """The far-OOD split: real photographs (scikit-image / scikit-learn samples), each image a different crop."""
    from ffs_det.data.photos import PHOTO_NAMES, load_photos

    photos = load_photos()
    assert len(photos) == len(PHOTO_NAMES) and all(p.ndim == 3 and p.shape[2] == 3 for p in photos)
    images = [_pixels(world / "far_ood" / f"{i:06d}.png") for i in range(1, 4)]
    assert not np.array_equal(images[0], images[1])
    for img in images:  # photographs, not flat synthetic scenes: many distinct colours
        assert len(np.unique(img.reshape(-1, 3), axis=0)) > 500
