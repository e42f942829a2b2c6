"""A torch dataset over an in-memory uint8 image array (grayscale ``(N, H, W)`` or RGB ``(N, H, W, 3)``)."""
from typing import Callable, Optional

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

__all__ = ["ArrayImageDataset"]


class ArrayImageDataset(Dataset):
    """Items are ``(transform(PIL image), label)``; ``images``/``labels`` stay available as arrays."""

    def __init__(self, images: np.ndarray, labels: Optional[np.ndarray] = None, transform: Callable = None,
                 name: str = "arrays"):
        images = np.asarray(images)
        if images.dtype != np.uint8 or not (images.ndim == 3 or (images.ndim == 4 and images.shape[-1] == 3)):
            raise ValueError(f"{name}: images must be uint8 (N, H, W) or (N, H, W, 3), got {images.dtype} "
                             f"{images.shape}")
        if labels is None:
            labels = np.full(len(images), -1, dtype=np.int64)
        labels = np.asarray(labels, dtype=np.int64)
        if labels.shape != (len(images),):
            raise ValueError(f"{name}: {len(images)} images but labels of shape {labels.shape}")
        self.images, self.labels, self.transform, self.name = images, labels, transform, name

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        img = Image.fromarray(self.images[i])
        return (self.transform(img) if self.transform is not None else img), int(self.labels[i])

    def __repr__(self) -> str:
        return f"ArrayImageDataset({self.name}, n={len(self)}, image shape={self.images.shape[1:]})"
