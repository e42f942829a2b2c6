"""Densities over feature vectors, shared by the detector and the image-level benchmarks.

No detectron2 import in this package: flows (:mod:`.flow`), outlier synthesis (:mod:`.synthesis`),
OOD scorers (:mod:`.scorers`) and metrics (:mod:`.metrics`).
"""
from .flow import COUPLINGS, FeatureFlow
from .metrics import ood_metrics, optimal_f1_threshold, roc_curve_points
from .synthesis import SYNTHESIS_KINDS, OutlierSynthesizer, build_synthesizer

__all__ = ["COUPLINGS", "FeatureFlow", "ood_metrics", "optimal_f1_threshold",
           "roc_curve_points", "SYNTHESIS_KINDS", "OutlierSynthesizer", "build_synthesizer"]
