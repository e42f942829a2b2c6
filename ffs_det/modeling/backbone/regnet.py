"""RegNet + FPN backbone (RegNetX-4.0GF by default, the trunk used by VOS and FFS).

Built from detectron2's own ``RegNet``; ImageNet weights come through ``MODEL.WEIGHTS`` (a pycls ``.pyth``
checkpoint such as ``RegNetX-4.0GF_dds_8gpu.pyth`` loads directly: detectron2's checkpointer recognises
pycls files and matches their keys heuristically).
"""
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY
from detectron2.modeling.backbone.regnet import RegNet, ResBottleneckBlock, SimpleStem

from .fpn import build_fpn

__all__ = ["build_regnet_backbone", "build_regnetx_fpn_backbone"]


@BACKBONE_REGISTRY.register()
def build_regnet_backbone(cfg, input_shape: ShapeSpec):
    r = cfg.MODEL.REGNET
    return RegNet(
        stem_class=SimpleStem,
        stem_width=r.STEM_WIDTH,
        block_class=ResBottleneckBlock,
        depth=r.DEPTH,
        w_a=r.W_A,
        w_0=r.W_0,
        w_m=r.W_M,
        group_width=r.GROUP_WIDTH,
        freeze_at=cfg.MODEL.BACKBONE.FREEZE_AT,
        norm=r.NORM,
        out_features=list(r.OUT_FEATURES),
    )


@BACKBONE_REGISTRY.register()
def build_regnetx_fpn_backbone(cfg, input_shape: ShapeSpec):
    bottom_up = build_regnet_backbone(cfg, input_shape)
    return build_fpn(cfg, bottom_up)
