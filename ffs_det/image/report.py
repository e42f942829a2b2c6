"""Benchmark report: a text table, JSON, CSV, per-set scores (.npz) and PNG plots, all written atomically.

Table and CSV: one row per scorer; for each OOD set its FPR95 (lower is better), AUROC and AUPR-In
(higher is better), in percent.
"""
import csv
import io
import os
import re
from typing import Dict, List

import numpy as np

from ..atomic_io import atomic_open, atomic_write_json, atomic_write_text
from ..density.metrics import roc_curve_points
from .results import BenchmarkResult

__all__ = ["format_table", "write_report", "COLUMNS"]

COLUMNS = (("fpr95", "FPR95"), ("auroc", "AUROC"), ("aupr_in", "AUPR"))


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def format_table(result: BenchmarkResult) -> str:
    """Fixed-width table: rows are scorers, columns each OOD set's FPR95 / AUROC / AUPR (%)."""
    head1 = ["scorer"] + [f"{o} {label}" for o in result.ood_names for _, label in COLUMNS]
    rows: List[List[str]] = []
    notes = []
    for name, res in result.scorers.items():
        if res.status == "ok":
            rows.append([name] + [f"{100 * res.metrics[o][k]:.2f}" for o in result.ood_names for k, _ in COLUMNS])
        else:
            rows.append([name] + ["-"] * (len(head1) - 1))
            notes.append(f"  {name}: {res.status}: {res.message}")
    widths = [max(len(r[i]) for r in [head1] + rows) for i in range(len(head1))]
    line = lambda r: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
    out = [f"ID: {result.id_name}   (FPR95: lower is better; AUROC, AUPR-In: higher is better; %)",
           line(head1), "  ".join("-" * w for w in widths)] + [line(r) for r in rows]
    return "\n".join(out + (["not evaluated:"] + notes if notes else [])) + "\n"


def _csv_text(result: BenchmarkResult) -> str:
    keys = ("fpr95", "auroc", "aupr_in", "aupr_out", "fpr95_ood_positive")
    buf = io.StringIO()
    w = csv.writer(buf)
    metric_columns = [f"{o}_{k}" for o in result.ood_names for k in keys]
    w.writerow(["scorer", "status", "fit_seconds", "score_seconds"] + metric_columns)
    for name, res in result.scorers.items():
        vals = [res.metrics[o][k] if res.status == "ok" else "" for o in result.ood_names for k in keys]
        w.writerow([name, res.status, f"{res.fit_seconds:.3f}", f"{res.score_seconds:.3f}"] + vals)
    return buf.getvalue()


def _save_figure(fig, path: str) -> None:
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=110, bbox_inches="tight")


def _hist_range(id_scores: np.ndarray, all_sets: List[np.ndarray]):
    """An x-range around the ID scores, wide enough to show the OOD bulk next to them: flows give far-out
    samples log-likelihoods thousands of nats low, which would squash every other bin into one."""
    id_lo, id_hi = np.percentile(id_scores, [1, 99])
    span = max(id_hi - id_lo, 1e-6)
    lo = max(min(np.percentile(s, 1) for s in all_sets), id_lo - 2 * span)
    hi = min(max(np.percentile(s, 99.5) for s in all_sets), id_hi + 2 * span)
    return float(lo), float(hi if hi > lo else lo + 1.0)


def _plots(result: BenchmarkResult, output_dir: str) -> List[str]:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    written = []
    ok = result.ok()
    colors = plt.get_cmap("tab20").colors
    for o in result.ood_names:
        fig, ax = plt.subplots(figsize=(5, 5))
        for i, (name, res) in enumerate(ok.items()):
            fpr, tpr, _ = roc_curve_points(res.scores[result.id_name], res.scores[o])
            ax.plot(fpr, tpr, color=colors[i % len(colors)], ls=("-", "--", ":")[i // len(colors) % 3],
                    label=f"{name} (AUROC {100 * res.metrics[o]['auroc']:.1f})")
        ax.plot([0, 1], [0, 1], "k:", lw=0.8)
        ax.set(xlabel=f"FPR ({o} accepted as ID)", ylabel=f"TPR ({result.id_name} accepted)",
               title=f"ROC: {result.id_name} vs {o}")
        ax.legend(fontsize=7, loc="lower right")
        path = os.path.join(output_dir, f"roc_{_safe(o)}.png")
        _save_figure(fig, path)
        plt.close(fig)
        written.append(path)
    for name, res in ok.items():
        fig, ax = plt.subplots(figsize=(6, 3.5))
        lo, hi = _hist_range(res.scores[result.id_name], list(res.scores.values()))
        bins = np.linspace(lo, hi, 60)
        for set_name, s in res.scores.items():
            ax.hist(np.clip(s, lo, hi), bins=bins, density=True, histtype="step", label=set_name)
        ax.set(xlabel=f"{name} score (higher = more in-distribution; values beyond the axis in the edge bins)",
               ylabel="density", title=name)
        ax.legend(fontsize=7)
        path = os.path.join(output_dir, f"hist_{_safe(name)}.png")
        _save_figure(fig, path)
        plt.close(fig)
        written.append(path)
    return written


def write_report(result: BenchmarkResult, output_dir: str, plots: bool = True) -> Dict[str, str]:
    """Write ``results.json``, ``results.csv``, ``table.txt``, ``scores.npz`` and (with ``plots``)
    ``roc_<ood set>.png`` and ``hist_<scorer>.png`` into ``output_dir``; returns ``{kind: path}``."""
    os.makedirs(output_dir, exist_ok=True)
    paths = {"json": os.path.join(output_dir, "results.json"), "csv": os.path.join(output_dir, "results.csv"),
             "table": os.path.join(output_dir, "table.txt"), "scores": os.path.join(output_dir, "scores.npz")}
    atomic_write_json(paths["json"], result.to_json(), indent=2)
    atomic_write_text(paths["csv"], _csv_text(result))
    atomic_write_text(paths["table"], format_table(result))
    arrays = {f"{name}__{s}": v for name, res in result.ok().items() for s, v in res.scores.items()}
    with atomic_open(paths["scores"], "wb") as f:
        np.savez(f, **arrays)
    if plots:
        for i, p in enumerate(_plots(result, output_dir)):
            paths[f"plot{i}"] = p
    return paths
