"""The dataset preparation scripts in datasets/ on tiny generated fixtures, then loaded through the catalog."""
import contextlib
import csv
import importlib.util
import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO

from ffs_det.data import get_thing_classes, register_all
from ffs_det.data.classes import BDD_CLASSES, VIS21_CLASSES, VOC_CLASSES

# after ffs_det.data, which sets up detectron2
from detectron2.data import DatasetCatalog, MetadataCatalog  # noqa: E402
from repo_paths import REPO_ROOT as ROOT


def script(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "datasets", f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.main


def coco(path):
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(path))


def image(path, w, h, ext="JPEG"):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(np.zeros((h, w, 3), np.uint8)).save(path, ext)


# --------------------------------------------------------------------------------------------------------- VOC
def voc_xml(objects, size=(100, 80)):
    objs = "".join(
        f"<object><name>{n}</name><difficult>{d}</difficult><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin>"
        f"<xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>" for n, d, b in objects)
    sz = f"<size><width>{size[0]}</width><height>{size[1]}</height><depth>3</depth></size>" if size else ""
    return f"<annotation><filename>x.jpg</filename>{sz}{objs}</annotation>"


@pytest.fixture
def voc_devkit(tmp_path):
    devkit = tmp_path / "VOCdevkit"
    images = {
        ("VOC2007", "000001"): [("aeroplane", 0, (11, 21, 50, 60)), ("person", 1, (1, 1, 100, 80))],
        ("VOC2007", "000002"): [],  # no boxes
        # a degenerate box, and one reaching outside the image (clipped)
        ("VOC2007", "000003"): [("tvmonitor", 0, (30, 30, 20, 50)), ("dog", 0, (90, 70, 130, 95))],
        ("VOC2012", "2008_000001"): [("sofa", 0, (5, 5, 40, 40)), ("unicorn", 0, (1, 1, 9, 9))],
    }
    for (year, stem), objects in images.items():
        image(devkit / year / "JPEGImages" / f"{stem}.jpg", 100, 80)
        xml = voc_xml(objects, size=None if stem == "2008_000001" else (100, 80))
        (devkit / year / "Annotations").mkdir(parents=True, exist_ok=True)
        (devkit / year / "Annotations" / f"{stem}.xml").write_text(xml)
    for year, split, stems in [("VOC2007", "trainval", ["000001", "000002"]), ("VOC2007", "test", ["000003"]),
                               ("VOC2012", "trainval", ["2008_000001", "2008_000099"])]:  # 2008_000099: no JPEG
        (devkit / year / "ImageSets" / "Main").mkdir(parents=True, exist_ok=True)
        (devkit / year / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(stems) + "\n")
    return devkit


def test_prepare_voc(voc_devkit, tmp_path, caplog):
    out = tmp_path / "data" / "VOC_0712_converted"
    assert script("prepare_voc")(["--devkit", str(voc_devkit), "--output", str(out)]) == 0
    train, val = coco(out / "voc0712_train_all.json"), coco(out / "val_coco_format.json")
    assert [c["name"] for c in train.loadCats(sorted(train.getCatIds()))] == list(VOC_CLASSES)
    files = {im["file_name"]: im for im in train.loadImgs(train.getImgIds())}
    assert sorted(files) == ["000001.jpg", "000002.jpg", "2008_000001.jpg"]  # the listed image without JPEG is skipped
    assert files["2008_000001.jpg"]["width"] == 100  # size read from the image when the XML has none
    anns = train.loadAnns(train.getAnnIds(imgIds=files["000001.jpg"]["id"]))
    plane = [a for a in anns if a["category_id"] == VOC_CLASSES.index("airplane") + 1][0]
    assert plane["bbox"] == [10.0, 20.0, 40.0, 40.0]  # 1-based inclusive -> COCO
    assert [a["difficult"] for a in anns] == [0, 1]
    assert train.getAnnIds(imgIds=files["000002.jpg"]["id"]) == []
    sofa = train.loadAnns(train.getAnnIds(imgIds=files["2008_000001.jpg"]["id"]))
    assert [a["category_id"] for a in sofa] == [VOC_CLASSES.index("couch") + 1]  # unknown class skipped
    val_anns = val.loadAnns(val.getAnnIds())
    assert [a["bbox"] for a in val_anns] == [[89.0, 69.0, 11.0, 11.0]]  # degenerate dropped, the other clipped
    assert json.loads((out / "val_coco_format.json").read_text())["info"]["boxes_dropped"] == 1
    assert os.path.islink(out / "JPEGImages" / "000003.jpg")
    # the registered names load what the script wrote
    register_all(str(tmp_path / "data"))
    dicts = DatasetCatalog.get("voc_custom_train")
    assert len(dicts) == 3 and MetadataCatalog.get("voc_custom_train").thing_classes == list(VOC_CLASSES)
    assert all(os.path.isfile(d["file_name"]) for d in dicts)
    assert len(DatasetCatalog.get("voc_custom_val")[0]["annotations"]) == 1
    # --drop-difficult leaves the difficult person out
    out2 = tmp_path / "v2"
    script("prepare_voc")(["--devkit", str(voc_devkit), "--output", str(out2), "--drop-difficult", "--images", "copy"])
    assert len(coco(out2 / "voc0712_train_all.json").getAnnIds()) == 2
    assert not os.path.islink(out2 / "JPEGImages" / "000001.jpg")


# ---------------------------------------------------------------------------------------------------- COCO OOD
def coco_instances(path):
    cats = [{"id": 1, "name": "person"}, {"id": 3, "name": "car"}, {"id": 13, "name": "stop sign"},
            {"id": 24, "name": "zebra"}, {"id": 25, "name": "giraffe"}, {"id": 28, "name": "umbrella"}]
    images = [{"id": i, "file_name": f"{i:012d}.jpg", "width": 64, "height": 48} for i in range(1, 7)]
    anns = [(1, 1, [1, 1, 10, 10], 0), (1, 24, [5, 5, 20, 20], 0),  # person: not OOD for VOC
            (2, 24, [5, 5, 20, 20], 0),                               # zebra only
            (4, 1, [0, 0, 60, 40], 1), (4, 28, [1, 1, 5, 5], 0),     # crowd of people
            (5, 25, [3, 3, 0, 9], 0), (5, 28, [10, 10, 8, 8], 0),    # degenerate giraffe box
            (6, 13, [2, 2, 10, 10], 0)]                              # stop sign: OOD for VOC, not for BDD
    # image 3 has no annotation
    annotations = [{"id": k, "image_id": i, "category_id": c, "bbox": b, "area": b[2] * b[3], "iscrowd": crowd}
                   for k, (i, c, b, crowd) in enumerate(anns, start=1)]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": cats}))
    for im in images:
        image(path.parent.parent / "val2017" / im["file_name"], 64, 48)


def test_prepare_coco_ood(tmp_path):
    ann_dir = tmp_path / "data" / "COCO" / "annotations"
    coco_instances(ann_dir / "instances_val2017.json")
    main = script("prepare_coco_ood")
    assert main(["--instances", str(ann_dir / "instances_val2017.json")]) == 0
    voc = coco(ann_dir / "instances_val2017_ood_rm_overlap.json")
    assert sorted(voc.getImgIds()) == [2, 5, 6]
    assert [a["category_id"] for a in voc.loadAnns(voc.getAnnIds(imgIds=5))] == [28]  # degenerate box dropped
    assert len(voc.getCatIds()) == 6  # COCO's category list is kept
    assert main(["--instances", str(ann_dir / "instances_val2017.json"), "--id-benchmark", "bdd"]) == 0
    assert sorted(coco(ann_dir / "instances_val2017_ood_wrt_bdd_rm_overlap.json").getImgIds()) == [2, 5]
    out = ann_dir / "with_empty.json"
    assert main(["--instances", str(ann_dir / "instances_val2017.json"), "--keep-empty", "--output", str(out)]) == 0
    assert sorted(coco(out).getImgIds()) == [2, 3, 5, 6]
    register_all(str(tmp_path / "data"))
    assert get_thing_classes("coco_ood_val")[:2] == ["person", "car"]  # read from the json, not loaded yet
    dicts = DatasetCatalog.get("coco_ood_val")
    assert [d["image_id"] for d in dicts] == [2, 5, 6] and MetadataCatalog.get("coco_ood_val").is_ood
    assert len(DatasetCatalog.get("coco_ood_val_bdd")) == 2


# -------------------------------------------------------------------------------------------------- OpenImages
def test_prepare_openimages_ood(tmp_path):
    src = tmp_path / "oi_src"
    classes = {"/m/01g317": "Person", "/m/04yx4": "Man", "/m/09dzg": "Tortoise", "/m/0d8zb": "Jellyfish"}
    (tmp_path / "classes.csv").write_text("".join(f"{k},{v}\n" for k, v in classes.items()))
    rows = [("a1", "/m/01g317", 0.1, 0.5, 0.1, 0.5, 0), ("a1", "/m/09dzg", 0.5, 0.9, 0.5, 0.9, 0),
            ("b2", "/m/09dzg", 0.25, 0.75, 0.5, 1.0, 1), ("c3", "/m/04yx4", 0.1, 0.2, 0.1, 0.2, 0),
            ("d4", "/m/09dzg", 0.1, 0.2, 0.1, 0.2, 0),  # no image file
            ("e5", "/m/0d8zb", 0.3, 0.3, 0.1, 0.9, 0), ("e5", "/m/09dzg", 0.0, 1.0, 0.0, 1.0, 0)]
    with open(tmp_path / "boxes.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["ImageID", "Source", "LabelName", "Confidence", "XMin", "XMax", "YMin", "YMax", "IsOccluded",
                    "IsTruncated", "IsGroupOf", "IsDepiction", "IsInside"])
        for i, label, x0, x1, y0, y1, group in rows:
            w.writerow([i, "xclick", label, 1, x0, x1, y0, y1, 0, 0, group, 0, 0])
    for stem in ("a1", "b2", "c3", "e5"):
        image(src / f"{stem}.jpg", 200, 100)
    out = tmp_path / "data" / "OpenImages" / "ood_classes_rm_overlap"
    assert script("prepare_openimages_ood")(["--boxes", str(tmp_path / "boxes.csv"), "--class-descriptions",
                                             str(tmp_path / "classes.csv"), "--images", str(src), "--output",
                                             str(out)]) == 0
    c = coco(out / "COCO-Format" / "val_coco_format.json")
    assert sorted(im["file_name"] for im in c.loadImgs(c.getImgIds())) == ["b2.jpg", "e5.jpg"]
    assert [cat["name"] for cat in c.loadCats(sorted(c.getCatIds()))] == ["Jellyfish", "Tortoise"]
    b2 = [im for im in c.loadImgs(c.getImgIds()) if im["file_name"] == "b2.jpg"][0]
    (ann,) = c.loadAnns(c.getAnnIds(imgIds=b2["id"]))
    assert ann["bbox"] == [50.0, 50.0, 100.0, 50.0] and ann["iscrowd"] == 1  # normalised -> pixels
    e5 = [im for im in c.loadImgs(c.getImgIds()) if im["file_name"] == "e5.jpg"][0]
    assert len(c.getAnnIds(imgIds=e5["id"])) == 1  # the zero-width jellyfish is dropped
    assert os.path.islink(out / "images" / "b2.jpg")
    register_all(str(tmp_path / "data"))
    assert len(DatasetCatalog.get("openimages_ood_val")) == 2


# --------------------------------------------------------------------------------------------------------- BDD
def test_prepare_bdd_and_cli(tmp_path):
    frames = [
        {"name": "a.jpg", "labels": [
            {"category": "person", "box2d": {"x1": 10, "y1": 20, "x2": 30, "y2": 60}, "attributes": {"occluded": True}},
            {"category": "traffic light", "box2d": {"x1": 5, "y1": 5, "x2": 9, "y2": 15}},
            {"category": "drivable area", "poly2d": [[0, 0], [1, 1]]},
            {"category": "lane", "poly2d": [[0, 0], [1, 1]]},
            {"category": "bike", "box2d": {"x1": 50, "y1": 50, "x2": 50, "y2": 70}}]},  # degenerate
        {"name": "b.jpg", "labels": None},  # no boxes
        {"name": "c.jpg", "labels": [{"category": "motor", "box2d": {"x1": 1270, "y1": 700, "x2": 1300, "y2": 730}},
                                     {"category": "trailer", "box2d": {"x1": 1, "y1": 1, "x2": 9, "y2": 9}}]},
    ]
    (tmp_path / "labels.json").write_text(json.dumps(frames))
    img_dir = tmp_path / "data" / "BDD100k" / "images" / "100k" / "train"
    image(img_dir / "a.jpg", 100, 80)  # sizes come from the images that exist; others are 1280x720
    out = tmp_path / "data" / "BDD100k" / "train_bdd_converted.json"
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "datasets", "prepare_bdd.py"), "--labels",
                           str(tmp_path / "labels.json"), "--images", str(img_dir), "--output", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "3 images, 3 boxes (1 dropped, 1 clipped)" in proc.stdout
    c = coco(out)
    assert [cat["name"] for cat in c.loadCats(sorted(c.getCatIds()))] == list(BDD_CLASSES)
    ims = {im["file_name"]: im for im in c.loadImgs(c.getImgIds())}
    assert (ims["a.jpg"]["width"], ims["a.jpg"]["height"]) == (100, 80)
    assert (ims["c.jpg"]["width"], ims["c.jpg"]["height"]) == (1280, 720)
    a = c.loadAnns(c.getAnnIds(imgIds=ims["a.jpg"]["id"]))
    assert [(x["category_id"], x["bbox"], x["occluded"]) for x in a] == [
        (1, [10.0, 20.0, 20.0, 40.0], 1), (9, [5.0, 5.0, 4.0, 10.0], 0)]
    (moto,) = c.loadAnns(c.getAnnIds(imgIds=ims["c.jpg"]["id"]))
    assert moto["category_id"] == BDD_CLASSES.index("motorcycle") + 1 and moto["bbox"] == [1270.0, 700.0, 10.0, 20.0]
    assert c.getAnnIds(imgIds=ims["b.jpg"]["id"]) == []
    register_all(str(tmp_path / "data"))
    assert len(DatasetCatalog.get("bdd_custom_train")) == 3


# ------------------------------------------------------------------------------------------------- Youtube-VIS
def test_prepare_ytvis(tmp_path):
    vis = tmp_path / "data" / "Youtube-VIS" / "train"
    videos, anns = [], []
    for v in range(1, 4):
        names = [f"vid{v}/{t:05d}.jpg" for t in range(4)]
        videos.append({"id": v, "width": 80, "height": 60, "length": 4, "file_names": names})
        for n in names:
            image(vis / "JPEGImages" / n, 80, 60)
        anns.append({"id": 10 * v, "video_id": v, "category_id": 26, "iscrowd": 0,
                     "bboxes": [[1, 1, 10, 10], None, [2, 2, 0, 5], [70, 50, 20, 20]]})
    cats = [{"id": i + 1, "name": n, "supercategory": "object"} for i, n in enumerate(VIS21_CLASSES)]
    (vis / "instances.json").write_text(json.dumps({"videos": videos, "annotations": anns, "categories": cats}))
    assert script("prepare_ytvis")(["--annotations", str(vis / "instances.json"), "--val-fraction", "0.34",
                                    "--seed", "3"]) == 0
    train, val = coco(vis / "instances_train.json"), coco(vis / "instances_val.json")
    train_videos = {im["video_id"] for im in train.loadImgs(train.getImgIds())}
    val_videos = {im["video_id"] for im in val.loadImgs(val.getImgIds())}
    assert len(val_videos) == 1 and train_videos | val_videos == {1, 2, 3} and not train_videos & val_videos
    assert len(train.getImgIds()) == 8  # every frame, also those without a box
    per_frame = {im["frame_id"]: train.loadAnns(train.getAnnIds(imgIds=im["id"]))
                 for im in train.loadImgs(train.getImgIds()) if im["video_id"] == min(train_videos)}
    assert [len(per_frame[t]) for t in range(4)] == [1, 0, 0, 1]  # None and degenerate frames have no box
    assert per_frame[3][0]["bbox"] == [70.0, 50.0, 10.0, 10.0] and per_frame[3][0]["track_id"] == 10 * min(train_videos)
    register_all(str(tmp_path / "data"))
    dicts = DatasetCatalog.get("vis21_train")
    assert len(dicts) == 8 and all(os.path.isfile(d["file_name"]) for d in dicts)
    assert MetadataCatalog.get("vis21_train").thing_classes == list(VIS21_CLASSES)
    assert dicts[0]["annotations"][0]["category_id"] == VIS21_CLASSES.index("person")
    # frame stride
    script("prepare_ytvis")(["--annotations", str(vis / "instances.json"), "--output", str(tmp_path / "s2"),
                             "--frame-stride", "2", "--val-fraction", "0"])
    assert sorted(im["frame_id"] for im in coco(tmp_path / "s2" / "instances_train.json").dataset["images"]) == \
        [0, 0, 0, 2, 2, 2]
