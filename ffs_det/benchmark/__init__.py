"""Performance benchmark of ffs_det (``tools/benchmark.py``): detector training step and inference of
plain / VOS / FFS, the synthesis step alone, OOD metrics vs scikit-learn, image-level flow fitting vs an
FDE-style Glow, and memory of feature extraction + fitting. See ``docs/benchmark.md``."""
from .runner import SIZES, TARGETS, format_measurements, run_benchmark, write_json

__all__ = ["SIZES", "TARGETS", "format_measurements", "run_benchmark", "write_json"]
