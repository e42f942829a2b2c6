"""One benchmark run: every measurement, the headline ratios against their targets, a table and JSON."""
import json
import os
import platform
import time
from typing import Callable, Dict, Optional, Sequence

import torch

from .. import __version__
from .timing import ratio_spread

__all__ = ["SIZES", "TARGETS", "SECTIONS", "CPU_DEFAULT_SECTIONS", "run_benchmark", "format_measurements", "load_average"]

# per-mode sizes; "quick" finishes in well under a minute on 2 CPU cores
SIZES = {
    "quick": dict(train_images=2, train_warmup=1, train_repeats=2, infer_images=2, infer_warmup=1,
                  infer_repeats=2, synth_warmup=1, synth_repeats=3, paper_warmup=0, paper_repeats=1,
                  metric_scores=200_000, metric_warmup=1, metric_repeats=2,
                  flow_features="synthetic", flow_kwargs=dict(max_steps=30, max_seconds=10.0, eval_every=10,
                                                              feature_kwargs=dict(n_train=1024, n_test=512)),
                  memory_sizes=(256, 1024), memory_fit_steps=3,
                  fit_memory=dict(sizes=(1000, 4000), dim=64, steps=3, scorers=("mahalanobis", "fde")),
                  extraction=dict(n=16, configs=((1, 0), (2, 0))),
                  knn=dict(n_train=2000, n_query=200, dim=256, k=50, warmup=0, repeats=1),
                  paper_detector=dict(images=1, min_size=128, warmup=0, repeats=1), safe_fit_rows=2000),
    "full": dict(train_images=4, train_warmup=2, train_repeats=10, infer_images=8, infer_warmup=1,
                 infer_repeats=7, synth_warmup=3, synth_repeats=21, paper_warmup=1, paper_repeats=5,
                 metric_scores=2_000_000, metric_warmup=1, metric_repeats=5,
                 flow_features="digits_cnn", flow_kwargs=dict(max_steps=400, max_seconds=60.0, eval_every=10),
                 memory_sizes=(1000, 8000, 32000), memory_fit_steps=20,
                 fit_memory=dict(sizes=(10_000, 100_000, 1_000_000), dim=512, steps=20, scorers=None),
                 extraction=dict(n=256, configs=((1, 0), (2, 0), (1, 1), (1, 2))),
                 knn=dict(n_train=100_000, n_query=10_000, dim=256, k=50, warmup=0, repeats=3),
                 paper_detector=dict(images=4, min_size=800, warmup=2, repeats=10), safe_fit_rows=20_000),
}

# ratio name -> (where it is in the results, comparison, target); a target of None: reported, not judged.
# The step and inference ratios are medians of per-round ratios of interleaved rounds; their spread over
# the rounds is printed beside them.
TARGETS = {
    "ffs_step/plain_step (shapes)": (("training_step", "ratios", "ffs/plain"), "<=", 1.05),
    "ffs_step/plain_step (paper heads)": (("training_step_paper", "ratios", "ffs/plain"), "<=", 1.05),
    "vos_step/plain_step (paper heads)": (("training_step_paper", "ratios", "vos/plain"), None, None),
    "ffs_step/plain_step (paper detector)": (("paper_detector", "ratios", "ffs/plain"), None, None),
    "vos_step/plain_step (paper detector)": (("paper_detector", "ratios", "vos/plain"), None, None),
    "ffs_synthesis/vos_synthesis (shapes)": (("synthesis", "config", "ratios", "ffs/vos"), None, None),
    "ffs_synthesis/vos_synthesis (paper)": (("synthesis", "paper", "ratios", "ffs/vos"), "<=", 0.2),
    "ffs_imgs_per_s/plain_imgs_per_s": (("inference", "ratios", "ffs/plain"), ">=", 0.98),
    "safe_inference_time/plain_inference_time": (("safe", "ratios", "safe/plain"), "<=", 1.1),
    "safe_fit_set_time/plain_inference_time": (("safe", "ratios", "safe_fit/plain"), None, None),
    "our_metrics_time/sklearn_time": (("metrics", "ratios", "ours/sklearn"), "<=", 1.0),
    "fde_glow_time/our_flow_time_to_auroc": (("flow_fit", "ratios", "fde_glow_time/ours_time_to_auroc"), ">=", 3.0),
    "fit_peak_memory largest_n/smallest_n": (("fit_memory", "max_ratio_streaming"), "<=", 1.5),
    "extraction 2_processes/1_process": (("extraction", "speedup_2_processes"), None, None),
}

# the sections run_benchmark can run, in order; "paper_detector" (the papers' RegNetX detector at 800 px) runs by
# default on a GPU only (on a CPU a full run of it takes tens of minutes): ask for it with --sections
SECTIONS = ("training_step", "inference", "safe", "synthesis", "paper_detector", "metrics", "flow_fit", "knn",
            "memory", "fit_memory", "extraction")
CPU_DEFAULT_SECTIONS = tuple(x for x in SECTIONS if x != "paper_detector")


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
        if value is None and path[0] not in results:
            continue  # the section did not run
        met = None if value is None or op is None else (value <= target if op == "<=" else value >= target)
        entry = {"value": value, "target": None if op is None else f"{op} {target}", "met": met}
        rounds = _dig(results, (*path[:-2], "ratio_rounds", path[-1]))
        if rounds:
            entry["rounds"] = ratio_spread(rounds)
        out[name] = entry
    return out


def run_benchmark(quick: bool = False, device: str = "cpu", threads: Optional[int] = None, seed: int = 0,
                  log: Callable[[str], None] = print, sections: Optional[Sequence[str]] = None) -> Dict:
    """Run the measurements of ``sections`` (default: all of :data:`SECTIONS`); returns the results dict
    (also the JSON written by the CLI)."""
    from .detector import (MODES, PAPER_DETECTOR, PAPER_HEAD_OPTS, build_models, detector_cfg, shapes_inputs,
                           step_peak_memory, time_inference, time_training_steps)
    from .extract_throughput import measure_extraction
    from .fit_memory import measure_fit_memory
    from .flow_fit import fit_race
    from .knn import time_knn
    from .memory import measure_memory
    from .metrics import time_metrics
    from .safe import time_safe
    from .synthesis import PAPER_SETTINGS, settings_from_cfgs, time_synthesis

    default = SECTIONS if device.startswith("cuda") else CPU_DEFAULT_SECTIONS
    chosen = list(default) if not sections else list(sections)
    unknown = [x for x in chosen if x not in SECTIONS]
    if unknown:
        raise ValueError(f"unknown benchmark section(s) {unknown}; choose from {', '.join(SECTIONS)}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: no GPU is available")
    if threads:
        torch.set_num_threads(threads)
    mode = "quick" if quick else "full"
    size = SIZES[mode]
    started = time.perf_counter()
    section_seconds = {}

    def section(name, message):
        if name not in chosen:
            return False
        log(message)
        section_seconds[name] = time.perf_counter()
        return True
    results = {"mode": mode, "device": device, "torch_threads": torch.get_num_threads(), "sections": chosen,
               "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                           "python": platform.python_version(), "torch": torch.__version__,
                           "gpu": torch.cuda.get_device_name(0) if device.startswith("cuda") else None},
               "ffs_det_version": __version__, "load_average_before": load_average()}

    detector_sections = {"training_step", "inference", "safe", "synthesis"} & set(chosen)
    cfgs = {m: detector_cfg(m, device, size["train_images"]) for m in MODES} if detector_sections else {}
    models = None
    if section("training_step", "detector: training steps (plain / VOS / FFS, synthesis active)"):
        models = build_models(cfgs, seed)
        batch = shapes_inputs(cfgs["plain"], size["train_images"], seed, train=True)
        results["training_step"] = time_training_steps(models, cfgs, batch, size["train_warmup"],
                                                       size["train_repeats"], device)
        results["training_step"]["configs"] = {m: MODES[m] for m in MODES}
        log("detector: training steps with the papers' head sizes " + " ".join(PAPER_HEAD_OPTS["all"]))
        paper_cfgs = {m: detector_cfg(m, device, size["train_images"], PAPER_HEAD_OPTS["all"] + PAPER_HEAD_OPTS[m])
                      for m in MODES}
        paper_models = build_models(paper_cfgs, seed)
        results["training_step_paper"] = time_training_steps(paper_models, paper_cfgs, batch, size["train_warmup"],
                                                             size["train_repeats"], device)
        results["training_step_paper"]["configs"] = {m: MODES[m] for m in MODES}
        results["training_step_paper"]["opts"] = PAPER_HEAD_OPTS
        del paper_models

    if section("inference", "detector: inference (plain vs FFS, apply_net path)"):
        models = models or build_models(cfgs, seed)
        images = shapes_inputs(cfgs["plain"], size["infer_images"], seed + 1, train=False)
        results["inference"] = time_inference({m: models[m] for m in ("plain", "ffs")}, images,
                                              size["infer_warmup"], size["infer_repeats"], device)
    if section("safe", "SAFE: inference with its box features, the training set's FGSM step, the MLP fit"):
        models = models or build_models(cfgs, seed)
        results["safe"] = time_safe(models["plain"], cfgs["plain"], size["infer_images"], size["infer_warmup"],
                                    size["infer_repeats"], seed, device, fit_rows=size["safe_fit_rows"])
    del models

    if section("synthesis", "synthesis step alone (config and paper settings)"):
        results["synthesis"] = {
            "config": time_synthesis(settings_from_cfgs(cfgs["vos"], cfgs["ffs"]), size["synth_warmup"],
                                     size["synth_repeats"], device),
            "paper": time_synthesis(PAPER_SETTINGS, size["paper_warmup"], size["paper_repeats"], device),
        }

    pd = size["paper_detector"]
    if section("paper_detector", f"detector: training steps of the papers' RegNetX-4.0GF FPN detector "
                                 f"({', '.join(PAPER_DETECTOR.values())}), {pd['images']} images at {pd['min_size']} px"):
        opts = ["INPUT.MIN_SIZE_TRAIN", f"({pd['min_size']},)", "INPUT.MAX_SIZE_TRAIN", str(max(1333, pd["min_size"]))]
        paper_cfgs = {m: detector_cfg(m, device, pd["images"], opts, configs=PAPER_DETECTOR) for m in PAPER_DETECTOR}
        paper_models = build_models(paper_cfgs, seed)
        batch = shapes_inputs(paper_cfgs["plain"], pd["images"], seed, train=True)
        results["paper_detector"] = time_training_steps(paper_models, paper_cfgs, batch, pd["warmup"], pd["repeats"],
                                                        device)
        results["paper_detector"]["configs"] = dict(PAPER_DETECTOR)
        results["paper_detector"]["min_size"] = pd["min_size"]
        results["paper_detector"]["peak_memory"] = step_peak_memory(paper_models, paper_cfgs, batch, device)
        del paper_models

    if section("metrics", f"metrics: ood_metrics vs sklearn on {size['metric_scores']:,} scores"):
        results["metrics"] = time_metrics(size["metric_scores"], size["metric_warmup"], size["metric_repeats"],
                                          seed)

    if section("flow_fit", f"flow fit race on {size['flow_features']} features (ours vs FDE-style Glow)"):
        results["flow_fit"] = fit_race(size["flow_features"], seed=seed, device=device, **size["flow_kwargs"])

    if section("knn", f"knn scorer: faiss vs scikit-learn index, {size['knn']['n_train']:,} x "
                      f"{size['knn']['dim']} features, {size['knn']['n_query']:,} queries"):
        results["knn"] = time_knn(seed=seed, **size["knn"])

    if section("memory", f"memory: extraction + in-memory flow fit at n = {list(size['memory_sizes'])}"):
        results["memory"] = measure_memory(size["memory_sizes"], size["memory_fit_steps"], seed)

    fm = size["fit_memory"]
    if section("fit_memory", f"fit memory: scorers fitted from a store on disk, n = {list(fm['sizes'])} x "
                             f"{fm['dim']}-d (a fresh process each)"):
        results["fit_memory"] = measure_fit_memory(fm["sizes"], dim=fm["dim"], steps=fm["steps"],
                                                   scorers=fm["scorers"], seed=seed,
                                                   log=lambda m: log(m))

    ex = size["extraction"]
    if section("extraction", f"extraction throughput: {ex['n']} photos, (processes, workers) = {ex['configs']}"):
        results["extraction"] = measure_extraction(ex["n"], configs=ex["configs"], log=lambda m: log(m))
        two = [r for r in results["extraction"]["rows"] if r["processes"] == 2 and r["workers"] == 0]
        results["extraction"]["speedup_2_processes"] = two[0]["speedup"] if two else None

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
    """The results as a plain-text table (medians) of the sections that ran, then the ratios."""
    rows = []
    for key, label in (("training_step", "shapes heads"), ("training_step_paper", "paper heads"),
                       ("paper_detector", "paper detector")):
        if key in r:
            ts = r[key]
            for m in ("plain", "vos", "ffs"):
                rows.append((f"train step {m}, {label} ({ts['images_per_batch']} imgs)", _ms(ts[m]["median_s"]),
                             f"IQR {_ms(ts[m]['iqr_s'])}, n={ts[m]['repeats']}"))
    for m, mem in r.get("paper_detector", {}).get("peak_memory", {}).items():
        rows.append((f"train step {m}, paper detector: peak memory", f"{mem['step_peak_mb']:.0f} MB",
                     f"above {mem['resident_mb']:.0f} MB resident (models {mem['model_mb']:.0f} MB)"))
    for setting in ("config", "paper") if "synthesis" in r else ():
        s = r["synthesis"][setting]
        st = s["settings"]
        for m in ("vos", "ffs"):
            detail = (f"queue {st['vos']['queue_size']} x {st['num_classes']} cls, draw {st['vos']['sample_from']}/cls"
                      if m == "vos" else f"{st['ffs']['sample_from']} latents, hidden {st['ffs']['hidden']}")
            rows.append((f"synthesis {m} ({setting}, {st['dim']}-d)", _ms(s[m]["median_s"]), detail))
        if "vos_observe" in s:
            rows.append((f"synthesis vos observe ({setting}, {st['dim']}-d)", _ms(s["vos_observe"]["median_s"]),
                         f"{st['vos'].get('step_rows')} rows, covariance {st['vos'].get('covariance')}"))
    if "inference" in r:
        inf = r["inference"]
        for m in ("plain", "ffs"):
            rows.append((f"inference {m}", f"{inf[m]['images_per_s']:.2f} img/s",
                         f"{inf[m]['images']} imgs, n={inf[m]['repeats']}"))
    if "safe" in r:
        sf = r["safe"]
        for m in ("plain", "safe", "safe_fit"):
            rows.append((f"SAFE: inference {m}", _ms(sf[m]["median_s"] / sf[m]["images"]) + "/img",
                         f"{sf[m]['images']} imgs, n={sf[m]['repeats']}"))
        rows.append((f"SAFE: MLP fit ({sf['mlp_fit']['rows']:,} x {sf['mlp_fit']['dim']}, 5 epochs)",
                     _ms(sf["mlp_fit"]["median_s"]), f"n={sf['mlp_fit']['repeats']}"))
    if "metrics" in r:
        mt = r["metrics"]
        rows.append((f"ood_metrics ({mt['n_scores']:,} scores)", _ms(mt["ours"]["median_s"]), "6 metrics, one sort"))
        rows.append(("sklearn AUROC+AUPR-In+AUPR-Out", _ms(mt["sklearn"]["median_s"]),
                     f"max |diff| {mt['max_abs_difference']:.1e}"))
    if "knn" in r:
        kn = r["knn"]
        for b in ("faiss", "sklearn"):
            rows.append((f"knn fit+score, {b} index", _ms(kn[b]["median_s"]),
                         f"{kn['n_train']:,} x {kn['dim']} bank, {kn['n_query']:,} queries, k={kn['k']}"
                         + (f", max |score diff| {kn['max_abs_difference']:.1e}" if b == "sklearn" else "")))
    if "flow_fit" in r:
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
            rows.append((f"flow fit {m}: time to NLL {ff['target_nll']:.1f}",
                         f"{t:.2f} s" if t is not None else "not reached",
                         f"{f['parameters']:,} parameters, {f['steps']} steps in {f['train_seconds']:.1f} s"))
    for row in r.get("memory", {}).get("rows", []):
        rows.append((f"memory n={row['n']}", f"{row['total_peak_rss_over_baseline_mb']:.1f} MB",
                     f"extract +{row['extract_peak_rss_over_baseline_mb']:.1f} MB RSS; tracemalloc extract "
                     f"{row['extract_tracemalloc_peak_mb']:.2f} MB, fit {row['fit_tracemalloc_peak_mb']:.2f} MB"))
    if "fit_memory" in r:
        fm = r["fit_memory"]
        for row in fm["rows"]:
            extra = f", index {row['index_mb']:.1f} MB" if "index_mb" in row else ""
            rows.append((f"fit {row['scorer']} n={row['n']:,} ({fm['dim']}-d)", f"{row['peak_rss_mb']:.0f} MB",
                         f"+{row['peak_over_baseline_mb']:.1f} MB over the {row['baseline_rss_mb']:.0f} MB baseline, "
                         f"{row['fit_seconds']:.1f} s{extra}"))
        for name, ratio in fm["ratios"].items():
            rows.append((f"fit {name}: peak n={max(fm['sizes']):,} / n={min(fm['sizes']):,}",
                         f"{ratio['peak_over_baseline']:.2f}x",
                         f"over baseline; {ratio['peak_rss']:.2f}x in total RSS"
                         + (" (O(N) index by design)" if ratio["grows_with_n_by_design"] else "")))
    if "extraction" in r:
        ex = r["extraction"]
        for row in ex["rows"]:
            rows.append((f"extract {ex['model']}: {row['processes']} proc, {row['workers']} workers",
                         f"{row['images_per_s']:.1f} img/s",
                         f"{row['images']} imgs in {row['seconds']:.1f} s, {row['speedup']:.2f}x one process"))
    width = max([len(a) for a, _, _ in rows] + [20])
    lines = [f"{'measurement':<{width}}  {'median':>14}  detail", "-" * (width + 40)]
    lines += [f"{a:<{width}}  {b:>14}  {c}" for a, b, c in rows]
    lines += ["", "ratios (same run)"]
    for name, t in r["targets"].items():
        value = "-" if t["value"] is None else f"{t['value']:.3f}"
        status = {True: "met", False: "MISSED", None: "n/a"}[t["met"]] if t["target"] else "(no target)"
        spread = ""
        if "rounds" in t:
            q = t["rounds"]
            spread = f"  median of {q['rounds']} rounds, IQR {q['iqr']:.3f}, range {q['min']:.3f}-{q['max']:.3f}"
        lines.append(f"  {name:<40} {value:>8}  target {t['target'] or '-':<7} {status}{spread}")
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
