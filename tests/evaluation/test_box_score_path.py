"""The post-hoc box-score path end to end: pre-activation features, proposal features of the training set,
tools/compare_scores.py, and a stock detectron2 Faster R-CNN through apply_net."""
import json
import os

import numpy as np
import pytest
import torch

from ffs_det.engine.setup import build_cfg
from ffs_det.evaluation.records import load_records, save_records

from detector_utils import train_tiny_id_ood, write_tiny_coco
from repo_paths import load_tool


@pytest.fixture(scope="module")
def applied(tmp_path_factory):
    """A briefly trained plain model, applied to its training set (with proposals), an ID and an OOD set."""
    root = tmp_path_factory.mktemp("boxpath")
    register, weights = train_tiny_id_ood(root, "bp", "Shapes/vanilla_mobilenet.yaml", "none", num_id=10, num_ood=6,
                                          id_seed=3, ood_seed=4, id_test_seed=5, seed=0)
    common = ["--config-file", "Shapes/vanilla_mobilenet.yaml", "--inference-config", "Inference/standard_nms.yaml",
              *register]
    overrides = ["MODEL.WEIGHTS", weights, "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0", "INPUT.MIN_SIZE_TEST", "128"]
    out = root / "inference"
    assert load_tool("apply_net").main([*common, "--save-features", "--proposals-of", "bp_train",
                                    "--max-proposals-per-image", "7", "--test-dataset", "bp_train",
                                    "--test-dataset", "bp_id", "--test-dataset", "bp_ood", "--output-dir", str(out),
                                    *overrides]) == 0
    return root, out, common, overrides


def test_preactivation_features_are_the_box_heads_last_layer_before_its_relu(applied):
    root, out, common, overrides = applied
    pre, meta = load_records(str(out / "bp_id" / "records.npz"))
    assert meta["feature_space"] == "preactivation" and (pre["features"] < 0).any()
    assert load_tool("apply_net").main([*common, "--save-features", "--feature-space", "output", "--test-dataset",
                                    "bp_id", "--output-dir", str(root / "output_space"), *overrides]) == 0
    post, meta = load_records(str(root / "output_space" / "bp_id" / "records.npz"))
    assert meta["feature_space"] == "output"
    np.testing.assert_array_equal(post["boxes"], pre["boxes"])  # the same detections either way
    np.testing.assert_allclose(post["features"], np.maximum(pre["features"], 0.0), atol=1e-6)


def test_proposal_records_hold_foreground_ground_truth_and_background_boxes(applied):
    root, out, common, overrides = applied
    arrays, meta = load_records(str(out / "bp_train" / "proposals.npz"))
    records, records_meta = load_records(str(out / "bp_train" / "records.npz"))
    k = meta["num_classes"]
    assert meta["kind"] == "proposals" and meta["feature_space"] == "preactivation"
    assert meta["weights_sha256"] == records_meta["weights_sha256"]
    fg = arrays["gt_class"] < k
    assert fg.any() and (~fg).any()
    assert (arrays["iou"][fg] >= 0.5).all() and (arrays["iou"][~fg] < 0.5).all()
    assert arrays["features"].shape == (len(fg), records["features"].shape[1])
    gt = arrays["iou"] >= 1.0 - 1e-6  # the ground-truth boxes themselves
    with open(root / "id" / "annotations.json") as f:
        num_gt = len([a for a in json.load(f)["annotations"] if not a.get("iscrowd", 0)])
    assert gt.sum() >= num_gt
    for image_id in np.unique(arrays["image_id"]):
        rows = arrays["image_id"] == image_id
        assert (rows & fg & ~gt).sum() <= 7 and (rows & ~fg).sum() <= 10  # the per-image caps
    # the proposals' energy is the log-sum-exp of their inlier logits, as in the detection records
    np.testing.assert_allclose(arrays["energy"], torch.logsumexp(torch.from_numpy(arrays["logits"][:, :k]), 1).numpy(),
                               rtol=1e-5, atol=1e-5)
    summary = json.loads((out / "bp_train" / "metrics.json").read_text())["proposals"]
    assert summary["num_foreground"] == int(fg.sum()) and summary["max_per_image"] == 7


def test_proposals_of_a_set_not_applied_or_not_in_the_models_classes_is_refused(applied, tmp_path, capsys):
    root, out, common, overrides = applied
    assert load_tool("apply_net").main([*common, "--save-features", "--proposals-of", "bp_ood", "--test-dataset", "bp_id",
                                    "--output-dir", str(root / "refused"), *overrides]) == 2
    assert "--proposals-of bp_ood: not among the --test-dataset names" in capsys.readouterr().err
    assert not (root / "refused").exists()
    json_path, image_root = write_tiny_coco(str(tmp_path / "other"), num_images=2, seed=9)
    assert load_tool("apply_net").main([*common, "--save-features", "--register-coco-ood", "bp_other", json_path,
                                    image_root, "--proposals-of", "bp_other", "--test-dataset", "bp_other",
                                    "--output-dir", str(root / "refused"), *overrides]) == 2
    assert "proposal features need a set annotated in the model's classes" in capsys.readouterr().err
    assert not (root / "refused").exists()


def test_compare_scores_cli_fits_on_proposals(applied, capsys):
    root, out, common, overrides = applied
    args = ["--train", str(out / "bp_train" / "records.npz"), "--proposals", str(out / "bp_train" / "proposals.npz"),
            "--id", str(out / "bp_id" / "records.npz"), "--ood", str(out / "bp_ood" / "records.npz"),
            "--scorer", "mahalanobis", "--scorer", "knn", "--option", "knn.k=3", "--fuse", "energy", "knn",
            "--thres", "0.0"]
    report = root / "scores"
    assert load_tool("compare_scores").main([*args, "--output-dir", str(report)]) == 0
    printed = capsys.readouterr().out
    assert "energy+knn" in printed and "proposals" in printed
    result = json.loads((report / "scores.json").read_text())
    assert result["info"]["fit_source"] == "proposals" and result["info"]["feature_space"] == "preactivation"
    assert set(result["metrics"]) == {"energy", "mahalanobis", "knn", "energy+knn"}
    assert set(result["info"]["fusion_weights"]["energy+knn"]) == {"energy", "knn"}
    names = set(os.listdir(report))
    assert {"scores.md", "scores.csv", "scores.json", "roc_bp_ood.png", "hist_knn_bp_ood.png"} <= names
    # a rerun replaces the report; a folder holding a user's file is refused before any work
    assert load_tool("compare_scores").main([*args, "--output-dir", str(report)]) == 0
    (root / "mine").mkdir()
    (root / "mine" / "notes.txt").write_text("keep")
    assert load_tool("compare_scores").main([*args, "--output-dir", str(root / "mine")]) == 2
    assert (root / "mine" / "notes.txt").read_text() == "keep" and len(os.listdir(root / "mine")) == 1
    capsys.readouterr()
    # an option for a scorer that is not run is named, not ignored
    assert load_tool("compare_scores").main([*args, "--option", "gmm.components=2", "--output-dir", str(root / "x")]) == 2
    assert "gmm" in capsys.readouterr().err and not (root / "x").exists()


HEAD_SCORERS = ("react", "vim", "ash", "scale", "fdbd", "nnguide")


def test_the_checkpoints_box_classifier_reproduces_the_records_logits_from_relu_features(applied):
    """The head given to box scorers: the inlier rows of the checkpoint's box classifier, applied to the box
    head's output (ReLU of the pre-activation features), are the stored inlier logits."""
    from ffs_det.density.inputs import linear_head
    from ffs_det.evaluation.box_scores import box_head

    root, out, common, overrides = applied
    arrays, meta = load_records(str(out / "bp_id" / "records.npz"))
    weight, bias = box_head(str(out / "bp_id" / "records.npz"), meta)
    assert weight.shape == (meta["num_classes"], arrays["features"].shape[1]) and bias.shape == (meta["num_classes"],)
    head = linear_head((weight, bias))
    logits = head.logits(torch.from_numpy(np.maximum(arrays["features"], 0.0)).double()).numpy()
    np.testing.assert_allclose(logits, arrays["logits"][:, :-1], rtol=1e-5, atol=1e-5)
    # the ReLU matters: the pre-activation features themselves give other logits
    raw = head.logits(torch.from_numpy(arrays["features"]).double()).numpy()
    assert np.abs(raw - arrays["logits"][:, :-1]).max() > 1e-3


def test_head_reading_scorers_score_boxes_and_leave_the_other_scores_as_they_were(applied, monkeypatch):
    from ffs_det.evaluation import box_scores

    root, out, common, overrides = applied
    kw = dict(train_records=str(out / "bp_train" / "records.npz"), id_records=str(out / "bp_id" / "records.npz"),
              ood_records=[str(out / "bp_ood" / "records.npz")], thres=0.0,
              proposals=str(out / "bp_train" / "proposals.npz"), options={"knn": {"k": 3}, "nnguide": {"k": 3}})
    comparison, info = box_scores.compare_box_scores(scorers=("knn", *HEAD_SCORERS), fuse=[("energy", "react")], **kw)
    assert not info["failed"] and {"knn", "energy+react", *HEAD_SCORERS} <= set(comparison.metrics)
    for scorer in HEAD_SCORERS:
        assert all(np.isfinite(v).all() and len(v) for v in comparison.scores[scorer].values()), scorer
    # without a head-reading scorer no checkpoint is read, and knn's scores are the same
    monkeypatch.setattr(box_scores, "box_head", lambda *a, **k: pytest.fail("checkpoint read for knn alone"))
    alone, _ = box_scores.compare_box_scores(scorers=("knn",), fuse=(), options={"knn": {"k": 3}},
                                             **{k: v for k, v in kw.items() if k != "options"})
    for name, values in alone.scores["knn"].items():
        np.testing.assert_array_equal(values, comparison.scores["knn"][name])


def test_the_head_checkpoint_must_be_the_one_that_wrote_the_records(applied, tmp_path, capsys):
    import shutil

    from ffs_det.density.scorers import fit_and_score
    from ffs_det.evaluation.box_scores import box_head, training_boxes

    root, out, common, overrides = applied
    args = ["--scorer", "react", "--train", str(out / "bp_train" / "records.npz"), "--records",
            str(out / "bp_id" / "records.npz")]
    moved = shutil.copy(overrides[1], tmp_path / "moved.pth")  # the same file elsewhere: accepted
    assert load_tool("score_boxes").main([*args, "--weights", str(moved), "--output-dir", str(tmp_path / "ok")]) == 0
    scored, meta = load_records(str(tmp_path / "ok" / "bp_id" / "records.npz"))
    # ReAct read the box head's output (ReLU of the stored pre-activation features) through the checkpoint's head
    boxes = training_boxes(args[3])
    head = box_head(args[5], meta)

    def react(relu):
        space = (lambda x: np.maximum(x, 0.0)) if relu else (lambda x: x)
        test = {"features": space(scored["features"]), "logits": scored["logits"][:, :-1]}
        return fit_and_score("react", dict(boxes.fit, features=space(boxes.fit["features"])), boxes.labels,
                             {"id": test}, head=head)["id"].astype(np.float32)

    np.testing.assert_array_equal(scored["react"], react(relu=True))
    assert not np.allclose(scored["react"], react(relu=False))
    other = tmp_path / "other.pth"
    other.write_bytes(moved.read_bytes() + b"\0")  # another file: refused before any fitting or writing
    capsys.readouterr()
    assert load_tool("score_boxes").main([*args, "--weights", str(other), "--output-dir", str(tmp_path / "no")]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and f"checkpoint {other} (--weights): SHA-256" in err and "--weights" in err
    assert not (tmp_path / "no").exists()
    assert load_tool("compare_scores").main(["--train", args[3], "--id", args[5], "--ood", str(out / "bp_ood" / "records.npz"),
                                             "--scorer", "vim", "--thres", "0.0", "--weights", str(tmp_path / "gone.pth"),
                                             "--output-dir", str(tmp_path / "no")]) == 2
    assert "gone.pth (--weights): not found" in capsys.readouterr().err and not (tmp_path / "no").exists()
    # --weights without a scorer that reads the head is named, not ignored
    assert load_tool("compare_scores").main(["--train", args[3], "--id", args[5], "--ood", str(out / "bp_ood" / "records.npz"),
                                             "--scorer", "knn", "--thres", "0.0", "--weights", str(moved),
                                             "--output-dir", str(tmp_path / "no")]) == 2
    assert "only scorers that read the classifier's final layer use it" in capsys.readouterr().err


def test_proposals_of_another_model_or_space_are_refused(applied, tmp_path):
    from ffs_det.evaluation.box_scores import training_boxes

    root, out, common, overrides = applied
    train = str(out / "bp_train" / "records.npz")
    arrays, meta = load_records(str(out / "bp_train" / "proposals.npz"))
    other = save_records(str(tmp_path / "other.npz"), arrays, dict(meta, weights_sha256="0" * 64))
    with pytest.raises(ValueError, match="other.npz: meta weights_sha256 .* proposals of another model"):
        training_boxes(train, other)
    space = save_records(str(tmp_path / "space.npz"), arrays, dict(meta, feature_space="output"))
    with pytest.raises(ValueError, match="space.npz: features in the 'output' space"):
        training_boxes(train, space)
    boxes = training_boxes(train, str(out / "bp_train" / "proposals.npz"))
    # scorers fit on foreground proposals of the fit images only; background proposals of the calibration images
    # are the fused score's negatives
    assert boxes.source == "proposals" and (boxes.labels < meta["num_classes"]).all()
    assert len(boxes.negatives["features"]) > 0


def test_a_stock_detectron2_config_and_checkpoint_give_records(tmp_path):
    """A model zoo Faster R-CNN config (StandardROIHeads, no ffs_det key) and a checkpoint of detectron2's own
    model: apply_net writes records with energy, logits and features, and the detections are the stock model's."""
    import detectron2
    from detectron2.config import get_cfg
    from detectron2.data.detection_utils import read_image
    from detectron2.modeling import build_model

    stock_yaml = os.path.join(os.path.dirname(detectron2.__file__), "model_zoo", "configs", "COCO-Detection",
                              "faster_rcnn_R_50_FPN_1x.yaml")
    small = ["MODEL.RESNETS.DEPTH", "18", "MODEL.RESNETS.RES2_OUT_CHANNELS", "64", "MODEL.FPN.OUT_CHANNELS", "32",
             "MODEL.ROI_BOX_HEAD.FC_DIM", "32", "MODEL.ROI_HEADS.NUM_CLASSES", "3", "MODEL.DEVICE", "cpu",
             "INPUT.MIN_SIZE_TEST", "128", "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0", "MODEL.RPN.POST_NMS_TOPK_TEST",
             "100"]
    cfg = get_cfg()
    cfg.merge_from_file(stock_yaml)
    cfg.merge_from_list(small)
    assert cfg.MODEL.ROI_HEADS.NAME == "StandardROIHeads"
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    weights = str(tmp_path / "stock.pth")
    torch.save({"model": model.state_dict()}, weights)
    json_path, image_root = write_tiny_coco(str(tmp_path / "data"), num_images=3, seed=5)
    assert load_tool("apply_net").main(["--config-file", stock_yaml, "--save-features", "--register-coco", "stock_id",
                                    json_path, image_root, "--test-dataset", "stock_id", "--output-dir",
                                    str(tmp_path / "out"), *small, "MODEL.WEIGHTS", weights]) == 0
    arrays, meta = load_records(str(tmp_path / "out" / "stock_id" / "records.npz"))
    assert arrays["logits"].shape[1] == 4 and arrays["features"].shape[1] == 32 and meta["feature_space"] == "preactivation"
    with open(json_path) as f:
        first = json.load(f)["images"][0]
    image = read_image(os.path.join(image_root, first["file_name"]), format=cfg.INPUT.FORMAT)
    from detectron2.data import transforms as T

    resized = T.ResizeShortestEdge(128, cfg.INPUT.MAX_SIZE_TEST).get_transform(image).apply_image(image)
    with torch.no_grad():
        inst = model([{"image": torch.as_tensor(resized.transpose(2, 0, 1).copy()), "height": first["height"],
                       "width": first["width"]}])[0]["instances"]
    mine = arrays["image_id"] == first["id"]
    np.testing.assert_allclose(arrays["boxes"][mine], inst.pred_boxes.tensor.numpy(), atol=1e-4)
    np.testing.assert_allclose(arrays["score"][mine], inst.scores.numpy(), atol=1e-6)


def test_max_boxes_lowers_the_per_image_cap_on_large_sets(applied):
    from ffs_det.evaluation.apply import load_model
    from ffs_det.evaluation.proposals import proposal_records

    root, out, common, overrides = applied
    cfg = build_cfg("Shapes/vanilla_mobilenet.yaml", overrides + ["DATALOADER.NUM_WORKERS", "0"],
                    extra_files=["Inference/standard_nms.yaml"])
    model = load_model(cfg)
    arrays, info = proposal_records(cfg, model, "bp_train", max_per_image=50, max_boxes=20)
    assert info["max_per_image_used"] == 2 and info["num_images"] == 10  # 20 boxes over 10 images
    proposals = (arrays["gt_class"] < 3) & (arrays["iou"] < 1.0 - 1e-6)
    assert all((proposals & (arrays["image_id"] == i)).sum() <= 2 for i in np.unique(arrays["image_id"]))
    with pytest.raises(ValueError, match="max_boxes must be >= 1"):
        proposal_records(cfg, model, "bp_train", max_boxes=0)


def _tree(folder):
    """{relative path: bytes} of every file below ``folder``."""
    out = {}
    for base, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(base, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, folder)] = f.read()
    return out


def test_apply_net_checks_every_dataset_before_writing_any(applied, tmp_path, capsys):
    import shutil

    root, out, common, overrides = applied
    mine = tmp_path / "inference"
    shutil.copytree(out / "bp_id", mine / "bp_id")  # an earlier run's folder, with its features
    before = _tree(mine)
    # a later dataset that is not registered: the earlier dataset's folder is not replaced first
    assert load_tool("apply_net").main([*common, "--save-features", "--test-dataset", "bp_id", "--test-dataset",
                                        "nope", "--output-dir", str(mine), *overrides]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "nope" in err and "not registered" in err
    assert _tree(mine) == before
    # a later dataset's folder holding a user's file: refused before inference, and nothing was written
    (mine / "bp_ood").mkdir()
    (mine / "bp_ood" / "notes.txt").write_text("mine")
    before = _tree(mine)
    assert load_tool("apply_net").main([*common, "--test-dataset", "bp_id", "--test-dataset", "bp_ood",
                                        "--output-dir", str(mine), *overrides]) == 2
    err = capsys.readouterr().err
    assert "holds files apply_net did not write (notes.txt)" in err and "nothing was written" in err
    assert _tree(mine) == before
    assert load_tool("apply_net").main([*common, "--test-dataset", "bp_id", "--test-dataset", "bp_id",
                                        "--output-dir", str(mine), *overrides]) == 2
    assert "a dataset is given twice" in capsys.readouterr().err


def test_eval_only_writes_below_the_training_run_and_takes_its_lock(applied, tmp_path):
    import shutil
    import subprocess
    import sys

    from ffs_det.engine.setup import claim_output_dir, eval_output_dir
    from repo_paths import REPO_ROOT

    root, out, common, overrides = applied
    run = tmp_path / "run"
    run.mkdir()
    weights = shutil.copy(overrides[1], run / "model_final.pth")
    (run / "config.yaml").write_text("the training's config\n")
    (run / "metrics.json").write_text('{"iteration": 3}\n')
    register = [a for a in common[4:]]  # the --register-coco triples
    cmd = [sys.executable, os.path.join(REPO_ROOT, "tools", "train_net.py"), "--config-file",
           "Shapes/vanilla_mobilenet.yaml", "--eval-only", *register, "MODEL.WEIGHTS", str(weights), "OUTPUT_DIR",
           str(run), "DATASETS.TEST", "('bp_id',)", "INPUT.MIN_SIZE_TEST", "128", "DATALOADER.NUM_WORKERS", "0"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    with claim_output_dir(eval_output_dir(str(run)), resume=True):  # another evaluation into the same folder
        busy = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert busy.returncode == 2 and "is in use by another" in busy.stderr, busy.stderr[-2000:]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (run / "config.yaml").read_text() == "the training's config\n"
    assert (run / "metrics.json").read_text() == '{"iteration": 3}\n'
    assert (run / "eval" / "config.yaml").is_file() and (run / "eval" / "coco_instances_results.json").is_file()
    assert "copypaste" in (run / "eval" / "log.txt").read_text()


def test_safe_features_attack_and_scores_on_a_trained_model(applied, tmp_path, capsys):
    """SAFE end to end: the backbone layers' box features are stored during detection, the training set's boxes
    are also pooled in FGSM-perturbed images (which raise the detector's loss), and compare_scores fits the MLP."""
    from ffs_det.evaluation.apply import load_model
    from ffs_det.evaluation.safe import ATTACK_LOSSES, SAFE_LAYERS, fgsm_images
    from detectron2.data import DatasetCatalog
    from detectron2.data import build_detection_test_loader
    from detectron2.utils.events import EventStorage

    from ffs_det.data.validate import CheckedDatasetMapper
    from ffs_det.evaluation.safe import _gt_instances

    root, out, common, overrides = applied
    safe_out = tmp_path / "inference"
    assert load_tool("apply_net").main([*common, "--save-features", "--safe-fit-of", "bp_train", "--test-dataset",
                                        "bp_train", "--test-dataset", "bp_id", "--test-dataset", "bp_ood",
                                        "--output-dir", str(safe_out), *overrides]) == 0
    train, meta = load_records(str(safe_out / "bp_train" / "records.npz"))
    test, test_meta = load_records(str(safe_out / "bp_id" / "records.npz"))
    assert meta["safe"] == {"layers": SAFE_LAYERS["mobilenetv2"], "adversarial": True, "epsilon": 8.0}
    assert train["safe_features"].shape == (len(train["score"]), 24 + 32 + 64 + 160)
    assert "safe_features_adv" in train and "safe_features_adv" not in test and not test_meta["safe"]["adversarial"]
    assert np.isfinite(train["safe_features_adv"]).all() and (train["safe_features_adv"] != train["safe_features"]).any()
    # the same detections as without --safe: the features are read during the detector's own pass
    plain, _ = load_records(str(out / "bp_id" / "records.npz"))
    np.testing.assert_array_equal(plain["boxes"], test["boxes"])
    # FGSM ascends the detector's training loss
    cfg = build_cfg("Shapes/vanilla_mobilenet.yaml", overrides + ["DATALOADER.NUM_WORKERS", "0"],
                    extra_files=["Inference/standard_nms.yaml"])
    model = load_model(cfg)
    dicts = DatasetCatalog.get("bp_train")[:3]
    loader = build_detection_test_loader(dicts, mapper=CheckedDatasetMapper(cfg, False))
    inputs = [batch[0] for batch in loader]
    attacked = fgsm_images(model, inputs, dicts, epsilon=0.05)  # a small step: the first-order rise

    def loss(inp, image, record):
        model.train()
        with torch.no_grad(), EventStorage(0), torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(inp["image_id"]))
            losses = model([dict(inp, image=image, instances=_gt_instances(record, inp["image"].shape[-2:]))])
        model.eval()
        return float(sum(losses[k] for k in ATTACK_LOSSES))

    rises = []
    for inp, adv, record in zip(inputs, attacked, dicts):
        assert adv.shape == inp["image"].shape and float((adv - inp["image"].float()).abs().max()) <= 0.05 + 1e-4
        rises.append(loss(inp, adv, record) - loss(inp, inp["image"].float(), record))
    assert all(r > 0 for r in rises), rises
    # the MLP, its fused score, and the error without the perturbed objects
    args = ["--train", str(safe_out / "bp_train" / "records.npz"), "--id", str(safe_out / "bp_id" / "records.npz"),
            "--ood", str(safe_out / "bp_ood" / "records.npz"), "--scorer", "safe", "--fuse", "energy", "safe",
            "--thres", "0.0"]
    assert load_tool("compare_scores").main([*args, "--output-dir", str(tmp_path / "scores")]) == 0
    result = json.loads((tmp_path / "scores" / "scores.json").read_text())
    assert {"energy", "safe", "energy+safe"} <= set(result["metrics"])
    assert result["info"]["safe_fit_on"]["perturbed"] == result["info"]["safe_fit_on"]["clean"] > 0
    args[1] = str(out / "bp_train" / "records.npz")  # applied without --safe-fit-of
    capsys.readouterr()
    assert load_tool("compare_scores").main([*args, "--output-dir", str(tmp_path / "none")]) == 2
    assert "no 'safe_features_adv' to fit SAFE on" in capsys.readouterr().err and not (tmp_path / "none").exists()
    # the perturbed objects need ground truth in the model's classes; checked before any dataset is run
    json_path, image_root = write_tiny_coco(str(tmp_path / "other"), num_images=2, seed=9)
    assert load_tool("apply_net").main([*common, "--save-features", "--register-coco-ood", "bp_other2", json_path,
                                        image_root, "--safe-fit-of", "bp_other2", "--test-dataset", "bp_id",
                                        "--test-dataset", "bp_other2", "--output-dir", str(tmp_path / "none"),
                                        *overrides]) == 2
    assert "SAFE's perturbed objects need a set annotated" in capsys.readouterr().err
    assert not (tmp_path / "none").exists()
