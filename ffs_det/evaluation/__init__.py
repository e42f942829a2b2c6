"""Evaluation: per-detection records, and the OOD report that turns ID and OOD records into metrics.

Only the numpy-only modules are imported here, so ``tools/eval_ood.py`` runs without detectron2; the
detectron2 evaluator and apply step live in :mod:`.detections` and :mod:`.apply` (import them directly).
"""
from .ood_report import evaluate_ood, run_report, write_report
from .records import load_records, save_records, validate_records

__all__ = ["load_records", "save_records", "validate_records", "evaluate_ood", "write_report", "run_report"]
