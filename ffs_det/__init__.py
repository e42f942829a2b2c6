"""ffs_det: outlier-aware object detection (FFS, VOS) for Detectron2 and a shared feature-density OOD toolbox.

* :mod:`ffs_det.density` — flows, outlier synthesis, OOD scorers, metrics (no detectron2 needed).
* :mod:`ffs_det.modeling`, :mod:`ffs_det.data`, :mod:`ffs_det.evaluation`, :mod:`ffs_det.engine` — the
  detectron2 plugin (import :mod:`ffs_det.modeling` to register the ROI heads and backbones).
* :mod:`ffs_det.image` — image-level OOD benchmarks on classifier features.
"""
__version__ = "0.1.0"
