"""The built-in datasets: name -> json and image folder relative to the dataset root, classes, OOD pairing.

Plain data (no detectron2): :mod:`.catalog` registers these names, and tools that only need paths (e.g. to
draw detections on images) resolve them with :func:`dataset_paths`.
"""
import os
from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple

from .classes import BDD_CLASSES, BDD_TRACK_CLASSES, VIS21_CLASSES, VOC_CLASSES
from .paths import default_dataset_dir
from .shapes import ID_CLASSES as SHAPES_ID_CLASSES
from .shapes import FAR_OOD_CLASSES as SHAPES_FAR_OOD_CLASSES
from .shapes import OOD_CLASSES as SHAPES_OOD_CLASSES

__all__ = ["DatasetSpec", "BUILTIN_DATASETS", "dataset_paths"]


@dataclass(frozen=True)
class DatasetSpec:
    json_file: str  # relative to the dataset root
    image_root: str
    thing_classes: Optional[Tuple[str, ...]] = None  # None: taken from the json when loaded
    ood_for: Tuple[str, ...] = field(default=())  # non-empty: an OOD test set for these ID training sets

    @property
    def is_ood(self) -> bool:
        return bool(self.ood_for)


_VOC = "VOC_0712_converted"
_BDD = "BDD100k"
_BDDT = "BDD100k_video/bdd100k"
_VIS = "Youtube-VIS/train"
_OI = "OpenImages/ood_classes_rm_overlap"

BUILTIN_DATASETS: Dict[str, DatasetSpec] = {
    # PASCAL VOC 2007+2012 trainval / VOC 2007 test, as in VOS
    "voc_custom_train": DatasetSpec(f"{_VOC}/voc0712_train_all.json", f"{_VOC}/JPEGImages", VOC_CLASSES),
    "voc_custom_val": DatasetSpec(f"{_VOC}/val_coco_format.json", f"{_VOC}/JPEGImages", VOC_CLASSES),
    # BDD100K 100k-images detection split (10 classes)
    "bdd_custom_train": DatasetSpec(f"{_BDD}/train_bdd_converted.json", f"{_BDD}/images/100k/train",
                                    BDD_CLASSES),
    "bdd_custom_val": DatasetSpec(f"{_BDD}/val_bdd_converted.json", f"{_BDD}/images/100k/val", BDD_CLASSES),
    # BDD100K MOT frames (FFS's BDD ID sets: 8 classes)
    "bdd_tracking_2k_train": DatasetSpec(f"{_BDDT}/labels/track/bdd100k_det_train_coco.json",
                                         f"{_BDDT}/images/track/train", BDD_TRACK_CLASSES),
    "bdd_tracking_2k_val": DatasetSpec(f"{_BDDT}/labels/track/bdd100k_det_val_coco.json",
                                       f"{_BDDT}/images/track/val", BDD_TRACK_CLASSES),
    # Youtube-VIS 2021 train videos split by video into train/val (the public val has no annotations)
    "vis21_train": DatasetSpec(f"{_VIS}/instances_train.json", f"{_VIS}/JPEGImages", VIS21_CLASSES),
    "vis21_val": DatasetSpec(f"{_VIS}/instances_val.json", f"{_VIS}/JPEGImages", VIS21_CLASSES),
    # OOD test sets: COCO val2017 / OpenImages images with no object of an ID class
    "coco_ood_val": DatasetSpec("COCO/annotations/instances_val2017_ood_rm_overlap.json", "COCO/val2017",
                                ood_for=("voc_custom_train",)),
    "coco_ood_val_bdd": DatasetSpec("COCO/annotations/instances_val2017_ood_wrt_bdd_rm_overlap.json",
                                    "COCO/val2017", ood_for=("bdd_custom_train",)),
    "vis_coco_ood": DatasetSpec("COCO/annotations/instances_val2017_ood_wrt_vis.json", "COCO/val2017",
                                ood_for=("vis21_train",)),
    # FFS's OOD sets for its BDD and VIS models: COCO val2017 without BDD classes (no overlap removal), nuImages
    "coco_2017_val_ood_wrt_bdd": DatasetSpec("COCO/annotations/instances_val2017_ood_wrt_bdd.json", "COCO/val2017",
                                             ood_for=("bdd_tracking_2k_train",)),
    "nu_bdd_ood": DatasetSpec("nuImages/nu_ood.json", "nuImages", ood_for=("bdd_tracking_2k_train", "vis21_train")),
    "openimages_ood_val": DatasetSpec(f"{_OI}/COCO-Format/val_coco_format.json", f"{_OI}/images",
                                      ood_for=("voc_custom_train", "bdd_custom_train")),
    # the synthetic shapes world (datasets/make_shapes.py)
    "shapes_train": DatasetSpec("shapes/annotations/train.json", "shapes/train", SHAPES_ID_CLASSES),
    "shapes_val": DatasetSpec("shapes/annotations/val.json", "shapes/val", SHAPES_ID_CLASSES),
    "shapes_ood": DatasetSpec("shapes/annotations/ood.json", "shapes/ood", SHAPES_OOD_CLASSES,
                              ood_for=("shapes_train",)),
    # far OOD for the shapes world: crops of real photographs, no boxes (ffs_det/data/photos.py)
    "shapes_far_ood": DatasetSpec("shapes/annotations/far_ood.json", "shapes/far_ood", SHAPES_FAR_OOD_CLASSES,
                                  ood_for=("shapes_train",)),
}



def dataset_paths(name: str, dataset_dir: Optional[str] = None) -> Tuple[str, str]:
    """(json file, image folder) of a built-in dataset under ``dataset_dir`` (default root if None)."""
    if name not in BUILTIN_DATASETS:
        raise KeyError(f"{name!r} is not a built-in dataset ({', '.join(BUILTIN_DATASETS)})")
    spec, root = BUILTIN_DATASETS[name], dataset_dir or default_dataset_dir()
    return os.path.join(root, spec.json_file), os.path.join(root, spec.image_root)
