"""Malformed inputs: property-based tests of the records and feature-store loaders (always a ValueError or
FileNotFoundError naming the file, never another exception, never an output file), and the CLIs' one-line
`error:` messages."""
import fcntl
import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ffs_det.evaluation.ood_report import run_report
from ffs_det.evaluation.records import load_records
from records_factory import synthetic_records, write_records
from repo_paths import REPO_ROOT as REPO

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _npz_bytes(arrays, meta_value):
    buf = io.BytesIO()
    extra = {} if meta_value is None else {"meta": meta_value}
    np.savez(buf, **extra, **arrays)
    return buf.getvalue()


def _assert_clean_failure(path, fn):
    """``fn()`` either works or raises ValueError/FileNotFoundError whose message names ``path``."""
    try:
        fn()
    except (ValueError, FileNotFoundError) as e:
        assert str(path) in str(e), str(e)
        return False
    return True


# ------------------------------------------------------------------------------------------------ records
@FAST
@given(data=st.binary(max_size=600))
def test_random_bytes_are_rejected_naming_the_file(tmp_path, data):
    path = tmp_path / "r.npz"
    path.write_bytes(data)
    assert not _assert_clean_failure(path, lambda: load_records(str(path)))


@FAST
@given(cut=st.integers(0, 10_000), flips=st.lists(st.tuples(st.integers(0, 10_000), st.integers(1, 255)),
                                                  max_size=4))
def test_truncated_or_corrupted_records_fail_cleanly(tmp_path, cut, flips):
    arrays, meta = synthetic_records(20, features=0)
    good = bytearray(_npz_bytes(arrays, np.array(json.dumps(meta))))
    for pos, x in flips:
        good[pos % len(good)] ^= x
    path = tmp_path / "r.npz"
    path.write_bytes(bytes(good[: max(1, len(good) - cut % len(good))]))
    _assert_clean_failure(path, lambda: load_records(str(path)))


_META_VALUES = st.one_of(
    st.none(), st.just(np.array("not json")), st.just(np.array(json.dumps([1, 2]))), st.just(np.arange(3)),
    st.just(np.array(json.dumps({"dataset": "x"}))),
    st.fixed_dictionaries({"num_classes": st.one_of(st.integers(-2, 5), st.booleans(), st.text(max_size=2)),
                           "class_names": st.one_of(st.lists(st.text(max_size=2), max_size=4), st.integers())})
    .map(lambda m: np.array(json.dumps({"dataset": "x", "model": "m", "config": "", **m}))))
_ARRAYS = st.dictionaries(
    st.sampled_from(["image_id", "boxes", "pred_class", "score", "energy", "logits", "gt_matched", "other"]),
    st.tuples(st.sampled_from(["float32", "float64", "int64", "int32", "bool", "U1"]),
              st.lists(st.integers(0, 4), min_size=0, max_size=3)),
    max_size=8)


@FAST
@given(meta=_META_VALUES, spec=_ARRAYS, drop=st.sets(st.sampled_from(["energy", "score", "boxes"]), max_size=2))
def test_records_with_wrong_keys_dtypes_shapes_or_meta_fail_cleanly(tmp_path, meta, spec, drop):
    arrays, _ = synthetic_records(4, features=0)
    for key in drop:
        arrays.pop(key)
    for key, (dtype, shape) in spec.items():
        arrays[key] = np.zeros(shape, dtype=dtype)
    path = tmp_path / "r.npz"
    path.write_bytes(_npz_bytes(arrays, meta))
    _assert_clean_failure(path, lambda: load_records(str(path)))


def test_deeply_nested_meta_is_refused_cleanly(tmp_path):
    arrays, _ = synthetic_records(3, features=0)
    path = tmp_path / "r.npz"
    path.write_bytes(_npz_bytes(arrays, np.array("[" * 100000 + "]" * 100000)))
    with pytest.raises(ValueError, match=r"r\.npz: 'meta': JSON nested too deeply to read"):
        load_records(str(path))


def test_pickled_object_arrays_are_refused_without_unpickling(tmp_path):
    arrays, meta = synthetic_records(3, features=0)
    arrays["evil"] = np.array([object()] * 3, dtype=object)
    buf = io.BytesIO()
    np.savez(buf, meta=np.array(json.dumps(meta)), **arrays)
    (tmp_path / "r.npz").write_bytes(buf.getvalue())
    with pytest.raises(ValueError, match=r"r\.npz: 'evil': cannot be read without pickle"):
        load_records(str(tmp_path / "r.npz"))


@FAST
@given(bad=st.sampled_from(["empty", "garbage", "zero_id", "zero_ood", "missing"]))
def test_report_with_a_bad_input_writes_nothing(tmp_path_factory, bad):
    tmp = tmp_path_factory.mktemp("rep")
    id_path = write_records(tmp / "id.npz", 0 if bad == "zero_id" else 30, 1, dataset="set1", features=0)
    ood_path = write_records(tmp / "ood.npz", 0 if bad == "zero_ood" else 30, 2, dataset="set2", features=0)
    target = id_path
    if bad == "empty":
        open(ood_path, "wb").close()
        target = ood_path
    elif bad == "garbage":
        (tmp / "ood.npz").write_bytes(b"PK\x03\x04 not a zip")
        target = ood_path
    elif bad == "missing":
        os.remove(ood_path)
        target = ood_path
    elif bad == "zero_ood":
        target = ood_path
    out = tmp / "report"
    with pytest.raises((ValueError, FileNotFoundError), match=os.path.basename(target)):
        run_report(id_path, [ood_path], str(out), thres=0.1 if bad == "zero_ood" else None)
    assert not out.exists()


# ------------------------------------------------------------------------------------------ feature store
from ffs_det.image import feature_store as fs  # noqa: E402


def _store(path, n=5, d=4):
    with fs.FeatureStoreWriter(str(path), n, {"features": ((d,), "float32"), "labels": ((), "int64")}) as w:
        w.append(features=np.ones((n, d), np.float32), labels=np.arange(n))
    return path


_META_MUTATIONS = [
    lambda m: m.pop("length"), lambda m: m.__setitem__("length", "five"), lambda m: m.__setitem__("length", -1),
    lambda m: m.pop("arrays"), lambda m: m.__setitem__("arrays", [1, 2]), lambda m: m.__setitem__("arrays", {"x": 3}),
    lambda m: m["arrays"]["features"].pop("shape"), lambda m: m["arrays"]["features"].__setitem__("shape", [5, 7]),
    lambda m: m["arrays"]["features"].__setitem__("dtype", "no-such-dtype"),
    lambda m: m["arrays"]["features"].__setitem__("dtype", "float64"),
    lambda m: m["arrays"]["features"].__setitem__("file", "labels.npy"),
    lambda m: m["arrays"]["features"].__setitem__("file", 7),
    lambda m: m.__setitem__("version", 99), lambda m: m.__setitem__("format", "other"),
]


@FAST
@given(mutations=st.lists(st.sampled_from(range(len(_META_MUTATIONS))), min_size=1, max_size=3, unique=True))
def test_feature_store_with_malformed_metadata_fails_cleanly(tmp_path_factory, mutations):
    path = _store(tmp_path_factory.mktemp("fs") / "store")
    meta = json.loads((path / "meta.json").read_text())
    for i in mutations:
        try:
            _META_MUTATIONS[i](meta)
        except (KeyError, TypeError, AttributeError):
            pass  # an earlier mutation removed what this one changes
    (path / "meta.json").write_text(json.dumps(meta))
    _assert_clean_failure(path, lambda: fs.FeatureStore(str(path)))


@FAST
@given(data=st.binary(max_size=300), target=st.sampled_from(["meta.json", "features.npy", "labels.npy"]),
       keep=st.floats(0, 1))
def test_feature_store_with_corrupt_files_fails_cleanly(tmp_path_factory, data, target, keep):
    path = _store(tmp_path_factory.mktemp("fs") / "store")
    f = path / target
    original = f.read_bytes()
    f.write_bytes(original[: int(len(original) * keep)] + data)
    _assert_clean_failure(path, lambda: fs.FeatureStore(str(path)))


def test_feature_store_writer_leaves_nothing_on_error(tmp_path):
    with pytest.raises(ValueError, match="only 2 of 5 rows"):
        with fs.FeatureStoreWriter(str(tmp_path / "s"), 5, {"features": ((3,), "float32")}) as w:
            w.append(features=np.zeros((2, 3), np.float32))
    assert os.listdir(tmp_path) == []


# --------------------------------------------------------------------------------------------------- CLIs
def _cli(tool, *args, status=2):
    """The one ``error:`` line of a tool that refuses its input (exit status 2, ffs_det/exit_status.py)."""
    proc = subprocess.run([sys.executable, os.path.join(REPO, "tools", tool), *map(str, args)], capture_output=True,
                          text=True, timeout=240, env=dict(os.environ, OMP_NUM_THREADS="1"))
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert proc.returncode == status, (proc.returncode, proc.stdout[-2000:], proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr[-3000:]
    assert len(errors) == 1, proc.stderr[-3000:]
    return errors[0]


def test_eval_ood_cli_bad_inputs(tmp_path):
    id_path = write_records(tmp_path / "id.npz", 30, 1, dataset="set1", features=0)
    (tmp_path / "bad.npz").write_bytes(b"\x00" * 50)
    msg = _cli("eval_ood.py", "--id", id_path, "--ood", tmp_path / "bad.npz", "--output-dir", tmp_path / "out")
    assert msg.startswith(f"error: records {tmp_path / 'bad.npz'}: not an .npz (zip) archive")
    msg = _cli("eval_ood.py", "--id", id_path, "--ood", tmp_path / "none.npz", "--output-dir", tmp_path / "out")
    assert msg == f"error: records file not found: {tmp_path / 'none.npz'}"
    assert not (tmp_path / "out").exists()
    ood = write_records(tmp_path / "ood.npz", 30, 2, dataset="set2", features=0)
    (tmp_path / "file").write_text("x")
    msg = _cli("eval_ood.py", "--id", id_path, "--ood", ood, "--output-dir", tmp_path / "file")
    assert msg == f"error: output folder {tmp_path / 'file'} exists and is not a folder"


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    from detector_utils import write_tiny_coco

    root = tmp_path_factory.mktemp("cli")
    return write_tiny_coco(str(root), num_images=3)


def test_train_net_cli_bad_inputs(tiny_data, tmp_path):
    json_path, image_root = tiny_data
    base = ["--config-file", "Shapes/ffs_mobilenet.yaml", "--register-coco", "t", json_path, image_root,
            "DATASETS.TRAIN", "('t',)", "DATASETS.TEST", "()", "OUTPUT_DIR", tmp_path]
    assert _cli("train_net.py", *base, "FFS.NOPE", "1") == "error: command-line override: Non-existent key: FFS.NOPE"
    assert _cli("train_net.py", *base, "FFS.COV_UPDATE", "fast") == ("error: FFS.COV_UPDATE must be 'running' or "
                                                                    "'exact', got 'fast'")
    msg = _cli("train_net.py", *base, "MODEL.ROI_HEADS.NUM_CLASSES", "5")
    assert msg == ("error: MODEL.ROI_HEADS.NUM_CLASSES is 5 but training set 't' has 3 classes (disc, block, wedge); "
                   "set MODEL.ROI_HEADS.NUM_CLASSES 3")
    msg = _cli("train_net.py", *base, "SOLVER.IMS_PER_BATCH", "0")
    assert msg == "error: SOLVER.IMS_PER_BATCH must be a positive multiple of the number of processes (1), got 0"
    msg = _cli("train_net.py", "--num-gpus", "2", *base, "SOLVER.IMS_PER_BATCH", "3")
    assert msg == "error: SOLVER.IMS_PER_BATCH must be a positive multiple of the number of processes (2), got 3"
    msg = _cli("train_net.py", *base, "SOLVER.MAX_ITER", "100", "FFS.START_ITER", "100")
    assert msg == ("error: FFS.START_ITER 100 >= SOLVER.MAX_ITER 100: FFS.SYNTHESIS 'flow' would never synthesise "
                   "an outlier and train a plain detector; lower FFS.START_ITER (or set FFS.SYNTHESIS none)")
    msg = _cli("train_net.py", *base[:2], "--dataset-dir", tmp_path / "nowhere")
    assert msg.startswith(f"error: dataset 'shapes_train': annotation file not found: {tmp_path / 'nowhere'}")
    # the test sets are evaluated when training ends: missing ones are reported before training starts
    msg = _cli("train_net.py", *base[:6], "--dataset-dir", tmp_path / "nowhere", *base[6:], "DATASETS.TEST",
               "('shapes_val',)")
    assert msg.startswith(f"error: dataset 'shapes_val': annotation file not found: {tmp_path / 'nowhere'}")


def test_apply_net_cli_rejects_a_checkpoint_of_another_class_count(tiny_data, tmp_path):
    from detectron2.modeling import build_model

    from ffs_det.engine.setup import build_cfg

    json_path, image_root = tiny_data
    small = ["MODEL.MOBILENET.WEIGHTS", "", "FFS.FLOW.HIDDEN", "16"]
    cfg = build_cfg("Shapes/ffs_mobilenet.yaml", small + ["MODEL.ROI_HEADS.NUM_CLASSES", "5"])
    torch.save({"model": build_model(cfg).state_dict()}, tmp_path / "five.pth")
    msg = _cli("apply_net.py", "--config-file", "Shapes/ffs_mobilenet.yaml", "--test-dataset", "t", "--register-coco",
               "t", json_path, image_root, "--output-dir", tmp_path / "out", *small, "MODEL.WEIGHTS",
               tmp_path / "five.pth")
    assert msg.startswith(f"error: checkpoint {tmp_path / 'five.pth'} does not fit the model of this config")
    assert "roi_heads.box_predictor.cls_score.weight: checkpoint (6, 256) vs model (4, 256)" in msg
    assert msg.endswith("it was trained with another MODEL.ROI_HEADS.NUM_CLASSES")
    assert not (tmp_path / "out").exists()


def test_config_file_with_a_python_tag_is_refused_and_not_run(tmp_path):
    marker = tmp_path / "ran"
    evil = tmp_path / "evil.yaml"
    evil.write_text('_BASE_: "Shapes/vanilla_mobilenet.yaml"\n'
                    f'SOLVER:\n  BASE_LR: !!python/object/apply:os.system ["touch {marker}"]\n')
    including = tmp_path / "including.yaml"
    including.write_text(f'_BASE_: "{evil}"\n')
    msg = _cli("train_net.py", "--config-file", evil, "OUTPUT_DIR", tmp_path / "out")
    assert msg == (f"error: {evil}:3: YAML tag !!python/object/apply:os.system is not allowed in a config file "
                   "(config files hold plain values; nothing in them is run)")
    msg = _cli("train_net.py", "--config-file", including, "OUTPUT_DIR", tmp_path / "out")
    assert msg.startswith(f"error: {including} (its _BASE_ {evil}:3): YAML tag !!python/object/apply:os.system")
    msg = _cli("apply_net.py", "--config-file", "Shapes/vanilla_mobilenet.yaml", "--inference-config", evil,
               "--test-dataset", "shapes_val", "--output-dir", tmp_path / "out")
    assert "YAML tag !!python/object/apply:os.system is not allowed" in msg
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_train_net_refuses_a_used_or_busy_output_dir(tiny_data, tmp_path):
    json_path, image_root = tiny_data
    out = tmp_path / "run"
    out.mkdir()
    args = ["--config-file", "Shapes/vanilla_mobilenet.yaml", "--register-coco", "t", json_path, image_root,
            "DATASETS.TRAIN", "('t',)", "DATASETS.TEST", "()", "OUTPUT_DIR", out]
    (out / "model_final.pth").write_bytes(b"weights of an earlier run")
    (out / "metrics.json").write_text('{"iteration": 0}\n')
    msg = _cli("train_net.py", *args)
    assert msg == (f"error: OUTPUT_DIR {out} already holds a training run (model_final.pth, metrics.json); pass "
                   "--resume to continue it, or delete those files or choose another OUTPUT_DIR to start over "
                   "(nothing was changed)")
    assert (out / "model_final.pth").read_bytes() == b"weights of an earlier run"
    assert (out / "metrics.json").read_text() == '{"iteration": 0}\n'
    with open(out / ".train.lock", "a") as held:  # as a training running into the same folder holds it
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        msg = _cli("train_net.py", "--resume", *args)
    assert msg.startswith(f"error: OUTPUT_DIR {out} is in use by another training")
    (tmp_path / "file").write_text("x")
    msg = _cli("train_net.py", *args[:-1], tmp_path / "file")
    assert msg == f"error: OUTPUT_DIR {tmp_path / 'file'} exists and is not a folder"


def test_images_of_more_than_8_bits_are_refused_naming_the_file(tmp_path):
    from PIL import Image

    from ffs_det.data.validate import CheckedDatasetMapper, ImageReadError
    from ffs_det.engine.setup import build_cfg

    mapper = CheckedDatasetMapper(build_cfg("Shapes/vanilla_mobilenet.yaml"), False)
    values = (np.arange(64 * 48).reshape(48, 64) * 20).astype(np.uint16)
    Image.fromarray(values).save(tmp_path / "thermal.png")  # a 16-bit PNG (mode I;16)
    Image.fromarray((values // 257).astype(np.uint8)).save(tmp_path / "gray.png")
    record = {"image_id": 7, "height": 48, "width": 64}
    with pytest.raises(ImageReadError) as info:
        mapper(dict(record, file_name=str(tmp_path / "thermal.png")))
    assert str(info.value) == (f"image {tmp_path / 'thermal.png'} (image id 7) has I;16 pixels (more than 8 bits per "
                               "channel), which detectron2 would clip to white; convert the images to 8 bits first "
                               "(e.g. scale 16-bit values by 1/257)")
    out = mapper(dict(record, file_name=str(tmp_path / "gray.png")))
    assert tuple(out["image"].shape[1:]) == (160, 213) and out["image"].float().std() > 0


@pytest.mark.parametrize("text, message", [
    ("", "{f}: a config file must be a mapping of KEY: value, got nothing (an empty file)"),
    ("- a\n- b\n", "{f}: a config file must be a mapping of KEY: value, got a list"),
    ("SOLVER:\n  BASE_LR: [0.1\n", "{f}: not valid YAML, line 3 column 1: expected ',' or ']', but got '<stream end>'"),
    ("SOLVER:\n\tBASE_LR: 0.1\n", "{f}: not valid YAML, line 2 column 1: found character '\\t' that cannot start any "
                                  "token"),
    ('_BASE_: "bad.yaml"\n', "{f}: its _BASE_ chain includes {f} again: bad.yaml -> bad.yaml"),
    ('_BASE_: "nothere.yaml"\n', "{f} (its _BASE_ {d}/nothere.yaml): _BASE_ file not found"),
    ("_BASE_: 3\n", "{f}: _BASE_ must be a file name or a list of file names, got 3"),
])
def test_broken_config_files_give_one_error_naming_the_file(tmp_path, text, message):
    from ffs_det.engine.setup import ConfigError, build_cfg

    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    with pytest.raises(ConfigError) as info:
        build_cfg(str(bad))
    assert str(info.value) == message.format(f=bad, d=tmp_path)


def test_train_net_reports_a_config_syntax_error_on_one_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text('_BASE_: "Base.yaml"\n')
    (tmp_path / "Base.yaml").write_text('_BASE_: "bad.yaml"\n')
    msg = _cli("train_net.py", "--config-file", bad)
    assert msg == f"error: {bad}: its _BASE_ chain includes {bad} again: bad.yaml -> Base.yaml -> bad.yaml"


def test_dataset_names_that_would_escape_the_output_folder_are_refused(tiny_data, tmp_path):
    from ffs_det.atomic_io import child_folder

    json_path, image_root = tiny_data
    msg = _cli("apply_net.py", "--config-file", "Shapes/vanilla_mobilenet.yaml", "--register-coco", "..", json_path,
               image_root, "--test-dataset", "..", "--output-dir", tmp_path / "out")
    assert msg == (f"error: dataset name '..' cannot name a folder below {tmp_path / 'out'} (it would write outside "
                   "it); use a plain name without '/', '\\' or '..'")
    assert not (tmp_path / "out").exists()
    for bad in ("", ".", "..", "a/b", "/abs", "a\\b"):
        with pytest.raises(ValueError, match="cannot name a folder below"):
            child_folder(str(tmp_path), bad)
    assert child_folder(str(tmp_path), "voc_custom_val") == os.path.join(str(tmp_path), "voc_custom_val")


def test_a_training_set_without_a_usable_box_is_one_error(tiny_data, tmp_path):
    json_path, image_root = tiny_data
    with open(json_path) as f:
        data = json.load(f)
    for ann in data["annotations"]:  # YOLO-style boxes normalised to [0, 1]: all under 1 px
        ann["bbox"] = [0.1, 0.1, 0.2, 0.2]
        ann["area"] = 0.04
    normalised = tmp_path / "normalised.json"
    normalised.write_text(json.dumps(data))
    msg = _cli("train_net.py", "--config-file", "Shapes/vanilla_mobilenet.yaml", "--register-coco", "t", normalised,
               image_root, "DATASETS.TRAIN", "('t',)", "DATASETS.TEST", "()", "OUTPUT_DIR", tmp_path / "out")
    assert msg == (f"error: training set t: no image has a usable box ({len(data['images'])} images, 0 boxes kept by "
                   "the box rule, 0 of them crowd); boxes under 1 px or outside their image are dropped: are the "
                   "json's bboxes COCO [x, y, width, height] in pixels (not normalised to [0, 1])?")


_YAML_PIECES = st.sampled_from(["SOLVER:", "  BASE_LR:", " 0.1", " abc", " [1, 2", "]", "\n", "\t", "- ", "_BASE_:",
                                ' "nothere.yaml"', "FFS:", "  NOPE: 1", "  SELECT: x", "MODEL: 3",
                                "!!python/name:os.system",
                                " {", "}", ":", "'", "&a", "*a", "~", "SEED: 1", "%YAML 1.1", "---", "..."])


@FAST
@given(text=st.lists(_YAML_PIECES, max_size=12).map("".join))
def test_any_config_file_loads_or_gives_one_config_error(tmp_path_factory, text):
    from ffs_det.engine.setup import ConfigError, build_cfg

    path = tmp_path_factory.mktemp("cfg") / "c.yaml"
    path.write_text(text)
    try:
        build_cfg(str(path))
    except ConfigError as e:
        assert str(e) and "\n" not in str(e)


def test_claim_output_dir_counts_runs_not_failed_starts(tmp_path):
    from ffs_det.engine.setup import ConfigError, claim_output_dir

    (tmp_path / "metrics.json").write_text("")  # what a run that failed before its first step leaves
    with claim_output_dir(str(tmp_path), resume=False):
        with pytest.raises(ConfigError, match="is in use by another training"):  # held while inside
            with claim_output_dir(str(tmp_path), resume=True):
                pass
    with claim_output_dir(str(tmp_path), resume=False):  # released on exit
        pass
    (tmp_path / "metrics.json").write_text('{"iteration": 0}\n')
    with pytest.raises(ConfigError, match="already holds a training run \\(metrics.json\\)"):
        with claim_output_dir(str(tmp_path), resume=False):
            pass
