"""Far-OOD scenes for the shapes world: crops of real photographs that ship with scikit-image and scikit-learn.

The shapes world's own OOD split (unseen shapes drawn like the inlier ones) is a near shift: only the outline
differs. This split is a far shift: real photographs of objects that are not shapes (a cat, a coffee cup, an
astronaut, a rocket, a motorcycle, coins, a clock, a building, a flower, a cameraman), none of them drawn by the
shapes renderer. Each image is a random crop (a quarter to all of the photo's shorter side, any position, a
random horizontal flip) resized to the shapes world's image size, drawn from its own random stream seeded by
``(seed, index)``; the photos are read from the installed packages, nothing is downloaded. The images carry no
boxes: every detection on them is out of distribution.
"""
from typing import Callable, List, Tuple

import numpy as np
from PIL import Image

__all__ = ["PHOTO_NAMES", "load_photos", "render_photo"]

# (name, loader): scikit-image's bundled colour and grey photographs and scikit-learn's two sample images
PHOTO_NAMES: Tuple[str, ...] = ("astronaut", "coffee", "chelsea", "rocket", "motorcycle", "camera", "coins", "clock",
                                "china", "flower")


def _skimage(name: str) -> Callable[[], np.ndarray]:
    def load():
        import skimage.data

        return skimage.data.stereo_motorcycle()[0] if name == "motorcycle" else getattr(skimage.data, name)()
    return load


def _sklearn(index: int) -> Callable[[], np.ndarray]:
    def load():
        from sklearn.datasets import load_sample_images

        return load_sample_images().images[index]
    return load


_LOADERS = {**{n: _skimage(n) for n in PHOTO_NAMES[:8]}, "china": _sklearn(0), "flower": _sklearn(1)}


def load_photos() -> List[np.ndarray]:
    """The source photographs as ``(H, W, 3)`` uint8 RGB arrays, in :data:`PHOTO_NAMES` order."""
    photos = []
    for name in PHOTO_NAMES:
        img = np.asarray(_LOADERS[name]())
        if img.ndim == 2:
            img = np.repeat(img[:, :, None], 3, axis=2)
        photos.append(np.ascontiguousarray(img[:, :, :3]).astype(np.uint8))
    return photos


def render_photo(rng: np.random.Generator, photos: List[np.ndarray], size: Tuple[int, int]) -> np.ndarray:
    """One far-OOD image ``(height, width, 3)`` uint8: a random crop of a random photo, resized to ``size``
    ``(width, height)``."""
    photo = photos[int(rng.integers(len(photos)))]
    h, w = photo.shape[:2]
    width, height = size
    aspect = width / height
    side = int(round(min(h, w) * rng.uniform(0.25, 1.0)))
    ch, cw = (side, min(w, int(round(side * aspect)))) if aspect >= 1 else (min(h, int(round(side / aspect))), side)
    y0, x0 = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    crop = Image.fromarray(photo[y0:y0 + ch, x0:x0 + cw]).resize((width, height), Image.BILINEAR)
    out = np.asarray(crop)
    return out[:, ::-1] if rng.uniform() < 0.5 else out
