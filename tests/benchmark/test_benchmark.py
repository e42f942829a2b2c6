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
    from ffs_det.benchmark.runner import CPU_DEFAULT_SECTIONS, TARGETS
    assert set(r["targets"]) == {name for name, (path, _, _) in TARGETS.items() if path[0] in r}
    assert "ffs_step/plain_step (paper heads)" in r["targets"] and "paper_detector" not in r  # GPU-only default
    for name, t in r["targets"].items():
        if t["target"] is None:  # reported without a verdict
            assert t["met"] is None, (name, t)
            continue
        if name != "fde_glow_time/our_flow_time_to_auroc":  # None when a flow never reached the target
            assert _finite_positive(t["value"]), (name, t)
        op, target = t["target"].split()
        expected = None if t["value"] is None else (t["value"] <= float(target) if op == "<=" else
                                                    t["value"] >= float(target))
        assert t["met"] is expected, (name, t)  # the verdict follows from the value and the target
    rounds = r["targets"]["ffs_imgs_per_s/plain_imgs_per_s"]["rounds"]
    assert rounds["rounds"] == len(r["inference"]["ratio_rounds"]["ffs/plain"]) and rounds["min"] <= rounds["median"]
    assert r["training_step_paper"]["opts"]["all"][:2] == ["MODEL.ROI_BOX_HEAD.FC_DIM", "1024"]
    assert set(r["section_seconds"]) == set(CPU_DEFAULT_SECTIONS)
    fm = r["fit_memory"]
    assert {row["scorer"] for row in fm["rows"]} == {"mahalanobis", "fde"} and len(fm["rows"]) == 4
    assert all(row["peak_rss_mb"] >= row["baseline_rss_mb"] > 0 for row in fm["rows"])
    assert [(row["processes"], row["workers"]) for row in r["extraction"]["rows"]] == [(1, 0), (2, 0)]
    assert all(_finite_positive(row["images_per_s"]) for row in r["extraction"]["rows"])
    assert r["knn"]["max_abs_difference"] < 1e-4 and _finite_positive(r["knn"]["faiss"]["median_s"])
    assert r["load_average_before"] is None or len(r["load_average_before"]) == 3


def test_sections_select_and_reject(tmp_path):
    proc = subprocess.run([sys.executable, os.path.join(REPO, "tools", "benchmark.py"), "--quick", "--sections",
                           "nonsense"], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 2 and "unknown benchmark section" in proc.stderr


def test_the_papers_detector_section_runs_on_request(tmp_path):
    """The RegNetX-4.0GF FPN VOC configs (tiny images in --quick): step times and ratios; peak memory on a GPU."""
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, os.path.join(REPO, "tools", "benchmark.py"), "--quick", "--threads", "1",
                           "--sections", "paper_detector", "--output", str(out)], capture_output=True, text=True,
                          timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(out.read_text())
    pd = r["paper_detector"]
    assert pd["configs"]["ffs"] == "VOC/ffs_regnetx.yaml"
    for mode in ("plain", "vos", "ffs"):
        assert _finite_positive(pd[mode]["median_s"])
    assert "loss_energy_margin" in pd["ffs"]["losses"] and "loss_energy_margin" in pd["vos"]["losses"]
    assert _finite_positive(r["targets"]["ffs_step/plain_step (paper detector)"]["value"])
    assert pd["peak_memory"] == {}  # measured on a GPU only
    assert "train step ffs, paper detector" in proc.stdout
