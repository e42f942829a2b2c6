"""Where the synthetic outliers lie: a 2-D PCA picture of ID box features, synthetic outliers and real OOD
box features.

The projection is fitted on the ID box features only (kept ID detections), so the picture shows the other
two sets in the coordinates of the inlier distribution. The numbers beside it (share of entries < 0 and
> 0, median norm) say whether the outliers lie in the support of the real features.
"""
import io
from typing import Dict, Optional

import numpy as np

__all__ = ["feature_summary", "projection_png"]


def feature_summary(features: np.ndarray) -> Dict[str, float]:
    """Share of negative and of positive entries, and the median L2 norm, of ``(N, D)`` features."""
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2 or f.shape[0] == 0:
        return {"n": 0, "negative_frac": float("nan"), "active_frac": float("nan"), "median_norm": float("nan")}
    return {"n": int(f.shape[0]), "negative_frac": float((f < 0).mean()), "active_frac": float((f > 0).mean()),
            "median_norm": float(np.median(np.linalg.norm(f, axis=1)))}


def projection_png(id_features: np.ndarray, ood_features: Optional[np.ndarray] = None,
                   synthetic: Optional[np.ndarray] = None, title: str = "") -> bytes:
    """PNG bytes of the 2-D PCA (fitted on ``id_features``) of the three sets; empty or None sets are left out."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from sklearn.decomposition import PCA

    id_features = np.asarray(id_features, dtype=np.float64)
    if id_features.ndim != 2 or id_features.shape[0] < 3:
        raise ValueError(f"need at least 3 ID box features of shape (N, D) to fit the projection, got "
                         f"{id_features.shape}")
    pca = PCA(n_components=2).fit(id_features)
    fig = Figure(figsize=(5.5, 4.8))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    sets = [("ID box features", id_features, "tab:blue", 8), ("real OOD box features", ood_features, "tab:red", 8),
            ("synthetic outliers", synthetic, "black", 14)]
    for label, feats, color, size in sets:
        if feats is None or len(feats) == 0:
            continue
        feats = np.asarray(feats, dtype=np.float64)
        xy = pca.transform(feats)
        s = feature_summary(feats)
        cross = color == "black"  # a cross is drawn by its lines: it needs a line width, a dot none
        ax.scatter(xy[:, 0], xy[:, 1], s=size, alpha=0.7 if cross else 0.5, color=color,
                   linewidths=0.8 if cross else 0, marker="x" if cross else "o",
                   label=f"{label} (n={s['n']}, <0: {100 * s['negative_frac']:.0f}%, "
                         f">0: {100 * s['active_frac']:.0f}%, |f| {s['median_norm']:.1f})")
    ratio = 100 * pca.explained_variance_ratio_
    ax.set(xlabel=f"PC 1 of ID features ({ratio[0]:.0f}% var.)", ylabel=f"PC 2 ({ratio[1]:.0f}% var.)",
           title=title or "box features, PCA fitted on ID")
    ax.legend(fontsize=6.5, loc="best")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    return buf.getvalue()
