"""The one ID-vs-OOD report: metrics of ``{method: {set: scores}}`` and their table, CSV and plots, and the
statistics of a metric over training seeds (mean ± std, paired per-seed differences) with their markdown.

Protocols decide what the scores are and live with their data: the detector's records (kept detections
above a score threshold, :mod:`ffs_det.evaluation.ood_report`), the image benchmark's feature stores
(:mod:`ffs_det.image.evaluate`), the demo's seeds. They hand this module a :class:`Comparison` and get back
text and file contents (bytes); where the files go is theirs to decide (atomically). Convention: higher
scores = more in-distribution; metrics by :func:`ffs_det.density.metrics.ood_metrics`.
"""
import csv
import io
import re
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from .metrics import ood_metrics, roc_curve_points

__all__ = ["Comparison", "compare", "METRIC_KEYS", "FEW_SAMPLES", "comparison_table", "comparison_csv", "roc_png",
           "hist_png", "safe_name", "seed_stats", "paired_stats", "seeds_better", "mean_pm", "paired_pm",
           "markdown_table"]

METRIC_KEYS = ("fpr95", "auroc", "aupr_in", "aupr_out", "fpr95_ood_positive")
# below this many samples on either side, the table gives FPR95's binomial standard error
FEW_SAMPLES = 100


@dataclass
class Comparison:
    """Scores of one ID set and several OOD sets under several methods, and the metrics of each pair."""

    id_name: str
    scores: Dict[str, Dict[str, np.ndarray]]  # method -> set name (the ID set and each OOD set) -> scores
    metrics: Dict[str, Dict[str, dict]] = field(default_factory=dict)  # method -> OOD set -> ood_metrics
    fpr_point: str = "first"  # where FPR95 is read (ood_metrics' fpr_point)

    @property
    def methods(self) -> List[str]:
        return list(self.scores)

    @property
    def ood_names(self) -> List[str]:
        names = []
        for sets in self.scores.values():
            names += [s for s in sets if s != self.id_name and s not in names]
        return names

    def pairs(self, method: Optional[str] = None, ood: Optional[str] = None):
        """``(method, OOD set, ID scores, OOD scores, metrics)`` of every pair, optionally of one method or set."""
        for m, sets in self.scores.items():
            for o in sets:
                if o != self.id_name and (method in (None, m)) and (ood in (None, o)):
                    yield m, o, sets[self.id_name], sets[o], self.metrics[m][o]


def compare(scores: Mapping[str, Mapping[str, np.ndarray]], id_name: str, fpr_point: str = "first") -> Comparison:
    """A :class:`Comparison` with the metrics of every (method, OOD set); each method must score ``id_name``.
    ``fpr_point`` says where FPR95 is read (:func:`~ffs_det.density.metrics.ood_metrics`)."""
    if not scores:
        raise ValueError("nothing to compare: give {method: {set: scores}}")
    out = Comparison(id_name, {m: dict(sets) for m, sets in scores.items()}, fpr_point=fpr_point)
    for method, sets in out.scores.items():
        if id_name not in sets:
            raise ValueError(f"{method}: no scores of the ID set {id_name!r} (it has {sorted(sets)})")
        if len(sets) < 2:
            raise ValueError(f"{method}: no OOD set to compare {id_name!r} with")
        out.metrics[method] = {o: ood_metrics(sets[id_name], s, fpr_point=fpr_point)
                               for o, s in sets.items() if o != id_name}
    return out


def comparison_table(comparison: Comparison, title: str = "", method_label: str = "method",
                 unit: str = "samples") -> str:
    """Fixed-width table, one row per (method, OOD set): sample counts, FPR95, AUROC, AUPR-In/Out in %,
    and a note with FPR95's binomial standard error for pairs with few samples."""
    head = [method_label, "OOD set", "n_id", "n_ood", "FPR95%", "AUROC%", "AUPR-In%", "AUPR-Out%"]
    rows, notes = [], []
    for m, o, _, _, r in comparison.pairs():
        rows.append([m, o, str(r["n_id"]), str(r["n_ood"])] + [f"{100 * r[k]:.2f}" for k in
                                                               ("fpr95", "auroc", "aupr_in", "aupr_out")])
        if min(r["n_id"], r["n_ood"]) < FEW_SAMPLES:
            se = 100 * np.sqrt(r["fpr95"] * (1 - r["fpr95"]) / r["n_ood"])
            coarse = f" (and is coarse on so few ID {unit.split()[0]})" if r["n_id"] < FEW_SAMPLES else ""
            notes.append(f"note: {m} on {o}: only {r['n_id']} ID and {r['n_ood']} OOD {unit}; FPR95 has a "
                         f"binomial standard error of {se:.1f} points{coarse}")
    widths = [max(len(r[i]) for r in [head] + rows) for i in range(len(head))]
    line = lambda r: "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
    lines = ([title] if title else []) + [line(head), "  ".join("-" * w for w in widths)] + [line(r) for r in rows]
    return "\n".join(lines + notes) + "\n"


def comparison_csv(comparison: Comparison, method_label: str = "method", extra: Optional[Mapping[str, dict]] = None,
             extra_columns: Sequence[str] = ()) -> str:
    """CSV, one row per (method, OOD set): ``method_label, ood_set, <extra_columns>, n_id, n_ood`` and the
    metrics. ``extra[method]`` gives the extra columns' values; a method in ``extra`` but not in the
    comparison (e.g. a scorer that failed) gets one row with empty metrics."""
    extra = extra or {}
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow([method_label, "ood_set", *extra_columns, "n_id", "n_ood", *METRIC_KEYS])
    for m, o, _, _, r in comparison.pairs():
        w.writerow([m, o, *[extra.get(m, {}).get(c, "") for c in extra_columns], r["n_id"], r["n_ood"],
                    *[r[k] for k in METRIC_KEYS]])
    for m, values in extra.items():
        if m not in comparison.scores:
            w.writerow([m, "", *[values.get(c, "") for c in extra_columns]] + [""] * (2 + len(METRIC_KEYS)))
    return buf.getvalue()


def seed_stats(values: Sequence[float]) -> dict:
    """``{"mean", "std", "per_seed"}`` of one metric over seeds; the std is the sample one (ddof 1), 0 for
    a single seed."""
    v = np.asarray(values, dtype=float)
    return {"mean": float(v.mean()), "std": float(np.std(v, ddof=1)) if len(v) > 1 else 0.0, "per_seed": v.tolist()}


def seeds_better(diff: Sequence[float], lower_better: bool) -> int:
    """How many per-seed differences (method minus baseline) favour the method."""
    d = np.asarray(diff, dtype=float)
    return int((d < 0).sum() if lower_better else (d > 0).sum())


def paired_stats(values: Sequence[float], baseline: Sequence[float], lower_better: bool, scale: float = 1.0) -> dict:
    """The paired comparison of a method's per-seed ``values`` with the ``baseline``'s of the same seeds:
    :func:`seed_stats` of ``(values - baseline) * scale``, ``seeds_better`` and ``seeds``."""
    diff = (np.asarray(values, dtype=float) - np.asarray(baseline, dtype=float)) * scale
    return dict(seed_stats(diff), seeds_better=seeds_better(diff, lower_better), seeds=len(diff))


def mean_pm(stats: Mapping) -> str:
    """``mean ± std`` of :func:`seed_stats` (the mean alone for one seed), two decimals."""
    return f"{stats['mean']:.2f} ± {stats['std']:.2f}" if len(stats["per_seed"]) > 1 else f"{stats['mean']:.2f}"


def paired_pm(stats: Mapping) -> str:
    """``+mean ± std (seeds better/seeds)`` of :func:`paired_stats`, two decimals."""
    return f"{stats['mean']:+.2f} ± {stats['std']:.2f} ({stats['seeds_better']}/{stats['seeds']})"


def markdown_table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A markdown table: the header, its rule and one line per row of cells."""
    line = lambda cells: "| " + " | ".join(cells) + " |"
    return "\n".join([line(head), "|" + "---|" * len(head)] + [line(r) for r in rows])


def safe_name(name: str) -> str:
    """``name`` usable as (part of) a file name."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._") or "set"


def _png(fig) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return buf.getvalue()


_STYLES = ("-", "--", ":", "-.")


def roc_png(curves: Mapping[str, Tuple[np.ndarray, np.ndarray]], title: str,
            xlabel: str = "FPR (OOD accepted as ID)", ylabel: str = "TPR (ID accepted)") -> bytes:
    """One ROC plot (PNG) with a curve per ``label: (ID scores, OOD scores)``, AUROC in the legend."""
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    colors = colormaps["tab10"].colors
    fig = Figure(figsize=(5, 4.8))
    ax = fig.add_subplot()
    for i, (label, (id_scores, ood_scores)) in enumerate(curves.items()):
        fpr, tpr, _ = roc_curve_points(id_scores, ood_scores)
        auroc = ood_metrics(id_scores, ood_scores)["auroc"]
        ax.plot(fpr, tpr, color=colors[i % len(colors)], ls=_STYLES[i // len(colors) % len(_STYLES)],
                label=f"{label} (AUROC {100 * auroc:.1f}%)")
    ax.plot([0, 1], [0, 1], color="0.7", lw=0.8, ls="--")
    ax.axhline(0.95, color="0.5", lw=0.8, ls=":")
    ax.set(xlabel=xlabel, ylabel=ylabel, xlim=(0, 1), ylim=(0, 1.01), title=title)
    ax.legend(loc="lower right", fontsize=7)
    return _png(fig)


def _hist_range(id_scores: np.ndarray, all_sets: List[np.ndarray]) -> Tuple[float, float]:
    """An x-range around the ID scores, wide enough to show the OOD bulk next to them: flows give far-out
    samples log-likelihoods thousands of nats low, which would squash every other bin into one."""
    id_lo, id_hi = np.percentile(id_scores, [1, 99])
    span = max(id_hi - id_lo, 1e-6)
    lo = max(min(np.percentile(s, 1) for s in all_sets), id_lo - 2 * span)
    hi = min(max(np.percentile(s, 99.5) for s in all_sets), id_hi + 2 * span)
    return float(lo), float(hi if hi > lo else lo + 1.0)


def hist_png(sets: Mapping[str, np.ndarray], title: str, xlabel: str, cut: Optional[float] = None,
             cut_label: str = "95% of ID kept") -> bytes:
    """Density histograms (PNG) of ``{label: scores}`` (the first is the ID set, which sets the x-range;
    values beyond it go to the edge bins), with a vertical line at ``cut`` when given."""
    from matplotlib.figure import Figure

    values = [np.asarray(v, dtype=np.float64) for v in sets.values()]
    lo, hi = _hist_range(values[0], values)
    bins = np.linspace(lo, hi, 60)
    fig = Figure(figsize=(6, 3.8))
    ax = fig.add_subplot()
    for label, v in zip(sets, values):
        ax.hist(np.clip(v, lo, hi), bins=bins, density=True, histtype="step", lw=1.3, label=label)
    if cut is not None:
        ax.axvline(cut, color="k", lw=0.8, ls="--", label=cut_label)
    ax.set(xlabel=xlabel, ylabel="density", title=title)
    ax.legend(fontsize=7)
    return _png(fig)
