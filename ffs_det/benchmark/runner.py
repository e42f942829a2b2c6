"""One benchmark run: every measurement, the headline ratios against their targets, a table and JSON."""
import json
import os
import platform
import time
from typing import Callable, Dict, Optional

import torch

from .. import __version__

__all__ = ["SIZES", "TARGETS", "run_benchmark", "format_measurements", "load_average"]

# per-mode sizes; "quick" finishes in well under a minute on 2 CPU cores
SIZES = {
    "quick": dict(train_images=2, train_warmup=1, train_repeats=2, infer_images=2, infer_warmup=1,
                  infer_repeats=2, synth_warmup=1, synth_repeats=3, paper_warmup=0, paper_repeats=1,
                  metric_scores=200_000, metric_warmup=1, metric_repeats=2,
                  flow_features="synthetic", flow_kwargs=dict(max_steps=30, max_seconds=10.0, eval_every=10,
                                                              feature_kwargs=dict(n_train=1024, n_test=512)),
                  memory_sizes=(256, 1024), memory_fit_steps=3,
                  knn=dict(n_train=2000, n_query=200, dim=256, k=50, warmup=0, repeats=1)),
    "full": dict(train_images=4, train_warmup=2, train_repeats=10, infer_images=8, infer_warmup=1,
                 infer_repeats=7, synth_warmup=3, synth_repeats=21, paper_warmup=1, paper_repeats=5,
                 metric_scores=2_000_000, metric_warmup=1, metric_repeats=5,
                 flow_features="digits_cnn", flow_kwargs=dict(max_steps=400, max_seconds=60.0, eval_every=10),
                 memory_sizes=(1000, 8000, 32000), memory_fit_steps=20,
                 knn=dict(n_train=100_000, n_query=10_000, dim=256, k=50, warmup=0, repeats=3)),
}

# ratio name -> (where it is in the results, comparison, target)
TARGETS = {
    "ffs_step/plain_step": (("training_step", "ratios", "ffs/plain"), "<=", 1.10),
    "ffs_synthesis/vos_synthesis (config)": (("synthesis", "config", "ratios", "ffs/vos"), "<=", 0.2),
    "ffs_synthesis/vos_synthesis (paper)": (("synthesis", "paper", "ratios", "ffs/vos"), "<=", 0.2),
    "ffs_imgs_per_s/plain_imgs_per_s": (("inference", "ratios", "ffs/plain"), ">=", 0.98),
    "our_metrics_time/sklearn_time": (("metrics", "ratios", "ours/sklearn"), "<=", 1.0),
    "fde_glow_time/our_flow_time_to_auroc": (("flow_fit", "ratios", "fde_glow_time/ours_time_to_auroc"), ">=", 3.0),
}


def load_average():
    try:
        return list(os.getloadavg())
    except OSError:
        return None


def _dig(results, path):
    for key in path:
        if not isinstance(results, dict) or key not in results:
            return None
        results = results[key]
    return results


def _check_targets(results: Dict) -> Dict:
    out = {}
    for name, (path, op, target) in TARGETS.items():
        value = _dig(results, path)
        met = None if value is None else (value <= target if op == "<=" else value >= target)
        out[name] = {"value": value, "target": f"{op} {target}", "met": met}
    return out


def run_benchmark(quick: bool = False, device: str = "cpu", threads: Optional[int] = None, seed: int = 0,
                  log: Callable[[str], None] = print) -> Dict:
    """Run every measurement; returns the results dict (also the JSON written by the CLI)."""
    from .detector import MODES, build_models, detector_cfg, shapes_inputs, time_inference, time_training_steps
    from .flow_fit import fit_race
    from .knn import time_knn
    from .memory import measure_memory
    from .metrics import time_metrics
    from .synthesis import PAPER_SETTINGS, settings_from_cfgs, time_synthesis

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: no GPU is available")
    if threads:
        torch.set_num_threads(threads)
    mode = "quick" if quick else "full"
    size = SIZES[mode]
    started = time.perf_counter()
    section_seconds = {}

    def section(name, message):
        log(message)
        section_seconds[name] = time.perf_counter()
    results = {"mode": mode, "device": device, "torch_threads": torch.get_num_threads(),
               "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                           "python": platform.python_version(), "torch": torch.__version__,
                           "gpu": torch.cuda.get_device_name(0) if device.startswith("cuda") else None},
               "ffs_det_version": __version__, "load_average_before": load_average()}

    section("training_step", "detector: training steps (plain / VOS / FFS, synthesis active)")
    cfgs = {m: detector_cfg(m, device, size["train_images"]) for m in MODES}
    models = build_models(cfgs, seed)
    batch = shapes_inputs(cfgs["plain"], size["train_images"], seed, train=True)
    results["training_step"] = time_training_steps(models, cfgs, batch, size["train_warmup"],
                                                   size["train_repeats"], device)
    results["training_step"]["configs"] = {m: MODES[m] for m in MODES}

    section("inference", "detector: inference (plain vs FFS, apply_net path)")
    images = shapes_inputs(cfgs["plain"], size["infer_images"], seed + 1, train=False)
    results["inference"] = time_inference({m: models[m] for m in ("plain", "ffs")}, images,
                                          size["infer_warmup"], size["infer_repeats"], device)
    del models

    section("synthesis", "synthesis step alone (config and paper settings)")
    results["synthesis"] = {
        "config": time_synthesis(settings_from_cfgs(cfgs["vos"], cfgs["ffs"]), size["synth_warmup"],
                                 size["synth_repeats"], device),
        "paper": time_synthesis(PAPER_SETTINGS, size["paper_warmup"], size["paper_repeats"], device),
    }

    section("metrics", f"metrics: ood_metrics vs sklearn on {size['metric_scores']:,} scores")
    results["metrics"] = time_metrics(size["metric_scores"], size["metric_warmup"], size["metric_repeats"], seed)

    section("flow_fit", f"flow fit race on {size['flow_features']} features (ours vs FDE-style Glow)")
    results["flow_fit"] = fit_race(size["flow_features"], seed=seed, device=device, **size["flow_kwargs"])

    section("knn", f"knn scorer: faiss vs scikit-learn index, {size['knn']['n_train']:,} x {size['knn']['dim']} "
                   f"features, {size['knn']['n_query']:,} queries")
    results["knn"] = time_knn(seed=seed, **size["knn"])

    section("memory", f"memory: extraction + fit at n = {list(size['memory_sizes'])}")
    results["memory"] = measure_memory(size["memory_sizes"], size["memory_fit_steps"], seed)

    names = list(section_seconds) + [None]
    ends = [section_seconds[n] for n in names[1:-1]] + [time.perf_counter()]
    results["section_seconds"] = {n: end - section_seconds[n] for n, end in zip(names[:-1], ends)}
    results["targets"] = _check_targets(results)
    results["load_average_after"] = load_average()
    results["wall_seconds"] = time.perf_counter() - started
    return results


def _ms(x):
    return f"{1e3 * x:.2f} ms" if x is not None else "-"


def format_measurements(r: Dict) -> str:
    """The results as a plain-text table (medians)."""
    rows = []
    ts = r["training_step"]
    for m in ("plain", "vos", "ffs"):
        rows.append((f"train step {m} ({ts['images_per_batch']} imgs)", _ms(ts[m]["median_s"]),
                     f"IQR {_ms(ts[m]['iqr_s'])}, n={ts[m]['repeats']}"))
    for setting in ("config", "paper"):
        s = r["synthesis"][setting]
        st = s["settings"]
        for m in ("vos", "ffs"):
            detail = (f"queue {st['vos']['queue_size']} x {st['num_classes']} cls, draw {st['vos']['sample_from']}/cls"
                      if m == "vos" else f"{st['ffs']['sample_from']} latents, hidden {st['ffs']['hidden']}")
            rows.append((f"synthesis {m} ({setting}, {st['dim']}-d)", _ms(s[m]["median_s"]), detail))
    inf = r["inference"]
    for m in ("plain", "ffs"):
        rows.append((f"inference {m}", f"{inf[m]['images_per_s']:.2f} img/s",
                     f"{inf[m]['images']} imgs, n={inf[m]['repeats']}"))
    mt = r["metrics"]
    rows.append((f"ood_metrics ({mt['n_scores']:,} scores)", _ms(mt["ours"]["median_s"]), "6 metrics, one sort"))
    rows.append(("sklearn AUROC+AUPR-In+AUPR-Out", _ms(mt["sklearn"]["median_s"]),
                 f"max |diff| {mt['max_abs_difference']:.1e}"))
    kn = r["knn"]
    for b in ("faiss", "sklearn"):
        rows.append((f"knn fit+score, {b} index", _ms(kn[b]["median_s"]),
                     f"{kn['n_train']:,} x {kn['dim']} bank, {kn['n_query']:,} queries, k={kn['k']}"
                     + (f", max |score diff| {kn['max_abs_difference']:.1e}" if b == "sklearn" else "")))
    ff = r["flow_fit"]
    for m in ("ours", "fde_glow"):
        f = ff[m]
        t = f["seconds_to_target_auroc"]
        rows.append((f"flow fit {m}: time to AUROC {ff['target_auroc']:.3f}",
                     f"{t:.2f} s" if t is not None else "not reached",
                     f"{f['steps_to_target_auroc'] if t is not None else '-'} steps, "
                     f"{1e3 * f['seconds_per_step']:.1f} ms/step, "
                     f"best AUROC {f['best_auroc']:.3f}, best NLL {f['best_nll']:.1f}"))
    for m in ("ours", "fde_glow"):
        f = ff[m]
        t = f["seconds_to_target_nll"]
        rows.append((f"flow fit {m}: time to NLL {ff['target_nll']:.1f}", f"{t:.2f} s" if t is not None else "not reached",
                     f"{f['parameters']:,} parameters, {f['steps']} steps in {f['train_seconds']:.1f} s"))
    for row in r["memory"]["rows"]:
        rows.append((f"memory n={row['n']}", f"{row['total_peak_rss_over_baseline_mb']:.1f} MB",
                     f"extract +{row['extract_peak_rss_over_baseline_mb']:.1f} MB RSS; tracemalloc extract "
                     f"{row['extract_tracemalloc_peak_mb']:.2f} MB, fit {row['fit_tracemalloc_peak_mb']:.2f} MB"))
    width = max(len(a) for a, _, _ in rows)
    lines = [f"{'measurement':<{width}}  {'median':>14}  detail", "-" * (width + 40)]
    lines += [f"{a:<{width}}  {b:>14}  {c}" for a, b, c in rows]
    lines += ["", "ratios (same run)"]
    for name, t in r["targets"].items():
        value = "-" if t["value"] is None else f"{t['value']:.3f}"
        status = {True: "met", False: "MISSED", None: "n/a"}[t["met"]]
        lines.append(f"  {name:<40} {value:>8}  target {t['target']:<7} {status}")
    lines.append(f"\nload average before {r['load_average_before']}, after {r['load_average_after']}; "
                 f"{r['machine']['cpu_count']} CPUs, torch threads {r['torch_threads']}, device {r['device']}; "
                 f"wall {r['wall_seconds']:.0f} s")
    return "\n".join(lines)


def write_json(results: Dict, path: str) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(results, f, indent=2, allow_nan=True)
    os.replace(tmp, path)
