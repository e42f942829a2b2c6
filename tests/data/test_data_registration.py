"""Dataset registration in detectron2's catalogs: built-in names, --register-coco, lazy file checks, box rule."""
import argparse
import json
import logging
import os

import numpy as np
import pytest
from PIL import Image

from ffs_det.data import (BUILTIN_DATASETS, add_dataset_args, apply_dataset_args, get_thing_classes, register_all,
                          register_coco, require_datasets)
from ffs_det.data.classes import BDD_CLASSES, VIS21_CLASSES, VOC_CLASSES
from ffs_det.data.shapes import ID_CLASSES, OOD_CLASSES, generate_world

# after ffs_det.data, which sets up detectron2
from detectron2.data import DatasetCatalog, MetadataCatalog, get_detection_dataset_dicts  # noqa: E402


def write_coco_fixture(root, cats=("cat", "dog")):
    """4 images: two boxes; no boxes; a zero-width and an outside box; a box half outside (clipped)."""
    os.makedirs(root / "img", exist_ok=True)
    images, anns = [], []
    for i in range(1, 5):
        Image.fromarray(np.full((40, 60, 3), 30 * i, np.uint8)).save(root / "img" / f"{i}.png")
        images.append({"id": i, "file_name": f"{i}.png", "width": 60, "height": 40})
    boxes = [(1, 1, [5, 5, 10, 10]), (1, 2, [20, 10, 15, 20]), (3, 1, [10, 10, 0, 12]), (3, 2, [70, 5, 10, 10]),
             (4, 2, [50, 30, 20, 20])]
    for k, (img, cat, bbox) in enumerate(boxes, start=1):
        anns.append({"id": k, "image_id": img, "category_id": cat, "bbox": bbox, "area": bbox[2] * bbox[3],
                     "iscrowd": 0})
    categories = [{"id": i + 1, "name": n} for i, n in enumerate(cats)]
    path = root / "ann.json"
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": categories}))
    return str(path), str(root / "img")


def test_register_all_names_metadata_and_idempotence(tmp_path):
    names = register_all(str(tmp_path))
    assert set(names) == set(BUILTIN_DATASETS)
    assert {"voc_custom_train", "voc_custom_val", "coco_ood_val", "openimages_ood_val", "bdd_custom_train",
            "bdd_custom_val", "coco_ood_val_bdd", "vis21_train", "vis21_val", "vis_coco_ood", "shapes_train",
            "shapes_val", "shapes_ood"} <= set(DatasetCatalog.list())
    assert MetadataCatalog.get("voc_custom_train").thing_classes == list(VOC_CLASSES)
    assert len(VOC_CLASSES) == 20 and len(BDD_CLASSES) == 10 and len(VIS21_CLASSES) == 40
    assert MetadataCatalog.get("bdd_custom_val").thing_classes == list(BDD_CLASSES)
    assert MetadataCatalog.get("vis21_train").thing_classes == list(VIS21_CLASSES)
    assert MetadataCatalog.get("shapes_val").thing_classes == list(ID_CLASSES)
    assert MetadataCatalog.get("shapes_ood").thing_classes == list(OOD_CLASSES)
    assert MetadataCatalog.get("coco_ood_val").is_ood and not MetadataCatalog.get("voc_custom_val").is_ood
    assert "voc_custom_train" in MetadataCatalog.get("coco_ood_val").ood_for
    voc_val = MetadataCatalog.get("voc_custom_val").json_file
    assert voc_val == str(tmp_path / "VOC_0712_converted" / "val_coco_format.json")
    register_all(str(tmp_path))  # idempotent
    other = tmp_path / "elsewhere"
    register_all(str(other))  # another root re-points the names
    assert MetadataCatalog.get("shapes_train").json_file == str(other / "shapes" / "annotations" / "train.json")
    assert MetadataCatalog.get("shapes_train").thing_classes == list(ID_CLASSES)


def test_missing_files_fail_lazily_with_one_clear_error(tmp_path):
    register_all(str(tmp_path))  # nothing exists there: registration still works
    want = str(tmp_path / "BDD100k" / "train_bdd_converted.json")
    with pytest.raises(FileNotFoundError, match="annotation file not found: " + want):
        DatasetCatalog.get("bdd_custom_train")
    with pytest.raises(ValueError) as e:
        require_datasets(["shapes_train", "no_such_dataset"])
    msg = str(e.value)
    assert "unknown dataset 'no_such_dataset'" in msg and str(tmp_path / "shapes" / "annotations" / "train.json") in msg
    assert "--register-coco" in msg
    # json present, image folder missing
    (tmp_path / "shapes" / "annotations").mkdir(parents=True)
    (tmp_path / "shapes" / "annotations" / "val.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="image folder not found: " + str(tmp_path / "shapes" / "val")):
        DatasetCatalog.get("shapes_val")


def test_register_coco_filters_degenerate_boxes_and_keeps_empty_images(tmp_path, caplog):
    json_file, image_root = write_coco_fixture(tmp_path)
    register_coco("fixture_pets", json_file, image_root)
    assert MetadataCatalog.get("fixture_pets").thing_classes == ["cat", "dog"]  # known before loading
    assert get_thing_classes("fixture_pets") == ["cat", "dog"]
    with caplog.at_level(logging.WARNING, logger="ffs_det.data.catalog"):
        dicts = DatasetCatalog.get("fixture_pets")
    assert [d["image_id"] for d in dicts] == [1, 2, 3, 4]
    by_id = {d["image_id"]: d for d in dicts}
    assert by_id[2]["annotations"] == []  # the image without boxes stays
    assert by_id[3]["annotations"] == []  # zero-width and outside boxes dropped
    assert by_id[4]["annotations"][0]["bbox"] == [50.0, 30.0, 10.0, 10.0]  # clipped to the image
    assert [a["category_id"] for a in by_id[1]["annotations"]] == [0, 1]  # contiguous ids
    assert by_id[1]["file_name"] == os.path.join(os.path.abspath(image_root), "1.png")
    assert "dropped 2 of 5 boxes" in caplog.text and "clipped 1" in caplog.text
    assert MetadataCatalog.get("fixture_pets").thing_classes == ["cat", "dog"]
    # detectron2's training path drops the images left without boxes
    assert len(get_detection_dataset_dicts(["fixture_pets"], filter_empty=True)) == 2


def test_a_json_with_a_duplicate_image_id_is_refused_at_registration(tmp_path):
    json_file, image_root = write_coco_fixture(tmp_path)
    data = json.loads(open(json_file).read())
    data["images"][3]["id"] = 2  # two images with id 2: pycocotools would keep one with the boxes of both
    open(json_file, "w").write(json.dumps(data))
    with pytest.raises(ValueError) as info:
        register_coco("fixture_dup", json_file, image_root)
    assert str(info.value) == (f"dataset 'fixture_dup': {json_file} lists image id 2 more than once (1 duplicate ids "
                               "in all); image ids must be unique, or one image is dropped and the other trained on "
                               "the boxes of both")
    assert "fixture_dup" not in DatasetCatalog.list()


def test_categories_that_do_not_match_a_named_dataset_are_a_clear_error(tmp_path):
    json_file, _ = write_coco_fixture(tmp_path / "VOC_0712_converted" / "x")
    voc = tmp_path / "VOC_0712_converted"
    os.replace(json_file, voc / "val_coco_format.json")
    os.replace(voc / "x" / "img", voc / "JPEGImages")
    register_all(str(tmp_path))
    with pytest.raises(ValueError, match="categories of .*val_coco_format.json .* are not the classes registered"):
        DatasetCatalog.get("voc_custom_val")


def test_dataset_cli_args(tmp_path, monkeypatch):
    monkeypatch.setenv("FFS_DATASETS", str(tmp_path / "from_env"))
    parser = add_dataset_args(argparse.ArgumentParser())
    args = parser.parse_args([])
    assert args.dataset_dir == str(tmp_path / "from_env") and args.register_coco == []
    a_json, a_root = write_coco_fixture(tmp_path / "a")
    b_json, b_root = write_coco_fixture(tmp_path / "b", cats=("x", "y", "z"))
    args = parser.parse_args(["--dataset-dir", str(tmp_path / "root"), "--register-coco", "set_a", a_json, a_root,
                              "--register-coco", "set_b", b_json, b_root])
    names = apply_dataset_args(args)
    assert {"set_a", "set_b", "voc_custom_train"} <= set(names)
    assert apply_dataset_args(args) == names  # idempotent (the launcher calls it in every process)
    assert MetadataCatalog.get("shapes_val").json_file.startswith(str(tmp_path / "root"))
    assert len(DatasetCatalog.get("set_a")) == 4
    assert MetadataCatalog.get("set_b").thing_classes == ["x", "y", "z"]
    monkeypatch.delenv("FFS_DATASETS")
    assert add_dataset_args(argparse.ArgumentParser()).parse_args([]).dataset_dir == "datasets"


def test_generated_shapes_world_loads_through_the_catalog(tmp_path):
    generate_world(str(tmp_path / "shapes"), {"train": 6, "val": 3, "ood": 3, "far_ood": 2}, seed=1)
    register_all(str(tmp_path))
    require_datasets(["shapes_train", "shapes_val", "shapes_ood", "shapes_far_ood"])
    far = DatasetCatalog.get("shapes_far_ood")
    assert len(far) == 2 and not any(d["annotations"] for d in far) and MetadataCatalog.get("shapes_far_ood").is_ood
    for name, classes in (("shapes_train", ID_CLASSES), ("shapes_ood", OOD_CLASSES)):
        dicts = DatasetCatalog.get(name)
        assert len(dicts) == (6 if name == "shapes_train" else 3)
        for d in dicts:
            assert os.path.isfile(d["file_name"])
            for a in d["annotations"]:
                x, y, w, h = a["bbox"]
                assert 0 <= x and 0 <= y and x + w <= d["width"] and y + h <= d["height"] and w >= 1 and h >= 1
                assert 0 <= a["category_id"] < len(classes)
        assert MetadataCatalog.get(name).thing_classes == list(classes)
