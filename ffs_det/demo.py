"""The embedded default: the shapes world, plain vs VOS vs FFS, train -> infer -> FPR95/AUROC on CPU.

Steps (each reused from a previous run when its outputs exist, unless ``fresh``):

1. generate the synthetic shapes world (``datasets/make_shapes.py`` defaults) under ``<out>/datasets``;
2. train ``configs/Shapes/{vanilla,vos,ffs}_mobilenet.yaml`` with the same seed -> ``<out>/<method>/``;
3. run each model on ``shapes_val`` (ID) and ``shapes_ood`` -> ``<out>/<method>/inference/<dataset>/``;
4. evaluate with the VOS/FFS protocol (optimal-F1 threshold from the ID set, energy score) ->
   ``<out>/<method>/ood/``;
5. print and write one comparison table: ``<out>/summary.md`` and ``<out>/summary.json``.
"""
import json
import logging
import os
import time
from typing import Dict, List, Optional

import torch

from . import detectron2_compat  # noqa: F401  (before any detectron2 import)
from detectron2.utils.logger import setup_logger

from .atomic_io import atomic_write_json, atomic_write_text
from .data import register_all
from .data.shapes import generate_world
from .engine import Trainer
from .engine.setup import build_cfg
from .evaluation import run_report
from .evaluation.apply import apply_model, load_model

__all__ = ["METHODS", "run_demo", "format_summary"]

logger = logging.getLogger(__name__)

METHODS = {"vanilla": "Shapes/vanilla_mobilenet.yaml", "vos": "Shapes/vos_mobilenet.yaml",
           "ffs": "Shapes/ffs_mobilenet.yaml"}
ID_SET, OOD_SET = "shapes_val", "shapes_ood"


def _train(method: str, config: str, out: str, opts: List[str], fresh: bool) -> Dict:
    info_path = os.path.join(out, "train_info.json")
    weights = os.path.join(out, "model_final.pth")
    if not fresh and os.path.isfile(info_path) and os.path.isfile(weights):
        print(f"      reusing {weights} (--fresh to retrain)", flush=True)
        with open(info_path) as f:
            return json.load(f)
    # DATASETS.TEST empty: the test sets are run once, by step 3, not again by the trainer's final eval
    cfg = build_cfg(config, opts + ["OUTPUT_DIR", out, "DATASETS.TEST", "()"])
    cfg.freeze()
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    info = {"method": method, "config": config, "iterations": cfg.SOLVER.MAX_ITER, "train_seconds": round(seconds, 1),
            "seconds_per_iter": round(seconds / cfg.SOLVER.MAX_ITER, 4), "weights": weights}
    atomic_write_json(info_path, info, indent=2)
    return info


def _apply(config: str, out: str, opts: List[str], fresh: bool) -> Dict[str, Dict]:
    results = {}
    cfg = build_cfg(config, opts + ["OUTPUT_DIR", out, "MODEL.WEIGHTS", os.path.join(out, "model_final.pth")],
                    extra_files=["Inference/standard_nms.yaml"])
    cfg.freeze()
    model = None
    for dataset in (ID_SET, OOD_SET):
        target = os.path.join(out, "inference", dataset)
        metrics_path = os.path.join(target, "metrics.json")
        if not fresh and os.path.isfile(metrics_path) and os.path.isfile(os.path.join(target, "records.npz")):
            print(f"      reusing {target}", flush=True)
            with open(metrics_path) as f:
                results[dataset] = json.load(f)
            continue
        model = model or load_model(cfg)
        results[dataset] = apply_model(cfg, dataset, target, model=model,
                                       model_name=os.path.basename(out))["summary"]
    return results


def format_summary(rows: List[Dict]) -> str:
    header = ("| method | FPR95 ↓ | AUROC ↑ | AUPR-In ↑ | ID AP50 ↑ | ID AP ↑ | train s | s/iter | "
              "ID dets kept | OOD dets kept |")
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for r in rows:
        lines.append(
            f"| {r['method']} | {100 * r['fpr95']:.2f} | {100 * r['auroc']:.2f} | {100 * r['aupr_in']:.2f} | "
            f"{r['ap50']:.2f} | {r['ap']:.2f} | {r['train_seconds']:.0f} | {r['seconds_per_iter']:.3f} | "
            f"{r['n_id']} | {r['n_ood']} |")
    return "\n".join(lines)


def run_demo(output_dir: str = "demo_output", methods: Optional[List[str]] = None, fresh: bool = False,
             opts: Optional[List[str]] = None, counts: Optional[Dict[str, int]] = None, seed: int = 0) -> Dict:
    """Run the whole embedded default; returns ``{"rows": [...], "table": str, "wall_seconds": s}``."""
    setup_logger(name="ffs_det")
    setup_logger(name="detectron2")
    start = time.perf_counter()
    machine = {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
               "load_average_at_start": [round(x, 2) for x in os.getloadavg()]}
    output_dir = os.path.abspath(output_dir)
    dataset_dir = os.path.join(output_dir, "datasets")
    print(f"[1/4] shapes world -> {dataset_dir}/shapes", flush=True)
    generate_world(os.path.join(dataset_dir, "shapes"), counts=counts, seed=seed, force=fresh)
    register_all(dataset_dir)
    opts = list(opts or [])
    rows = []
    for method in methods or list(METHODS):
        config = METHODS[method]
        out = os.path.join(output_dir, method)
        print(f"[2/4] {method}: train {config} -> {out}", flush=True)
        info = _train(method, config, out, opts, fresh)
        print(f"[3/4] {method}: apply to {ID_SET}, {OOD_SET}", flush=True)
        applied = _apply(config, out, opts, fresh)
        print(f"[4/4] {method}: OOD evaluation -> {out}/ood", flush=True)
        report, _ = run_report(os.path.join(out, "inference", ID_SET, "records.npz"),
                               [os.path.join(out, "inference", OOD_SET, "records.npz")],
                               os.path.join(out, "ood"))
        metrics = next(iter(report["sets"].values()))["metrics"]
        bbox = applied[ID_SET].get("bbox", {})
        rows.append({"method": method, **{k: metrics[k] for k in ("fpr95", "auroc", "aupr_in", "aupr_out",
                                                                  "threshold", "n_id", "n_ood")},
                     "ap50": bbox.get("AP50", float("nan")), "ap": bbox.get("AP", float("nan")),
                     "train_seconds": info["train_seconds"], "seconds_per_iter": info["seconds_per_iter"],
                     "iterations": info["iterations"]})
    table = format_summary(rows)
    wall = round(time.perf_counter() - start, 1)
    machine["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    atomic_write_json(os.path.join(output_dir, "summary.json"),
                      {"rows": rows, "wall_seconds": wall, "machine": machine}, indent=2)
    atomic_write_text(os.path.join(output_dir, "summary.md"), table + "\n")
    return {"rows": rows, "table": table, "wall_seconds": wall, "machine": machine}
