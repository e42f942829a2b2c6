"""apply_net -> eval_ood end to end on tiny generated sets with a briefly trained FFS model."""
import json
import os
import shutil

import numpy as np
import pytest
import torch

from ffs_det.atomic_io import file_sha256
from ffs_det.density.metrics import ood_metrics
from ffs_det.evaluation.detections import match_to_ground_truth
from ffs_det.evaluation.records import load_records

from detector_utils import train_tiny_id_ood
from repo_paths import load_tool


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    # seeded: the same model whatever the tests before this one drew
    register, weights = train_tiny_id_ood(root, "e2e", "Shapes/ffs_mobilenet.yaml", "flow", num_id=8, num_ood=4,
                                          id_seed=1, ood_seed=2, seed=0)
    return root, register, weights


def test_apply_net_then_eval_ood(trained, capsys):
    root, register, weights = trained
    out = root / "inference"
    assert load_tool("apply_net").main(["--config-file", "Shapes/ffs_mobilenet.yaml", "--flow-loglik",
                                    "--test-dataset", "e2e_id",
                             "--test-dataset", "e2e_ood", "--inference-config", "Inference/standard_nms.yaml",
                             "--output-dir", str(out), *register, "MODEL.WEIGHTS", weights,
                             "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0", "INPUT.MIN_SIZE_TEST", "128",
                                    "FFS.FLOW.HIDDEN", "64"]) == 0
    printed = capsys.readouterr().out
    for name in ("e2e_id", "e2e_ood"):
        for f in ("records.npz", "coco_detections.json", "metrics.json"):
            assert os.path.isfile(out / name / f)
            assert str(out / name / f) in printed
    arrays, meta = load_records(str(out / "e2e_id" / "records.npz"))
    n = len(arrays["score"])
    assert n > 0 and meta["num_classes"] == 3 and meta["num_gt"] > 0
    # every image of the set is named in the records, with its file
    assert len(meta["image_files"]) == 8 and all(os.path.isfile(f) for f in meta["image_files"].values())
    assert {int(i) for i in arrays["image_id"]} <= {int(k) for k in meta["image_files"]}
    assert arrays["logits"].shape == (n, 4) and arrays["boxes"].shape == (n, 4)
    np.testing.assert_allclose(arrays["energy"], torch.logsumexp(torch.from_numpy(arrays["logits"][:, :3]), 1).numpy(),
                               rtol=1e-5, atol=1e-5)
    with open(out / "e2e_id" / "metrics.json") as f:
        summary = json.load(f)
    # AP50 of the written detections, recomputed with pycocotools against the set's ground truth
    assert summary["num_images"] == 8 and 0.0 <= summary["bbox"]["AP50"] <= 100.0
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt_json = [a for a in register if a.endswith(".json")][0]
    coco_gt = COCO(gt_json)
    with open(out / "e2e_id" / "coco_detections.json") as f:
        coco_dt = coco_gt.loadRes(json.load(f))
    ev = COCOeval(coco_gt, coco_dt, "bbox")
    ev.evaluate(), ev.accumulate(), ev.summarize()
    # the json's rounding (scores to 5 decimals, boxes to 0.01 px) can reorder near-tied scores or move an IoU
    # across 0.5; apply_net evaluates the unrounded detections
    assert summary["bbox"]["AP50"] == pytest.approx(100 * ev.stats[1], abs=0.01)
    with open(out / "e2e_id" / "coco_detections.json") as f:
        dets = json.load(f)
    assert len(dets) == n and {d["category_id"] for d in dets} <= {1, 2, 3}

    report_dir = root / "report"
    assert load_tool("eval_ood").main(["--id", str(out / "e2e_id" / "records.npz"), "--ood",
                                   str(out / "e2e_ood" / "records.npz"), "--thres", "0.0",
                                   "--output-dir", str(report_dir)]) == 0
    with open(report_dir / "metrics.json") as f:
        metrics = json.load(f)
    (name, got), = metrics.items()
    ood_arrays, _ = load_records(str(out / "e2e_ood" / "records.npz"))
    direct = ood_metrics(arrays["energy"], ood_arrays["energy"], fpr_point="closest")  # eval_ood's papers protocol
    for key in ("fpr95", "auroc", "aupr_in", "aupr_out"):
        assert 0.0 <= got[key] <= 1.0
        assert got[key] == pytest.approx(direct[key], abs=1e-12)
    assert (got["n_id"], got["n_ood"]) == (n, len(ood_arrays["score"]))
    # an FFS model's records carry the flow's log-density per detection, usable as the OOD score
    assert arrays["flow_loglik"].shape == (n,) and np.isfinite(arrays["flow_loglik"]).all()
    assert load_tool("eval_ood").main(["--id", str(out / "e2e_id" / "records.npz"), "--ood",
                                   str(out / "e2e_ood" / "records.npz"), "--thres", "0.0", "--score-key",
                                   "flow_loglik", "--output-dir", str(root / "report_flow")]) == 0
    flow = json.loads((root / "report_flow" / "metrics.json").read_text())[name]
    assert flow["auroc"] == pytest.approx(ood_metrics(arrays["flow_loglik"], ood_arrays["flow_loglik"])["auroc"],
                                          abs=1e-12)


def test_ground_truth_matching_is_greedy_by_score_and_class_aware():
    boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 10], [20, 20, 30, 30]], np.float32)
    classes = np.array([0, 0, 1, 0])
    scores = np.array([0.5, 0.9, 0.8, 0.7], np.float32)
    gt = np.array([[0, 0, 10, 9], [20, 20, 30, 31]], np.float32)
    # det 1 (0.9) takes the first box; det 0 finds it taken; det 2 has the wrong class; det 3 matches box 2
    assert match_to_ground_truth(boxes, classes, scores, gt, np.array([0, 0])).tolist() == [False, True, False, True]
    assert not match_to_ground_truth(boxes, classes, scores, gt[:0], np.zeros(0, int)).any()


def test_records_of_two_checkpoints_are_not_mixed(trained, tmp_path, capsys):
    root, register, weights = trained
    out = tmp_path / "inference"
    model = tmp_path / "run" / "model_final.pth"
    model.parent.mkdir()
    shutil.copy(weights, model)
    apply = ["--config-file", "Shapes/ffs_mobilenet.yaml", "--output-dir", str(out), *register,
             "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0", "INPUT.MIN_SIZE_TEST", "128", "FFS.FLOW.HIDDEN", "64",
             "MODEL.WEIGHTS", str(model)]
    assert load_tool("apply_net").main(["--test-dataset", "e2e_id", "--test-dataset", "e2e_ood", *apply]) == 0
    assert load_records(str(out / "e2e_id" / "records.npz"))[1]["weights_sha256"] == file_sha256(str(model))
    # retrained into the same path, then applied to the ID set only (as a run killed after it leaves things)
    state = torch.load(model, map_location="cpu", weights_only=True)
    state["model"]["roi_heads.box_predictor.cls_score.bias"] += 1.0
    torch.save(state, model)
    assert load_tool("apply_net").main(["--test-dataset", "e2e_id", *apply]) == 0
    capsys.readouterr()
    assert load_tool("eval_ood").main(["--id", str(out / "e2e_id" / "records.npz"), "--ood",
                                   str(out / "e2e_ood" / "records.npz"), "--thres", "0.0",
                                   "--output-dir", str(tmp_path / "report")]) == 2
    err = capsys.readouterr().err
    ood = out / "e2e_ood" / "records.npz"
    assert f"error: OOD records {ood} come from another checkpoint than the ID records" in err
    assert not (tmp_path / "report").exists()
    # a dataset folder holding other files is refused before inference, and left as it is
    (out / "e2e_ood" / "notes.txt").write_text("mine")
    before = sorted(os.listdir(out / "e2e_ood"))
    assert load_tool("apply_net").main(["--test-dataset", "e2e_ood", *apply, "MODEL.WEIGHTS", weights]) == 2
    assert (f"error: e2e_ood: output folder {out / 'e2e_ood'} holds files apply_net did not write (notes.txt); choose "
            "a new or empty folder, or remove them (nothing was written)") in capsys.readouterr().err.splitlines()
    assert sorted(os.listdir(out / "e2e_ood")) == before


def test_ood_sets_get_no_box_ap_and_records_carry_the_models_class_names(trained, tmp_path):
    root, register, weights = trained
    assert torch.load(weights, map_location="cpu", weights_only=True)["class_names"] == ["disc", "block", "wedge"]
    ood_json = register[-2]
    data = json.loads(open(ood_json).read())
    for cat, name in zip(data["categories"], ("star", "ring", "cross")):  # as many classes, other names
        cat["name"] = name
    renamed = tmp_path / "renamed.json"
    renamed.write_text(json.dumps(data))
    out = tmp_path / "inference"
    assert load_tool("apply_net").main([
        "--config-file", "Shapes/ffs_mobilenet.yaml", "--test-dataset", "e2e_id", "--test-dataset", "renamed",
        "--test-dataset", "marked", "--output-dir", str(out), *register,
        "--register-coco", "renamed", str(renamed), register[-1], "--register-coco-ood", "marked", ood_json,
        register[-1], "MODEL.WEIGHTS", weights, "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0",
        "INPUT.MIN_SIZE_TEST", "128", "FFS.FLOW.HIDDEN", "64", "DATASETS.TRAIN", "()"]) == 0
    for name in ("renamed", "marked"):  # neither is annotated in the model's classes: no AP, no matching
        arrays, meta = load_records(str(out / name / "records.npz"))
        assert meta["class_names"] == ["disc", "block", "wedge"]  # from the checkpoint, not the set or config
        assert "num_gt" not in meta and "gt_matched" not in arrays
        assert "bbox" not in json.loads((out / name / "metrics.json").read_text())
    assert "bbox" in json.loads((out / "e2e_id" / "metrics.json").read_text())
    assert load_tool("eval_ood").main(["--id", str(out / "e2e_id" / "records.npz"), "--ood",
                                   str(out / "renamed" / "records.npz"), "--ood", str(out / "marked" / "records.npz"),
                                   "--thres", "0.0", "--output-dir", str(tmp_path / "report")]) == 0
