"""File utilities shared by the converters: placing images (link or copy) and reading image sizes."""
import os
import shutil
from typing import Tuple

from PIL import Image

__all__ = ["LINK_MODES", "place_file", "image_size"]

LINK_MODES = ("symlink", "copy", "hardlink")


def place_file(src: str, dst: str, mode: str = "symlink") -> None:
    """Make ``dst`` refer to ``src`` by a symlink (absolute), a copy, or a hard link; an existing ``dst`` is kept."""
    if mode not in LINK_MODES:
        raise ValueError(f"unknown mode {mode!r}; choose from {', '.join(LINK_MODES)}")
    if os.path.lexists(dst):
        return
    os.makedirs(os.path.dirname(os.path.abspath(dst)), exist_ok=True)
    if mode == "symlink":
        os.symlink(os.path.abspath(src), dst)
    elif mode == "hardlink":
        os.link(src, dst)
    else:
        shutil.copy2(src, dst)


def image_size(path: str) -> Tuple[int, int]:
    """(width, height) read from the image header."""
    with Image.open(path) as im:
        return im.size
