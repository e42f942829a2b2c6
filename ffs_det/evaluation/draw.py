"""Drawing kept detections on their images, with the ones an OOD score flags marked.

A kept detection (kept by the evaluation protocol) is drawn green when its OOD score is at or above the
cut that keeps 95% of the ID detections, and red (labelled "OOD") below it.
"""
import io
import json
import logging
import os
from typing import Dict, Sequence

import numpy as np
from PIL import Image, ImageDraw

__all__ = ["image_files", "draw_detections"]

logger = logging.getLogger(__name__)

ID_COLOUR, OOD_COLOUR = (40, 200, 60), (230, 40, 40)
MIN_SIDE = 480


def image_files(json_file: str, image_root: str) -> Dict[int, str]:
    """image id -> image path, from a COCO json."""
    with open(json_file) as f:
        images = json.load(f).get("images", [])
    return {int(im["id"]): os.path.join(image_root, im["file_name"]) for im in images}


def draw_detections(arrays: Dict[str, np.ndarray], files: Dict[int, str], class_names: Sequence[str],
                    keep: np.ndarray, score_key: str, cut: float, max_images: int) -> Dict[int, bytes]:
    """PNG bytes of up to ``max_images`` images (those with kept detections, the boolean mask ``keep``, whose
    file exists, lowest ids first). An image PIL cannot read, or one over its pixel limit (a decompression bomb),
    is left out with a warning naming it."""
    ids = sorted({int(i) for i in arrays["image_id"][keep]})
    image_ids = [i for i in ids if i in files and os.path.isfile(files[i])][:max_images]
    out = {}
    for image_id in image_ids:
        try:
            with Image.open(files[image_id]) as im:
                canvas = im.convert("RGB")
        except (OSError, Image.DecompressionBombError) as e:  # UnidentifiedImageError is an OSError
            logger.warning("not drawing image %d (%s): %s: %s", image_id, files[image_id], type(e).__name__, e)
            continue
        scale = max(1.0, MIN_SIDE / max(canvas.size))  # small images are enlarged so labels stay readable
        if scale > 1:
            canvas = canvas.resize((round(canvas.width * scale), round(canvas.height * scale)), Image.NEAREST)
        draw = ImageDraw.Draw(canvas)
        for i in np.flatnonzero(keep & (arrays["image_id"] == image_id)):
            value = float(arrays[score_key][i])
            colour = ID_COLOUR if value >= cut else OOD_COLOUR
            x0, y0, x1, y1 = (float(v) * scale for v in arrays["boxes"][i])
            draw.rectangle([x0, y0, x1, y1], outline=colour, width=2)
            tag = f"{class_names[int(arrays['pred_class'][i])]} {float(arrays['score'][i]):.2f} " \
                  f"{score_key}={value:.2f}" + ("" if value >= cut else " OOD")
            left, top, right, bottom = draw.textbbox((x0 + 2, y0 + 1), tag)
            draw.rectangle([left - 1, top - 1, right + 1, bottom + 1], fill=(0, 0, 0))
            draw.text((x0 + 2, y0 + 1), tag, fill=colour)
        buf = io.BytesIO()
        canvas.save(buf, format="PNG")
        out[image_id] = buf.getvalue()
    return out
