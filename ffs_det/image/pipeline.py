"""The image-level benchmark as steps: load a classifier, extract feature stores for named dataset specs
(re-used when already extracted with the same settings), evaluate scorers, write the report.

Each store records in its metadata how it was made (model name/weights, dataset spec, subset), so a later
``evaluate`` step can rebuild the classifier and the images for scorers that need them (ReAct, ODIN).

Output folders are checked before any work: a store is only written over an absent or empty folder or a
store (:func:`~ffs_det.image.feature_store.check_store_target`), a report only over an absent or empty
folder or an earlier report (:func:`~ffs_det.image.report.check_report_folder`).
"""
import json
import os
import time
from dataclasses import asdict, dataclass
from typing import Dict, Mapping, Optional, Tuple

from torch.utils.data import Dataset, Subset

from ..atomic_io import check_folder_path, file_sha256
from ..density import scorers as registry

from .datasets import build_dataset, parse_spec
from .evaluate import FIT_IMAGES, evaluate_scorers, resolve_scorers
from .extract import extract_to_store
from .feature_store import FeatureStore, check_store_target, shard_name, shard_rows
from .models import LOCAL_MODELS, Preprocessing, build_classifier, preprocessing
from .report import check_report_folder, format_benchmark_table, write_benchmark_report
from .results import BenchmarkResult

__all__ = ["ModelSpec", "SetSpec", "load_classifier", "extract_set", "check_extract_target", "parse_shard",
           "shard_rows", "evaluate_stores", "run_image_benchmark", "untrained_warning"]


@dataclass(frozen=True)
class ModelSpec:
    """A classifier: name (torchvision or ``small_cnn``), local weights file, class count, and the side of
    generated images (digits/textures/photos) fed to its preprocessing.

    Without ``weights`` the network is randomly initialised from ``init_seed`` (default 0), so that every
    process (every shard of an extraction, a later ``evaluate`` rebuilding it) gets the same network; with
    ``weights`` the seed plays no part and is dropped (None)."""

    name: str
    weights: Optional[str] = None
    num_classes: Optional[int] = None
    image_size: Optional[int] = None
    init_seed: Optional[int] = None

    def __post_init__(self):
        seed = None if self.weights else (0 if self.init_seed is None else int(self.init_seed))
        object.__setattr__(self, "init_seed", seed)

    def resolved_image_size(self) -> int:
        return self.image_size or (28 if self.name in LOCAL_MODELS else 256)


@dataclass(frozen=True)
class SetSpec:
    """A dataset spec (see :mod:`ffs_det.image.datasets`) plus the subset to keep."""

    spec: str
    max_samples: Optional[int] = None
    seed: int = 0
    n_generated: int = 2000


def load_classifier(spec: ModelSpec):
    """``(classifier in eval mode, Preprocessing)``."""
    weights = os.path.abspath(spec.weights) if spec.weights else None
    model = build_classifier(spec.name, weights, spec.num_classes, init_seed=spec.init_seed)
    return model, preprocessing(spec.name, spec.resolved_image_size())


def untrained_warning(spec: ModelSpec) -> Optional[str]:
    """The one-line warning for a classifier without weights (None with weights)."""
    if spec.weights:
        return None
    return (f"warning: no --weights given: the features come from an untrained {spec.name} (random initialisation, "
            f"seed {spec.init_seed}); OOD scores of an untrained network say little")


def _dataset(model_spec: ModelSpec, set_spec: SetSpec, prep: Preprocessing) -> Dataset:
    return build_dataset(set_spec.spec, transform=prep.transform, image_size=model_spec.resolved_image_size(),
                         max_samples=set_spec.max_samples, seed=set_spec.seed, n_generated=set_spec.n_generated)


def _info(model_spec: ModelSpec, set_spec: SetSpec) -> dict:
    """What a store records about its making; the weights' digest makes a retrained model's stores stale."""
    model = asdict(model_spec)
    if model["init_seed"] is None:  # with weights: the stores' info as before the seed was recorded
        del model["init_seed"]
    model["weights"] = os.path.abspath(model_spec.weights) if model_spec.weights else None
    digest = file_sha256(model["weights"]) if model["weights"] else None
    return json.loads(json.dumps({"model": model, "weights_sha256": digest, "dataset": asdict(set_spec)}))


def parse_shard(value: str, env=None) -> Optional[Tuple[int, int]]:
    """``"I/N"`` -> ``(I, N)``; ``"auto"`` -> ``(RANK, WORLD_SIZE)`` as torchrun sets them (None when unset:
    one process); ``None`` -> None."""
    if value is None:
        return None
    env = os.environ if env is None else env
    if value == "auto":
        if "WORLD_SIZE" not in env:
            return None
        value = f"{env.get('RANK', '0')}/{env['WORLD_SIZE']}"
    index, sep, count = str(value).partition("/")
    try:
        i, n = int(index), int(count)
    except ValueError:
        i = n = -1
    if not sep or n < 1 or not 0 <= i < n:
        raise ValueError(f"--shard must be I/N with 0 <= I < N (or 'auto'), got {value!r}")
    return i, n


def check_extract_target(path: str, shard: Optional[Tuple[int, int]] = None) -> str:
    """The folder (absolute: ``--out .`` is replaced as a whole, and the process's working folder with it) a
    store (or shard ``(I, N)``) extracted to ``path`` goes to, checked before any work: ValueError unless it
    is absent, empty or a store (:func:`~ffs_det.image.feature_store.check_store_target`); shards go to
    ``path/shard-I-of-N`` (other files in ``path`` may stay), which must not hold an unsharded store."""
    if shard is None:
        check_store_target(path)
        return os.path.abspath(path)
    check_folder_path(path)
    if os.path.isfile(os.path.join(path, "meta.json")):
        raise ValueError(f"{path} holds an unsharded feature store; remove it before extracting shards into it")
    target = os.path.join(path, shard_name(*shard))
    check_store_target(target)
    return os.path.abspath(target)


def extract_set(model, prep: Preprocessing, model_spec: ModelSpec, set_spec: SetSpec, path: str,
                batch_size: int = 256, num_workers: int = 0, device: str = "cpu", reuse: bool = True,
                progress: bool = True, log=print, shard: Optional[Tuple[int, int]] = None,
                warn=None) -> FeatureStore:
    """The feature store of one set at ``path``: re-used when it exists with the same model and dataset
    settings (and ``reuse``), else extracted. With ``shard=(I, N)`` only the I-th of N consecutive parts of
    the set is extracted, into ``path/shard-I-of-N`` (N processes fill ``path``, which then reads as one
    store); the shard's store is returned. ``warn`` (a callable) gets the one-line warning for a classifier
    without weights, once the inputs are checked."""
    parse_spec(set_spec.spec)
    info = _info(model_spec, set_spec)
    path = check_extract_target(path, shard)
    if shard is not None:
        info["shard"] = list(shard)
    if reuse and os.path.isfile(os.path.join(path, "meta.json")):
        try:
            store = FeatureStore(path)
            if store.info == info:
                log(f"re-using features in {path}")
                if warn is not None and untrained_warning(model_spec):
                    warn(untrained_warning(model_spec))
                return store
        except (ValueError, FileNotFoundError) as e:
            log(f"re-extracting {path} ({e})")
    dataset = _dataset(model_spec, set_spec, prep)
    desc = set_spec.spec
    if shard is not None:
        if shard[1] > len(dataset):
            raise ValueError(f"--shard {shard[0]}/{shard[1]}: {set_spec.spec} has only {len(dataset)} images, fewer "
                             f"than the {shard[1]} shards: some shards would be empty and the sharded store could "
                             f"never be read; use at most {len(dataset)} shards (nothing was written)")
        dataset = Subset(dataset, shard_rows(len(dataset), shard))
        desc = f"{set_spec.spec} [shard {shard[0]}/{shard[1]}]"
    if warn is not None and untrained_warning(model_spec):
        warn(untrained_warning(model_spec))
    return extract_to_store(model, dataset, path, batch_size=batch_size, num_workers=num_workers, device=device,
                            info=info, progress=progress, desc=desc)


def _inside(output_dir: str, paths) -> list:
    """The entries of ``output_dir`` (relative paths) that hold one of ``paths`` (the work folder, input
    stores): a report replacing ``output_dir`` keeps them. A path equal to ``output_dir`` keeps nothing (the
    report check then refuses the folder)."""
    root = os.path.realpath(output_dir)
    out = []
    for p in paths:
        rel = os.path.relpath(os.path.realpath(p), root)
        if rel != "." and not rel.startswith(".." + os.sep) and rel != ".." and not os.path.isabs(rel):
            top = rel.split(os.sep)[0]
            if top not in out:
                out.append(top)
    return out


def _specs_from_store(store: FeatureStore):
    info = store.info
    if not isinstance(info.get("model"), dict) or not isinstance(info.get("dataset"), dict):
        return None, None
    try:
        return ModelSpec(**info["model"]), SetSpec(**info["dataset"])
    except TypeError:
        return None, None


def _needs(scorers, options, key: str) -> bool:
    """Whether a chosen scorer reads the classifier's head (``"model"``), runs it on the scored sets' images
    (``"inputs"``) or is also fitted on the training set's images (``"fit_inputs"``: AdaSCALE)."""
    classes = [registry.SCORERS[n] for n in resolve_scorers(scorers, options)]
    if key == "fit_inputs":
        return any(c.kind == "inputs" and "inputs" in c.requires for c in classes)
    if key == "inputs":
        return any(c.kind == "inputs" for c in classes)
    return any(c.kind == "inputs" or c.uses_head != "none" for c in classes)


def _default_options(options, prep: Optional[Preprocessing]) -> Dict[str, dict]:
    out = {k: dict(v) for k, v in (options or {}).items()}
    if prep is not None:  # ODIN's step is in raw pixel units: divide it by the normalisation std
        out.setdefault("odin", {}).setdefault("input_std", list(prep.std))
    return out


def _network(info: dict) -> Optional[dict]:
    """Which network a store's features come from: model name, weights digest, initialisation seed."""
    model = info.get("model")
    if not isinstance(model, dict):
        return None
    return {"model": model.get("name"), "weights_sha256": info.get("weights_sha256"),
            "init_seed": model.get("init_seed")}


def _describe(network: dict) -> str:
    sha = network["weights_sha256"]
    return (f"{network['model']}, " + (f"weights sha256 {sha[:12]}..." if sha else "no weights")
            + (f", init seed {network['init_seed']}" if network["init_seed"] is not None else ""))


def _check_stores(stores: Mapping[str, FeatureStore]) -> None:
    """ValueError when two of the stores are one folder, or were extracted from one dataset spec and subset
    (e.g. the ID training set given as the ID test set: the scorers would be scored on what they were fitted
    on), or by another network than the first store's (features of two networks are not comparable)."""
    seen: Dict[object, str] = {}
    first_name, first = next(iter(stores.items()))
    for what, store in stores.items():
        dataset = store.info.get("dataset")
        for key in [("path", os.path.realpath(store.path))] + ([("data", json.dumps(dataset, sort_keys=True))]
                                                             if isinstance(dataset, dict) else []):
            if key in seen:
                how = "is the same folder as" if key[0] == "path" else "was extracted from the same data as"
                raise ValueError(f"{what} store {store.path} {how} the {seen[key]} store; give each set's own store")
            seen[key] = what
        mine, ref = _network(store.info), _network(first.info)
        if mine is not None and ref is not None and mine != ref:
            raise ValueError(f"{what} store {store.path} was extracted by another network than the {first_name} "
                             f"store ({_describe(mine)} vs {_describe(ref)}); extract every set with one model and "
                             "weights")


def evaluate_stores(id_train: str, id_test: str, ood: Mapping[str, str], output_dir: Optional[str] = None,
                    scorers=None, options=None, id_name: str = "id", rebuild_inputs: bool = True,
                    batch_size: int = 256, device: str = "cpu", progress: bool = True, plots: bool = True,
                    log=print, stream: str = "auto") -> BenchmarkResult:
    """Evaluate scorers on stores given by path. When a chosen scorer needs the classifier or raw images
    and ``rebuild_inputs``, they are rebuilt from the stores' metadata. Input stores inside ``output_dir``
    are kept when the report replaces it."""
    keep = _inside(output_dir, [id_train, id_test, *ood.values()]) if output_dir else []
    if output_dir:
        check_report_folder(output_dir, keep)  # before any work
    train, test = FeatureStore(id_train), FeatureStore(id_test)
    ood_stores = {name: FeatureStore(p) for name, p in ood.items()}
    _check_stores({"--id-train": train, "--id-test": test, **{f"--ood {k}": v for k, v in ood_stores.items()}})
    model = prep = datasets = None
    model_spec, _ = _specs_from_store(train)
    if rebuild_inputs and model_spec is not None and _needs(scorers, options, "model"):
        model, prep = load_classifier(model_spec)
        if _needs(scorers, options, "inputs"):
            datasets = {}
            fit = {FIT_IMAGES: train} if _needs(scorers, options, "fit_inputs") else {}
            for name, store in {**fit, id_name: test, **ood_stores}.items():
                m_spec, s_spec = _specs_from_store(store)
                if s_spec is not None and m_spec == model_spec:
                    datasets[name] = _dataset(model_spec, s_spec, prep)
    result = evaluate_scorers(train, test, ood_stores, scorers=scorers, options=_default_options(options, prep),
                              model=model, datasets=datasets, id_name=id_name, batch_size=batch_size,
                              device=device, progress=progress, log=log, stream=stream)
    result.info.update({"id_train": id_train, "id_test": id_test, "ood": dict(ood)})
    if output_dir:
        write_benchmark_report(result, output_dir, plots=plots, keep=keep)
    return result


def run_image_benchmark(model_spec: ModelSpec, id_train: SetSpec, id_test: SetSpec, ood: Mapping[str, SetSpec],
                  work_dir: str, output_dir: Optional[str] = None, scorers=None, options=None,
                  id_name: str = "id", batch_size: int = 256, num_workers: int = 0, device: str = "cpu",
                  reuse: bool = True, progress: bool = True, plots: bool = True, log=print,
                  stream: str = "auto") -> BenchmarkResult:
    """Extract (or re-use) the stores of every set under ``work_dir``, evaluate, report, print the table."""
    if id_name == "id_train" or id_name in ood:
        raise ValueError(f"ID set name {id_name!r} clashes with 'id_train' or an OOD set name")
    sets = {"id_train": id_train, id_name: id_test, **ood}
    seen: Dict[SetSpec, str] = {}
    for name, spec in sets.items():  # one set in two roles: scorers scored on what they were fitted on
        if spec in seen:
            raise ValueError(f"sets {seen[spec]!r} and {name!r} are the same data ({spec.spec}, max_samples "
                             f"{spec.max_samples}, seed {spec.seed}); give each set its own data")
        seen[spec] = name
    paths = {name: os.path.join(work_dir, "features", name) for name in sets}
    keep = _inside(output_dir, [os.path.join(work_dir, "features")]) if output_dir else []
    if output_dir:  # before any work: the report folder, the specs, the store folders
        check_report_folder(output_dir, keep)
        out = os.path.realpath(output_dir)
        for path in paths.values():
            if out == os.path.realpath(path) or out.startswith(os.path.realpath(path) + os.sep):
                raise ValueError(f"output folder {output_dir} is or lies in the feature store folder {path}; choose "
                                 "another output folder (nothing was written)")
    for name, set_spec in sets.items():
        parse_spec(set_spec.spec)
        check_store_target(paths[name])
    if untrained_warning(model_spec):
        log(untrained_warning(model_spec))
    t0 = time.perf_counter()
    model, prep = load_classifier(model_spec)
    stores, datasets = {}, {}
    for name, set_spec in sets.items():
        stores[name] = extract_set(model, prep, model_spec, set_spec, paths[name],
                                   batch_size=batch_size, num_workers=num_workers, device=device, reuse=reuse,
                                   progress=progress, log=log)
        if _needs(scorers, options, "fit_inputs" if name == "id_train" else "inputs"):
            datasets[name] = _dataset(model_spec, set_spec, prep)
    t1 = time.perf_counter()
    result = evaluate_scorers(stores["id_train"], stores[id_name], {k: stores[k] for k in ood}, scorers=scorers,
                              options=_default_options(options, prep), model=model, datasets=datasets,
                              id_name=id_name, batch_size=batch_size, device=device, progress=progress, log=log,
                              stream=stream)
    result.info.update({"model": asdict(model_spec), "id_train": asdict(id_train), "id_test": asdict(id_test),
                        "ood": {k: asdict(v) for k, v in ood.items()},
                        "seconds": {"extract": round(t1 - t0, 2), "evaluate": round(time.perf_counter() - t1, 2)}})
    if output_dir:
        write_benchmark_report(result, output_dir, plots=plots, keep=keep)
    log(format_benchmark_table(result))
    return result
