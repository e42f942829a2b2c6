"""Peak memory of image-level feature extraction + flow fitting as the number of samples grows.

Each size runs in a fresh Python process (peak RSS is a per-process high-water mark), which:

1. builds a :class:`ffs_det.image.small_cnn.SmallCNN` and a dataset of ``n`` procedurally drawn 28x28
   images (each rendered on access from its index, so the dataset itself holds no pixels);
2. extracts penultimate features + logits with :func:`ffs_det.image.extract_to_store` (batches streamed
   into an on-disk feature store);
3. loads the store's features as the image benchmark's evaluation does (one in-memory array) and fits a
   flow on them with :func:`ffs_det.density.flow_training.fit_flow` (a fixed number of steps).

Reported per size: peak RSS above the post-import baseline after each phase (the peak mark is reset
at the baseline where Linux allows it), and tracemalloc's peak of
each phase (Python/numpy allocations only — torch's CPU allocator is not traced).
"""
import json
import os
import resource
import subprocess
import sys
import tempfile
import tracemalloc
from typing import Dict, Sequence

__all__ = ["measure_memory", "worker"]


def _reset_peak_rss() -> bool:
    """Reset the process's peak-RSS mark (Linux: ``5`` into ``/proc/self/clear_refs``); False if unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _max_rss_mb() -> float:
    """Peak RSS since the last reset (``VmHWM``), else since the process started."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: kilobytes


def _current_rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2 ** 20


def worker(n: int, fit_steps: int, seed: int = 0) -> Dict:
    import numpy as np
    import torch
    from torch.utils.data import Dataset

    from ..density.flow_training import FlowConfig, fit_flow
    from ..image.extract import extract_to_store
    from ..image.small_cnn import SmallCNN

    torch.set_num_threads(1)

    class Procedural(Dataset):
        """``n`` 28x28 grayscale images of random smooth blobs, drawn on access from the index."""

        def __len__(self):
            return n

        def __getitem__(self, i):
            rng = np.random.default_rng([seed, i])
            yy, xx = np.mgrid[0:28, 0:28]
            cy, cx, r = rng.uniform(6, 22), rng.uniform(6, 22), rng.uniform(3, 9)
            img = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r)) + 0.1 * rng.random((28, 28))
            return torch.as_tensor(img, dtype=torch.float32)[None], int(i % 10)

    torch.manual_seed(seed)
    model = SmallCNN(num_classes=10)
    baseline = _current_rss_mb()
    out = {"n": n, "baseline_rss_mb": baseline, "peak_reset": _reset_peak_rss()}
    with tempfile.TemporaryDirectory() as tmp:
        tracemalloc.start()
        store = extract_to_store(model, Procedural(), os.path.join(tmp, "store"), batch_size=256, progress=False)
        out["extract_peak_rss_over_baseline_mb"] = _max_rss_mb() - baseline
        out["extract_tracemalloc_peak_mb"] = tracemalloc.get_traced_memory()[1] / 2 ** 20
        tracemalloc.reset_peak()
        features = torch.from_numpy(np.array(store["features"]))
        out["feature_bytes_mb"] = features.numel() * 4 / 2 ** 20
        fit_flow(features, FlowConfig(blocks=4, hidden=512, epochs=1, max_steps=fit_steps, seed=seed))
        out["fit_tracemalloc_peak_mb"] = tracemalloc.get_traced_memory()[1] / 2 ** 20
        tracemalloc.stop()
        out["total_peak_rss_over_baseline_mb"] = _max_rss_mb() - baseline
        del store
    return out


def measure_memory(sizes: Sequence[int], fit_steps: int = 20, seed: int = 0) -> Dict:
    """Run :func:`worker` for each size in its own process; returns the per-size results."""
    rows = []
    for n in sizes:
        code = (f"import json; from ffs_det.benchmark.memory import worker; "
                f"print('RESULT ' + json.dumps(worker({int(n)}, {int(fit_steps)}, {int(seed)})))")
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=900)
        lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
        if proc.returncode != 0 or not lines:
            raise RuntimeError(f"memory worker for n={n} failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}")
        rows.append(json.loads(lines[-1][len("RESULT "):]))
    growth = rows[-1]["total_peak_rss_over_baseline_mb"] - rows[0]["total_peak_rss_over_baseline_mb"]
    return {"sizes": list(sizes), "fit_steps": fit_steps, "rows": rows,
            "peak_rss_growth_mb": growth,
            "feature_bytes_growth_mb": rows[-1]["feature_bytes_mb"] - rows[0]["feature_bytes_mb"],
            "streaming_store": True}
