"""The embedded default: the shapes world, plain vs VOS vs FFS over training seeds, train -> infer ->
FPR95/AUROC on CPU.

Steps (each job's outputs are reused from a previous run with the same settings, unless ``fresh``):

1. generate the synthetic shapes world (``datasets/make_shapes.py`` defaults) under ``<out>/datasets``;
2. for every method and training seed, one job in ``<out>/<method>/seed<k>/``: train
   ``configs/Shapes/<method>_mobilenet.yaml`` with ``SEED k`` exactly as ``tools/train_net.py`` does (through
   detectron2's ``default_setup``, so the same seed gives the same model), run it on ``shapes_val`` (ID),
   ``shapes_ood`` (near OOD: unseen shapes), ``shapes_far_ood`` (far OOD: crops of real photographs) and
   ``shapes_train`` (with its proposals' pre-activation box features, ``inference/<dataset>/``), evaluate the
   energy with the papers' protocol (``ood/``, :mod:`ffs_det.evaluation.ood_report`), compare every box-level
   score on the same kept detections (:func:`ffs_det.evaluation.box_scores.compare_box_scores`) and draw where
   its synthetic outliers lie (``features_pca.png``). ``jobs`` jobs run at once, each in its own process;
3. one summary (:mod:`ffs_det.demo_report`): per-seed rows, mean ± std per method, and the paired comparison
   against vanilla (per-seed difference, its mean, and how many seeds agree in sign) -> ``<out>/summary.md``
   and ``<out>/summary.json``, and one ROC plot of every (method, seed) -> ``<out>/roc_shapes_ood.png``, drawn
   from the kept scores the jobs hand back with their rows.

With a fixed seed, every method trains the same detector up to ``FFS.START_ITER`` (the flow and the energy
margin are initialised from their own generator), so the paired differences come from the synthesis alone.
"""
import argparse
import json
import logging
import multiprocessing
import os
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch


from .atomic_io import atomic_write_bytes, atomic_write_json, atomic_write_text

__all__ = ["METHODS", "ID_SET", "OOD_SET", "ROC_SCORES", "run_demo", "run_job", "DemoJobsFailed"]

logger = logging.getLogger(__name__)

METHODS = {"vanilla": "Shapes/vanilla_mobilenet.yaml", "vos": "Shapes/vos_mobilenet.yaml",
           "ffs": "Shapes/ffs_mobilenet.yaml"}
ID_SET, OOD_SET, FAR_OOD_SET, TRAIN_SET = "shapes_val", "shapes_ood", "shapes_far_ood", "shapes_train"
OOD_SETS = (OOD_SET, FAR_OOD_SET)
ROW_KEYS = ("fpr95", "auroc", "aupr_in", "aupr_out", "threshold", "n_id", "n_ood", "protocol")
# the key of a job's row that holds the kept detections' scores for the ROC plots (in memory only: not in
# row.json or summary.json): {"energy": {set: scores}, "box": {score: {set: scores}}}
ROC_SCORES = "roc_scores"
NUM_PROJECTED_OUTLIERS = 300


# what a job writes besides its log (demo_job.log, open while the job runs)
_JOB_OUTPUTS = ("train_info.json", "row.json", "features_pca.png", "config.yaml", "metrics.json", "last_checkpoint",
                "log.txt", "inference", "ood")
# what earlier versions of a job wrote and none reads now (the kept scores go to the summary in memory):
# removed whenever the job runs, trained again or not, so that no stale copy stays beside the new outputs
_OBSOLETE_OUTPUTS = ("kept_scores.npz", "box_scores.npz")


def _remove(path: str) -> None:
    shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)


def _clear_job(out: str) -> None:
    """Remove a job's previous training run and outputs before it trains again."""
    if not os.path.isdir(out):
        return
    for name in os.listdir(out):
        if name in _JOB_OUTPUTS or name.startswith("events.out.tfevents") or (
                name.startswith("model_") and name.endswith(".pth")):
            _remove(os.path.join(out, name))


def _train(config: str, out: str, opts: List[str], fresh: bool, info: Dict) -> Dict:
    """Train as ``tools/train_net.py`` does (``setup_cfg``: config, overrides, ``default_setup`` seeding)."""
    from .engine import Trainer
    from .engine.setup import setup_cfg

    info_path = os.path.join(out, "train_info.json")
    weights = os.path.join(out, "model_final.pth")
    if not fresh and os.path.isfile(info_path) and os.path.isfile(weights):
        with open(info_path) as f:
            saved = json.load(f)
        if all(saved.get(k) == v for k, v in info.items()):
            return saved
    _clear_job(out)  # another model: nothing of the previous one may stay (checkpoints, metrics.json, outputs)
    # DATASETS.TEST empty: the test sets are run once, by the apply step, not again by the trainer's final eval
    args = argparse.Namespace(config_file=config, opts=opts + ["OUTPUT_DIR", out, "DATASETS.TEST", "()"],
                              eval_only=False, resume=False)
    cfg = setup_cfg(args)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    info = dict(info, iterations=cfg.SOLVER.MAX_ITER, train_seconds=round(seconds, 1),
                seconds_per_iter=round(seconds / cfg.SOLVER.MAX_ITER, 4), weights=weights)
    atomic_write_json(info_path, info, indent=2)
    return info


def _apply(config: str, out: str, opts: List[str], fresh: bool):
    """Records (with pre-activation box features) and box AP of the model on the ID, OOD and training sets (with
    the training set's proposals); returns ``({dataset: summary}, model or None, cfg)``."""
    from .engine.setup import build_cfg
    from .evaluation.apply import apply_model, load_model

    cfg = build_cfg(config, opts + ["OUTPUT_DIR", out, "MODEL.WEIGHTS", os.path.join(out, "model_final.pth"),
                                    "FFS.OUTPUT_BOX_FEATURES", "True", "FFS.OUTPUT_FLOW_LOGLIK", "True",
                                    "FFS.OUTPUT_FEATURE_SPACE", "preactivation"],
                    extra_files=["Inference/standard_nms.yaml"])
    cfg.freeze()
    results, model = {}, None
    for dataset in (ID_SET, *OOD_SETS, TRAIN_SET):  # the training set's proposals fit the post-hoc scorers
        target = os.path.join(out, "inference", dataset)
        proposals = {} if dataset == TRAIN_SET else None
        if not fresh and _records_of(target, cfg.MODEL.WEIGHTS, proposals is not None):
            with open(os.path.join(target, "metrics.json")) as f:
                results[dataset] = json.load(f)
            continue
        model = model or load_model(cfg)
        results[dataset] = apply_model(cfg, dataset, target, model=model, proposals=proposals,
                                       model_name=os.path.basename(os.path.dirname(out)))["summary"]
    return results, model, cfg


def _records_of(folder: str, weights: str, proposals: bool = False) -> bool:
    """Whether ``folder`` holds the records and metrics of the checkpoint ``weights`` (by its sha256), with
    pre-activation features (and the proposals file when ``proposals``)."""
    from .atomic_io import file_sha256
    from .evaluation.records import load_records

    needed = ("metrics.json", "records.npz") + (("proposals.npz",) if proposals else ())
    if not all(os.path.isfile(os.path.join(folder, f)) for f in needed):
        return False
    try:
        meta = load_records(os.path.join(folder, "records.npz"))[1]
    except ValueError:
        return False
    if "num_gt" in meta and "papers_threshold" not in meta:  # annotated records from before the papers' protocol
        return False
    if meta.get("feature_space") != "preactivation":  # records from before the pre-activation features
        return False
    return meta.get("weights_sha256") == file_sha256(weights)


def _projection(model, cfg, out: str, evaluation, method: str, seed: int) -> Dict:
    """features_pca.png and the support statistics of ID, OOD and synthetic features."""
    from .evaluation.apply import load_model
    from .evaluation.projection import feature_summary, projection_png

    model = model or load_model(cfg)
    # the picture's outliers are the same on every run of this job, whatever the training's stream did
    generator = torch.Generator(device=model.device).manual_seed(seed)
    synthetic = model.roi_heads.synthesize_outliers(NUM_PROJECTED_OUTLIERS, generator=generator).cpu().numpy()
    kept = {}
    for role, name in (("id", ID_SET), ("ood", OOD_SET)):
        has = "features" in evaluation.sets[name].arrays
        # the records hold pre-activation features; the box predictor (and the synthetic outliers) see their ReLU
        kept[role] = np.maximum(evaluation.kept_values("features", name), 0.0) if has else np.zeros((0, 0))
    if len(kept["id"]) >= 3:
        png = projection_png(kept["id"], kept["ood"], synthetic,
                             title=f"{method}, seed {seed}: box features (PCA on ID)")
        atomic_write_bytes(os.path.join(out, "features_pca.png"), png)
    else:
        logger.warning("%s: %d kept ID detections, too few for the PCA picture; not drawn", out, len(kept["id"]))
    return {"id": feature_summary(kept["id"]), "ood": feature_summary(kept["ood"]),
            "synthetic": feature_summary(synthetic)}


def run_job(method: str, seed: int, output_dir: str, opts: Sequence[str] = (), fresh: bool = False) -> Dict:
    """Train, apply and evaluate one (method, seed); returns its summary row (``row.json``) with the kept
    detections' scores under :data:`ROC_SCORES` (``box`` empty when the box scores could not be computed).
    The world must exist under ``<output_dir>/datasets`` (see :func:`run_demo`)."""
    from .data import register_all
    from .evaluation import run_report

    register_all(os.path.join(output_dir, "datasets"))
    config = METHODS[method]
    out = os.path.join(output_dir, method, f"seed{seed}")
    opts = list(opts) + ["SEED", str(seed)]
    start = time.perf_counter()
    for name in _OBSOLETE_OUTPUTS:  # an output folder of an earlier version
        if os.path.lexists(os.path.join(out, name)):
            _remove(os.path.join(out, name))
    info = _train(config, out, opts, fresh, {"method": method, "config": config, "seed": seed, "opts": opts})
    applied, model, cfg = _apply(config, out, opts, fresh)
    evaluation, _ = run_report(os.path.join(out, "inference", ID_SET, "records.npz"),
                               [os.path.join(out, "inference", name, "records.npz") for name in OOD_SETS],
                               os.path.join(out, "ood"))
    metrics = evaluation.metrics(OOD_SET)
    far = evaluation.metrics(FAR_OOD_SET)
    energy = {name: evaluation.kept_values("energy", name) for name in (ID_SET, *OOD_SETS)}
    support = _projection(model, cfg, out, evaluation, method, seed)
    scores, box = _box_scores(out, evaluation)
    bbox = applied[ID_SET].get("bbox", {})
    row = {"method": method, "seed": seed, **{k: metrics[k] for k in ROW_KEYS}, "far_fpr95": far["fpr95"],
           "far_auroc": far["auroc"], "far_n_ood": far["n_ood"],
           "ap50": bbox.get("AP50", float("nan")), "ap": bbox.get("AP", float("nan")),
           "train_seconds": info["train_seconds"], "seconds_per_iter": info["seconds_per_iter"],
           "iterations": info["iterations"], "job_seconds": round(time.perf_counter() - start, 1),
           "support": support, "scores": scores}
    atomic_write_json(os.path.join(out, "row.json"), row, indent=2)
    return dict(row, **{ROC_SCORES: {"energy": energy, "box": box}})


def _box_scores(out: str, evaluation) -> Tuple[Dict, Dict]:
    """Every score on the kept detections of ``evaluation`` (the job's eval_ood result;
    :func:`ffs_det.evaluation.box_scores.compare_box_scores`, scorers fitted on the training set's proposals):
    the metrics per score and OOD set, and the kept scores ``{score: {set: scores}}`` for the ROC of every
    (method, score)."""
    from .evaluation.box_scores import compare_box_scores

    rec = lambda name: os.path.join(out, "inference", name, "records.npz")  # noqa: E731
    try:
        comparison, info = compare_box_scores(rec(TRAIN_SET), rec(ID_SET), [rec(name) for name in OOD_SETS],
                                              evaluation=evaluation,
                                              proposals=os.path.join(out, "inference", TRAIN_SET, "proposals.npz"))
    except ValueError as e:  # too few training boxes (a barely trained model): the energy row stands alone
        logger.warning("box-level scores not computed: %s", e)
        return {"error": str(e)}, {}
    metrics = {score: {name: {k: m[name][k] for k in ("fpr95", "auroc", "aupr_in", "n_id", "n_ood")}
                       for name in OOD_SETS} for score, m in comparison.metrics.items()}
    return dict(info, metrics=metrics), comparison.scores


def _job_in_worker(method: str, seed: int, output_dir: str, opts: List[str], fresh: bool, threads: int) -> Dict:
    """One job in a pool process: its logs go to ``<job>/demo_job.log``, not to the shared console."""
    out = os.path.join(output_dir, method, f"seed{seed}")
    os.makedirs(out, exist_ok=True)
    if threads:
        torch.set_num_threads(threads)
    sys.stdout.flush()
    sys.stderr.flush()
    with open(os.path.join(out, "demo_job.log"), "a") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
    return run_job(method, seed, output_dir, opts, fresh)


def _check_arguments(methods: List[str], seeds: List[int], jobs: int, counts: Dict[str, int]) -> None:
    """ValueError for an argument the demo cannot run with (tools/demo.py relies on these checks)."""
    unknown = sorted(set(methods) - set(METHODS))
    if unknown or not methods:
        raise ValueError(f"methods: unknown {unknown or 'empty list'}; choose from {','.join(METHODS)}")
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        # a negative SEED is detectron2's "pick a random seed": the methods would no longer share one per job
        raise ValueError(f"seeds must be a non-empty list of distinct integers >= 0, got {seeds}")
    if jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}")
    for split, n in counts.items():
        if n < 1:
            raise ValueError(f"the {split} split needs >= 1 image (--num-{split.replace('_', '-')}), got {n}")


def _check_opts(methods: Sequence[str], opts: List[str], seed: int) -> None:
    """The config overrides build every method's training and inference config (a wrong key, value or
    schedule is a ConfigError / ValueError now, not a failed job after the world is generated)."""
    from .engine.setup import build_cfg, check_schedule

    for method in methods:
        check_schedule(build_cfg(METHODS[method], list(opts) + ["SEED", str(seed)],
                                 extra_files=["Inference/standard_nms.yaml"]))


def run_demo(output_dir: str = "demo_output", methods: Optional[List[str]] = None, seeds: Sequence[int] = (0,),
             jobs: int = 1, fresh: bool = False, opts: Optional[List[str]] = None,
             counts: Optional[Dict[str, int]] = None, world_seed: int = 0, threads: int = 0) -> Dict:
    """Run the whole embedded default; returns ``{"rows", "summary", "table", "wall_seconds", "machine"}``
    (each row with its kept scores under :data:`ROC_SCORES`, which summary.json leaves out).

    ``methods`` None runs every method. Each (method, seed) job runs in its own process with ``threads`` torch
    threads (0: torch's default), ``jobs`` of them at once. Every argument is checked here, before the world is
    generated (ValueError).
    """
    from .data.shapes import generate_world
    from .demo_report import roc_of_scores, roc_of_seeds, summary_and_table
    from .exit_status import one_line

    methods = list(METHODS) if methods is None else list(methods)
    seeds = [int(s) for s in seeds]
    _check_arguments(methods, seeds, jobs, counts or {})
    opts = list(opts or [])
    _check_opts(methods, opts, seeds[0])  # before the world is generated
    start = time.perf_counter()
    if threads:
        torch.set_num_threads(threads)
    machine = {"cpu_count": os.cpu_count(), "torch_threads_per_job": threads or torch.get_num_threads(),
               "jobs": jobs, "load_average_at_start": [round(x, 2) for x in os.getloadavg()]}
    output_dir = os.path.abspath(output_dir)
    print(f"[1/3] shapes world -> {output_dir}/datasets/shapes", flush=True)
    generate_world(os.path.join(output_dir, "datasets", "shapes"), counts=counts, seed=world_seed, force=fresh)
    todo = [(m, s) for s in seeds for m in methods]
    print(f"[2/3] {len(todo)} jobs (methods {', '.join(methods)} x seeds {', '.join(map(str, seeds))}), "
          f"{jobs} at a time; logs in <method>/seed<k>/", flush=True)
    rows = []

    def done(row):
        rows.append(row)
        print(f"      {len(rows)}/{len(todo)} {row['method']} seed {row['seed']}: FPR95 {100 * row['fpr95']:.2f} "
              f"AUROC {100 * row['auroc']:.2f} AP50 {row['ap50']:.2f} ({row['job_seconds']:.0f} s)", flush=True)

    # one fresh process per job: detectron2's loggers and registries start clean, and each job's log.txt
    # holds that job only
    ctx = multiprocessing.get_context("spawn")
    failed = []
    with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx, max_tasks_per_child=1) as pool:
        futures = {pool.submit(_job_in_worker, m, s, output_dir, opts, fresh, threads): (m, s) for m, s in todo}
        for fut in as_completed(futures):
            try:
                done(fut.result())
            except Exception as e:  # one failed job does not lose the others: they are summarised below
                m, s = futures[fut]
                log = os.path.join(output_dir, m, f"seed{s}", "demo_job.log")
                failed.append(f"{m} seed {s} ({type(e).__name__}: {one_line(e)}; log: {log})")
                print(f"      {m} seed {s}: FAILED ({type(e).__name__}); see {log}", flush=True)
    if not rows:
        raise DemoJobsFailed(f"every job failed: {'; '.join(failed)}")
    print("[3/3] summary", flush=True)
    summary, table = summary_and_table(rows)
    wall = round(time.perf_counter() - start, 1)
    machine["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    atomic_write_json(os.path.join(output_dir, "summary.json"),
                      {"rows": [{k: v for k, v in r.items() if k != ROC_SCORES} for r in rows], "summary": summary,
                       "wall_seconds": wall, "machine": machine, "opts": opts, "world_seed": world_seed,
                       "counts": counts}, indent=2)
    atomic_write_text(os.path.join(output_dir, "summary.md"), table + "\n")
    atomic_write_bytes(os.path.join(output_dir, f"roc_{OOD_SET}.png"), roc_of_seeds(rows))
    if any("metrics" in r.get("scores", {}) for r in rows):
        for name in OOD_SETS:
            atomic_write_bytes(os.path.join(output_dir, f"roc_scores_{name}.png"), roc_of_scores(rows, name))
    result = {"rows": rows, "summary": summary, "table": table, "wall_seconds": wall, "machine": machine}
    if failed:
        raise DemoJobsFailed(f"{len(failed)} of {len(todo)} jobs failed: {'; '.join(failed)}; the summary holds "
                             "the others", result)
    return result


class DemoJobsFailed(RuntimeError):
    """Some (method, seed) jobs failed; ``args[1]``, when present, is the result of the jobs that did not."""


if __name__ == "__main__":  # pragma: no cover - use tools/demo.py
    sys.exit("use tools/demo.py")
