"""The synthetic "shapes" world: small scenes of filled shapes for a detector that trains on a CPU.

ID scenes hold 1-4 objects of the inlier classes (:data:`ID_CLASSES`); OOD scenes hold 1-4 objects of novel
classes only (:data:`OOD_CLASSES`). Everything except the outline is drawn from one distribution for every
class and both scene types: background (flat + noise, two-colour gradient, smooth "clouds", rotated
stripes/checks), clutter that is not an object (thin lines, arcs, scribbles, specks), object colour, fill
pattern (solid, gradient, stripes, speckles), shading, size, aspect, rotation, position, occlusion,
truncation at the border, sensor noise and blur. Only the shape tells ID from OOD. A fourth split, ``far_ood``, holds crops of real photographs
(:mod:`.photos`): a far shift beside the near one of ``ood``.

Objects overlap, but each keeps at least ``MIN_VISIBLE`` of its pixels visible (inside the image and not
covered); its box is the tight box of its visible pixels. Every image is drawn from its own random stream
seeded by ``(seed, split, index)``, so a world is a pure function of its parameters.

Layout written by :func:`generate_world` (``root`` is ``<dataset_dir>/shapes``)::

    root/{train,val,ood,far_ood}/000001.png ...
    root/annotations/{train,val,ood,far_ood}.json      (COCO; written last, atomically; far_ood has no boxes)
"""
import logging
import os
import re
import time
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from .coco_json import CocoJsonBuilder
from .photos import load_photos, render_photo

__all__ = ["ID_CLASSES", "OOD_CLASSES", "SPLITS", "DEFAULT_COUNTS", "render_scene", "generate_split",
           "generate_world"]

logger = logging.getLogger(__name__)

ID_CLASSES: Tuple[str, ...] = ("circle", "square", "triangle")
OOD_CLASSES: Tuple[str, ...] = ("star", "cross", "ring", "hexagon")
SPLITS: Tuple[str, ...] = ("train", "val", "ood", "far_ood")
# the far_ood images hold no annotated object; their json lists one category so that it is a valid detection json
FAR_OOD_CLASSES: Tuple[str, ...] = ("photo",)
# 600 test images per side: on 150, the bootstrap std of one model's FPR95 was 4.5-5 points (AUROC ~2),
# too coarse to tell methods apart
DEFAULT_COUNTS: Dict[str, int] = {"train": 600, "val": 600, "ood": 600, "far_ood": 600}
VERSION = 1

IMAGE_SIZE = (128, 192)  # width and height each uniform in this range (inclusive)
OBJECTS_PER_IMAGE = (1, 4)
RADIUS = (9.0, 32.0)  # log-uniform, pixels (circumradius before the aspect stretch)
MIN_VISIBLE = 0.6
MIN_CONTRAST = 45.0  # RGB distance between an object's mean colour and the background it covers
SUPERSAMPLE = 4
_FILE_RE = re.compile(r"^(\d{6})\.png$")


# ---------------------------------------------------------------------------------------------- geometry
def _regular(n: int, phase: float = 0.0) -> np.ndarray:
    t = phase + 2 * np.pi * np.arange(n) / n
    return np.stack([np.cos(t), np.sin(t)], 1)


def _star(points: int = 5, inner: float = 0.45) -> np.ndarray:
    t = -np.pi / 2 + np.pi * np.arange(2 * points) / points
    r = np.where(np.arange(2 * points) % 2 == 0, 1.0, inner)
    return np.stack([r * np.cos(t), r * np.sin(t)], 1)


def _cross(arm: float = 0.34) -> np.ndarray:
    a = arm
    return np.array([(-a, -1), (a, -1), (a, -a), (1, -a), (1, a), (a, a), (a, 1), (-a, 1), (-a, a), (-1, a),
                     (-1, -a), (-a, -a)], float)


# Each shape: polygons in unit coordinates (circumradius 1), drawn in order with fill 1 (solid) or 0 (hole).
SHAPES: Dict[str, List[Tuple[np.ndarray, int]]] = {
    "circle": [(_regular(48), 1)],
    "square": [(_regular(4, np.pi / 4), 1)],
    "triangle": [(_regular(3, -np.pi / 2), 1)],
    "star": [(_star(), 1)],
    "cross": [(_cross(), 1)],
    "ring": [(_regular(48), 1), (0.55 * _regular(48), 0)],
    "hexagon": [(_regular(6), 1)],
}


def _object_alpha(kind: str, cx: float, cy: float, radius: float, aspect: float, angle: float):
    """Anti-aliased coverage of one object: ``(x0, y0, alpha)`` with alpha float32 in [0, 1]."""
    c, s = np.cos(angle), np.sin(angle)
    scale = np.array([radius * np.sqrt(aspect), radius / np.sqrt(aspect)])
    rot = np.array([[c, -s], [s, c]])
    polys = [((p * scale) @ rot.T + (cx, cy), fill) for p, fill in SHAPES[kind]]
    pts = np.concatenate([p for p, _ in polys])
    x0, y0 = np.floor(pts.min(0)).astype(int) - 1
    x1, y1 = np.ceil(pts.max(0)).astype(int) + 1
    canvas = Image.new("L", ((x1 - x0) * SUPERSAMPLE, (y1 - y0) * SUPERSAMPLE), 0)
    draw = ImageDraw.Draw(canvas)
    for p, fill in polys:
        draw.polygon([tuple(v) for v in ((p - (x0, y0)) * SUPERSAMPLE)], fill=255 * fill)
    alpha = np.asarray(canvas.reduce(SUPERSAMPLE), dtype=np.float32) / 255.0
    return int(x0), int(y0), alpha


# -------------------------------------------------------------------------------------------- appearance
def _colour(rng: np.random.Generator) -> np.ndarray:
    """A random RGB colour (0-255) drawn uniformly in hue, broadly in saturation and value."""
    h, s, v = rng.uniform(0, 1), rng.uniform(0.1, 1.0), rng.uniform(0.15, 1.0)
    i, f = int(h * 6) % 6, h * 6 - int(h * 6)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    rgb = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i]
    return np.array(rgb, np.float32) * 255


def _ramp(rng, h: int, w: int) -> np.ndarray:
    """A linear ramp in [0, 1] across an (h, w) grid along a random direction."""
    phi = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    r = xx * np.cos(phi) + yy * np.sin(phi)
    return (r - r.min()) / max(float(r.max() - r.min()), 1e-6)


def _pattern(rng, h: int, w: int, period: Tuple[float, float]) -> np.ndarray:
    """Rotated stripes or checks in {0, 1}, (h, w)."""
    phi, p = rng.uniform(0, np.pi), rng.uniform(*period)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    u = (xx * np.cos(phi) + yy * np.sin(phi)) / p
    if rng.uniform() < 0.5:
        return (np.floor(u) % 2).astype(np.float32)
    v = (-xx * np.sin(phi) + yy * np.cos(phi)) / p
    return ((np.floor(u) + np.floor(v)) % 2).astype(np.float32)


def _two_tone(c1, c2, t: np.ndarray) -> np.ndarray:
    return c1 * (1 - t[..., None]) + c2 * t[..., None]


def _surface(rng, h: int, w: int, kind: str, period: Tuple[float, float]) -> np.ndarray:
    """An (h, w, 3) float image: flat, gradient, clouds or pattern, in two random colours."""
    c1, c2 = _colour(rng), _colour(rng)
    if kind == "flat":
        return np.broadcast_to(c1, (h, w, 3)).copy()
    if kind == "gradient":
        return _two_tone(c1, c2, _ramp(rng, h, w))
    if kind == "clouds":
        cells = (max(2, h // int(rng.integers(12, 40))), max(2, w // int(rng.integers(12, 40))))
        t = rng.uniform(0, 1, cells).astype(np.float32)
        t = np.asarray(Image.fromarray(t, mode="F").resize((w, h), Image.BICUBIC), dtype=np.float32)
        return _two_tone(c1, c2, np.clip(t, 0, 1))
    # pattern: low contrast so it reads as texture
    c2 = c1 + (c2 - c1) * rng.uniform(0.2, 0.6)
    return _two_tone(c1, c2, _pattern(rng, h, w, period))


def _background(rng, h: int, w: int) -> np.ndarray:
    kind = ("flat", "gradient", "clouds", "pattern")[int(rng.integers(4))]
    img = _surface(rng, h, w, kind, period=(3.0, 14.0))
    img += rng.normal(0, rng.uniform(0, 10), (h, w, 3)).astype(np.float32)
    return np.clip(img, 0, 255)


def _draw_clutter(rng, img: np.ndarray, count: int) -> np.ndarray:
    """Thin lines, arcs, scribbles and specks: structure that is not an object."""
    h, w = img.shape[:2]
    pil = Image.fromarray(img.astype(np.uint8))
    draw = ImageDraw.Draw(pil)
    for _ in range(count):
        col = tuple(int(v) for v in _colour(rng))
        kind = int(rng.integers(4))
        width = int(rng.integers(1, 3))
        if kind == 0:
            draw.line([tuple(rng.uniform(0, (w, h))), tuple(rng.uniform(0, (w, h)))], fill=col, width=width)
        elif kind == 1:
            cx, cy, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(6, 40)
            start = rng.uniform(0, 360)
            draw.arc([cx - r, cy - r, cx + r, cy + r], start, start + rng.uniform(30, 200), fill=col, width=1)
        elif kind == 2:
            pts = np.cumsum(rng.normal(0, 8, (int(rng.integers(3, 8)), 2)), 0) + rng.uniform(0, (w, h))
            draw.line([tuple(p) for p in pts], fill=col, width=1)
        else:
            for _ in range(int(rng.integers(3, 12))):
                x, y, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(0.5, 2.0)
                draw.ellipse([x - r, y - r, x + r, y + r], fill=col)
    return np.asarray(pil, dtype=np.float32)


def _object_fill(rng, h: int, w: int) -> np.ndarray:
    kind = ("flat", "gradient", "pattern", "speckle")[int(rng.choice(4, p=(0.4, 0.25, 0.2, 0.15)))]
    if kind == "speckle":
        fill = _surface(rng, h, w, "flat", (0, 0))
        dots = rng.uniform(0, 1, (h, w)) < rng.uniform(0.05, 0.3)
        fill[dots] = _colour(rng)
    else:
        fill = _surface(rng, h, w, kind, period=(2.5, 8.0))
    shade = 1 + rng.uniform(-0.35, 0.35) * (_ramp(rng, h, w) - 0.5) * 2
    return np.clip(fill * shade[..., None], 0, 255)


# ------------------------------------------------------------------------------------------------ scenes
def _place(rng, kind: str, w: int, h: int, owner: np.ndarray, full_area: List[float]):
    """Sample a pose whose object and all earlier objects keep MIN_VISIBLE of their pixels; None if none."""
    for _ in range(25):
        radius = float(np.exp(rng.uniform(*np.log(RADIUS))))
        pose = (rng.uniform(0, w), rng.uniform(0, h), radius, float(np.exp(rng.uniform(-0.3, 0.3))),
                rng.uniform(0, 2 * np.pi))
        x0, y0, alpha = _object_alpha(kind, *pose)
        area = float((alpha >= 0.5).sum())
        ys, xs = slice(max(y0, 0), min(y0 + alpha.shape[0], h)), slice(max(x0, 0), min(x0 + alpha.shape[1], w))
        if ys.start >= ys.stop or xs.start >= xs.stop or area == 0:
            continue
        cover = alpha[ys.start - y0:ys.stop - y0, xs.start - x0:xs.stop - x0] >= 0.5
        if cover.sum() < MIN_VISIBLE * area:
            continue
        hidden = np.bincount(owner[ys, xs][cover] + 1, minlength=len(full_area) + 1)[1:]
        visible = np.bincount(owner.ravel() + 1, minlength=len(full_area) + 1)[1:]
        if np.all(visible - hidden >= MIN_VISIBLE * np.asarray(full_area)):
            return pose, x0, y0, alpha, area, (ys, xs), cover
    return None


def render_scene(rng: np.random.Generator, classes: Sequence[str]):
    """One scene: ``(uint8 RGB image (H, W, 3), [(class index, [x, y, w, h], visible pixels), ...])``."""
    w, h = (int(v) for v in rng.integers(IMAGE_SIZE[0], IMAGE_SIZE[1] + 1, 2))
    img = _draw_clutter(rng, _background(rng, h, w), int(rng.integers(0, 9)))
    owner = np.full((h, w), -1, np.int32)
    labels, full_area = [], []
    for _ in range(int(rng.integers(OBJECTS_PER_IMAGE[0], OBJECTS_PER_IMAGE[1] + 1))):
        cls = int(rng.integers(len(classes)))
        placed = _place(rng, classes[cls], w, h, owner, full_area)
        if placed is None:
            continue
        pose, x0, y0, alpha, area, (ys, xs), cover = placed
        a = alpha[ys.start - y0:ys.stop - y0, xs.start - x0:xs.stop - x0][..., None]
        region = img[ys, xs]
        fill = _object_fill(rng, *region.shape[:2])
        for _ in range(10):  # keep the object visible against what it covers
            if np.linalg.norm(fill[cover].mean(0) - region[cover].mean(0)) >= MIN_CONTRAST:
                break
            fill = _object_fill(rng, *region.shape[:2])
        img[ys, xs] = region * (1 - a) + fill * a
        owner[ys, xs][cover] = len(full_area)  # basic slicing: a view into owner
        labels.append(cls)
        full_area.append(area)
    if rng.uniform() < 0.25:  # a little clutter in front of the objects
        img = _draw_clutter(rng, img, int(rng.integers(1, 3)))
    img += rng.normal(0, rng.uniform(0, 6), img.shape).astype(np.float32)
    out = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    if rng.uniform() < 0.25:
        out = out.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 0.8)))
    objects = []
    for j, cls in enumerate(labels):
        yy, xx = np.nonzero(owner == j)
        x0, y0, x1, y1 = int(xx.min()), int(yy.min()), int(xx.max()) + 1, int(yy.max()) + 1
        objects.append((cls, [x0, y0, x1 - x0, y1 - y0], int(yy.size)))
    return np.asarray(out), objects


# ------------------------------------------------------------------------------------------------- files
def _split_classes(split: str) -> Tuple[str, ...]:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose from {', '.join(SPLITS)}")
    return {"ood": OOD_CLASSES, "far_ood": FAR_OOD_CLASSES}.get(split, ID_CLASSES)


def _info(split: str, num_images: int, seed: int) -> dict:
    return {"description": "ffs_det synthetic shapes world", "version": VERSION, "split": split,
            "num_images": int(num_images), "seed": int(seed)}


def _is_current(root: str, split: str, num_images: int, seed: int) -> bool:
    import json

    path = os.path.join(root, "annotations", f"{split}.json")
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError):
        return False
    info = data.get("info", {})
    if any(info.get(k) != v for k, v in _info(split, num_images, seed).items()):
        return False
    return all(os.path.isfile(os.path.join(root, split, im["file_name"])) for im in data.get("images", []))


def generate_split(root: str, split: str, num_images: int, seed: int) -> dict:
    """Write ``num_images`` scenes of ``split`` under ``root`` and their COCO json (last, atomically)."""
    if num_images < 0:
        raise ValueError(f"number of {split} images must be >= 0, got {num_images}")
    classes = _split_classes(split)
    image_dir = os.path.join(root, split)
    os.makedirs(image_dir, exist_ok=True)
    builder = CocoJsonBuilder(classes, supercategory="shape", info=_info(split, num_images, seed))
    split_key = SPLITS.index(split)
    photos = load_photos() if split == "far_ood" else None
    for i in range(1, num_images + 1):
        rng = np.random.default_rng([int(seed), split_key, i])
        if photos is not None:
            size = tuple(int(v) for v in rng.integers(IMAGE_SIZE[0], IMAGE_SIZE[1] + 1, 2))
            pixels, objects = render_photo(rng, photos, size), []
        else:
            pixels, objects = render_scene(rng, classes)
        name = f"{i:06d}.png"
        Image.fromarray(pixels).save(os.path.join(image_dir, name), compress_level=1)
        image_id = builder.add_image(name, pixels.shape[1], pixels.shape[0])
        for cls, box, area in objects:
            builder.add_box(image_id, classes[cls], box, area=area)
    for name in os.listdir(image_dir):  # images of an earlier, larger world
        m = _FILE_RE.match(name)
        if m and int(m.group(1)) > num_images:
            os.remove(os.path.join(image_dir, name))
    return builder.write(os.path.join(root, "annotations", f"{split}.json"))


def generate_world(root: str, counts: Optional[Dict[str, int]] = None, seed: int = 0,
                   force: bool = False) -> Dict[str, dict]:
    """Generate the train/val/ood/far_ood splits under ``root`` (``<dataset_dir>/shapes``).

    A split whose json already records the same seed, size and generator version (and whose images
    exist) is kept unless ``force``. Returns ``{split: summary}``.
    """
    counts = dict(DEFAULT_COUNTS, **(counts or {}))
    out = {}
    for split in SPLITS:
        t0 = time.perf_counter()
        if not force and _is_current(root, split, counts[split], seed):
            out[split] = {"json": os.path.join(root, "annotations", f"{split}.json"), "skipped": True}
            continue
        out[split] = generate_split(root, split, counts[split], seed)
        out[split]["seconds"] = round(time.perf_counter() - t0, 2)
    return out
