"""Peak memory of fitting each scorer from a feature store on disk, as the number of training features grows.

For each size ``N`` a synthetic store of ``N`` float32 features (``dim`` wide, ``classes`` Gaussian classes)
and int64 labels is written with :class:`~ffs_det.image.feature_store.FeatureStoreWriter` (``N = 10^6`` at
512-d is 2 GB on disk; the folder is deleted afterwards). Each (size, scorer) then fits in a fresh Python
process (peak RSS is a per-process high-water mark) from ``store.rows("features")`` and
``store.rows("labels")``, as ``tools/image_ood.py evaluate --stream`` does:

* baseline: resident memory after the imports, the store opened and the scorer built;
* peak: the process's peak RSS during ``fit`` (the mark is reset at the baseline where Linux allows it).

Flow-based scorers train a fixed small number of steps (memory, not accuracy, is measured); the statistics
of the others are computed in full. ``knn`` is O(N) by nature (its index holds the bank); it is measured
with the exact index and a compressed one (``SQ8``) and reported with its index bytes, outside the
flatness check.
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Callable, Dict, Optional, Sequence

from .memory import _current_rss_mb, _max_rss_mb, _reset_peak_rss

__all__ = ["FIT_SCORERS", "write_synthetic_store", "fit_worker", "measure_fit_memory"]

# name -> (registered scorer, options); "{steps}" is the step budget of the flow-based ones
FIT_SCORERS = {
    "mahalanobis": ("mahalanobis", {}),
    "gmm": ("gmm", {"covariance": "full"}),
    "vim": ("vim", {}),
    "react": ("react", {}),
    "heat": ("heat", {"epochs": 1, "max_steps": "{steps}"}),
    "fde": ("fde", {"epochs": 1, "max_steps": "{steps}"}),
    "residual_flow": ("residual_flow", {"epochs": 1, "max_steps": "{steps}"}),
    "lid": ("lid", {"epochs": 1, "max_steps": "{steps}", "calibration_rows": 256}),
    "likelihood_ratio": ("likelihood_ratio", {"epochs": 1, "max_steps": "{steps}"}),
    "knn": ("knn", {}),
    "knn_sq8": ("knn", {"index": "SQ8"}),
}
O_N = ("knn", "knn_sq8")  # memory grows with N by design


def write_synthetic_store(path: str, n: int, dim: int = 512, classes: int = 10, seed: int = 0,
                          chunk: int = 65536) -> None:
    """A store of ``n`` features (class means ~ N(0, 9 I), unit noise) and labels, written chunk by chunk."""
    import numpy as np

    from ..image.feature_store import FeatureStoreWriter

    rng = np.random.default_rng(seed)
    means = (3.0 * rng.standard_normal((classes, dim))).astype(np.float32)
    columns = {"features": ((dim,), "float32"), "labels": ((), "int64")}
    with FeatureStoreWriter(path, n, columns, {"synthetic": {"dim": dim, "classes": classes, "seed": seed}}) as w:
        for start in range(0, n, chunk):
            m = min(chunk, n - start)
            y = rng.integers(0, classes, m)
            x = means[y] + rng.standard_normal((m, dim), dtype=np.float32)
            w.append(features=x, labels=y)


def fit_worker(store_path: str, scorer: str, options: Dict, seed: int = 0) -> Dict:
    """Fit one scorer from the store's row sources in this process; its baseline and peak RSS (MB)."""
    import torch

    from ..density.scorers import SCORERS, build_scorer
    from ..image.feature_store import FeatureStore

    torch.set_num_threads(1)
    store = FeatureStore(store_path)
    cls = SCORERS[scorer]
    torch.manual_seed(seed)
    head = (torch.nn.Linear(store.dim("features"), int(store.info["synthetic"]["classes"])).double()
            if cls.uses_head != "none" else None)
    model = build_scorer(scorer, **options)
    x, y = store.rows("features"), store.rows("labels") if cls.uses_labels else None
    baseline = _current_rss_mb()
    out = {"n": len(store), "peak_reset": _reset_peak_rss(), "baseline_rss_mb": baseline}
    t0 = time.perf_counter()
    model.fit(x, y, head=head)
    out["fit_seconds"] = time.perf_counter() - t0
    out["peak_rss_mb"] = _max_rss_mb()
    out["peak_over_baseline_mb"] = out["peak_rss_mb"] - baseline
    if hasattr(model, "index_bytes_"):
        out["index_mb"] = model.index_bytes_ / 2 ** 20
    return out


def _options(options: Dict, steps: int) -> Dict:
    return {k: (steps if v == "{steps}" else v) for k, v in options.items()}


def measure_fit_memory(sizes: Sequence[int], dim: int = 512, classes: int = 10, steps: int = 20,
                       scorers: Optional[Sequence[str]] = None, seed: int = 0, work_dir: Optional[str] = None,
                       log: Callable[[str], None] = print) -> Dict:
    """Fit peak RSS of each scorer at each size (see the module docstring). Per scorer the ratio of the peak
    over baseline at the largest size to that at the smallest; ``flat`` when it is <= 1.5 for every scorer
    whose memory does not grow with ``N`` by design."""
    names = list(FIT_SCORERS) if scorers is None else list(scorers)
    unknown = [s for s in names if s not in FIT_SCORERS]
    if unknown:
        raise ValueError(f"unknown fit-memory scorer(s) {unknown}; choose from {list(FIT_SCORERS)}")
    rows = []
    tmp = tempfile.mkdtemp(prefix="ffs_det_fitmem_", dir=work_dir)
    try:
        for n in sizes:
            path = os.path.join(tmp, f"store_{n}")
            t0 = time.perf_counter()
            write_synthetic_store(path, int(n), dim, classes, seed)
            log(f"fit memory: store of {n:,} x {dim} written in {time.perf_counter() - t0:.1f} s")
            for name in names:
                scorer, options = FIT_SCORERS[name]
                args = json.dumps([path, scorer, _options(options, steps), seed])
                code = ("import json, sys; from ffs_det.benchmark.fit_memory import fit_worker; "
                        "print('RESULT ' + json.dumps(fit_worker(*json.loads(sys.argv[1]))))")
                proc = subprocess.run([sys.executable, "-c", code, args], capture_output=True, text=True,
                                      timeout=3600)
                lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
                if proc.returncode != 0 or not lines:
                    raise RuntimeError(f"fit-memory worker {name} at n={n} failed (exit {proc.returncode}):\n"
                                       f"{proc.stderr[-2000:]}")
                row = {"scorer": name, **json.loads(lines[-1][len("RESULT "):])}
                rows.append(row)
                log(f"fit memory: {name:<16} n={n:>9,}  peak {row['peak_rss_mb']:7.1f} MB "
                    f"(+{row['peak_over_baseline_mb']:.1f} over baseline) in {row['fit_seconds']:.1f} s")
            shutil.rmtree(path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    ratios = {}
    for name in names:
        mine = {r["n"]: r for r in rows if r["scorer"] == name}
        small, large = mine[min(mine)], mine[max(mine)]
        ratios[name] = {
            "peak_over_baseline": large["peak_over_baseline_mb"] / max(small["peak_over_baseline_mb"], 1e-9),
            "peak_rss": large["peak_rss_mb"] / small["peak_rss_mb"],
            "grows_with_n_by_design": name in O_N}
    checked = [r["peak_over_baseline"] for k, r in ratios.items() if k not in O_N]
    return {"sizes": [int(n) for n in sizes], "dim": dim, "classes": classes, "flow_steps": steps,
            "disk_mb_largest": max(sizes) * (dim * 4 + 8) / 2 ** 20, "rows": rows, "ratios": ratios,
            "max_ratio_streaming": max(checked) if checked else None}
