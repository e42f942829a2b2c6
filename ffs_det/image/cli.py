"""Command line of the image-level OOD benchmark (``tools/image_ood.py``).

Subcommands:

* ``extract``  — features + logits (+ labels) of one dataset spec into a feature store,
* ``evaluate`` — fit scorers on an ID-train store, evaluate ID-test vs OOD stores, write the report,
* ``run``      — both, for a model and a list of dataset specs (stores re-used when already extracted),
* ``fashion-benchmark`` — the embedded real-data benchmark (Fashion-MNIST vs digits/textures, plus the
  MobileNetV2 photo check).
"""
import argparse
import json
import os
import sys
from typing import Dict, List, Optional

from ..density.scorers import STREAMS
from ..exit_status import FAILED, INPUT_ERRORS, OK, error
from .pipeline import (ModelSpec, SetSpec, check_extract_target, evaluate_stores, extract_set, load_classifier,
                       parse_shard, run_image_benchmark)
from .report import format_benchmark_table
from .threads import torch_threads

__all__ = ["main", "build_parser", "parse_scorer_options", "parse_named"]


def parse_named(items: List[str], what: str) -> Dict[str, str]:
    """``["digits=/stores/digits", ...]`` -> ``{"digits": "/stores/digits"}``."""
    out = {}
    for item in items or []:
        name, sep, value = item.partition("=")
        if not sep or not name or not value:
            raise ValueError(f"{what} must look like NAME=VALUE, got {item!r}")
        if name in out:
            raise ValueError(f"{what}: name {name!r} given twice")
        out[name] = value
    return out


def parse_scorer_options(items: List[str]) -> Dict[str, dict]:
    """``["fde.epochs=5", "odin.temperature=100"]`` -> ``{"fde": {"epochs": 5}, "odin": {...}}``; values are
    parsed as JSON when they can be (numbers, true/false, lists), else kept as strings."""
    out: Dict[str, dict] = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        scorer, dot, param = key.partition(".")
        if not sep or not dot or not scorer or not param:
            raise ValueError(f"--opt must look like SCORER.PARAM=VALUE, got {item!r}")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        out.setdefault(scorer, {})[param] = value
    return out


def _model_args(p):
    p.add_argument("--model", required=True, help="torchvision model name (e.g. resnet50, mobilenet_v2) or small_cnn")
    p.add_argument("--weights", help="local state-dict file (.pth) of the model (without it: an untrained network, "
                                     "initialised from --seed)")
    p.add_argument("--num-classes", type=int, help="class count (default: from the weights)")
    p.add_argument("--image-size", type=int, help="side of generated sets (digits/textures/photos); "
                                                  "default 28 for small_cnn, 256 otherwise")


def _run_args(p):
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-progress", action="store_true", help="no tqdm progress bars")


def _scorer_args(p):
    p.add_argument("--scorers", default="all", help="comma-separated scorer names, or 'all' (default)")
    p.add_argument("--opt", action="append", default=[], metavar="SCORER.PARAM=VALUE",
                   help="scorer option, e.g. fde.epochs=5 (repeatable)")
    p.add_argument("--output-dir", required=True, help="where results.json/csv, table.txt and plots go")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--stream", choices=STREAMS, default="auto",
                   help="fit scorers from the ID-train store on disk block by block (memory independent of its "
                        "size); auto (default): when its features as float64 exceed 2 GiB")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="image_ood.py", description="Image-level OOD detection benchmark "
                                 "(feature extraction, scorers, FPR95/AUROC/AUPR).")
    ap.add_argument("--threads", type=int, help="torch intra-op threads (1 is fastest on a busy small machine)")
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("extract", help="extract features + logits of one dataset into a store")
    _model_args(p)
    p.add_argument("--data", required=True, help="dataset spec KIND[:ROOT][@SPLIT], e.g. folder:/data/imagenet/val")
    p.add_argument("--out", required=True, help="feature store folder to create")
    p.add_argument("--max-samples", type=int, help="keep a seeded random subset of this size")
    p.add_argument("--n-generated", type=int, default=2000, help="texture/photo crops to generate")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true", help="re-extract even when an identical store exists")
    p.add_argument("--shard", metavar="I/N",
                   help="extract only the I-th of N consecutive parts of the set into OUT/shard-I-of-N, so that "
                        "N processes (e.g. one per GPU) fill OUT together; 'auto' takes I/N from torchrun's "
                        "RANK/WORLD_SIZE. OUT reads as one store once every shard is written")
    _run_args(p)

    p = sub.add_parser("evaluate", help="fit and evaluate scorers on feature stores")
    p.add_argument("--id-train", required=True, help="store of ID training features (scorers are fitted on it)")
    p.add_argument("--id-test", required=True, help="store of ID test features")
    p.add_argument("--ood", action="append", required=True, metavar="NAME=STORE", help="OOD store (repeatable)")
    p.add_argument("--id-name", default="id")
    p.add_argument("--no-rebuild", action="store_true",
                   help="do not rebuild the classifier/images from store metadata (ReAct/ViM/ODIN are skipped)")
    _scorer_args(p)
    _run_args(p)

    p = sub.add_parser("run", help="extract (or re-use) and evaluate in one go")
    _model_args(p)
    p.add_argument("--id-train", required=True, help="dataset spec of ID training images")
    p.add_argument("--id-test", required=True, help="dataset spec of ID test images")
    p.add_argument("--ood", action="append", required=True, metavar="NAME=SPEC", help="OOD dataset (repeatable)")
    p.add_argument("--id-name", default="id")
    p.add_argument("--max-train", type=int, help="seeded subset of the ID training set")
    p.add_argument("--max-test", type=int, help="seeded subset of the ID test set")
    p.add_argument("--max-ood", type=int, help="seeded subset of each OOD set")
    p.add_argument("--n-generated", type=int, default=2000, help="texture/photo crops to generate")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work-dir", help="where feature stores go (default: OUTPUT_DIR/work)")
    p.add_argument("--overwrite", action="store_true")
    _scorer_args(p)
    _run_args(p)

    p = sub.add_parser("fashion-benchmark", help="the embedded real-data benchmark (CPU, minutes)")
    p.add_argument("--size", choices=("full", "reduced"), default="full")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fashion-root", help="folder with Fashion-MNIST IDX files (default: see find_fashion_mnist)")
    p.add_argument("--no-photos", action="store_true", help="skip the MobileNetV2 photo check")
    p.add_argument("--scorers", default="all")
    p.add_argument("--opt", action="append", default=[], metavar="SCORER.PARAM=VALUE")
    p.add_argument("--output-dir", required=True)
    p.add_argument("--no-progress", action="store_true")
    return ap


def _model_spec(a) -> ModelSpec:
    """The classifier; without weights initialised from ``--seed``."""
    return ModelSpec(a.model, a.weights, a.num_classes, a.image_size, init_seed=a.seed)


def _dispatch(a) -> int:
    progress = not a.no_progress
    if a.command == "extract":
        shard = parse_shard(a.shard)
        check_extract_target(a.out, shard)  # before any work
        spec = _model_spec(a)
        device = a.device
        if shard is not None and a.shard == "auto" and device == "cuda" and "LOCAL_RANK" in os.environ:
            device = f"cuda:{os.environ['LOCAL_RANK']}"  # torchrun: one GPU per process
        model, prep = load_classifier(spec)
        store = extract_set(model, prep, spec, SetSpec(a.data, a.max_samples, a.seed, a.n_generated), a.out,
                            batch_size=a.batch_size, num_workers=a.workers, device=device,
                            reuse=not a.overwrite, progress=progress, shard=shard,
                            warn=lambda message: print(message, file=sys.stderr))
        print(store)
        return OK
    if a.command == "fashion-benchmark":
        from .fashion_benchmark import run_fashion_benchmark

        out = run_fashion_benchmark(a.output_dir, size=a.size, seed=a.seed, scorers=a.scorers,
                                    options=parse_scorer_options(a.opt), photos=not a.no_photos,
                                    fashion_root=a.fashion_root, progress=progress)
        return FAILED if out["result"].failed() else OK
    options = parse_scorer_options(a.opt)
    ood = parse_named(a.ood, "--ood")
    if a.command == "evaluate":
        result = evaluate_stores(a.id_train, a.id_test, ood, a.output_dir, scorers=a.scorers, options=options,
                                 id_name=a.id_name, rebuild_inputs=not a.no_rebuild, batch_size=a.batch_size,
                                 device=a.device, progress=progress, plots=not a.no_plots, stream=a.stream)
        print(format_benchmark_table(result))
    else:
        sets = {k: SetSpec(v, a.max_ood, a.seed, a.n_generated) for k, v in ood.items()}
        result = run_image_benchmark(_model_spec(a), SetSpec(a.id_train, a.max_train, a.seed, a.n_generated),
                               SetSpec(a.id_test, a.max_test, a.seed, a.n_generated), sets,
                               work_dir=a.work_dir or os.path.join(a.output_dir, "work"), output_dir=a.output_dir,
                               scorers=a.scorers, options=options, id_name=a.id_name, batch_size=a.batch_size,
                               num_workers=a.workers, device=a.device, reuse=not a.overwrite, progress=progress,
                               plots=not a.no_plots, stream=a.stream)
    print(f"report written to {a.output_dir}")
    return FAILED if result.failed() else OK


def main(argv: Optional[List[str]] = None) -> int:
    a = build_parser().parse_args(argv)
    try:
        with torch_threads(a.threads):
            return _dispatch(a)
    except INPUT_ERRORS as e:
        return error(e)
