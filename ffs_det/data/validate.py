"""Input checks run before training or inference starts, and a DatasetMapper whose read errors name the image.

* :func:`check_num_classes` — ``MODEL.ROI_HEADS.NUM_CLASSES`` must equal the number of classes of the
  training sets (read from their metadata or json categories, without loading the annotations).
* :func:`check_image_files` — every ``file_name`` of the dataset dicts exists (one ``stat`` per image; the
  images are not decoded here).
* :class:`CheckedDatasetMapper` — detectron2's DatasetMapper; an image that cannot be decoded (corrupt,
  truncated, not an image) or whose size differs from the json's is an :class:`ImageReadError` naming the
  file, instead of a PIL/detectron2 error deep in the data loader; so is an image of more than 8 bits per
  channel (16-bit PNG, 32-bit TIFF), which detectron2 would otherwise clip to a white image.
"""
import os
from typing import Iterable, List, Sequence

from detectron2.data import DatasetMapper

__all__ = ["ImageReadError", "check_num_classes", "check_image_files", "CheckedDatasetMapper"]


class ImageReadError(ValueError):
    """An image of a dataset cannot be read; the message names the file."""


def check_num_classes(cfg, dataset_names: Sequence[str] = None) -> List[str]:
    """Raise ValueError when ``MODEL.ROI_HEADS.NUM_CLASSES`` differs from the classes of the training sets.

    Returns the class names. Datasets whose classes cannot be found without loading them are skipped.
    """
    from .catalog import get_thing_classes

    names = list(cfg.DATASETS.TRAIN if dataset_names is None else dataset_names)
    want = cfg.MODEL.ROI_HEADS.NUM_CLASSES
    classes = None
    for name in names:
        found = get_thing_classes(name)
        if not found:
            raise ValueError(f"training set {name!r} has no classes (the 'categories' of its json are empty); list "
                             "its categories as {'id', 'name'} objects")
        if len(found) != want:
            shown = ", ".join(found[:8]) + (", ..." if len(found) > 8 else "")
            raise ValueError(f"MODEL.ROI_HEADS.NUM_CLASSES is {want} but training set {name!r} has {len(found)} "
                             f"classes ({shown}); set MODEL.ROI_HEADS.NUM_CLASSES {len(found)}")
        classes = classes or found
    return classes or []


def check_image_files(dataset_dicts: Iterable[dict], what: str = "dataset") -> None:
    """Raise FileNotFoundError naming the first missing image files (and how many are missing)."""
    missing = [d["file_name"] for d in dataset_dicts if not os.path.isfile(d["file_name"])]
    if missing:
        shown = ", ".join(missing[:3]) + (f", ... ({len(missing) - 3} more)" if len(missing) > 3 else "")
        raise FileNotFoundError(f"{what}: {len(missing)} image file(s) not found: {shown}")


# PIL modes of more than 8 bits per channel: detectron2's read_image converts them to 8-bit RGB by
# clipping, so a 16-bit (thermal, medical) image becomes almost uniformly white
WIDE_MODES = ("I", "F")


def _refuse_wide_image(dataset_dict) -> None:
    from PIL import Image

    name = dataset_dict.get("file_name", "?")
    with Image.open(name) as im:  # reads the header only
        mode = im.mode
    if mode.split(";")[0] in WIDE_MODES:
        raise ImageReadError(f"image {name} (image id {dataset_dict.get('image_id')}) has {mode} pixels (more than 8 "
                             "bits per channel), which detectron2 would clip to white; convert the images to 8 bits "
                             "first (e.g. scale 16-bit values by 1/257)")


class CheckedDatasetMapper(DatasetMapper):
    def __call__(self, dataset_dict):
        try:
            _refuse_wide_image(dataset_dict)
            return super().__call__(dataset_dict)
        except ImageReadError:
            raise
        except (OSError, SyntaxError, ValueError) as e:  # PIL: UnidentifiedImageError (OSError), truncated
            name = dataset_dict.get("file_name", "?")   # files (OSError/SyntaxError); detectron2: size mismatch
            if type(e).__name__ == "UnidentifiedImageError":
                msg = "not an image file PIL can decode (corrupt, truncated or another format)"
            else:
                msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ImageReadError(f"image {name} (image id {dataset_dict.get('image_id')}) cannot be read: "
                                 f"{msg}") from None
