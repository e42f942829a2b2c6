"""Fit registered OOD scorers on in-distribution training features and evaluate them on an ID test set
against OOD sets, from feature stores (plus the classifier and raw images for input-gradient scorers)."""
import time
import traceback
from typing import Dict, Iterable, Mapping, Optional, Union

from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from ..density import scorers as registry
from ..density.inputs import linear_head
from ..density.metrics import ood_metrics
from ..density.scorers import (check_stream, classifier_needs, fit_source, make_scorer, score_source, scorer_class,
                               streams_fit)
from .feature_store import FeatureStore
from .results import BenchmarkResult, ScorerResult

__all__ = ["evaluate_scorers", "resolve_scorers", "PROVIDES", "FIT_IMAGES"]


def resolve_scorers(scorers: Union[None, str, Iterable[str], Mapping[str, dict]] = None,
                    options: Optional[Mapping[str, dict]] = None) -> Dict[str, dict]:
    """``{scorer name: constructor kwargs}``; ``None`` or ``"all"`` means every registered scorer whose required
    fit inputs the benchmark has (:data:`PROVIDES`: the classifier and the training set's raw images, for
    AdaSCALE; not SAFE, a box-level scorer fitted on perturbed objects). ``options`` adds or overrides kwargs
    per scorer."""
    if scorers is None or scorers == "all":
        chosen = {name: {} for name in sorted(registry.SCORERS) if set(registry.SCORERS[name].requires) <= PROVIDES}
    elif isinstance(scorers, str):
        chosen = {s.strip(): {} for s in scorers.split(",") if s.strip()}
    elif isinstance(scorers, Mapping):
        chosen = {k: dict(v or {}) for k, v in scorers.items()}
    else:
        chosen = {s: {} for s in scorers}
    classes = {name: scorer_class(name) for name in [*chosen, *(options or {})]}  # ValueError: unknown scorer
    needs = {name: classes[name].requires for name in chosen if not set(classes[name].requires) <= PROVIDES}
    if needs:
        raise ValueError(f"scorer(s) {sorted(needs)} need fit inputs the image benchmark does not have "
                         f"({needs}); they score detector boxes (tools/compare_scores.py)")
    for name, kw in (options or {}).items():
        if name in chosen:
            chosen[name].update(kw)
    return chosen


PROVIDES = {"model", "inputs"}  # fit inputs the benchmark can give a scorer besides features, labels, head
FIT_IMAGES = "id_train"  # the key of ``datasets`` under which the training set's raw images are found


def _skip_reason(cls, model, datasets, set_names) -> str:
    needs = classifier_needs(cls)
    if "model" in needs and model is None:
        return "needs the classifier (model): give the model, or use stores that record it"
    if "head" in needs and model is None:
        return "needs the classifier's final linear layer (model): give the model, or use stores that record it"
    if "inputs" in needs:
        fit_sets = [FIT_IMAGES] if "inputs" in cls.requires else []
        missing = [s for s in [*fit_sets, *set_names] if s not in (datasets or {})]
        if missing:
            return f"needs the raw images of {missing} (input-gradient scorer)"
    return ""


def _image_batches(store: FeatureStore, dataset: Optional[Dataset], batch_size: int, device: str):
    """The raw images of a store's rows, in order, batch by batch on ``device`` (what input scorers score)."""
    if len(dataset) != len(store):
        raise ValueError(f"{store.path} has {len(store)} rows but its dataset has {len(dataset)} images")
    for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        yield batch[0].to(device)


def evaluate_scorers(id_train: FeatureStore, id_test: FeatureStore, ood: Mapping[str, FeatureStore],
                     scorers=None, options: Optional[Mapping[str, dict]] = None, model: Optional[nn.Module] = None,
                     datasets: Optional[Mapping[str, Dataset]] = None, id_name: str = "id",
                     batch_size: int = 256, chunk_size: int = 65536, device: str = "cpu",
                     progress: bool = True, log=print, stream: str = "auto") -> BenchmarkResult:
    """Fit each scorer on ``id_train`` and compute :func:`~ffs_det.density.metrics.ood_metrics` of
    ``id_test`` against every set in ``ood``.

    ``model`` is the classifier (scorers that read the final linear layer get that layer; input-gradient
    scorers the whole model) and ``datasets`` maps set names (``id_name`` and the OOD names, and
    :data:`FIT_IMAGES` for the training set) to the datasets the stores were extracted from, in the same order,
    for scorers that need raw inputs (the training set's: for those fitted on them, AdaSCALE). A scorer whose needs
    are not met is reported as skipped; one that raises is reported as an error and the others go on.
    ``stream`` says when a scorer is fitted from ``id_train`` on disk, block by block
    (:func:`~ffs_det.density.scorers.apply.streams_fit`). What each scorer reads of the stores, and whether it
    gets the head, is the scorer driver's (:mod:`ffs_det.density.scorers.apply`).
    """
    if not ood:
        raise ValueError("evaluate_scorers needs at least one OOD set")
    check_stream(stream)
    if id_name in ood:
        raise ValueError(f"OOD set name {id_name!r} clashes with the ID set's name")
    dims = {s.path: s.dim("features") for s in [id_train, id_test, *ood.values()]}
    if len(set(dims.values())) != 1:
        raise ValueError(f"feature stores have different feature widths: {dims}")
    chosen = resolve_scorers(scorers, options)
    for store in [id_train, id_test, *ood.values()]:  # a NaN/inf row is named here, not as an error of every scorer
        store.check_finite()
    result = BenchmarkResult(id_name, list(ood))
    sets = {id_name: id_test, **ood}
    head = None
    if model is not None:
        model = model.to(device).eval()
        head = linear_head(model)
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
            scorer, fit_options = make_scorer(name, kwargs)
            if streams_fit(cls, id_train, stream):
                log(f"[{name}] fitting from {id_train.path} block by block")
            fit_images = (_image_batches(id_train, datasets[FIT_IMAGES], batch_size, device)
                          if "inputs" in cls.requires else None)  # fitted on the training set's images: AdaSCALE
            fit_source(scorer, id_train, head, stream, inputs=fit_images, model=model, **fit_options)
            t1 = time.perf_counter()
            for set_name, store in sets.items():
                images = _image_batches(store, (datasets or {}).get(set_name), batch_size, device)
                res.scores[set_name] = score_source(scorer, store, chunk_size, images, model, store.path)
            res.fit_seconds, res.score_seconds = t1 - t0, time.perf_counter() - t1
            for ood_name in ood:
                res.metrics[ood_name] = ood_metrics(res.scores[id_name], res.scores[ood_name])
        except Exception as e:  # one broken scorer must not lose a long run's other results
            res.status, res.message = "error", f"{type(e).__name__}: {e}"
            log(f"[{name}] error: {res.message}\n{traceback.format_exc(limit=3)}")
    return result
