"""Containers for benchmark results: per scorer, its status, timings, metrics per OOD set and raw scores."""
from dataclasses import dataclass, field
from typing import Dict, List

import numpy as np

__all__ = ["ScorerResult", "BenchmarkResult"]


@dataclass
class ScorerResult:
    name: str
    params: dict = field(default_factory=dict)
    status: str = "ok"  # "ok", "skipped" or "error"
    message: str = ""
    fit_seconds: float = 0.0
    score_seconds: float = 0.0
    metrics: Dict[str, Dict[str, float]] = field(default_factory=dict)  # OOD set -> ood_metrics(...)
    scores: Dict[str, np.ndarray] = field(default_factory=dict)  # set name (ID test and OOD) -> scores

    def to_json(self) -> dict:
        return {"status": self.status, "message": self.message, "params": _jsonable(self.params),
                "fit_seconds": round(self.fit_seconds, 3), "score_seconds": round(self.score_seconds, 3),
                "metrics": self.metrics}


@dataclass
class BenchmarkResult:
    id_name: str
    ood_names: List[str]
    scorers: Dict[str, ScorerResult] = field(default_factory=dict)
    info: dict = field(default_factory=dict)

    def ok(self) -> Dict[str, ScorerResult]:
        return {k: v for k, v in self.scorers.items() if v.status == "ok"}

    def failed(self) -> Dict[str, ScorerResult]:
        return {k: v for k, v in self.scorers.items() if v.status == "error"}

    def to_json(self) -> dict:
        return {"id": self.id_name, "ood": list(self.ood_names), "info": _jsonable(self.info),
                "scorers": {k: v.to_json() for k, v in self.scorers.items()}}


def _jsonable(obj):
    """Parameters and info made JSON-safe (tuples to lists, numpy scalars to Python, others to repr)."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    if isinstance(obj, float):
        return obj if np.isfinite(obj) else repr(obj)
    return repr(obj)
