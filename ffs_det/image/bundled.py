"""Real images that ship with scikit-learn and scikit-image (no download): handwritten digits, texture
crops and natural photos, as uint8 arrays ready for :class:`~ffs_det.image.array_dataset.ArrayImageDataset`."""
import os
from typing import Dict, Sequence

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["digits_images", "texture_crops", "natural_photos", "photo_crops", "TEXTURES", "resize_uint8"]

TEXTURES = ("brick", "grass", "gravel")
# colour photographs bundled with scikit-image (no network fetch needed)
SKIMAGE_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket")


def _skimage_data():
    try:
        import skimage.data
    except ImportError:
        raise ImportError("texture and photo sets need scikit-image: pip install scikit-image") from None
    return skimage.data


def resize_uint8(images: np.ndarray, size: int) -> np.ndarray:
    """Bilinear (antialiased) resize of uint8 images ``(N, H, W[, 3])`` to ``size x size``."""
    x = torch.from_numpy(np.ascontiguousarray(images)).float()
    rgb = x.dim() == 4
    x = x.permute(0, 3, 1, 2) if rgb else x[:, None]
    y = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    y = y.round().clamp(0, 255).to(torch.uint8)
    return (y.permute(0, 2, 3, 1) if rgb else y[:, 0]).numpy()


def digits_images(size: int = 28):
    """scikit-learn's 1797 handwritten digits (8x8, ink 0..16), scaled to 0..255 and upsampled to
    ``size x size``: ``(images uint8 (N, size, size), labels (N,))``."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
    return resize_uint8(images, size), digits.target.astype(np.int64)


def texture_crops(n: int, size: int = 28, crop: int = 64, names: Sequence[str] = TEXTURES, seed: int = 0,
                  rgb: bool = False) -> np.ndarray:
    """``n`` random ``crop x crop`` patches of scikit-image's bundled textures, cycling through ``names``,
    resized to ``size x size``: uint8 ``(n, size, size)`` (``(n, size, size, 3)`` with ``rgb``)."""
    data = _skimage_data()
    sources = []
    for name in names:
        if name not in data.__all__:
            raise ValueError(f"unknown scikit-image texture {name!r}; try one of {TEXTURES}")
        img = getattr(data, name)()
        sources.append(img if img.ndim == 2 else img[..., :3].mean(-1).astype(np.uint8))
    if n < 1:
        raise ValueError(f"texture_crops needs n >= 1, got {n}")
    rng = np.random.default_rng(seed)
    patches = np.empty((n, crop, crop), np.uint8)
    for i in range(n):
        src = sources[i % len(sources)]
        if min(src.shape) < crop:
            raise ValueError(f"crop {crop} is larger than texture {names[i % len(names)]!r} {src.shape}")
        y, x = rng.integers(0, src.shape[0] - crop + 1), rng.integers(0, src.shape[1] - crop + 1)
        patches[i] = src[y:y + crop, x:x + crop]
    out = resize_uint8(patches, size) if crop != size else patches
    return np.repeat(out[..., None], 3, axis=-1) if rgb else out


def natural_photos() -> Dict[str, np.ndarray]:
    """Colour photographs bundled with scikit-learn (china, flower) and scikit-image (astronaut, chelsea
    the cat, coffee, rocket, a motorcycle): ``{name: uint8 (H, W, 3)}``."""
    from sklearn.datasets import load_sample_images

    sample = load_sample_images()
    photos = {os.path.splitext(os.path.basename(f))[0]: img for f, img in zip(sample.filenames, sample.images)}
    data = _skimage_data()
    for name in SKIMAGE_PHOTOS:
        photos[name] = getattr(data, name)()[..., :3]
    photos["motorcycle"] = data.stereo_motorcycle()[0][..., :3]
    return photos


def photo_crops(n: int, size: int = 256, min_frac: float = 0.4, max_frac: float = 0.9, seed: int = 0,
                photos: Dict[str, np.ndarray] = None):
    """``n`` random square crops of the natural photos (side ``min_frac``..``max_frac`` of the shorter
    edge), resized to ``size x size``: ``(uint8 (n, size, size, 3), photo index (n,), photo names)``."""
    photos = natural_photos() if photos is None else photos
    names = sorted(photos)
    rng = np.random.default_rng(seed)
    out = np.empty((n, size, size, 3), np.uint8)
    which = np.arange(n) % len(names)
    for i in range(n):
        img = photos[names[which[i]]]
        side = int(rng.uniform(min_frac, max_frac) * min(img.shape[:2]))
        y, x = rng.integers(0, img.shape[0] - side + 1), rng.integers(0, img.shape[1] - side + 1)
        out[i] = resize_uint8(img[None, y:y + side, x:x + side], size)[0]
    return out, which.astype(np.int64), names
