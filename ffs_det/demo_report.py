"""The demo's summary of its rows (one per finished (method, seed) job, :func:`ffs_det.demo.run_job`): the
statistics over seeds, the markdown of ``summary.md`` and the ROC plots.

The statistics and the table helpers are the shared ones (:mod:`ffs_det.density.report`); this module knows
the demo's layout: which metrics of a row are summarised, the order of the methods, the baseline of the
paired comparison and the fused box scores' comparison with their parts. Everything here works on the rows
alone, so a summary can be rebuilt from ``summary.json`` (the ROC plots also need the kept scores that the
jobs hand back in memory, under :data:`ffs_det.demo.ROC_SCORES`).
"""
from typing import Dict, List, Optional, Tuple

import numpy as np

from .demo import FAR_OOD_SET, ID_SET, METHODS, OOD_SET, OOD_SETS, ROC_SCORES
from .density.report import markdown_table, mean_pm, paired_pm, paired_stats, roc_png, seed_stats, seeds_better

__all__ = ["SUMMARY_METRICS", "SCORE_METRICS", "summarize", "summarize_scores", "format_summary", "format_scores",
           "summary_and_table", "roc_of_seeds", "roc_of_scores"]

# the metrics of the summary: (row key, header, scale to percent, lower is better); near OOD unless "far"
SUMMARY_METRICS = (("fpr95", "FPR95 ↓", 100.0, True), ("auroc", "AUROC ↑", 100.0, False),
                   ("aupr_in", "AUPR-In ↑", 100.0, False), ("far_fpr95", "far FPR95 ↓", 100.0, True),
                   ("far_auroc", "far AUROC ↑", 100.0, False), ("ap50", "ID AP50 ↑", 1.0, False),
                   ("ap", "ID AP ↑", 1.0, False))
# the metrics of every box score: (key, header, lower is better), in %
SCORE_METRICS = (("fpr95", "FPR95 ↓", True), ("auroc", "AUROC ↑", False), ("aupr_in", "AUPR-In ↑", False))
_ROC_AXES = dict(xlabel="FPR (OOD detections kept)", ylabel="TPR (ID detections kept)")


def _method_order(method: str) -> int:
    return list(METHODS).index(method) if method in METHODS else len(METHODS)


def summarize(rows: List[Dict], baseline: str = "vanilla") -> Dict:
    """Mean ± std per method and the paired per-seed comparison of every other method against ``baseline``."""
    # in METHODS order, whatever order jobs ended in (others after them, as first seen)
    methods = sorted(dict.fromkeys(r["method"] for r in rows), key=_method_order)
    by = {m: {r["seed"]: r for r in rows if r["method"] == m} for m in methods}
    out = {"methods": {}, "paired": {}}
    for m in methods:
        seeds = sorted(by[m])
        out["methods"][m] = {"seeds": seeds}
        for key, _, scale, _ in SUMMARY_METRICS:
            out["methods"][m][key] = seed_stats(np.array([by[m][s][key] for s in seeds], dtype=float) * scale)
    for m in (m for m in methods if m != baseline and baseline in by):
        common = sorted(set(by[m]) & set(by[baseline]))
        if common:
            out["paired"][m] = {"seeds": common, **{
                key: paired_stats([by[m][s][key] for s in common], [by[baseline][s][key] for s in common],
                                  lower_better, scale) for key, _, scale, lower_better in SUMMARY_METRICS}}
    return out


def _fused_vs_parts(mine: List[Dict], fused: str, singles: List[str], ood: str) -> Dict:
    """On how many seeds the fused score beats each of its parts on OOD set ``ood``, and its FPR95 minus the
    best single score's of the same seed (points)."""
    metric = lambda name, k: np.array([r["scores"]["metrics"][name][ood][k] for r in mine])  # noqa: E731
    beats = {f"{k} vs {part}": seeds_better(metric(fused, k) - metric(part, k), lower_better)
             for k, _, lower_better in SCORE_METRICS for part in fused.split("+")}
    fpr = lambda name: 100 * metric(name, "fpr95")  # noqa: E731
    gap = fpr(fused) - np.min([fpr(n) for n in singles], axis=0)
    return {"seeds": len(mine), "beats": beats,
            "fpr95_above_best_single": {"per_seed": gap.tolist(), "max": float(gap.max())}}


def summarize_scores(rows: List[Dict]) -> Dict:
    """Per (method, score, OOD set): mean ± std over seeds of FPR95 / AUROC / AUPR-In (%) on the same kept
    detections; per (method, OOD set), on how many seeds each fused score beats each of its parts, and how far
    (FPR95 points, paired per seed) it is from the best single score of its seed."""
    out = {"scores": {}, "fused": {}}
    for m in dict.fromkeys(r["method"] for r in sorted(rows, key=lambda r: _method_order(r["method"]))):
        mine = sorted((r for r in rows if r["method"] == m and "metrics" in r.get("scores", {})),
                      key=lambda r: r["seed"])
        if not mine:
            continue
        # the scores every seed has (a scorer that could not be fitted on one seed is left out)
        names = [n for n in mine[0]["scores"]["metrics"] if all(n in r["scores"]["metrics"] for r in mine)]
        out["scores"][m] = {name: {o: {k: seed_stats([100 * r["scores"]["metrics"][name][o][k] for r in mine])
                                       for k, _, _ in SCORE_METRICS} for o in OOD_SETS} for name in names}
        singles = [n for n in names if "+" not in n]
        for fused in (n for n in names if "+" in n):
            out["fused"].setdefault(m, {})[fused] = {o: _fused_vs_parts(mine, fused, singles, o) for o in OOD_SETS}
    return out


def format_scores(rows: List[Dict], s: Optional[Dict] = None) -> str:
    """Markdown: every score of every method on the same kept detections, and the fused scores vs their parts
    (``s``: :func:`summarize_scores` of ``rows``, computed when not given)."""
    s = s or summarize_scores(rows)
    if not s["scores"]:
        return ""
    cols = [(o, k, h) for o in OOD_SETS for k, h, _ in SCORE_METRICS if k != "aupr_in"]
    lines = ["Every score on the same kept detections (mean ± std over seeds, %; post-hoc scorers fitted on the "
             "pre-activation box features of the ID training set's foreground proposals):", "",
             markdown_table(["method", "score"] + [f"{o} {h}" for o, _, h in cols],
                            [[m, name] + [mean_pm(d[o][k]) for o, k, _ in cols]
                             for m, per in s["scores"].items() for name, d in per.items()])]
    if s["fused"]:
        lines += ["", "Fused scores (calibrated on ID training detections, weighted by separation from background "
                  "proposals; no OOD data): seeds on which the fused score's FPR95 beats each part, and its FPR95 "
                  "minus the best single score's of the same seed (points; max over seeds):", "",
                  markdown_table(["method", "fused", "OOD set", "FPR95 better than each part (seeds)",
                                  "above best single, per seed (max)"],
                                 [_fused_cells(m, fused, o, d) for m, per in s["fused"].items()
                                  for fused, by_set in per.items() for o, d in by_set.items()])]
    return "\n".join(lines)


def _fused_cells(method: str, fused: str, ood: str, d: Dict) -> List[str]:
    gap = d["fpr95_above_best_single"]
    beats = ", ".join(f"{p} {d['beats'][f'fpr95 vs {p}']}/{d['seeds']}" for p in fused.split("+"))
    return [method, fused, ood, beats, " ".join(f"{g:+.1f}" for g in gap["per_seed"]) + f" ({gap['max']:+.1f})"]


def format_summary(rows: List[Dict], summary: Optional[Dict] = None, baseline: str = "vanilla") -> str:
    """Markdown: the mean ± std table, the paired comparison against ``baseline`` and the per-seed rows."""
    summary = summary or summarize(rows, baseline)
    protocols = sorted({str(r.get("protocol", "global-f1")) for r in rows})
    lines = [f"Mean ± std over training seeds (%; the energy's OOD metrics under the {'/'.join(protocols)} protocol "
             f"of eval_ood on {OOD_SET} (near) and {FAR_OOD_SET} (far); ID AP: COCO box AP on the ID test set):", "",
             markdown_table(["method", "seeds"] + [h for _, h, _, _ in SUMMARY_METRICS],
                            [[m, ",".join(map(str, s["seeds"]))] + [mean_pm(s[k]) for k, _, _, _ in SUMMARY_METRICS]
                             for m, s in summary["methods"].items()])]
    if summary["paired"]:
        lines += ["", f"Paired difference to {baseline} (same seed; mean ± std, seeds better / seeds):", "",
                  markdown_table(["method"] + [f"Δ {h}" for _, h, _, _ in SUMMARY_METRICS],
                                 [[m] + [paired_pm(p[k]) for k, _, _, _ in SUMMARY_METRICS]
                                  for m, p in summary["paired"].items()])]
    order = sorted(rows, key=lambda r: (list(summary["methods"]).index(r["method"]), r["seed"]))
    lines += ["", "Per seed:", "",
              markdown_table(["method", "seed", "FPR95", "AUROC", "AUPR-In", "far FPR95", "far AUROC", "ID AP50",
                              "ID AP", "ID dets kept", "OOD dets kept", "far-OOD dets kept", "train s"],
                             [_seed_cells(r) for r in order])]
    return "\n".join(lines)


def _seed_cells(r: Dict) -> List[str]:
    percent = [f"{100 * r[k]:.2f}" for k in ("fpr95", "auroc", "aupr_in", "far_fpr95", "far_auroc")]
    return [r["method"], str(r["seed"]), *percent, f"{r['ap50']:.2f}", f"{r['ap']:.2f}", str(r["n_id"]),
            str(r["n_ood"]), str(r["far_n_ood"]), f"{r['train_seconds']:.0f}"]


def summary_and_table(rows: List[Dict]) -> Tuple[Dict, str]:
    """``summary.json``'s ``summary`` (:func:`summarize` with the box scores' :func:`summarize_scores`) and
    ``summary.md``'s text (without its final newline) of ``rows``."""
    summary = summarize(rows)
    summary["box_scores"] = summarize_scores(rows)
    table = format_summary(rows, summary)
    scores_table = format_scores(rows, summary["box_scores"])
    return summary, table + ("\n\n" + scores_table if scores_table else "")


def roc_of_seeds(rows: List[Dict]) -> bytes:
    """One ROC plot (PNG) of every (method, seed) on the OOD set (energy of the kept detections)."""
    curves = {f"{r['method']} seed {r['seed']}": (r[ROC_SCORES]["energy"][ID_SET], r[ROC_SCORES]["energy"][OOD_SET])
              for r in sorted(rows, key=lambda r: (list(METHODS).index(r["method"]), r["seed"]))}
    return roc_png(curves, f"ROC, energy: {ID_SET} vs {OOD_SET}", **_ROC_AXES)


def roc_of_scores(rows: List[Dict], ood: str) -> bytes:
    """One ROC plot (PNG) of every (method, box score) of the first seed on OOD set ``ood``."""
    seed = min(r["seed"] for r in rows)
    curves = {}
    for r in sorted((r for r in rows if r["seed"] == seed and "metrics" in r.get("scores", {})),
                    key=lambda r: list(METHODS).index(r["method"])):
        box = r[ROC_SCORES]["box"]
        curves.update({f"{r['method']}: {name}": (box[name][ID_SET], box[name][ood]) for name in r["scores"]["metrics"]})
    return roc_png(curves, f"ROC of every score, seed {seed}: {ID_SET} vs {ood}", **_ROC_AXES)
