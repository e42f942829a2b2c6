"""Detector components; importing this package registers them with detectron2."""
from .. import detectron2_compat  # noqa: F401  (logs once what a detectron2 without compiled ops lacks)
from .backbone import MobileNetV2Backbone, build_mobilenetv2_fpn_backbone, build_regnetx_fpn_backbone
from .energy import EnergyMargin
from .roi_heads import FFSROIHeads

__all__ = ["FFSROIHeads", "EnergyMargin", "MobileNetV2Backbone", "build_mobilenetv2_fpn_backbone",
           "build_regnetx_fpn_backbone"]
