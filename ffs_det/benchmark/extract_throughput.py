"""Feature-extraction throughput (images/s) of ``tools/image_ood.py extract`` in 1 or more processes.

Each configuration runs ``processes`` fresh Python processes, one torch thread each, that extract the
``photos`` set (``n`` crops of the bundled colour photos, ImageNet preprocessing: resize 256, centre crop 224)
with a randomly initialised torchvision classifier (the weights do not change the cost) through
:func:`ffs_det.image.pipeline.extract_set` — with ``shard=(i, processes)`` when there are several, so together
they write one sharded store. The processes load their model, then wait at a barrier so that the timed
part (building the set, the forward passes, writing the store) starts together; throughput is
``n / (last end - first start)``. ``workers`` is the DataLoader worker count of each process.
"""
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Callable, Dict, Optional, Sequence, Tuple

__all__ = ["CONFIGS", "extract_worker", "measure_extraction"]

# (processes, DataLoader workers per process)
CONFIGS: Tuple[Tuple[int, int], ...] = ((1, 0), (2, 0), (1, 1), (1, 2))


def extract_worker(out: str, n: int, model: str, processes: int, index: int, workers: int, batch_size: int,
                   barrier: str) -> Dict:
    import torch

    from ..image.feature_store import FeatureStore
    from ..image.pipeline import ModelSpec, SetSpec, extract_set, load_classifier

    torch.set_num_threads(1)
    spec = ModelSpec(model)
    net, prep = load_classifier(spec)
    open(os.path.join(barrier, f"ready_{index}"), "w").close()
    deadline = time.time() + 600
    while len(os.listdir(barrier)) < processes:
        if time.time() > deadline:
            raise RuntimeError("the other extraction processes never became ready")
        time.sleep(0.01)
    start = time.time()
    store = extract_set(net, prep, spec, SetSpec("photos", None, 0, int(n)), out, batch_size=batch_size,
                        num_workers=workers, progress=False, log=lambda m: None,
                        shard=(index, processes) if processes > 1 else None)
    end = time.time()
    assert isinstance(store, FeatureStore)
    return {"index": index, "rows": len(store), "start": start, "end": end}


def measure_extraction(n: int = 256, model: str = "mobilenet_v2", configs: Sequence[Tuple[int, int]] = CONFIGS,
                       batch_size: int = 32, work_dir: Optional[str] = None,
                       log: Callable[[str], None] = print) -> Dict:
    """Images/s of each ``(processes, workers)`` configuration; ratios against one process without workers."""
    from ..image.feature_store import FeatureStore

    rows = []
    for processes, workers in configs:
        with tempfile.TemporaryDirectory(prefix="ffs_det_extract_", dir=work_dir) as tmp:
            out, barrier = os.path.join(tmp, "store"), os.path.join(tmp, "barrier")
            os.makedirs(barrier)
            code = ("import json, sys; from ffs_det.benchmark.extract_throughput import extract_worker; "
                    "print('RESULT ' + json.dumps(extract_worker(*json.loads(sys.argv[1]))))")
            env = {**os.environ, "OMP_NUM_THREADS": "1"}
            procs = [subprocess.Popen([sys.executable, "-c", code,
                                       json.dumps([out, n, model, processes, i, workers, batch_size, barrier])],
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
                     for i in range(processes)]
            results = []
            for p in procs:
                stdout, stderr = p.communicate(timeout=3600)
                lines = [line for line in stdout.splitlines() if line.startswith("RESULT ")]
                if p.returncode != 0 or not lines:
                    raise RuntimeError(f"extraction worker failed (exit {p.returncode}):\n{stderr[-2000:]}")
                results.append(json.loads(lines[-1][len("RESULT "):]))
            if len(FeatureStore(out)) != n:
                raise RuntimeError(f"the extracted store at {out} does not hold {n} rows")
        seconds = max(r["end"] for r in results) - min(r["start"] for r in results)
        rows.append({"processes": processes, "workers": workers, "images": n, "seconds": seconds,
                     "images_per_s": n / seconds})
        log(f"extraction: {processes} process(es), {workers} DataLoader worker(s): {n / seconds:.1f} img/s")
    base = next((r for r in rows if r["processes"] == 1 and r["workers"] == 0), rows[0])
    for r in rows:
        r["speedup"] = r["images_per_s"] / base["images_per_s"]
    return {"model": model, "images": n, "batch_size": batch_size, "torch_threads_per_process": 1,
            "cpu_count": os.cpu_count(), "rows": rows}
