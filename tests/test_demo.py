"""The multi-seed demo protocol (ffs_det.demo, its summary ffs_det.demo_report): summary statistics, the
paired comparison, the argument checks of run_demo and tools/demo.py, and a tiny end-to-end run of two
methods over two seeds in two processes."""
import json
import os

import numpy as np
import pytest

from ffs_det.atomic_io import file_sha256, json_bytes
from ffs_det.demo import ROC_SCORES, run_demo
from ffs_det.demo_report import format_summary, summarize, summary_and_table
from ffs_det.density.metrics import ood_metrics
from ffs_det.evaluation.records import load_records
from repo_paths import load_tool


def _row(method, seed, fpr95, auroc, ap50=97.0):
    return {"method": method, "seed": seed, "fpr95": fpr95, "auroc": auroc, "aupr_in": 0.7, "aupr_out": 0.7,
            "threshold": 0.5, "n_id": 10, "n_ood": 12, "far_fpr95": fpr95, "far_auroc": auroc, "far_n_ood": 9, "ap50": ap50, "ap": 70.0, "train_seconds": 1.0,
            "seconds_per_iter": 0.1, "iterations": 10, "job_seconds": 2.0}


def test_summary_means_stds_and_paired_signs():
    rows = [_row("vanilla", 0, 0.80, 0.70), _row("vanilla", 1, 0.84, 0.72), _row("vanilla", 2, 0.82, 0.74),
            _row("ffs", 0, 0.70, 0.80), _row("ffs", 1, 0.86, 0.75), _row("ffs", 2, 0.75, 0.78)]
    s = summarize(rows)
    assert s["methods"]["vanilla"]["fpr95"]["mean"] == pytest.approx(82.0)
    assert s["methods"]["ffs"]["fpr95"]["std"] == pytest.approx(np.std([70, 86, 75], ddof=1))
    p = s["paired"]["ffs"]
    assert p["fpr95"]["per_seed"] == pytest.approx([-10.0, 2.0, -7.0])
    assert p["fpr95"]["seeds_better"] == 2 and p["fpr95"]["seeds"] == 3  # lower FPR95 is better
    assert p["auroc"]["per_seed"] == pytest.approx([10.0, 3.0, 4.0]) and p["auroc"]["seeds_better"] == 3
    assert "vanilla" not in s["paired"]
    table = format_summary(rows, s)
    assert "| ffs | 0,1,2 | 77.00 ± 8.19 |" in table
    assert "-5.00 ± 6.24 (2/3)" in table
    assert table.count("\n| ffs | ") == 3 + 1 + 1  # three per-seed rows, one mean row, one paired row


def test_seeds_without_baseline_give_no_paired_rows():
    s = summarize([_row("ffs", 0, 0.7, 0.8)])
    assert s["paired"] == {} and s["methods"]["ffs"]["fpr95"]["std"] == 0.0


def test_fused_scores_are_compared_with_their_parts_per_seed():
    def row(method, seed, fpr):  # fpr: {score: FPR95 on both OOD sets}
        metrics = {n: {o: {"fpr95": v, "auroc": 1 - v, "aupr_in": 0.5, "n_id": 10, "n_ood": 12}
                       for o in ("shapes_ood", "shapes_far_ood")} for n, v in fpr.items()}
        return dict(_row(method, seed, 0.5, 0.5), scores={"metrics": metrics})

    rows = [row("ffs", 0, {"energy": 0.50, "fde": 0.40, "energy+fde": 0.45}),
            row("ffs", 1, {"energy": 0.30, "fde": 0.60, "energy+fde": 0.25})]
    summary, table = summary_and_table(rows)
    fused = summary["box_scores"]["fused"]["ffs"]["energy+fde"]["shapes_ood"]
    # seed 0 beats energy only, seed 1 both; above the best single: 45 - 40 = +5, 25 - 30 = -5 points
    assert fused["beats"]["fpr95 vs energy"] == 2 and fused["beats"]["fpr95 vs fde"] == 1
    assert fused["fpr95_above_best_single"]["per_seed"] == pytest.approx([5.0, -5.0])
    assert summary["box_scores"]["scores"]["ffs"]["fde"]["shapes_ood"]["fpr95"]["mean"] == pytest.approx(50.0)
    assert "| ffs | energy+fde | shapes_ood | energy 2/2, fde 1/2 | +5.0 -5.0 (+5.0) |" in table
    assert "| ffs | fde | 50.00 ± 14.14 | 50.00 ± 14.14 | 50.00 ± 14.14 | 50.00 ± 14.14 |" in table


@pytest.mark.parametrize("kwargs, match", [({"seeds": []}, "seeds"), ({"seeds": [1, 1]}, "seeds"),
                                           ({"methods": ["plain"]}, "unknown"), ({"methods": []}, "empty list"),
                                           ({"jobs": 0}, "jobs"), ({"counts": {"far_ood": 0}}, "--num-far-ood")])
def test_bad_arguments_are_refused_before_any_work(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        run_demo(str(tmp_path / "out"), **kwargs)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("argv, message", [(["--methods", "vanilla,plain"], "unknown ['plain']"),
                                           (["--methods", ","], "unknown empty list"),
                                           (["--jobs", "0"], "jobs must be >= 1, got 0"),
                                           (["--num-train", "0"], "(--num-train), got 0")])
def test_the_command_line_maps_run_demos_checks_to_exit_2(tmp_path, capsys, argv, message):
    out = tmp_path / "out"
    assert load_tool("demo").main(["--output-dir", str(out)] + argv) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


TINY = ["SOLVER.MAX_ITER", "8", "FFS.START_ITER", "2", "SOLVER.STEPS", "()", "SOLVER.WARMUP_ITERS", "0",
        "SOLVER.CHECKPOINT_PERIOD", "8", "SOLVER.IMS_PER_BATCH", "2", "MODEL.MOBILENET.WEIGHTS", "",
        "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0", "FFS.SAMPLE_FROM", "20", "FFS.FLOW.HIDDEN", "32"]


def test_tiny_demo_two_methods_two_seeds_two_processes(tmp_path):
    out = tmp_path / "demo"
    result = run_demo(str(out), ["vanilla", "ffs"], seeds=[0, 1], jobs=2, opts=TINY,
                      counts={"train": 6, "val": 4, "ood": 4, "far_ood": 3}, threads=1)
    assert sorted((r["method"], r["seed"]) for r in result["rows"]) == [("ffs", 0), ("ffs", 1), ("vanilla", 0),
                                                                         ("vanilla", 1)]
    for method in ("vanilla", "ffs"):
        for seed in (0, 1):
            job = out / method / f"seed{seed}"
            for f in ("model_final.pth", "train_info.json", "row.json", "demo_job.log", "log.txt",
                      "inference/shapes_val/records.npz", "inference/shapes_ood/records.npz",
                      "inference/shapes_far_ood/records.npz", "inference/shapes_train/proposals.npz",
                      "ood/metrics.json"):
                assert (job / f).is_file(), job / f
            cfg = (job / "config.yaml").read_text()
            assert f"SEED: {seed}\n" in cfg  # trained through default_setup with the job's seed
    ffs_support = next(r for r in result["rows"] if r["method"] == "ffs")["support"]
    assert ffs_support["synthetic"]["n"] > 0 and ffs_support["synthetic"]["negative_frac"] == 0.0
    assert next(r for r in result["rows"] if r["method"] == "vanilla")["support"]["synthetic"]["n"] == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["summary"]["paired"]["ffs"]["fpr95"]["seeds"] == 2
    # the kept scores come back in memory with the rows; the JSON files hold the rows without them
    assert all(ROC_SCORES not in r for r in summary["rows"])
    assert summary["rows"] == [json.loads(json_bytes({k: v for k, v in r.items() if k != ROC_SCORES}))
                               for r in result["rows"]]
    md = (out / "summary.md").read_text()
    assert "Paired difference to vanilla" in md and "| vanilla | 0,1 |" in md
    # the ROC of every job is drawn from the kept scores each job handed back: they give its row's metrics
    assert (out / "roc_shapes_ood.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for r in result["rows"]:
        job = out / r["method"] / f"seed{r['seed']}"
        assert ROC_SCORES not in json.loads((job / "row.json").read_text())
        assert not (job / "kept_scores.npz").exists() and not (job / "box_scores.npz").exists()
        energy = r[ROC_SCORES]["energy"]
        m = ood_metrics(energy["shapes_val"], energy["shapes_ood"], fpr_point="closest")  # the papers' protocol
        far = ood_metrics(energy["shapes_val"], energy["shapes_far_ood"], fpr_point="closest")
        assert (m["fpr95"], m["auroc"], m["n_id"], m["n_ood"]) == (r["fpr95"], r["auroc"], r["n_id"], r["n_ood"])
        assert (far["fpr95"], far["auroc"], far["n_ood"]) == (r["far_fpr95"], r["far_auroc"], r["far_n_ood"])
        # every score on the same kept detections of both OOD sets; energy's row is the one above
        scores = r["scores"]["metrics"]
        assert scores["energy"]["shapes_ood"]["fpr95"] == r["fpr95"] and scores["energy"]["shapes_ood"]["n_ood"] == r["n_ood"]
        assert scores["energy"]["shapes_far_ood"]["fpr95"] == r["far_fpr95"]
        assert {"fde", "mahalanobis", "gmm", "energy+fde"} <= set(scores)
        assert ("flow_loglik" in scores) == (r["method"] == "ffs")
        box = r[ROC_SCORES]["box"]
        assert set(box) == set(scores) and len(box["fde"]["shapes_far_ood"]) == r["far_n_ood"]
        assert ood_metrics(box["fde"]["shapes_val"], box["fde"]["shapes_ood"],
                           fpr_point="closest")["fpr95"] == scores["fde"]["shapes_ood"]["fpr95"]
        assert all(s[o]["n_id"] == r["n_id"] for s in scores.values() for o in s)
        assert r["scores"]["fit_source"] == "proposals" and r["scores"]["feature_space"] == "preactivation"
    assert (out / "roc_scores_shapes_ood.png").is_file() and (out / "roc_scores_shapes_far_ood.png").is_file()
    assert "Every score on the same kept detections" in md and "above best single" in md
    # a second run reuses every job (same settings), and removes the kept scores earlier versions wrote;
    # a changed override retrains
    before = os.path.getmtime(out / "ffs" / "seed0" / "model_final.pth")
    (out / "ffs" / "seed0" / "kept_scores.npz").write_bytes(b"old")
    again = run_demo(str(out), ["ffs"], seeds=[0], jobs=1, opts=TINY, counts={"train": 6, "val": 4, "ood": 4, "far_ood": 3})
    assert os.path.getmtime(out / "ffs" / "seed0" / "model_final.pth") == before
    assert not (out / "ffs" / "seed0" / "kept_scores.npz").exists()
    assert again["rows"][0]["fpr95"] == next(r for r in result["rows"] if r["method"] == "ffs" and r["seed"] == 0)["fpr95"]
    run_demo(str(out), ["ffs"], seeds=[0], jobs=1, opts=TINY + ["FFS.SAMPLE_FROM", "60"],
             counts={"train": 6, "val": 4, "ood": 4, "far_ood": 3})
    job = out / "ffs" / "seed0"
    assert os.path.getmtime(job / "model_final.pth") != before
    metrics = [json.loads(line) for line in (job / "metrics.json").read_text().splitlines() if line.strip()]
    assert [m["iteration"] for m in metrics] == sorted({m["iteration"] for m in metrics})  # one run, not two
    for dataset in ("shapes_val", "shapes_ood", "shapes_far_ood", "shapes_train"):  # evaluated again: the new model
        meta = load_records(str(job / "inference" / dataset / "records.npz"))[1]
        assert meta["weights_sha256"] == file_sha256(str(job / "model_final.pth"))


def test_projection_picture_and_support_statistics():
    from ffs_det.evaluation.projection import feature_summary, projection_png

    rng = np.random.default_rng(0)
    id_f = np.maximum(rng.normal(-1, 1, (50, 8)), 0)
    s = feature_summary(id_f)
    assert s["n"] == 50 and s["negative_frac"] == 0.0 and 0 < s["active_frac"] < 0.5
    assert feature_summary(rng.normal(0, 1, (40, 8)))["negative_frac"] > 0.3
    assert feature_summary(np.zeros((0, 8)))["n"] == 0
    png = projection_png(id_f, id_f[:5] + 1, np.zeros((0, 8)), title="t")
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="at least 3 ID box features"):
        projection_png(id_f[:2])


def test_a_failed_job_does_not_lose_the_others(tmp_path):
    from ffs_det.demo import DemoJobsFailed

    # FFS.FLOW.BLOCKS 0 breaks only the method that builds a flow
    with pytest.raises(DemoJobsFailed) as info:
        run_demo(str(tmp_path), ["vanilla", "ffs"], seeds=[0], jobs=2, opts=TINY + ["FFS.FLOW.BLOCKS", "0"],
                 counts={"train": 6, "val": 4, "ood": 4, "far_ood": 3}, threads=1)
    message, result = info.value.args
    assert message.startswith("1 of 2 jobs failed: ffs seed 0 (ValueError: ") and "demo_job.log" in message
    assert [r["method"] for r in result["rows"]] == ["vanilla"]
    assert "| vanilla | 0 |" in (tmp_path / "summary.md").read_text()
