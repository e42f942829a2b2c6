"""Image-level OOD benchmarks on classifier features (ImageNet/CIFAR style), with the shared
:mod:`ffs_det.density` scorers and metrics.

* :mod:`.datasets` / :mod:`.bundled` — dataset adapters (image folders, CIFAR, SVHN, Fashion-MNIST, digits,
  textures, photos) from spec strings; nothing is downloaded.
* :mod:`.models` — torchvision classifiers (or ``small_cnn``) with weights from a local file.
* :mod:`.extract` / :mod:`.feature_store` — penultimate features + logits streamed to disk.
* :mod:`.evaluate` / :mod:`.report` / :mod:`.pipeline` — fit scorers, metrics, table, JSON/CSV, plots.
* :mod:`.fashion_benchmark` / :mod:`.photo_check` — the embedded real-data benchmark.
"""
from .datasets import build_dataset, find_fashion_mnist, load_fashion_mnist, parse_spec
from .evaluate import evaluate_scorers, resolve_scorers
from .extract import FeatureExtractor, extract_to_store
from .feature_store import FeatureStore, FeatureStoreWriter
from .models import build_classifier, find_mobilenet_v2_weights, preprocessing
from .pipeline import ModelSpec, SetSpec, evaluate_stores, extract_set, run_image_benchmark
from .report import format_benchmark_table, write_benchmark_report
from .results import BenchmarkResult, ScorerResult

__all__ = ["build_dataset", "find_fashion_mnist", "load_fashion_mnist", "parse_spec", "evaluate_scorers",
           "resolve_scorers", "FeatureExtractor", "extract_to_store", "FeatureStore", "FeatureStoreWriter",
           "build_classifier", "find_mobilenet_v2_weights", "preprocessing", "ModelSpec", "SetSpec",
           "evaluate_stores", "extract_set", "run_image_benchmark", "format_benchmark_table", "write_benchmark_report",
           "BenchmarkResult", "ScorerResult"]
