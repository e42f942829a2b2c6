"""tools/benchmark.py --quick: runs end to end and writes a complete, valid JSON (no timing assertions)."""
import json
import math
import os
import subprocess
import sys
from repo_paths import REPO_ROOT as REPO


def _finite_positive(x):
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def test_quick_benchmark_writes_complete_json(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, os.path.join(REPO, "tools", "benchmark.py"), "--quick", "--threads", "1",
                           "--output", str(out)], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "ratios (same run)" in proc.stdout
    r = json.loads(out.read_text())
    assert r["mode"] == "quick" and r["device"] == "cpu"
    for mode in ("plain", "vos", "ffs"):
        assert _finite_positive(r["training_step"][mode]["median_s"])
    assert "loss_energy_margin" in r["training_step"]["ffs"]["losses"]  # synthesis was active
    assert "loss_energy_margin" in r["training_step"]["vos"]["losses"]
    assert "loss_energy_margin" not in r["training_step"]["plain"]["losses"]
    for setting in ("config", "paper"):
        s = r["synthesis"][setting]
        assert _finite_positive(s["ffs"]["median_s"]) and _finite_positive(s["vos"]["median_s"])
        assert s["vos"]["output_shape"] == [s["settings"]["num_classes"] * s["settings"]["vos"]["select"],
                                            s["settings"]["dim"]]
    assert r["synthesis"]["paper"]["settings"]["dim"] == 1024
    for mode in ("plain", "ffs"):
        assert _finite_positive(r["inference"][mode]["images_per_s"])
    assert r["metrics"]["max_abs_difference"] < 1e-9
    assert _finite_positive(r["metrics"]["ours"]["median_s"]) and _finite_positive(r["metrics"]["sklearn"]["median_s"])
    for name in ("ours", "fde_glow"):
        assert r["flow_fit"][name]["curve"] and r["flow_fit"][name]["steps"] > 0
    assert len(r["memory"]["rows"]) == len(r["memory"]["sizes"]) >= 2
    for row in r["memory"]["rows"]:
        assert row["total_peak_rss_over_baseline_mb"] >= 0
    assert set(r["targets"]) == {
        "ffs_step/plain_step", "ffs_synthesis/vos_synthesis (config)", "ffs_synthesis/vos_synthesis (paper)",
        "ffs_imgs_per_s/plain_imgs_per_s", "our_metrics_time/sklearn_time", "fde_glow_time/our_flow_time_to_auroc"}
    for name, t in r["targets"].items():
        if name != "fde_glow_time/our_flow_time_to_auroc":  # None when a flow never reached the target
            assert _finite_positive(t["value"]), (name, t)
        op, target = t["target"].split()
        expected = None if t["value"] is None else (t["value"] <= float(target) if op == "<=" else
                                                    t["value"] >= float(target))
        assert t["met"] is expected, (name, t)  # the verdict follows from the value and the target
    assert set(r["section_seconds"]) == {"training_step", "inference", "synthesis", "metrics", "flow_fit", "knn",
                                        "memory"}
    assert r["knn"]["max_abs_difference"] < 1e-4 and _finite_positive(r["knn"]["faiss"]["median_s"])
    assert r["load_average_before"] is None or len(r["load_average_before"]) == 3
