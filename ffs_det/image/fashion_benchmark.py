"""The embedded benchmark: real data, CPU, minutes.

* ID: Fashion-MNIST (train split to train the classifier and fit the scorers, test split as ID test).
* Classifier: :class:`~ffs_det.image.small_cnn.SmallCNN`, trained here with a fixed seed.
* OOD: scikit-learn's handwritten digits upsampled to 28x28, and random crops of scikit-image's brick,
  grass and gravel textures resized to 28x28.
* Every registered scorer is fitted and evaluated (FPR95 / AUROC / AUPR).
* The ImageNet path is exercised too (:mod:`~ffs_det.image.photo_check`): torchvision's MobileNetV2 with
  real weights, on the photos bundled with scikit-learn and scikit-image.

``size="reduced"`` runs the same protocol on subsets, for tests.
"""
import inspect
import os
import time
from dataclasses import asdict
from typing import Dict, Optional

import torch

from ..atomic_io import json_bytes
from ..density import scorers as registry

from .datasets import build_dataset, find_fashion_mnist
from .evaluate import resolve_scorers
from .feature_store import FeatureStore, check_store_target
from .models import LOCAL_MODELS, preprocessing, save_state_dict
from .pipeline import ModelSpec, SetSpec, run_image_benchmark
from .report import WORK, check_report_folder, format_benchmark_table, report_files, write_benchmark_report
from .threads import torch_threads
from .train import accuracy, train_classifier

__all__ = ["run_fashion_benchmark", "preset_options", "SIZES"]

SIZES = {
    # train/test: Fashion-MNIST images used (None = whole split); digits: OOD digits used (None = all
    # 1797); textures: OOD texture crops; epochs: of
    # the classifier; fde_epochs: of the FDE flow; max_scorer_epochs: cap on the training epochs of every
    # scorer that trains something (None = their defaults); photo_*: crops in the MobileNetV2 check
    "full": dict(train=None, test=None, digits=None, textures=2000, epochs=2, fde_epochs=3, max_scorer_epochs=None,
                 photo_train=48, photo_test=24),
    "reduced": dict(train=4000, test=1000, digits=1000, textures=400, epochs=3, fde_epochs=5, max_scorer_epochs=5,
                    photo_train=16, photo_test=8),
}


def preset_options(size: str, scorers=None, options=None) -> Dict[str, dict]:
    """Scorer options of a preset: FDE's epochs, and in the reduced preset the ``epochs`` argument of every
    chosen scorer that has one capped at ``max_scorer_epochs``; explicit ``options`` win."""
    cfg = SIZES[size]
    chosen = resolve_scorers(scorers, options)
    out = {name: {} for name in chosen}
    if "fde" in out:
        out["fde"]["epochs"] = cfg["fde_epochs"]
    cap = cfg["max_scorer_epochs"]
    if cap is not None:
        for name in chosen:
            param = inspect.signature(registry.SCORERS[name].__init__).parameters.get("epochs")
            if param is not None and isinstance(param.default, int) and param.default > cap:
                out[name].setdefault("epochs", cap)
    for name, kw in (options or {}).items():
        out.setdefault(name, {}).update(kw)
    return {k: v for k, v in out.items() if v}


def run_fashion_benchmark(output_dir: str, size: str = "full", seed: int = 0, scorers=None, options=None,
                          photos: bool = True, fashion_root: Optional[str] = None, threads: Optional[int] = None,
                          progress: bool = True, log=print) -> dict:
    """Run the embedded benchmark into ``output_dir`` (report files, written as one generation at the end;
    features and weights under ``output_dir/work``, kept across runs). Returns ``{"result": BenchmarkResult,
    "summary": dict, "photos": dict or None, "table": str}``;
    the summary (also written as ``summary.json``) holds the classifier's accuracy and wall time per step.
    ``threads`` sets torch's thread count for the run (1 is fastest on a busy two-core machine)."""
    if size not in SIZES:
        raise ValueError(f"size must be one of {sorted(SIZES)}, got {size!r}")
    with torch_threads(threads):
        return _run(output_dir, size, seed, scorers, options, photos, fashion_root, progress, log)


def _run(output_dir, size, seed, scorers, options, photos, fashion_root, progress, log) -> dict:
    cfg = SIZES[size]
    photo_dir, photo_work = "mobilenet_photos", "mobilenet_photos/" + WORK
    keep = [WORK] + ([photo_work] if photos else [])
    check_report_folder(output_dir, keep)  # before any work
    work = os.path.join(output_dir, WORK)
    stores = [os.path.join(work, "features", n) for n in ("id_train", "fashion-mnist", "digits", "textures")]
    if photos:
        stores += [os.path.join(output_dir, photo_work, "features", n) for n in ("id_train", "photos", "textures")]
    for path in stores:
        check_store_target(path)
    find_fashion_mnist(fashion_root)  # fail early, with the how-to-get-it message
    fashion = "fashion-mnist" + (f":{fashion_root}" if fashion_root else "")
    seconds = {}

    t = time.perf_counter()
    torch.manual_seed(seed)
    model = LOCAL_MODELS["small_cnn"](num_classes=10)
    prep = preprocessing("small_cnn", 28)
    train_set = build_dataset(f"{fashion}@train", transform=prep.transform, max_samples=cfg["train"], seed=seed)
    history = train_classifier(model, train_set, epochs=cfg["epochs"], seed=seed, progress=progress)
    weights = os.path.join(work, "small_cnn_fashion.pt")
    save_state_dict(model, weights)
    seconds["train_classifier"] = time.perf_counter() - t

    model_spec = ModelSpec("small_cnn", weights, num_classes=10, image_size=28)
    ood = {"digits": SetSpec("digits", cfg["digits"], seed),
           "textures": SetSpec("textures", seed=seed, n_generated=cfg["textures"])}
    result = run_image_benchmark(model_spec, SetSpec(f"{fashion}@train", cfg["train"], seed),
                           SetSpec(f"{fashion}@test", cfg["test"], seed), ood, work_dir=work,
                           output_dir=None, scorers=scorers, options=preset_options(size, scorers, options),
                           id_name="fashion-mnist", progress=progress, log=log)
    seconds["extract_features"] = result.info["seconds"]["extract"]
    seconds["evaluate_scorers"] = result.info["seconds"]["evaluate"]
    seconds.update({f"fit+score {name}": res.fit_seconds + res.score_seconds for name, res in result.scorers.items()})

    test_store = FeatureStore(os.path.join(work, "features", "fashion-mnist"))
    summary = {"size": size, "config": cfg, "seed": seed, "train_history": history,
               "test_accuracy": accuracy(test_store.load("logits"), test_store.load("labels")),
               "model": asdict(model_spec)}
    photo = None
    if photos:
        from .photo_check import mobilenet_photo_check

        t = time.perf_counter()
        photo = mobilenet_photo_check(os.path.join(output_dir, photo_dir), n_train=cfg["photo_train"],
                                      n_test=cfg["photo_test"], seed=seed, progress=progress, log=log, report=False)
        seconds["mobilenet_photo_check"] = time.perf_counter() - t
        summary["mobilenet_photos"] = photo["summary"]
    summary["seconds"] = {k: round(v, 2) for k, v in seconds.items()}
    extra = {"summary.json": json_bytes(summary, indent=2)}
    if photo is not None:
        extra.update({f"{photo_dir}/{name}": data for name, data in report_files(photo["result"]).items()})
    write_benchmark_report(result, output_dir, extra_files=extra, keep=keep)
    log(f"Fashion-MNIST test accuracy of the classifier: {100 * summary['test_accuracy']:.2f}%")
    log("wall time per step (s): " + ", ".join(f"{k} {v}" for k, v in summary["seconds"].items()))
    return {"result": result, "summary": summary, "photos": photo, "table": format_benchmark_table(result)}
