"""The FPN that every ffs_det trunk is wrapped in, configured by ``cfg.MODEL.FPN``."""
from detectron2.modeling import Backbone
from detectron2.modeling.backbone.fpn import FPN, LastLevelMaxPool

__all__ = ["build_fpn"]


def build_fpn(cfg, bottom_up: Backbone) -> FPN:
    """detectron2's FPN over ``bottom_up`` with a max-pooled extra level (p6), as in Faster R-CNN FPN."""
    return FPN(
        bottom_up=bottom_up,
        in_features=cfg.MODEL.FPN.IN_FEATURES,
        out_channels=cfg.MODEL.FPN.OUT_CHANNELS,
        norm=cfg.MODEL.FPN.NORM,
        top_block=LastLevelMaxPool(),
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
    )
