"""Backbones registered in detectron2's BACKBONE_REGISTRY (ResNet-50 FPN is detectron2's own)."""
from .mobilenet import MobileNetV2Backbone, build_mobilenetv2_fpn_backbone
from .regnet import build_regnet_backbone, build_regnetx_fpn_backbone

__all__ = ["MobileNetV2Backbone", "build_mobilenetv2_fpn_backbone", "build_regnet_backbone",
           "build_regnetx_fpn_backbone"]
