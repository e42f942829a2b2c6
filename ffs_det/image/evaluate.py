"""Fit registered OOD scorers on in-distribution training features and evaluate them on an ID test set
against OOD sets, from feature stores (plus the classifier and raw images for input-gradient scorers)."""
import time
import traceback
from typing import Dict, Iterable, Mapping, Optional, Union

import numpy as np
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from ..density import scorers as registry
from ..density.metrics import ood_metrics
from ..density.scorers.react import final_linear
from .feature_store import FeatureStore
from .results import BenchmarkResult, ScorerResult

__all__ = ["evaluate_scorers", "resolve_scorers"]

FEATURE_KEYS = ("features", "layer_features")


def resolve_scorers(scorers: Union[None, str, Iterable[str], Mapping[str, dict]] = None,
                    options: Optional[Mapping[str, dict]] = None) -> Dict[str, dict]:
    """``{scorer name: constructor kwargs}``; ``None`` or ``"all"`` means every registered scorer.
    ``options`` adds or overrides kwargs per scorer."""
    if scorers is None or scorers == "all":
        chosen = {name: {} for name in sorted(registry.SCORERS)}
    elif isinstance(scorers, str):
        chosen = {s.strip(): {} for s in scorers.split(",") if s.strip()}
    elif isinstance(scorers, Mapping):
        chosen = {k: dict(v or {}) for k, v in scorers.items()}
    else:
        chosen = {s: {} for s in scorers}
    unknown = [s for s in list(chosen) + list(options or {}) if s not in registry.SCORERS]
    if unknown:
        raise ValueError(f"unknown scorer(s) {unknown}; registered: {', '.join(sorted(registry.SCORERS))}")
    for name, kw in (options or {}).items():
        if name in chosen:
            chosen[name].update(kw)
    return chosen


def _skip_reason(cls, model, datasets, set_names) -> str:
    req = cls.requires
    if "model" in req and model is None:
        return "needs the classifier (model): give the model, or use stores that record it"
    if "inputs" in req:
        missing = [s for s in set_names if s not in (datasets or {})]
        if missing:
            return f"needs the raw images of {missing} (input-gradient scorer)"
    return ""


def _model_for(cls, model: nn.Module):
    # input-gradient scorers run the whole classifier; feature scorers get its final linear layer
    return model if "inputs" in cls.requires else final_linear(model)


def _store_inputs(cls, store: FeatureStore, rows: slice = slice(None), fit: bool = False) -> dict:
    req, kw = cls.requires, {}
    if req & set(FEATURE_KEYS):
        kw["features"] = np.array(store["features"][rows])
    if "logits" in req:
        kw["logits"] = np.array(store["logits"][rows])
    if fit and "labels" in req:
        kw["labels"] = np.array(store["labels"][rows])
    return kw


def _score_set(scorer, cls, store: FeatureStore, model, dataset: Optional[Dataset], batch_size: int,
               chunk_size: int, device: str) -> np.ndarray:
    extra = {"model": _model_for(cls, model)} if "model" in cls.requires else {}
    parts = []
    if "inputs" in cls.requires:
        if len(dataset) != len(store):
            raise ValueError(f"{store.path} has {len(store)} rows but its dataset has {len(dataset)} images")
        start = 0
        for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False):
            x = batch[0].to(device)
            kw = _store_inputs(cls, store, slice(start, start + len(x)))
            parts.append(np.asarray(scorer.score(inputs=x, **extra, **kw), np.float64))
            start += len(x)
    else:
        for start in range(0, len(store), chunk_size):
            kw = _store_inputs(cls, store, slice(start, start + chunk_size))
            parts.append(np.asarray(scorer.score(**extra, **kw), np.float64))
    scores = np.concatenate(parts) if parts else np.zeros(0)
    if scores.shape != (len(store),):
        raise ValueError(f"{cls.name} returned {scores.shape[0]} scores for {len(store)} samples of {store.path}")
    return scores


def evaluate_scorers(id_train: FeatureStore, id_test: FeatureStore, ood: Mapping[str, FeatureStore],
                     scorers=None, options: Optional[Mapping[str, dict]] = None, model: Optional[nn.Module] = None,
                     datasets: Optional[Mapping[str, Dataset]] = None, id_name: str = "id",
                     batch_size: int = 256, chunk_size: int = 65536, device: str = "cpu",
                     progress: bool = True, log=print) -> BenchmarkResult:
    """Fit each scorer on ``id_train`` and compute :func:`~ffs_det.density.metrics.ood_metrics` of
    ``id_test`` against every set in ``ood``.

    ``model`` is the classifier (scorers that read the final linear layer get it; input-gradient scorers
    the whole model) and ``datasets`` maps set names (``id_name`` and the OOD names) to the datasets the
    stores were extracted from, in the same order, for scorers that need raw inputs. A scorer whose needs
    are not met is reported as skipped; one that raises is reported as an error and the others go on.
    """
    if not ood:
        raise ValueError("evaluate_scorers needs at least one OOD set")
    if id_name in ood:
        raise ValueError(f"OOD set name {id_name!r} clashes with the ID set's name")
    dims = {s.path: s.dim("features") for s in [id_train, id_test, *ood.values()]}
    if len(set(dims.values())) != 1:
        raise ValueError(f"feature stores have different feature widths: {dims}")
    chosen = resolve_scorers(scorers, options)
    result = BenchmarkResult(id_name, list(ood))
    sets = {id_name: id_test, **ood}
    if model is not None:
        model = model.to(device).eval()
    for name, kwargs in tqdm(chosen.items(), desc="scorers", disable=not progress):
        cls = registry.SCORERS[name]
        res = result.scorers[name] = ScorerResult(name, params=kwargs)
        reason = _skip_reason(cls, model, datasets, list(sets))
        if reason:
            res.status, res.message = "skipped", reason
            log(f"[{name}] skipped: {reason}")
            continue
        try:
            t0 = time.perf_counter()
            scorer = cls(**kwargs)
            if cls.requires_fit:
                fit_kw = _store_inputs(cls, id_train, fit=True)
                if "model" in cls.requires:
                    fit_kw["model"] = _model_for(cls, model)
                scorer.fit(**fit_kw)
            t1 = time.perf_counter()
            for set_name, store in sets.items():
                res.scores[set_name] = _score_set(scorer, cls, store, model, (datasets or {}).get(set_name),
                                                  batch_size, chunk_size, device)
            res.fit_seconds, res.score_seconds = t1 - t0, time.perf_counter() - t1
            for ood_name in ood:
                res.metrics[ood_name] = ood_metrics(res.scores[id_name], res.scores[ood_name])
        except Exception as e:  # one broken scorer must not lose a long run's other results
            res.status, res.message = "error", f"{type(e).__name__}: {e}"
            log(f"[{name}] error: {res.message}\n{traceback.format_exc(limit=3)}")
    return result
