"""What ffs_det needs to know about the two supported detectron2 installs.

detectron2 installed from source (``pip install 'git+https://github.com/facebookresearch/detectron2.git'``)
ships compiled ops in ``detectron2._C``; the pure-Python install (``tools/install_detectron2.py``) does
not. Everything ffs_det uses (Faster R-CNN with FPN, ROIAlign from torchvision, NMS, training, the
launcher, COCO evaluation, where detectron2 itself falls back to pycocotools) works without it; what
does not: deformable convolution and the rotated-box ops. Importing this module (the plugin does, in
:mod:`ffs_det.modeling`) says so once in the log.
"""
import importlib
import logging

__all__ = ["COMPILED_OPS_AVAILABLE", "UNAVAILABLE_WITHOUT_C"]

logger = logging.getLogger(__name__)

UNAVAILABLE_WITHOUT_C = (
    "deformable conv (DeformConv, ModulatedDeformConv)",
    "rotated boxes (pairwise_iou_rotated, nms_rotated, ROIAlignRotated)",
)


def _compiled_ops() -> bool:
    import torch  # noqa: F401  (a compiled _C links against torch's libraries, which must be loaded first)

    try:
        importlib.import_module("detectron2._C")
        return True
    except ImportError:
        logger.info("detectron2 has no compiled ops (detectron2._C); unavailable: %s",
                    "; ".join(UNAVAILABLE_WITHOUT_C))
        return False


COMPILED_OPS_AVAILABLE = _compiled_ops()
