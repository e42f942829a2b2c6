"""Building and writing COCO-format detection json (used by the converters and the shapes generator)."""
import logging
from typing import Dict, Iterable, Optional, Sequence, Tuple, Union

from ..atomic_io import atomic_write_json
from .boxes import BoxFilterStats, sanitize_xywh

__all__ = ["CocoJsonBuilder"]

logger = logging.getLogger(__name__)


class CocoJsonBuilder:
    """Collects images and boxes, applies the box rule of :mod:`.boxes`, and writes the json atomically.

    ``categories`` is a sequence of names (ids ``1..K`` in that order) or of ``(id, name)`` pairs.
    """

    def __init__(self, categories: Iterable[Union[str, Tuple[int, str]]], supercategory: str = "object",
                 info: Optional[dict] = None):
        cats = list(categories)
        if cats and isinstance(cats[0], str):
            cats = list(enumerate(cats, start=1))
        self.categories = [{"id": int(i), "name": str(n), "supercategory": supercategory} for i, n in cats]
        self._cat_id: Dict[str, int] = {c["name"]: c["id"] for c in self.categories}
        if len(self._cat_id) != len(self.categories) or len({c["id"] for c in self.categories}) != len(cats):
            raise ValueError("category names and ids must be unique")
        self.info = dict(info or {})
        self.images: list = []
        self.annotations: list = []
        self.box_stats = BoxFilterStats()
        self._sizes: Dict[int, Tuple[float, float]] = {}

    def category_id(self, name: str) -> int:
        return self._cat_id[name]

    def add_image(self, file_name: str, width: int, height: int, image_id: Optional[int] = None,
                  **extra) -> int:
        image_id = len(self.images) + 1 if image_id is None else int(image_id)
        if image_id in self._sizes:
            raise ValueError(f"duplicate image id {image_id} ({file_name})")
        self.images.append({"id": image_id, "file_name": file_name, "width": int(width), "height": int(height),
                            **extra})
        self._sizes[image_id] = (width, height)
        return image_id

    def add_box(self, image_id: int, category: Union[str, int], xywh: Sequence[float], iscrowd: int = 0,
                area: Optional[float] = None, **extra) -> Optional[int]:
        """Add one box; returns its annotation id, or None when the box rule dropped it."""
        width, height = self._sizes[image_id]
        box, outcome = sanitize_xywh(xywh, width, height)
        self.box_stats.add(outcome)
        if box is None:
            return None
        cat_id = self._cat_id[category] if isinstance(category, str) else int(category)
        ann_id = len(self.annotations) + 1
        self.annotations.append({
            "id": ann_id, "image_id": image_id, "category_id": cat_id, "bbox": [round(v, 2) for v in box],
            "area": float(box[2] * box[3] if area is None or outcome == "clipped" else area),
            "iscrowd": int(iscrowd), **extra,
        })
        return ann_id

    def to_dict(self) -> dict:
        info = dict(self.info, boxes_dropped=self.box_stats.dropped, boxes_clipped=self.box_stats.clipped)
        return {"info": info, "images": self.images, "annotations": self.annotations,
                "categories": self.categories}

    def write(self, path: str) -> dict:
        """Write the json (atomically); log the box-rule counts once. Returns a short summary."""
        msg = self.box_stats.message(path)
        if msg:
            logger.warning(msg)
        atomic_write_json(path, self.to_dict())
        return {"json": path, "images": len(self.images), "boxes": len(self.annotations),
                "boxes_dropped": self.box_stats.dropped, "boxes_clipped": self.box_stats.clipped}
