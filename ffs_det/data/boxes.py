"""The one rule for boxes that cannot be trained on, shared by the converters and the dataset loader.

A box (COCO ``[x, y, w, h]``, absolute pixels) is clipped to the image ``[0, W] x [0, H]``. It is dropped
when a coordinate is not finite, or when its clipped width or height is below ``MIN_BOX_SIZE`` pixels (this
covers zero/negative sizes and boxes entirely outside the image). Callers count both outcomes in a
``BoxFilterStats`` and log them once per file.
"""
import math
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

__all__ = ["MIN_BOX_SIZE", "BoxFilterStats", "is_xywh", "sanitize_xywh"]

MIN_BOX_SIZE = 1.0


@dataclass
class BoxFilterStats:
    total: int = 0
    dropped: int = 0
    clipped: int = 0

    def add(self, outcome: str) -> None:
        self.total += 1
        if outcome == "dropped":
            self.dropped += 1
        elif outcome == "clipped":
            self.clipped += 1

    def message(self, source: str) -> Optional[str]:
        """One log line for ``source`` (a file or dataset name), or None when every box was fine."""
        if not (self.dropped or self.clipped):
            return None
        return (f"{source}: dropped {self.dropped} of {self.total} boxes (non-finite, or narrower/shorter than "
                f"{MIN_BOX_SIZE:g} px after clipping to the image); clipped {self.clipped} boxes that extended "
                "outside the image")


def is_xywh(box) -> bool:
    """Whether ``box`` is a list (or tuple) of 4 numbers, as a COCO bbox must be (finite or not)."""
    return isinstance(box, (list, tuple)) and len(box) == 4 and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in box)


def sanitize_xywh(box: Sequence[float], width: Optional[float], height: Optional[float],
                  min_size: float = MIN_BOX_SIZE) -> Tuple[Optional[list], str]:
    """``(clipped [x, y, w, h], outcome)`` with outcome ``"ok"``, ``"clipped"`` or ``"dropped"`` (box None).

    ``width``/``height`` of None skip the clipping (the size test still applies).
    """
    if len(box) != 4:
        return None, "dropped"
    try:
        x, y, w, h = (float(v) for v in box)
    except (TypeError, ValueError):
        return None, "dropped"
    if not all(math.isfinite(v) for v in (x, y, w, h)):
        return None, "dropped"
    x0, y0, x1, y1 = x, y, x + w, y + h
    if width is not None and height is not None:
        x0, x1 = min(max(x0, 0.0), float(width)), min(max(x1, 0.0), float(width))
        y0, y1 = min(max(y0, 0.0), float(height)), min(max(y1, 0.0), float(height))
    if x1 - x0 < min_size or y1 - y0 < min_size:
        return None, "dropped"
    out = [x0, y0, x1 - x0, y1 - y0]
    return out, ("ok" if (x0, y0, x1, y1) == (x, y, x + w, y + h) else "clipped")
