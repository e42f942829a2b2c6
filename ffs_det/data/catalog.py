"""Registering the benchmark datasets (and any COCO json) in detectron2's DatasetCatalog/MetadataCatalog.

Registration only records paths and metadata; nothing is read until a dataset is loaded, so registering
every name works on machines that hold only some of the datasets. Loading checks the files first and
raises one FileNotFoundError naming the missing path, then reads the json with detectron2's
``load_coco_json`` and applies the box rule of :mod:`ffs_det.data.boxes` (clip to the image, drop boxes
under 1 px), logging how many boxes it dropped or clipped.

Metadata of every dataset registered here: ``json_file``, ``image_root``, ``evaluator_type="coco"``,
``is_ood`` (True for the OOD test sets, whose annotations are in the OOD source's own classes) and, for OOD
sets, ``ood_for`` (the ID training sets they are paired with). ``thing_classes`` is set at registration
for the ID sets, the shapes world and ``register_coco`` datasets whose json exists; for the other OOD sets
it comes from the json's categories when the dataset is first loaded (or from ``get_thing_classes``).
"""
import json
import logging
import os
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json

from .boxes import BoxFilterStats, is_xywh, sanitize_xywh
from .builtin import BUILTIN_DATASETS, DatasetSpec
from .paths import default_dataset_dir

__all__ = ["BUILTIN_DATASETS", "DatasetSpec", "register_all", "register_coco", "require_datasets",
           "get_thing_classes", "load_coco_detection", "registered_by_ffs_det"]

logger = logging.getLogger(__name__)

README_HINT = "see datasets/README.md for the expected layout, or register your own with " \
              "--register-coco NAME JSON IMAGE_ROOT"


# name -> (json_file, image_root) of every dataset registered through this module
_REGISTERED: Dict[str, Tuple[str, str]] = {}


def registered_by_ffs_det() -> List[str]:
    return sorted(_REGISTERED)


def _bbox_message(image_id, file_name, bbox) -> str:
    return (f"an annotation of image {image_id} ({file_name}) has bbox {str(bbox)[:80]}; a bbox is a list of 4 "
            "numbers [x, y, width, height]")


def _bad_bbox(json_file: str) -> Optional[str]:
    """The bbox message of the json's first annotation whose bbox is not 4 numbers (detectron2's loader fails
    on some with a bare TypeError), or None."""
    try:
        with open(json_file, encoding="utf-8") as f:
            data = json.load(f)
        files = {img.get("id"): img.get("file_name") for img in data.get("images", [])}
        for ann in data.get("annotations", []):
            if "bbox" in ann and not is_xywh(ann["bbox"]):
                return _bbox_message(ann.get("image_id"), files.get(ann.get("image_id")), ann["bbox"])
    except (OSError, ValueError, TypeError, AttributeError):
        pass
    return None


def load_coco_detection(name: str, json_file: str, image_root: str) -> List[dict]:
    """Dataset dicts of a COCO-format json, after checking the files and applying the box rule."""
    if not os.path.isfile(json_file):
        raise FileNotFoundError(f"dataset {name!r}: annotation file not found: {json_file} ({README_HINT})")
    if not os.path.isdir(image_root):
        raise FileNotFoundError(f"dataset {name!r}: image folder not found: {image_root} ({README_HINT})")
    try:
        dicts = load_coco_json(json_file, image_root, dataset_name=name)
    except AssertionError as e:  # detectron2 asserts on duplicate ids and on metadata clashes
        if "cannot be set to a different value" in str(e):
            raise ValueError(f"dataset {name!r}: the categories of {json_file} (names sorted by id) are not the "
                             f"classes registered for it, {MetadataCatalog.get(name).thing_classes}; convert it "
                             "with the script in datasets/ or register it under another name with "
                             "--register-coco") from None
        raise ValueError(f"dataset {name!r}: invalid COCO json {json_file}: {e}") from None
    except (KeyError, TypeError, ValueError, json.JSONDecodeError) as e:
        raise ValueError(f"dataset {name!r}: invalid COCO json {json_file}: "
                         f"{_bad_bbox(json_file) or f'{type(e).__name__}: {e}'}") from None
    if not dicts:
        raise ValueError(f"dataset {name!r}: {json_file} lists no images")
    stats = BoxFilterStats()
    for record in dicts:
        kept = []
        for ann in record["annotations"]:
            if "bbox" not in ann:
                raise ValueError(f"dataset {name!r}: invalid COCO json {json_file}: an annotation of image "
                                 f"{record.get('image_id')} ({record.get('file_name')}) has no 'bbox'")
            if not is_xywh(ann["bbox"]):
                raise ValueError(f"dataset {name!r}: invalid COCO json {json_file}: "
                                 f"{_bbox_message(record.get('image_id'), record.get('file_name'), ann['bbox'])}")
            box, outcome = sanitize_xywh(ann["bbox"], record.get("width"), record.get("height"))
            stats.add(outcome)
            if box is not None:
                ann["bbox"] = box
                kept.append(ann)
        record["annotations"] = kept
    msg = stats.message(f"dataset {name!r} ({json_file})")
    if msg:
        logger.warning(msg)
    return dicts


def _register(name: str, json_file: str, image_root: str, thing_classes: Optional[Sequence[str]] = None,
              is_ood: bool = False, ood_for: Sequence[str] = ()) -> None:
    json_file, image_root = os.path.abspath(json_file), os.path.abspath(image_root)
    if _REGISTERED.get(name) == (json_file, image_root) and name in DatasetCatalog.list():
        return  # already registered with these paths
    if name in DatasetCatalog.list():
        logger.info("dataset %r: re-registering with %s and %s", name, json_file, image_root)
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    DatasetCatalog.register(name, lambda: load_coco_detection(name, json_file, image_root))
    meta = dict(json_file=json_file, image_root=image_root, evaluator_type="coco", is_ood=bool(is_ood))
    if ood_for:
        meta["ood_for"] = tuple(ood_for)
    if thing_classes is not None:
        meta["thing_classes"] = list(thing_classes)
    MetadataCatalog.get(name).set(**meta)
    _REGISTERED[name] = (json_file, image_root)


def register_all(dataset_dir: Optional[str] = None) -> List[str]:
    """Register every built-in dataset under ``dataset_dir`` (default: ``$FFS_DATASETS`` or ``datasets/``).

    Idempotent: calling it again with the same root changes nothing; with another root the names are
    re-registered to point there. Returns the registered names.
    """
    root = dataset_dir or default_dataset_dir()
    for name, spec in BUILTIN_DATASETS.items():
        _register(name, os.path.join(root, spec.json_file), os.path.join(root, spec.image_root),
                  spec.thing_classes, spec.is_ood, spec.ood_for)
    return list(BUILTIN_DATASETS)


def register_coco(name: str, json_file: str, image_root: str, is_ood: bool = False) -> str:
    """Register any COCO-format detection json under ``name`` (replacing an earlier registration).

    Class names (``thing_classes``) are the json's categories sorted by id, read now if the file is there,
    else when the dataset is loaded. ``is_ood`` marks an OOD test set (metadata ``is_ood``; its annotations
    are not in the model's classes).
    """
    if not name or not isinstance(name, str):
        raise ValueError(f"dataset name must be a non-empty string, got {name!r}")
    if name in _REGISTERED and _REGISTERED[name] != (os.path.abspath(json_file), os.path.abspath(image_root)):
        logger.warning("dataset %r was registered with %s; now %s", name, _REGISTERED[name][0], json_file)
    _register(name, json_file, image_root, thing_classes=_json_categories(name, json_file), is_ood=is_ood)
    return name


def _json_categories(name: str, json_file: str) -> Optional[List[str]]:
    """Category names sorted by id, or None when the file is absent or unreadable (then known at load time).
    Raises ValueError when the json lists an image id twice: pycocotools would keep one of the two images
    and give it the boxes of both."""
    try:
        with open(json_file) as f:
            data = json.load(f)
        cats = data["categories"]
        ids = [img["id"] for img in data.get("images", [])]
        names = [str(c["name"]) for c in sorted(cats, key=lambda c: c["id"])]
        unique = len(set(ids)) == len(ids)
    except (OSError, ValueError, KeyError, TypeError):  # e.g. an id that is a list: reported when loaded
        return None
    _check_category_names(name, json_file, names)
    if not unique:
        seen, dup = set(), []
        for i in ids:
            if i in seen:
                dup.append(i)
            seen.add(i)
        raise ValueError(f"dataset {name!r}: {json_file} lists image id {dup[0]!r} more than once ({len(dup)} "
                         "duplicate ids in all); image ids must be unique, or one image is dropped and the other "
                         "trained on the boxes of both")
    return names


def get_thing_classes(name: str) -> List[str]:
    """The class names of a registered dataset, reading only the json's categories if they are not known yet."""
    require_datasets([name], check_files=False)
    meta = MetadataCatalog.get(name)
    if "thing_classes" in meta.as_dict():
        return list(meta.thing_classes)
    json_file = meta.get("json_file")
    if not json_file or not os.path.isfile(json_file):
        raise FileNotFoundError(f"dataset {name!r}: annotation file not found: {json_file} ({README_HINT})")
    try:
        with open(json_file, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"dataset {name!r}: invalid COCO json {json_file}: {type(e).__name__}: {e}") from None
    try:
        names = [str(c["name"]) for c in sorted(data["categories"], key=lambda c: c["id"])]
    except (KeyError, TypeError):
        raise ValueError(f"dataset {name!r}: {json_file} is not a COCO json with categories (a list of "
                         "{'id', 'name'} objects)") from None
    _check_category_names(name, json_file, names)
    return names


def _check_category_names(name: str, json_file: str, names: List[str]) -> None:
    """ValueError when a category name is given twice: detections of two classes would be reported as one."""
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"dataset {name!r}: {json_file} names categor{'ies' if len(dup) > 1 else 'y'} "
                         f"{', '.join(map(repr, dup))} more than once; category names must be unique")


def require_datasets(names: Iterable[str], check_files: bool = True) -> None:
    """Raise one ValueError listing every name that is not registered or whose files are missing."""
    problems = []
    known = set(DatasetCatalog.list())
    for name in names:
        if name not in known:
            problems.append(f"unknown dataset {name!r}")
            continue
        if not check_files or name not in _REGISTERED:
            continue
        json_file, image_root = _REGISTERED[name]
        if not os.path.isfile(json_file):
            problems.append(f"dataset {name!r}: annotation file not found: {json_file}")
        elif not os.path.isdir(image_root):
            problems.append(f"dataset {name!r}: image folder not found: {image_root}")
    if problems:
        ours = ", ".join(registered_by_ffs_det()) or "none (call register_all first)"
        raise ValueError("; ".join(problems) + f". Datasets registered by ffs_det: {ours}; {README_HINT}")
