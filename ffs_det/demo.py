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
3. one summary: per-seed rows, mean ± std per method, and the paired comparison against vanilla (per-seed
   difference, its mean, and how many seeds agree in sign) -> ``<out>/summary.md`` and ``<out>/summary.json``,
   and one ROC plot of every (method, seed) -> ``<out>/roc_shapes_ood.png``.

With a fixed seed, every method trains the same detector up to ``FFS.START_ITER`` (the flow and the energy
margin are initialised from their own generator), so the paired differences come from the synthesis alone.
"""
import argparse
import io
import json
import logging
import multiprocessing
import os
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch


from .atomic_io import atomic_write_bytes, atomic_write_json, atomic_write_text

__all__ = ["METHODS", "ID_SET", "OOD_SET", "run_demo", "run_job", "summarize", "format_summary", "DemoJobsFailed"]

logger = logging.getLogger(__name__)

METHODS = {"vanilla": "Shapes/vanilla_mobilenet.yaml", "vos": "Shapes/vos_mobilenet.yaml",
           "ffs": "Shapes/ffs_mobilenet.yaml"}
ID_SET, OOD_SET, FAR_OOD_SET, TRAIN_SET = "shapes_val", "shapes_ood", "shapes_far_ood", "shapes_train"
OOD_SETS = (OOD_SET, FAR_OOD_SET)
ROW_KEYS = ("fpr95", "auroc", "aupr_in", "aupr_out", "threshold", "n_id", "n_ood", "protocol")
# the metrics of the summary: (row key, header, scale to percent, lower is better); near OOD unless "far"
SUMMARY_METRICS = (("fpr95", "FPR95 ↓", 100.0, True), ("auroc", "AUROC ↑", 100.0, False),
                   ("aupr_in", "AUPR-In ↑", 100.0, False), ("far_fpr95", "far FPR95 ↓", 100.0, True),
                   ("far_auroc", "far AUROC ↑", 100.0, False), ("ap50", "ID AP50 ↑", 1.0, False),
                   ("ap", "ID AP ↑", 1.0, False))
NUM_PROJECTED_OUTLIERS = 300


# what a job writes besides its log (demo_job.log, open while the job runs)
_JOB_OUTPUTS = ("train_info.json", "row.json", "features_pca.png", "config.yaml", "metrics.json", "last_checkpoint",
                "log.txt", "inference", "ood", "kept_scores.npz", "box_scores.npz")


def _clear_job(out: str) -> None:
    """Remove a job's previous training run and outputs before it trains again."""
    if not os.path.isdir(out):
        return
    for name in os.listdir(out):
        path = os.path.join(out, name)
        if name in _JOB_OUTPUTS or name.startswith("events.out.tfevents") or (
                name.startswith("model_") and name.endswith(".pth")):
            shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)


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
    """Train, apply and evaluate one (method, seed); returns its summary row. The world must exist under
    ``<output_dir>/datasets`` (see :func:`run_demo`)."""
    from .data import register_all
    from .evaluation import run_report

    register_all(os.path.join(output_dir, "datasets"))
    config = METHODS[method]
    out = os.path.join(output_dir, method, f"seed{seed}")
    opts = list(opts) + ["SEED", str(seed)]
    start = time.perf_counter()
    info = _train(config, out, opts, fresh, {"method": method, "config": config, "seed": seed, "opts": opts})
    applied, model, cfg = _apply(config, out, opts, fresh)
    evaluation, _ = run_report(os.path.join(out, "inference", ID_SET, "records.npz"),
                               [os.path.join(out, "inference", name, "records.npz") for name in OOD_SETS],
                               os.path.join(out, "ood"))
    metrics = evaluation.metrics(OOD_SET)
    far = evaluation.metrics(FAR_OOD_SET)
    buf = io.BytesIO()  # the kept detections' scores, for the ROC
    np.savez(buf, id=evaluation.kept_values("energy", ID_SET), ood=evaluation.kept_values("energy", OOD_SET),
             far_ood=evaluation.kept_values("energy", FAR_OOD_SET))
    atomic_write_bytes(os.path.join(out, "kept_scores.npz"), buf.getvalue())
    support = _projection(model, cfg, out, evaluation, method, seed)
    scores = _box_scores(out, evaluation)
    bbox = applied[ID_SET].get("bbox", {})
    row = {"method": method, "seed": seed, **{k: metrics[k] for k in ROW_KEYS}, "far_fpr95": far["fpr95"],
           "far_auroc": far["auroc"], "far_n_ood": far["n_ood"],
           "ap50": bbox.get("AP50", float("nan")), "ap": bbox.get("AP", float("nan")),
           "train_seconds": info["train_seconds"], "seconds_per_iter": info["seconds_per_iter"],
           "iterations": info["iterations"], "job_seconds": round(time.perf_counter() - start, 1),
           "support": support, "scores": scores}
    atomic_write_json(os.path.join(out, "row.json"), row, indent=2)
    return row


def _box_scores(out: str, evaluation) -> Dict:
    """Every score on the kept detections of ``evaluation`` (the job's eval_ood result;
    :func:`ffs_det.evaluation.box_scores.compare_box_scores`, scorers fitted on the training set's proposals):
    the metrics per score and OOD set, and the kept scores saved for the ROC of every (method, score)."""
    from .evaluation.box_scores import compare_box_scores

    rec = lambda name: os.path.join(out, "inference", name, "records.npz")  # noqa: E731
    try:
        comparison, info = compare_box_scores(rec(TRAIN_SET), rec(ID_SET), [rec(name) for name in OOD_SETS],
                                              evaluation=evaluation,
                                              proposals=os.path.join(out, "inference", TRAIN_SET, "proposals.npz"))
    except ValueError as e:  # too few training boxes (a barely trained model): the energy row stands alone
        logger.warning("box-level scores not computed: %s", e)
        return {"error": str(e)}
    buf = io.BytesIO()
    np.savez(buf, **{f"{score}__{name}": v for score, sets in comparison.scores.items() for name, v in sets.items()})
    atomic_write_bytes(os.path.join(out, "box_scores.npz"), buf.getvalue())
    return dict(info, metrics={score: {name: {k: m[name][k] for k in ("fpr95", "auroc", "aupr_in", "n_id", "n_ood")}
                                       for name in OOD_SETS} for score, m in comparison.metrics.items()})


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


def _std(x: np.ndarray) -> float:
    return float(np.std(x, ddof=1)) if len(x) > 1 else 0.0


def summarize(rows: List[Dict], baseline: str = "vanilla") -> Dict:
    """Mean ± std per method and the paired per-seed comparison of every other method against ``baseline``."""
    seen = list(dict.fromkeys(r["method"] for r in rows))  # in METHODS order, whatever order jobs ended in
    methods = [m for m in METHODS if m in seen] + [m for m in seen if m not in METHODS]
    by = {m: {r["seed"]: r for r in rows if r["method"] == m} for m in methods}
    out = {"methods": {}, "paired": {}}
    for m in methods:
        seeds = sorted(by[m])
        out["methods"][m] = {"seeds": seeds}
        for key, _, scale, _ in SUMMARY_METRICS:
            vals = np.array([by[m][s][key] for s in seeds], dtype=float) * scale
            out["methods"][m][key] = {"mean": float(vals.mean()), "std": _std(vals), "per_seed": vals.tolist()}
    if baseline in by:
        for m in methods:
            if m == baseline:
                continue
            common = sorted(set(by[m]) & set(by[baseline]))
            if not common:
                continue
            paired = {"seeds": common}
            for key, _, scale, lower_better in SUMMARY_METRICS:
                diff = np.array([by[m][s][key] - by[baseline][s][key] for s in common], dtype=float) * scale
                better = int((diff < 0).sum() if lower_better else (diff > 0).sum())
                paired[key] = {"mean": float(diff.mean()), "std": _std(diff), "per_seed": diff.tolist(),
                               "seeds_better": better, "seeds": len(common)}
            out["paired"][m] = paired
    return out


SCORE_METRICS = (("fpr95", "FPR95 ↓", True), ("auroc", "AUROC ↑", False), ("aupr_in", "AUPR-In ↑", False))


def summarize_scores(rows: List[Dict]) -> Dict:
    """Per (method, score, OOD set): mean ± std over seeds of FPR95 / AUROC / AUPR-In (%) on the same kept
    detections; per (method, OOD set), on how many seeds each fused score beats each of its parts, and how far
    (FPR95 points, paired per seed) it is from the best single score of its seed."""
    out = {"scores": {}, "fused": {}}
    for m in dict.fromkeys(r["method"] for r in sorted(rows, key=lambda r: list(METHODS).index(r["method"])
                                                       if r["method"] in METHODS else len(METHODS))):
        mine = sorted((r for r in rows if r["method"] == m and "metrics" in r.get("scores", {})),
                      key=lambda r: r["seed"])
        if not mine:
            continue
        # the scores every seed has (a scorer that could not be fitted on one seed is left out)
        names = [n for n in mine[0]["scores"]["metrics"] if all(n in r["scores"]["metrics"] for r in mine)]
        out["scores"][m] = {}
        for name in names:
            out["scores"][m][name] = {}
            for o in OOD_SETS:
                vals = {k: np.array([100 * r["scores"]["metrics"][name][o][k] for r in mine]) for k, _, _ in SCORE_METRICS}
                out["scores"][m][name][o] = {k: {"mean": float(v.mean()), "std": _std(v), "per_seed": v.tolist()}
                                             for k, v in vals.items()}
        singles = [n for n in names if "+" not in n]
        for fused in (n for n in names if "+" in n):
            parts = fused.split("+")
            for o in OOD_SETS:
                beats = {}
                for k, _, lower_better in SCORE_METRICS:
                    f = np.array([r["scores"]["metrics"][fused][o][k] for r in mine])
                    for part in parts:
                        p = np.array([r["scores"]["metrics"][part][o][k] for r in mine])
                        beats[f"{k} vs {part}"] = int((f < p).sum() if lower_better else (f > p).sum())
                fpr = lambda n: np.array([100 * r["scores"]["metrics"][n][o]["fpr95"] for r in mine])  # noqa: E731
                gap = fpr(fused) - np.min([fpr(n) for n in singles], axis=0)
                out["fused"].setdefault(m, {}).setdefault(fused, {})[o] = {
                    "seeds": len(mine), "beats": beats,
                    "fpr95_above_best_single": {"per_seed": gap.tolist(), "max": float(gap.max())}}
    return out


def format_scores(rows: List[Dict]) -> str:
    """Markdown: every score of every method on the same kept detections, and the fused scores vs their parts."""
    s = summarize_scores(rows)
    if not s["scores"]:
        return ""
    cols = [(o, k, h) for o in OOD_SETS for k, h, _ in SCORE_METRICS if k != "aupr_in"]
    lines = ["Every score on the same kept detections (mean ± std over seeds, %; post-hoc scorers fitted on the "
             "pre-activation box features of the ID training set's foreground proposals):", "",
             "| method | score | " + " | ".join(f"{o} {h}" for o, _, h in cols) + " |", "|---|---|" + "---|" * len(cols)]
    for m, per in s["scores"].items():
        for name, d in per.items():
            lines.append(f"| {m} | {name} | " + " | ".join(_pm(d[o][k]) for o, k, _ in cols) + " |")
    if s["fused"]:
        lines += ["", "Fused scores (calibrated on ID training detections, weighted by separation from background "
                  "proposals; no OOD data): seeds on which the fused score's FPR95 beats each part, and its FPR95 "
                  "minus the best single score's of the same seed (points; max over seeds):", "",
                  "| method | fused | OOD set | FPR95 better than each part (seeds) | above best single, per seed "
                  "(max) |", "|---|---|---|---|---|"]
        for m, per in s["fused"].items():
            for fused, by_set in per.items():
                for o, d in by_set.items():
                    gap = d["fpr95_above_best_single"]
                    lines.append(f"| {m} | {fused} | {o} | " + ", ".join(
                        f"{p} {d['beats'][f'fpr95 vs {p}']}/{d['seeds']}" for p in fused.split("+")) + " | " +
                        " ".join(f"{g:+.1f}" for g in gap["per_seed"]) + f" ({gap['max']:+.1f}) |")
    return "\n".join(lines)


def _pm(d: Dict) -> str:
    return f"{d['mean']:.2f} ± {d['std']:.2f}" if len(d["per_seed"]) > 1 else f"{d['mean']:.2f}"


def format_summary(rows: List[Dict], summary: Optional[Dict] = None, baseline: str = "vanilla") -> str:
    """Markdown: the mean ± std table, the paired comparison against ``baseline`` and the per-seed rows."""
    summary = summary or summarize(rows, baseline)
    head = "| method | seeds | " + " | ".join(h for _, h, _, _ in SUMMARY_METRICS) + " |"
    protocols = sorted({str(r.get("protocol", "global-f1")) for r in rows})
    lines = [f"Mean ± std over training seeds (%; the energy's OOD metrics under the {'/'.join(protocols)} protocol "
             f"of eval_ood on {OOD_SET} (near) and {FAR_OOD_SET} (far); ID AP: COCO box AP on the ID test set):", "",
             head,
             "|" + "---|" * (head.count("|") - 1)]
    for m, s in summary["methods"].items():
        lines.append(f"| {m} | {','.join(map(str, s['seeds']))} | "
                     + " | ".join(_pm(s[k]) for k, _, _, _ in SUMMARY_METRICS) + " |")
    if summary["paired"]:
        lines += ["", f"Paired difference to {baseline} (same seed; mean ± std, seeds better / seeds):", "",
                  "| method | " + " | ".join(f"Δ {h}" for _, h, _, _ in SUMMARY_METRICS) + " |",
                  "|" + "---|" * (len(SUMMARY_METRICS) + 1)]
        for m, p in summary["paired"].items():
            lines.append(f"| {m} | " + " | ".join(f"{p[k]['mean']:+.2f} ± {p[k]['std']:.2f} "
                                                  f"({p[k]['seeds_better']}/{p[k]['seeds']})"
                                                  for k, _, _, _ in SUMMARY_METRICS) + " |")
    lines += ["", "Per seed:", "",
              "| method | seed | FPR95 | AUROC | AUPR-In | far FPR95 | far AUROC | ID AP50 | ID AP | ID dets kept | "
              "OOD dets kept | far-OOD dets kept | train s |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (list(summary["methods"]).index(r["method"]), r["seed"])):
        lines.append(f"| {r['method']} | {r['seed']} | {100 * r['fpr95']:.2f} | {100 * r['auroc']:.2f} | "
                     f"{100 * r['aupr_in']:.2f} | {100 * r['far_fpr95']:.2f} | {100 * r['far_auroc']:.2f} | "
                     f"{r['ap50']:.2f} | {r['ap']:.2f} | {r['n_id']} | {r['n_ood']} | {r['far_n_ood']} | "
                     f"{r['train_seconds']:.0f} |")
    return "\n".join(lines)


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
    """Run the whole embedded default; returns ``{"rows", "summary", "table", "wall_seconds", "machine"}``.

    Each (method, seed) job runs in its own process with ``threads`` torch threads (0: torch's default),
    ``jobs`` of them at once.
    """
    from .data.shapes import generate_world
    from .exit_status import one_line

    methods = list(methods or METHODS)
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        raise ValueError(f"unknown demo methods {unknown}; choose from {sorted(METHODS)}")
    seeds = [int(s) for s in seeds]
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        # a negative SEED is detectron2's "pick a random seed": the methods would no longer share one per job
        raise ValueError(f"seeds must be a non-empty list of distinct integers >= 0, got {seeds}")
    if jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}")
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
    summary = summarize(rows)
    summary["box_scores"] = summarize_scores(rows)
    table = format_summary(rows, summary)
    scores_table = format_scores(rows)
    if scores_table:
        table += "\n\n" + scores_table
    wall = round(time.perf_counter() - start, 1)
    machine["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    atomic_write_json(os.path.join(output_dir, "summary.json"),
                      {"rows": rows, "summary": summary, "wall_seconds": wall, "machine": machine,
                       "opts": opts, "world_seed": world_seed, "counts": counts}, indent=2)
    atomic_write_text(os.path.join(output_dir, "summary.md"), table + "\n")
    atomic_write_bytes(os.path.join(output_dir, f"roc_{OOD_SET}.png"), _roc(output_dir, rows))
    if any("metrics" in r.get("scores", {}) for r in rows):
        for name in OOD_SETS:
            atomic_write_bytes(os.path.join(output_dir, f"roc_scores_{name}.png"), _roc_scores(output_dir, rows, name))
    result = {"rows": rows, "summary": summary, "table": table, "wall_seconds": wall, "machine": machine}
    if failed:
        raise DemoJobsFailed(f"{len(failed)} of {len(todo)} jobs failed: {'; '.join(failed)}; the summary holds "
                             "the others", result)
    return result


def _roc(output_dir: str, rows: List[Dict]) -> bytes:
    """One ROC plot of every finished (method, seed) on the OOD set (energy of the kept detections)."""
    from .density.report import roc_png

    curves = {}
    for r in sorted(rows, key=lambda r: (list(METHODS).index(r["method"]), r["seed"])):
        with np.load(os.path.join(output_dir, r["method"], f"seed{r['seed']}", "kept_scores.npz")) as z:
            curves[f"{r['method']} seed {r['seed']}"] = (z["id"], z["ood"])
    return roc_png(curves, f"ROC, energy: {ID_SET} vs {OOD_SET}", xlabel="FPR (OOD detections kept)",
                   ylabel="TPR (ID detections kept)")


def _roc_scores(output_dir: str, rows: List[Dict], ood: str) -> bytes:
    """One ROC plot of every (method, score) of the first seed on OOD set ``ood``."""
    from .density.report import roc_png

    seed = min(r["seed"] for r in rows)
    curves = {}
    for r in sorted((r for r in rows if r["seed"] == seed and "metrics" in r.get("scores", {})),
                    key=lambda r: list(METHODS).index(r["method"])):
        with np.load(os.path.join(output_dir, r["method"], f"seed{seed}", "box_scores.npz")) as z:
            for name in r["scores"]["metrics"]:
                curves[f"{r['method']}: {name}"] = (z[f"{name}__{ID_SET}"], z[f"{name}__{ood}"])
    return roc_png(curves, f"ROC of every score, seed {seed}: {ID_SET} vs {ood}",
                   xlabel="FPR (OOD detections kept)", ylabel="TPR (ID detections kept)")


class DemoJobsFailed(RuntimeError):
    """Some (method, seed) jobs failed; ``args[1]``, when present, is the result of the jobs that did not."""


if __name__ == "__main__":  # pragma: no cover - use tools/demo.py
    sys.exit("use tools/demo.py")
