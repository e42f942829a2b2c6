"""Image benchmark report: the table, CSV and plots of :mod:`ffs_det.density.report`, plus JSON and the
per-set scores (.npz).

The report is rendered in memory and the output folder written as one generation
(:func:`ffs_det.atomic_io.replace_folder_keeping`, marked :data:`REPORT_MARKER`): a rerun leaves no plot of
the previous one. The folder ``work`` (feature stores of ``run``) and other folders the caller names are
kept as they are; a folder holding anything else is refused before any work (:func:`check_report_folder`).

Table and CSV: one row per (scorer, OOD set): FPR95 (lower is better), AUROC and AUPR (higher is better).
Plots: one ROC per OOD set with every scorer, one histogram per scorer with every set.
"""
import io
import os
from typing import Dict, Mapping, Optional, Sequence

import numpy as np

from ..atomic_io import check_replaceable_tree, json_bytes, replace_folder_keeping
from ..density.report import Comparison, comparison_csv, comparison_table, hist_png, roc_png, \
    safe_name
from .feature_store import is_store_folder
from .results import BenchmarkResult

__all__ = ["format_benchmark_table", "write_benchmark_report", "comparison_of", "report_files", "check_report_folder",
           "REPORT_MARKER", "WORK"]

REPORT_MARKER = ".ffs_det_image_report"  # lists the files of the report (and the kept folders)
WORK = "work"  # the feature stores (and weights) of ``run`` / the fashion benchmark: always kept


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


def report_files(result: BenchmarkResult, plots: bool = True) -> Dict[str, bytes]:
    """The report rendered in memory: ``{file name: contents}``."""
    files = {"results.json": json_bytes(result.to_json(), indent=2),
             "results.csv": _csv(result).encode(), "table.txt": format_benchmark_table(result).encode()}
    arrays = {f"{name}__{s}": v for name, res in result.ok().items() for s, v in res.scores.items()}
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    files["scores.npz"] = buf.getvalue()
    if plots:
        files.update(_plots(result))
    return files


def _keep(keep: Sequence[str]) -> list:
    return [WORK] + [k for k in keep if k != WORK]


def check_report_folder(output_dir: str, keep: Sequence[str] = ()) -> None:
    """ValueError unless a report may be written to ``output_dir`` (call it before any work): absent, empty,
    or holding only an earlier report, ``work`` and the entries ``keep``."""
    if is_store_folder(output_dir):
        raise ValueError(f"output folder {output_dir} holds a feature store; write the report to another folder "
                         "(nothing was written)")
    check_replaceable_tree(output_dir, REPORT_MARKER, _keep(keep), tool="image_ood")
    for k in _keep(keep):
        p = os.path.join(output_dir, k)
        if os.path.lexists(p) and not os.path.isdir(p):
            raise ValueError(f"output folder {output_dir}: {p} exists and is not a folder (the work folder of "
                             f"feature stores goes there); remove it or choose another output folder")


def write_benchmark_report(result: BenchmarkResult, output_dir: str, plots: bool = True,
                           extra_files: Optional[Mapping[str, bytes]] = None,
                           keep: Sequence[str] = ()) -> Dict[str, str]:
    """Write ``results.json``, ``results.csv``, ``table.txt``, ``scores.npz``, (with ``plots``)
    ``roc_<ood set>.png`` and ``hist_<scorer>.png`` and ``extra_files`` as the whole content of
    ``output_dir``, keeping ``work`` and the entries ``keep``; returns ``{kind: path}``."""
    check_report_folder(output_dir, keep)
    report = report_files(result, plots=False)
    files = dict(report)
    plot_files = _plots(result) if plots else {}
    files.update(plot_files)
    files.update(extra_files or {})
    replace_folder_keeping(output_dir, files, REPORT_MARKER, keep=_keep(keep), tool="image_ood")
    kinds = {"results.json": "json", "results.csv": "csv", "table.txt": "table", "scores.npz": "scores"}
    paths = {kinds[f]: os.path.join(output_dir, f) for f in report}
    for i, fname in enumerate(plot_files):
        paths[f"plot{i}"] = os.path.join(output_dir, fname)
    return paths
