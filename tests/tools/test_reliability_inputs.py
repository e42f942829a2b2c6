"""Bad inputs of the detector tools that gave silent wrong results, ran code or lost data: pickled weights,
records of another model or inference config, the ID test set as training set, degenerate fits, malformed
COCO json, NaN in metrics, undrawable images, demo seeds and overrides (docs/reliability.md)."""
import json
import os
import pickle

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ffs_det.atomic_io import finite_json, json_bytes
from ffs_det.evaluation.records import INFERENCE_KEYS, check_same_model, inference_settings, save_records
from records_factory import synthetic_records, write_records
from repo_paths import load_tool

CONFIG = ("DATASETS:\n  TRAIN: [t_train]\n  TEST: [t_val]\nINPUT:\n  MIN_SIZE_TEST: 640\nMODEL:\n  ROI_HEADS:\n"
          "    NMS_THRESH_TEST: 0.5\n")


def _config(min_size=640, nms=0.5):
    return CONFIG.replace("640", str(min_size)).replace("0.5", str(nms))


# ------------------------------------------------------------------ provenance: checkpoint and inference settings
def test_inference_settings_are_read_from_the_records_config():
    got = inference_settings({"config": _config(128, 0.9)})
    assert got == {"INPUT.MIN_SIZE_TEST": 128, "MODEL.ROI_HEADS.NMS_THRESH_TEST": 0.9}
    assert inference_settings({"config": "not: [valid"}) == {} and inference_settings({}) == {}
    assert set(got) <= set(INFERENCE_KEYS)


def test_eval_ood_refuses_records_of_other_inference_settings(tmp_path, capsys):
    idp = write_records(tmp_path / "id.npz", 60, 0, dataset="t_val", config=_config(640, 0.5), weights_sha256="a" * 64)
    ood = write_records(tmp_path / "ood.npz", 60, 1, dataset="t_ood", feature_shift=3, matched=None,
                        config=_config(128, 0.9), weights_sha256="a" * 64)
    out = tmp_path / "report"
    assert load_tool("eval_ood").main(["--id", idp, "--ood", ood, "--output-dir", str(out), "--thres", "0.5"]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "other inference settings" in err
    assert "INPUT.MIN_SIZE_TEST 128 vs 640" in err and "MODEL.ROI_HEADS.NMS_THRESH_TEST 0.9 vs 0.5" in err
    assert not out.exists()
    same = write_records(tmp_path / "ood2.npz", 60, 1, dataset="t_ood", feature_shift=3, matched=None,
                         config=_config(640, 0.5), weights_sha256="a" * 64)
    assert load_tool("eval_ood").main(["--id", idp, "--ood", same, "--output-dir", str(out), "--thres", "0.5"]) == 0


@settings(max_examples=25, deadline=None)
@given(st.dictionaries(st.sampled_from(["INPUT.MIN_SIZE_TEST", "MODEL.ROI_HEADS.NMS_THRESH_TEST"]),
                       st.integers(1, 4), max_size=2),
       st.dictionaries(st.sampled_from(["INPUT.MIN_SIZE_TEST", "MODEL.ROI_HEADS.NMS_THRESH_TEST"]),
                       st.integers(1, 4), max_size=2))
def test_same_model_check_refuses_exactly_the_differing_settings(a, b):
    def meta(values):
        cfg = {}
        for key, v in values.items():
            node = cfg
            *parents, leaf = key.split(".")
            for p in parents:
                node = node.setdefault(p, {})
            node[leaf] = v
        return {"class_names": ["a"], "config": json.dumps(cfg)}  # JSON is YAML

    differ = [k for k in a if k in b and a[k] != b[k]]
    if differ:
        with pytest.raises(ValueError, match="other inference settings"):
            check_same_model("ID", "id", meta(a), "OOD", "ood", meta(b))
    else:
        check_same_model("ID", "id", meta(a), "OOD", "ood", meta(b))


def test_score_boxes_and_compare_scores_refuse_training_records_of_another_checkpoint(tmp_path, capsys):
    train = write_records(tmp_path / "train.npz", 200, 0, dataset="t_train", config=CONFIG, weights_sha256="b" * 64)
    idp = write_records(tmp_path / "id.npz", 60, 1, dataset="t_val", config=CONFIG, weights_sha256="a" * 64)
    ood = write_records(tmp_path / "ood.npz", 60, 2, dataset="t_ood", feature_shift=3, matched=None, config=CONFIG,
                        weights_sha256="a" * 64)
    out = tmp_path / "out"
    assert load_tool("score_boxes").main(["--scorer", "mahalanobis", "--train", train, "--records", idp,
                                          "--output-dir", str(out)]) == 2
    assert "come from another checkpoint than the training records" in capsys.readouterr().err
    assert load_tool("compare_scores").main(["--train", train, "--id", idp, "--ood", ood, "--scorer", "mahalanobis",
                                             "--no-fuse", "--thres", "0.5", "--output-dir", str(out)]) == 2
    assert "come from another checkpoint than the training records" in capsys.readouterr().err
    assert not out.exists()


def test_the_id_test_set_is_refused_as_training_set(tmp_path, capsys):
    idp = write_records(tmp_path / "id.npz", 200, 1, dataset="t_val", config=CONFIG)
    ood = write_records(tmp_path / "ood.npz", 60, 2, dataset="t_ood", feature_shift=3, matched=None, config=CONFIG)
    out = tmp_path / "out"
    # a set the model's config lists as a test set only
    assert load_tool("score_boxes").main(["--scorer", "mahalanobis", "--train", idp, "--records", ood,
                                          "--output-dir", str(out)]) == 2
    assert "a test set of the model's config (DATASETS.TEST), not a training set" in capsys.readouterr().err
    # a set that is also scored (here under a config that does not list it)
    same = write_records(tmp_path / "same.npz", 200, 1, dataset="t_val")
    idp2 = write_records(tmp_path / "id2.npz", 200, 1, dataset="t_val")
    assert load_tool("compare_scores").main(["--train", same, "--id", idp2, "--ood", ood, "--scorer", "mahalanobis",
                                             "--no-fuse", "--thres", "0.5", "--output-dir", str(out)]) == 2
    assert "fit on the ID training set, not on a set that is scored" in capsys.readouterr().err
    assert not out.exists()


def test_score_boxes_refuses_to_overwrite_its_input_and_names_nan_features(tmp_path, capsys):
    inference = tmp_path / "inference"
    train = write_records(inference / "t_train" / "records.npz", 200, 0, dataset="t_train")
    idp = write_records(inference / "t_val" / "records.npz", 60, 1, dataset="t_val")
    before = open(idp, "rb").read()
    assert load_tool("score_boxes").main(["--scorer", "knn", "--option", "k=3", "--train", train, "--records", idp,
                                          "--output-dir", str(inference)]) == 2
    assert "is an input of this command" in capsys.readouterr().err
    assert open(idp, "rb").read() == before
    arrays, meta = synthetic_records(60, 1, dataset="t_val")
    arrays["features"][4, 2] = np.nan
    bad = save_records(str(tmp_path / "nan.npz"), arrays, meta)
    assert load_tool("score_boxes").main(["--scorer", "knn", "--option", "k=3", "--train", train, "--records", bad,
                                          "--output-dir", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert f"records {bad}: 'features': 1 of 60 rows hold NaN or infinite values (e.g. row 4)" in err
    assert load_tool("score_boxes").main(["--scorer", "knn", "--option", "k=3", "--train", train, "--records", idp,
                                          "--key", "../x", "--output-dir", str(tmp_path / "o")]) == 2
    assert "--key '../x': a records array name is" in capsys.readouterr().err
    for key in ("allow_pickle", "file", "meta"):  # names numpy's savez would take as its own arguments
        assert load_tool("score_boxes").main(["--scorer", "knn", "--option", "k=3", "--train", train, "--records",
                                              idp, "--key", key, "--output-dir", str(tmp_path / "o")]) == 2
        assert f"--key '{key}'" in capsys.readouterr().err
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert load_tool("score_boxes").main(["--scorer", "knn", "--option", "k=3", "--train", train, "--records", idp,
                                          "--output-dir", str(afile / "sub")]) == 2
    assert "exists and is not a folder" in capsys.readouterr().err


def test_degenerate_gaussian_fits_are_refused():
    from ffs_det.density.scorers import build_scorer

    for x, y in [(np.ones((1, 4)), np.zeros(1, int)), (np.ones((12, 4)), np.arange(12) % 3),
                 (np.eye(3, 4), np.arange(3))]:
        with pytest.raises(ValueError, match="no spread about their class means"):
            build_scorer("mahalanobis").fit(x, y)
    x = np.random.default_rng(0).normal(size=(12, 4))
    assert np.isfinite(build_scorer("mahalanobis").fit(x, np.arange(12) % 3).score(x)).all()


# ------------------------------------------------------------------------------------------------ pickled weights
class _Marker:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_pkl_weights_are_refused_without_the_opt_in(tmp_path, capsys):
    from ffs_det.engine.checkpoint import SafeCheckpointer
    from ffs_det.engine.setup import ConfigError, build_cfg, check_inputs

    marker = tmp_path / "ran"
    evil = tmp_path / "evil.pkl"
    with open(evil, "wb") as f:
        pickle.dump({"model": {"w": _Marker(str(marker))}}, f)
    with pytest.raises(ValueError, match=r"a \.pkl file can only be read with pickle, which runs code from the file; "
                                         r"pass --allow-pickle"):
        SafeCheckpointer(torch.nn.Linear(2, 2)).load(str(evil))
    cfg = build_cfg("Shapes/vanilla_mobilenet.yaml", ["MODEL.WEIGHTS", str(evil)])
    with pytest.raises(ConfigError, match="MODEL.WEIGHTS: checkpoint .*evil.pkl: a .pkl file"):
        check_inputs(cfg, eval_only=True)
    assert load_tool("apply_net").main(["--config-file", "Shapes/vanilla_mobilenet.yaml", "--test-dataset", "x",
                                        "--output-dir", str(tmp_path / "out"), "MODEL.WEIGHTS", str(evil)]) == 2
    assert "pass --allow-pickle if you trust its source" in capsys.readouterr().err
    assert not marker.exists() and not (tmp_path / "out").exists()
    # with the opt-in a (benign) model-zoo style .pkl loads
    model = torch.nn.Linear(2, 2)
    good = tmp_path / "good.pkl"
    with open(good, "wb") as f:
        pickle.dump({"model": {k: v.numpy() for k, v in model.state_dict().items()}, "__author__": "test"}, f)
    other = torch.nn.Linear(2, 2)
    SafeCheckpointer(other, allow_pickle=True).load(str(good))
    torch.testing.assert_close(other.weight, model.weight)


def test_tools_offer_the_pickle_opt_in_and_say_it_runs_code(capsys):
    assert load_tool("train_net").parse_args(["--allow-pickle", "--config-file", "x.yaml"]).allow_pickle
    assert not load_tool("apply_net").parse_args(["--config-file", "x.yaml", "--test-dataset", "d"]).allow_pickle
    for tool in ("train_net", "apply_net"):
        with pytest.raises(SystemExit):
            load_tool(tool).parse_args(["--help"])
        assert "RUNS CODE FROM THE FILE" in " ".join(capsys.readouterr().out.split())


# --------------------------------------------------------------------------------------------------- COCO json
def _coco(tmp_path, categories, bbox=(10, 10, 30, 30)):
    from PIL import Image

    root = tmp_path / "imgs"
    root.mkdir(exist_ok=True)
    Image.new("RGB", (64, 64)).save(root / "a.png")
    data = {"images": [{"id": 1, "file_name": "a.png", "width": 64, "height": 64}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": bbox, "area": 900, "iscrowd": 0}],
            "categories": categories}
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(data))
    return str(path), str(root)


@pytest.mark.parametrize("bbox", [["10", "10", "30", "30"], [10, 10, 30], "10,10,30,30", [10, 10, 30, True], True,
                                  None, 5, {"x": 1}])
def test_a_malformed_bbox_is_an_error_not_a_dropped_box(tmp_path, bbox):
    from detectron2.data import DatasetCatalog

    from ffs_det.data import register_coco

    json_path, root = _coco(tmp_path, [{"id": 1, "name": "a"}], bbox)
    name = f"rel_bbox_{abs(hash(str(bbox)))}"
    register_coco(name, json_path, root)
    with pytest.raises(ValueError, match=r"has bbox .*; a bbox is a list of 4 numbers \[x, y, width, height\]"):
        DatasetCatalog.get(name)


def test_empty_or_duplicate_categories_are_named(tmp_path):
    from ffs_det.data import register_coco
    from ffs_det.data.validate import check_num_classes
    from ffs_det.engine.setup import build_cfg

    json_path, root = _coco(tmp_path, [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}, {"id": 3, "name": "a"}])
    with pytest.raises(ValueError, match="names category 'a' more than once; category names must be unique"):
        register_coco("rel_dup_cats", json_path, root)
    json_path, root = _coco(tmp_path, [])
    register_coco("rel_no_cats", json_path, root)
    cfg = build_cfg("Shapes/vanilla_mobilenet.yaml", ["DATASETS.TRAIN", "('rel_no_cats',)"])
    with pytest.raises(ValueError, match="training set 'rel_no_cats' has no classes"):
        check_num_classes(cfg)


# ------------------------------------------------------------------------------------------------ outputs
def test_json_outputs_hold_no_nan():
    obj = {"ap": float("nan"), "x": [1.0, float("inf"), np.float32("nan"), np.float64(2.5)], "n": 3, "s": "nan"}
    assert finite_json(obj) == {"ap": None, "x": [1.0, None, None, 2.5], "n": 3, "s": "nan"}
    assert json.loads(json_bytes(obj)) == finite_json(obj)


def test_an_image_over_the_pixel_limit_or_unreadable_is_not_drawn(tmp_path, monkeypatch, caplog):
    from PIL import Image

    from ffs_det.evaluation.draw import draw_detections

    Image.new("RGB", (200, 200)).save(tmp_path / "big.png")
    Image.new("RGB", (20, 20)).save(tmp_path / "small.png")
    (tmp_path / "broken.png").write_bytes(b"not an image")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 200x200 is over twice the limit: a "bomb"
    arrays = {"image_id": np.array([1, 2, 3]), "boxes": np.array([[1, 1, 5, 5]] * 3, np.float32),
              "pred_class": np.zeros(3, np.int64), "score": np.ones(3, np.float32),
              "energy": np.ones(3, np.float32)}
    files = {1: str(tmp_path / "big.png"), 2: str(tmp_path / "small.png"), 3: str(tmp_path / "broken.png")}
    out = draw_detections(arrays, files, ["a"], np.ones(3, bool), "energy", 0.0, 10)
    assert list(out) == [2]
    assert "big.png" in caplog.text and "broken.png" in caplog.text


def test_output_folders_below_a_file_are_refused_before_any_work(tmp_path):
    from ffs_det.atomic_io import check_replaceable_folder

    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(ValueError, match="exists and is not a folder"):
        check_replaceable_folder(str(afile / "a" / "b"))
    check_replaceable_folder(str(tmp_path / "new" / "deeper"))


# ------------------------------------------------------------------------------------------------------- demo
def test_demo_refuses_negative_seeds_and_bad_overrides_before_the_world(tmp_path, capsys):
    demo = load_tool("demo")
    out = tmp_path / "demo"
    assert demo.main(["--output-dir", str(out), "--seeds", "0,-1"]) == 2
    assert "distinct integers >= 0" in capsys.readouterr().err
    assert demo.main(["--output-dir", str(out), "--seeds", "0", "FFS.NOPE", "1"]) == 2
    assert "Non-existent key: FFS.NOPE" in capsys.readouterr().err
    assert demo.main(["--output-dir", str(out), "--seeds", "0", "SOLVER.MAX_ITER", "10", "FFS.START_ITER",
                      "50"]) == 2
    assert "FFS.START_ITER 50 >= SOLVER.MAX_ITER 10" in capsys.readouterr().err
    assert not os.path.exists(out / "datasets")


def test_proposal_records_or_the_training_set_are_not_evaluated_as_detections(tmp_path, capsys):
    from ffs_det.evaluation.records import load_records

    idp = write_records(tmp_path / "id.npz", 60, 0, dataset="t_val", config=CONFIG)
    arrays, meta = load_records(idp)
    arrays["gt_class"], arrays["iou"] = arrays["pred_class"].copy(), np.ones(len(arrays["score"]), np.float32)
    props = save_records(str(tmp_path / "proposals.npz"), arrays, dict(meta, dataset="t_train", kind="proposals"))
    out = str(tmp_path / "r")
    assert load_tool("eval_ood").main(["--id", idp, "--ood", props, "--output-dir", out, "--thres", "0.5"]) == 2
    assert "are proposal records (apply_net --proposals-of" in capsys.readouterr().err
    assert load_tool("score_boxes").main(["--scorer", "knn", "--train", props, "--records", idp,
                                          "--output-dir", out]) == 2
    assert "are proposal records" in capsys.readouterr().err
    train = write_records(tmp_path / "train.npz", 60, 3, dataset="t_train", config=CONFIG)
    assert load_tool("eval_ood").main(["--id", idp, "--ood", train, "--output-dir", out, "--thres", "0.5"]) == 2
    assert "a training set of the model (DATASETS.TRAIN)" in capsys.readouterr().err
    assert not os.path.exists(out)


_JSON_VALUES = st.recursive(st.none() | st.booleans() | st.integers(-50, 200) | st.floats(allow_nan=True)
                            | st.text(max_size=4), lambda inner: st.lists(inner, max_size=5), max_leaves=8)


@settings(max_examples=30, deadline=None)
@given(bbox=st.lists(_JSON_VALUES, max_size=6) | _JSON_VALUES)
def test_any_bbox_value_loads_or_gives_one_named_error(tmp_path_factory, bbox):
    from detectron2.data import DatasetCatalog

    from ffs_det.data import register_coco

    tmp_path = tmp_path_factory.mktemp("bbox")
    json_path, root = _coco(tmp_path, [{"id": 1, "name": "a"}], bbox)
    name = f"rel_prop_{tmp_path.name}"
    register_coco(name, json_path, root)
    try:
        dicts = DatasetCatalog.get(name)
    except ValueError as e:
        assert json_path in str(e) and "bbox" in str(e)
        return
    boxes = [a["bbox"] for d in dicts for a in d["annotations"]]
    assert all(len(b) == 4 and all(np.isfinite(b)) and b[2] >= 1 and b[3] >= 1 for b in boxes)
