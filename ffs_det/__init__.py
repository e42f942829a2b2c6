"""ffs_det: outlier-aware object detection (FFS, VOS) for Detectron2 and a shared feature-density OOD toolbox.

* :mod:`ffs_det.density` — flows, outlier synthesis, OOD scorers, metrics, the ID-vs-OOD report (no
  detectron2 needed).
* :mod:`ffs_det.modeling`, :mod:`ffs_det.data`, :mod:`ffs_det.evaluation`, :mod:`ffs_det.engine` — the
  detectron2 plugin.
* :mod:`ffs_det.image` — image-level OOD benchmarks on classifier features.

``import ffs_det`` registers the plugin's components (the ROI heads and backbones) with detectron2, as
detectron2 projects do; without detectron2 installed, the density and image toolbox still imports.
"""
__version__ = "0.1.0"

try:
    import detectron2  # noqa: F401
except ImportError:  # the density / image toolbox alone
    pass
else:
    from . import modeling  # noqa: F401,E402  (registers FFSROIHeads and the backbones)
