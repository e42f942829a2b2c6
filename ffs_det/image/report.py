"""Image benchmark report: the table, CSV and plots of :mod:`ffs_det.density.report`, plus JSON and the
per-set scores (.npz), all written atomically.

Table and CSV: one row per (scorer, OOD set): FPR95 (lower is better), AUROC and AUPR (higher is better).
Plots: one ROC per OOD set with every scorer, one histogram per scorer with every set.
"""
import os
from typing import Dict

import numpy as np

from ..atomic_io import atomic_open, atomic_write_bytes, atomic_write_json, atomic_write_text
from ..density.report import Comparison, comparison_csv, comparison_table, hist_png, roc_png, \
    safe_name
from .results import BenchmarkResult

__all__ = ["format_benchmark_table", "write_benchmark_report", "comparison_of"]


def comparison_of(result: BenchmarkResult) -> Comparison:
    """The scorers that ran, as a :class:`~ffs_det.density.report.Comparison` (with the metrics the
    benchmark computed)."""
    ok = result.ok()
    return Comparison(result.id_name, {name: res.scores for name, res in ok.items()},
                      {name: res.metrics for name, res in ok.items()})


def format_benchmark_table(result: BenchmarkResult) -> str:
    """Fixed-width table, one row per (scorer, OOD set), and the scorers that did not run."""
    notes = [f"  {name}: {res.status}: {res.message}" for name, res in result.scorers.items() if res.status != "ok"]
    table = comparison_table(comparison_of(result), f"ID: {result.id_name}   (FPR95: lower is better; AUROC, "
                             "AUPR: higher is better; %)", method_label="scorer")
    return table + ("\n".join(["not evaluated:"] + notes) + "\n" if notes else "")


def _csv(result: BenchmarkResult) -> str:
    extra = {name: {"status": res.status, "fit_seconds": f"{res.fit_seconds:.3f}",
                    "score_seconds": f"{res.score_seconds:.3f}"} for name, res in result.scorers.items()}
    return comparison_csv(comparison_of(result), "scorer", extra, ["status", "fit_seconds", "score_seconds"])


def _plots(result: BenchmarkResult) -> Dict[str, bytes]:
    comparison = comparison_of(result)
    files = {}
    for o in result.ood_names:
        curves = {m: (id_s, ood_s) for m, _, id_s, ood_s, _ in comparison.pairs(ood=o)}
        if curves:
            files[f"roc_{safe_name(o)}.png"] = roc_png(curves, f"ROC: {result.id_name} vs {o}",
                                                       xlabel=f"FPR ({o} accepted as ID)",
                                                       ylabel=f"TPR ({result.id_name} accepted)")
    for name in comparison.methods:
        files[f"hist_{safe_name(name)}.png"] = hist_png(
            comparison.scores[name], name, f"{name} score (higher = more in-distribution; values beyond the axis "
                                           "in the edge bins)")
    return files


def write_benchmark_report(result: BenchmarkResult, output_dir: str, plots: bool = True) -> Dict[str, str]:
    """Write ``results.json``, ``results.csv``, ``table.txt``, ``scores.npz`` and (with ``plots``)
    ``roc_<ood set>.png`` and ``hist_<scorer>.png`` into ``output_dir``; returns ``{kind: path}``."""
    os.makedirs(output_dir, exist_ok=True)
    paths = {"json": os.path.join(output_dir, "results.json"), "csv": os.path.join(output_dir, "results.csv"),
             "table": os.path.join(output_dir, "table.txt"), "scores": os.path.join(output_dir, "scores.npz")}
    atomic_write_json(paths["json"], result.to_json(), indent=2)
    atomic_write_text(paths["csv"], _csv(result))
    atomic_write_text(paths["table"], format_benchmark_table(result))
    arrays = {f"{name}__{s}": v for name, res in result.ok().items() for s, v in res.scores.items()}
    with atomic_open(paths["scores"], "wb") as f:
        np.savez(f, **arrays)
    if plots:
        for i, (fname, data) in enumerate(_plots(result).items()):
            paths[f"plot{i}"] = os.path.join(output_dir, fname)
            atomic_write_bytes(paths[f"plot{i}"], data)
    return paths
