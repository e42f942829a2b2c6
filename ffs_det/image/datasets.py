"""Dataset adapters for image-level OOD benchmarks, built from a short spec string.

Spec: ``KIND[:ROOT][@SPLIT]``

=================  ==========================================================================  ===========
kind               data                                                                         splits
=================  ==========================================================================  ===========
``folder``         any image folder: ImageFolder layout (``ROOT/<class>/*.jpg``: ImageNet val,    —
                   DTD ``dtd/images``, iNaturalist/SUN/Places OOD sets ``<set>/images``) or a
                   flat folder of images
``cifar10``        torchvision's CIFAR-10 files (``ROOT/cifar-10-batches-py``)                 train, test
``cifar100``       torchvision's CIFAR-100 files (``ROOT/cifar-100-python``)                   train, test
``svhn``           torchvision's SVHN files (``ROOT/{train,test,extra}_32x32.mat``)            train, test, extra
``fashion-mnist``  Fashion-MNIST IDX files, see :func:`find_fashion_mnist` (ROOT optional)      train, test
``digits``         scikit-learn's 8x8 digits upsampled to ``image_size``                        —
``textures``       crops of scikit-image's brick/grass/gravel textures at ``image_size``        —
``photos``         crops of the colour photos bundled with scikit-learn and scikit-image at      —
                   ``image_size``
=================  ==========================================================================  ===========

Nothing is downloaded: missing data raises a FileNotFoundError that says how to get it.
"""
import os
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
from PIL import Image
from torch.utils.data import Dataset, Subset

from .array_dataset import ArrayImageDataset
from .bundled import digits_images, photo_crops, texture_crops
from .idx import find_idx_file, read_idx

__all__ = ["ImageSource", "parse_spec", "build_dataset", "find_fashion_mnist", "load_fashion_mnist",
           "image_folder", "load_image", "FASHION_MNIST_ENV", "KINDS"]

KINDS = ("folder", "cifar10", "cifar100", "svhn", "fashion-mnist", "digits", "textures", "photos")
SPLITS = {"cifar10": ("train", "test"), "cifar100": ("train", "test"), "svhn": ("train", "test", "extra"),
          "fashion-mnist": ("train", "test")}
NEEDS_ROOT = ("folder", "cifar10", "cifar100", "svhn")

FASHION_MNIST_ENV = "FFS_DET_FASHION_MNIST"
FASHION_MNIST_SYSTEM_DIRS = ("/usr/share/datasets/fashion-mnist",)
FASHION_MNIST_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
                       "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


@dataclass(frozen=True)
class ImageSource:
    kind: str
    root: Optional[str] = None
    split: Optional[str] = None

    def __str__(self) -> str:
        return self.kind + (f":{self.root}" if self.root else "") + (f"@{self.split}" if self.split else "")


def parse_spec(spec: str) -> ImageSource:
    """``"cifar10:/data@test"`` -> ``ImageSource("cifar10", "/data", "test")``, checked."""
    if not isinstance(spec, str) or not spec:
        raise ValueError(f"dataset spec must be a non-empty string like 'folder:/data/imagenet/val', got {spec!r}")
    body, split = spec.rsplit("@", 1) if "@" in spec else (spec, None)
    kind, root = body.split(":", 1) if ":" in body else (body, None)
    kind = kind.lower()
    if kind not in KINDS:
        raise ValueError(f"dataset spec {spec!r}: unknown kind {kind!r}; choose one of {', '.join(KINDS)}")
    if kind in NEEDS_ROOT and not root:
        raise ValueError(f"dataset spec {spec!r}: {kind} needs a folder, e.g. '{kind}:/path/to/data'")
    if split is not None and split not in SPLITS.get(kind, ()):
        allowed = SPLITS.get(kind)
        raise ValueError(f"dataset spec {spec!r}: split {split!r} is not one of {allowed}" if allowed else
                         f"dataset spec {spec!r}: {kind} has no splits (drop '@{split}')")
    return ImageSource(kind, os.path.expanduser(root) if root else None, split)


def build_dataset(spec, transform: Callable = None, image_size: int = 28, max_samples: int = None,
                  seed: int = 0, n_generated: int = 2000) -> Dataset:
    """The dataset a spec names; items are ``(transform(PIL image), label)`` (label -1 where there is none).

    ``image_size`` is the side of the generated sets (digits, textures); ``n_generated`` the number of
    texture/photo crops; ``max_samples`` keeps a seeded random subset.
    """
    spec = parse_spec(spec) if isinstance(spec, str) else spec
    ds = _build(spec, transform, image_size, seed, n_generated)
    if max_samples is not None and max_samples < len(ds):
        if max_samples < 1:
            raise ValueError(f"max_samples must be >= 1, got {max_samples}")
        idx = np.sort(np.random.default_rng(seed).choice(len(ds), size=max_samples, replace=False))
        ds = Subset(ds, idx.tolist())
    return ds


def _build(spec: ImageSource, transform, image_size, seed, n_generated) -> Dataset:
    if spec.kind == "folder":
        return image_folder(spec.root, transform)
    if spec.kind in ("cifar10", "cifar100", "svhn"):
        return _torchvision_set(spec, transform)
    if spec.kind == "fashion-mnist":
        images, labels = load_fashion_mnist(spec.split or "test", spec.root)
        return ArrayImageDataset(images, labels, transform, name=str(spec))
    if spec.kind == "digits":
        images, labels = digits_images(image_size)
        return ArrayImageDataset(images, labels, transform, name="digits")
    if spec.kind == "textures":
        return ArrayImageDataset(texture_crops(n_generated, size=image_size, seed=seed), None, transform,
                                 name="textures")
    images, which, _ = photo_crops(n_generated, size=image_size, seed=seed)
    return ArrayImageDataset(images, which, transform, name="photos")


# ---- Fashion-MNIST ---------------------------------------------------------------------------------------

def _fashion_candidates(root: Optional[str]):
    """Folders that may hold the IDX files: the folder itself and torchvision's raw layouts under it."""
    return [root, os.path.join(root, "FashionMNIST", "raw"), os.path.join(root, "raw")]


def find_fashion_mnist(root: Optional[str] = None) -> str:
    """The folder holding Fashion-MNIST's four IDX files (``.gz`` or not).

    Looks in ``root`` when given, else in ``$FFS_DET_FASHION_MNIST`` when set, else in the Debian package's
    folder ``/usr/share/datasets/fashion-mnist``. In each, torchvision's layout (``FashionMNIST/raw``) is
    accepted too. Raises FileNotFoundError saying how to get the data.
    """
    if root is not None:
        bases, source = [root], "the given folder"
    elif os.environ.get(FASHION_MNIST_ENV):
        bases, source = [os.environ[FASHION_MNIST_ENV]], f"${FASHION_MNIST_ENV}"
    else:
        bases, source = list(FASHION_MNIST_SYSTEM_DIRS), "the default location"
    looked = []
    for base in bases:
        for folder in _fashion_candidates(os.path.expanduser(base)):
            looked.append(folder)
            if all(find_idx_file(folder, f) for pair in FASHION_MNIST_FILES.values() for f in pair):
                return folder
    raise FileNotFoundError(
        f"Fashion-MNIST not found in {source} (looked in: {', '.join(looked)}; need "
        f"{', '.join(f for pair in FASHION_MNIST_FILES.values() for f in pair)}, optionally .gz). Get it with "
        f"'apt-get install dataset-fashion-mnist' (Debian/Ubuntu, as root; installs to "
        f"{FASHION_MNIST_SYSTEM_DIRS[0]}), or put the four files from "
        f"https://github.com/zalandoresearch/fashion-mnist in a folder and set {FASHION_MNIST_ENV} to it "
        f"(a torchvision FashionMNIST root with FashionMNIST/raw also works)")


def load_fashion_mnist(split: str = "test", root: Optional[str] = None):
    """``(images uint8 (N, 28, 28), labels int64 (N,))`` of the train (60k) or test (10k) split."""
    if split not in FASHION_MNIST_FILES:
        raise ValueError(f"Fashion-MNIST split must be 'train' or 'test', got {split!r}")
    folder = find_fashion_mnist(root)
    img_name, lab_name = FASHION_MNIST_FILES[split]
    img_path, lab_path = find_idx_file(folder, img_name), find_idx_file(folder, lab_name)
    images, labels = read_idx(img_path), read_idx(lab_path)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise ValueError(f"{img_path}: expected uint8 images (N, H, W), got {images.dtype} {images.shape}")
    if labels.shape != (images.shape[0],):
        raise ValueError(f"{lab_path}: {labels.shape[0] if labels.ndim else 0} labels for {images.shape[0]} "
                         f"images in {img_path}")
    return images, labels.astype(np.int64)


# ---- image folders ---------------------------------------------------------------------------------------

def load_image(path: str) -> Image.Image:
    """The RGB image in the file ``path``; ValueError naming the file when PIL cannot read it (the loader of
    image folders, instead of PIL's "cannot identify image file" without the folder's context)."""
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise ValueError(f"image {path} cannot be read: not an image file PIL can decode (corrupt, truncated or "
                         f"another format: {type(e).__name__}); remove or replace it") from None


class _ImageFiles(Dataset):
    """A flat folder of images (no class subfolders); labels are -1."""

    def __init__(self, files, transform):
        self.files, self.transform = files, transform

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        img = load_image(self.files[i])
        return (self.transform(img) if self.transform is not None else img), -1


def image_folder(root: str, transform: Callable = None) -> Dataset:
    """torchvision's ImageFolder over ``root/<class>/...`` (classes in sorted order, so ImageNet's val
    folders map to torchvision's class indices), or the images directly in ``root`` when it has no
    subfolders with images."""
    from torchvision.datasets import ImageFolder

    if not os.path.isdir(root):
        raise FileNotFoundError(f"image folder {root} does not exist (for ImageNet/Textures/iNaturalist/SUN/"
                                f"Places, download and extract the set there; see docs/image_benchmark.md)")
    subdirs = [d for d in os.scandir(root) if d.is_dir()]
    if subdirs:
        try:
            ds = ImageFolder(root, transform=transform, loader=load_image, allow_empty=True)
        except FileNotFoundError as e:
            raise FileNotFoundError(f"image folder {root}: {e}") from None
        if len(ds):
            return ds
    files = sorted(e.path for e in os.scandir(root) if e.is_file() and e.name.lower().endswith(IMAGE_EXTENSIONS))
    if not files:
        raise FileNotFoundError(f"image folder {root} holds no images ({', '.join(IMAGE_EXTENSIONS)}), "
                                f"neither directly nor in class subfolders")
    return _ImageFiles(files, transform)


# ---- CIFAR / SVHN in torchvision's on-disk format ---------------------------------------------------------

_TORCHVISION_HINT = {
    "cifar10": ("cifar-10-batches-py", "torchvision.datasets.CIFAR10(ROOT, download=True)"),
    "cifar100": ("cifar-100-python", "torchvision.datasets.CIFAR100(ROOT, download=True)"),
    "svhn": ("{split}_32x32.mat", "torchvision.datasets.SVHN(ROOT, split=SPLIT, download=True)"),
}


def _torchvision_set(spec: ImageSource, transform) -> Dataset:
    import torchvision.datasets as tvd

    split = spec.split or "test"
    expected, how = _TORCHVISION_HINT[spec.kind]
    expected = os.path.join(spec.root, expected.format(split=split))
    try:
        if spec.kind == "svhn":
            return tvd.SVHN(spec.root, split=split, transform=transform, download=False)
        cls = tvd.CIFAR10 if spec.kind == "cifar10" else tvd.CIFAR100
        return cls(spec.root, train=split == "train", transform=transform, download=False)
    except RuntimeError as e:  # torchvision: "Dataset not found or corrupted"
        raise FileNotFoundError(f"{spec.kind} ({split}) not found or corrupted at {expected} ({e}). Nothing is "
                                f"downloaded here; on a machine with internet run {how} and copy ROOT "
                                f"here") from None
