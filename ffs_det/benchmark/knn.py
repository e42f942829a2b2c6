"""KNN scorer timings: the faiss index against scikit-learn's, fit + score on the same features."""
from typing import Dict

import numpy as np

from ..density.scorers import build_scorer
from .timing import interleaved, summarize

__all__ = ["time_knn"]


def time_knn(n_train: int, n_query: int, dim: int, k: int, warmup: int, repeats: int, seed: int = 0) -> Dict:
    """Median seconds of ``fit(train) + score(queries)`` for each backend, on seeded Gaussian features
    ``(n_train, dim)``, and the largest difference between their scores."""
    rng = np.random.default_rng(seed)
    train = rng.standard_normal((n_train, dim), dtype=np.float32)
    queries = rng.standard_normal((n_query, dim), dtype=np.float32)
    scores = {}

    def run(backend):
        scores[backend] = build_scorer("knn", k=k, backend=backend).fit(train).score(queries)

    times = interleaved({b: (lambda b=b: run(b)) for b in ("faiss", "sklearn")}, warmup, repeats)
    return {"n_train": n_train, "n_query": n_query, "dim": dim, "k": k,
            "faiss": summarize(times["faiss"]), "sklearn": summarize(times["sklearn"]),
            "max_abs_difference": float(np.abs(scores["faiss"] - scores["sklearn"]).max()),
            "ratios": {"sklearn/faiss": summarize(times["sklearn"])["median_s"] /
                       summarize(times["faiss"])["median_s"]}}
