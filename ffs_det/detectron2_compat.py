"""The one place ffs_det deals with a detectron2 that has no compiled ``detectron2._C``.

detectron2 installed from source (``pip install 'git+https://github.com/facebookresearch/detectron2.git'``)
ships compiled ops in ``detectron2._C``; the pure-Python install from PyPI (``tools/install_detectron2.py``)
does not. Everything ffs_det uses (Faster R-CNN with FPN, ROIAlign from torchvision, NMS, training,
the launcher, COCO evaluation with pycocotools) works without it; what does not:

* deformable convolution (``DeformConv``, ``ModulatedDeformConv``),
* rotated-box ops (``pairwise_iou_rotated``, ``nms_rotated``, ``ROIAlignRotated``),
* the fast C++ COCOeval (``COCOEvaluator(..., use_fast_impl=True)``); pycocotools is used instead.

Importing this module checks once whether ``detectron2._C`` loads. If it does, nothing else happens. If
not, it logs the list above once, and — only for detectron2 releases whose modules import ``_C``
unconditionally (v0.6 and older) — registers a placeholder ``detectron2._C`` whose every attribute raises
an error naming the missing op, so the rest of detectron2 imports.
"""
import importlib
import logging
import sys
import types

__all__ = ["COMPILED_OPS_AVAILABLE", "UNAVAILABLE_WITHOUT_C"]

logger = logging.getLogger(__name__)

UNAVAILABLE_WITHOUT_C = (
    "deformable conv (DeformConv, ModulatedDeformConv)",
    "rotated boxes (pairwise_iou_rotated, nms_rotated, ROIAlignRotated)",
    "fast COCOeval (COCOEvaluator uses pycocotools instead)",
)


class _MissingCompiledOps(types.ModuleType):
    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        raise RuntimeError(
            f"detectron2 compiled op '{name}' is unavailable: this detectron2 has no compiled detectron2._C "
            "(pure-Python install). Build detectron2 from source to use it."
        )


def _check() -> bool:
    import torch  # noqa: F401  (a compiled _C links against torch's libraries, which must be loaded first)

    try:
        importlib.import_module("detectron2._C")
        return True
    except ImportError:
        pass
    logger.warning("detectron2 has no compiled ops (detectron2._C); unavailable: %s",
                   "; ".join(UNAVAILABLE_WITHOUT_C))
    try:
        importlib.import_module("detectron2.layers")
    except ImportError as e:  # an older detectron2 that imports _C at module level
        if getattr(e, "name", None) != "detectron2._C" and "_C" not in str(e):
            raise
        import detectron2

        stub = _MissingCompiledOps("detectron2._C")
        sys.modules["detectron2._C"] = stub
        detectron2._C = stub
    return False


COMPILED_OPS_AVAILABLE = _check()
