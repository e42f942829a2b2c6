"""Records files and the OOD report (tools/eval_ood.py) on synthetic records."""
import csv
import importlib.util
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from ffs_det.density.metrics import ood_metrics, optimal_f1_threshold
from ffs_det.evaluation.records import OPTIONAL, REQUIRED, REQUIRED_META, load_records, save_records
from records_factory import K, synthetic_records, write_records
from repo_paths import REPO_ROOT as ROOT


def _load_cli():
    spec = importlib.util.spec_from_file_location("eval_ood_cli", os.path.join(ROOT, "tools", "eval_ood.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


eval_ood = _load_cli()


PAPERS_THRESHOLD = 0.45
# what apply_net stores from COCOeval on the annotated ID set (here a made-up value between the score quartiles)
PAPERS = {"threshold": PAPERS_THRESHOLD, "unrounded": PAPERS_THRESHOLD + 2e-5,
          "per_class": {"a": 0.4, "b": 0.45, "c": 0.5}}


@pytest.fixture
def record_files(tmp_path):
    """An annotated ID set (inlier logits shifted up) and two unannotated OOD sets, each with a box-level score."""
    sets = [("id", 0, 1.0, {"dataset": "voc_custom_val", "papers_threshold": PAPERS}),
            ("coco", 1, 0.0, {"matched": None, "dataset": "coco_ood_val"}),
            ("oi", 2, -0.5, {"matched": None, "dataset": "openimages_ood_val"})]
    return {name: write_records(tmp_path / f"{name}.npz", 400, seed, shift=shift, missed=7, extra_scores=("knn",),
                                **kw)
            for name, seed, shift, kw in sets}


# ------------------------------------------------------------------------------------------------- records
def test_records_roundtrip_and_coercion(tmp_path):
    arrays, meta = synthetic_records(50, papers_threshold=PAPERS)
    arrays["energy"] = arrays["energy"].astype(np.float64)  # safe casts are applied on save
    arrays["image_id"] = arrays["image_id"].astype(np.int32)
    path = save_records(str(tmp_path / "r.npz"), arrays, meta)
    got, got_meta = load_records(path)
    assert got_meta == meta
    assert set(got) == set(arrays)
    assert got["energy"].dtype == np.float32 and got["image_id"].dtype == np.int64
    for k in arrays:
        np.testing.assert_array_equal(got[k], arrays[k].astype(got[k].dtype))
    assert os.listdir(tmp_path) == ["r.npz"]  # no temporary file left behind


def test_records_with_no_detections_roundtrip(tmp_path):
    arrays, meta = synthetic_records(0)
    got, _ = load_records(save_records(str(tmp_path / "empty.npz"), arrays, meta))
    assert got["logits"].shape == (0, K + 1)


@pytest.mark.parametrize("mutate, key", [
    (lambda a, m: a.pop("energy"), "energy"),
    (lambda a, m: a.__setitem__("score", a["score"][:-1]), "score"),
    (lambda a, m: a.__setitem__("logits", a["logits"][:, :K]), "logits"),
    (lambda a, m: a.__setitem__("boxes", a["boxes"][:, :3]), "boxes"),
    (lambda a, m: a.__setitem__("pred_class", a["pred_class"] + K), "pred_class"),
    (lambda a, m: a["energy"].__setitem__(3, np.nan), "energy"),
    (lambda a, m: a.__setitem__("gt_matched", a["gt_matched"].astype(np.int8)), "gt_matched"),
    (lambda a, m: m.pop("num_gt"), "meta"),
    (lambda a, m: m.pop("class_names"), "meta"),
    (lambda a, m: m.__setitem__("class_names", ["a"]), "meta"),
])
def test_malformed_records_are_rejected_on_save_and_load(tmp_path, mutate, key):
    arrays, meta = synthetic_records(30)
    mutate(arrays, meta)
    path = str(tmp_path / "bad.npz")
    with pytest.raises(ValueError, match=f"bad.npz: '{key}'"):
        save_records(path, arrays, meta)
    assert not os.path.exists(path)
    # the same content written by hand is rejected when loaded
    np.savez(path, meta=np.array(json.dumps(meta)), **arrays)
    with pytest.raises(ValueError, match=f"bad.npz: '{key}'"):
        load_records(path)


def test_load_rejects_wrong_dtype_pickles_bad_meta_and_garbage(tmp_path):
    arrays, meta = synthetic_records(20)
    p = str(tmp_path / "f64.npz")
    np.savez(p, meta=np.array(json.dumps(meta)), **dict(arrays, score=arrays["score"].astype(np.float64)))
    with pytest.raises(ValueError, match="f64.npz: 'score': dtype must be float32"):
        load_records(p)
    p = str(tmp_path / "obj.npz")
    np.savez(p, meta=np.array(json.dumps(meta)), **dict(arrays, note=np.array([{"x": 1}] * 20, dtype=object)))
    with pytest.raises(ValueError, match="obj.npz: 'note'"):
        load_records(p)
    p = str(tmp_path / "meta.npz")
    np.savez(p, meta=np.array("{not json"), **arrays)
    with pytest.raises(ValueError, match="meta.npz: 'meta': invalid JSON"):
        load_records(p)
    p = str(tmp_path / "nometa.npz")
    np.savez(p, **arrays)
    with pytest.raises(ValueError, match="nometa.npz: 'meta'"):
        load_records(p)
    p = tmp_path / "garbage.npz"
    p.write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(ValueError, match="garbage.npz"):
        load_records(str(p))
    with pytest.raises(FileNotFoundError, match="absent.npz"):
        load_records(str(tmp_path / "absent.npz"))


def _doc_rows(heading):
    """The rows of the table under ``## heading`` of docs/records.md, as lists of cells without backquotes."""
    with open(os.path.join(ROOT, "docs", "records.md"), encoding="utf-8") as f:
        section = f.read().split(f"## {heading}", 1)[1].split("\n## ", 1)[0]
    rows = [line.strip("|").split("|") for line in section.splitlines() if line.startswith("| `")]
    return [[cell.strip().replace("`", "") for cell in row] for row in rows]


def test_the_records_page_lists_the_arrays_and_meta_keys_records_py_defines():
    arrays = {key: (dtype, shape.count(",") + (not shape.endswith(",)")), required)
              for key, dtype, shape, required, _ in _doc_rows("Arrays")}
    assert arrays == {key: (np.dtype(dtype).name, ndim, "yes" if key in REQUIRED else "no")
                      for key, (dtype, ndim) in {**REQUIRED, **OPTIONAL}.items()}
    assert tuple(key for key, required, _ in _doc_rows("`meta`") if required == "yes") == REQUIRED_META


# ------------------------------------------------------------------------------------------------- report
def _kept(path, thr, key, protocol="global-f1"):
    arrays, _ = load_records(path)
    if protocol == "global-f1":
        return arrays[key][arrays["score"] >= thr]
    logits = arrays["logits"].astype(np.float64)
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return arrays[key][probs[:, :-1].max(1) >= thr]


@pytest.mark.parametrize("protocol", ["papers", "global-f1"])
def test_eval_ood_end_to_end_matches_direct_metrics(record_files, tmp_path, capsys, protocol):
    out = tmp_path / "report"
    chosen = ["--protocol", protocol] if protocol != "papers" else []  # papers: the default
    assert eval_ood.main(["--id", record_files["id"], "--ood", record_files["coco"], "--ood", record_files["oi"],
                          "--output-dir", str(out), *chosen]) == 0
    printed = capsys.readouterr().out
    assert "coco_ood_val" in printed and "openimages_ood_val" in printed and "FPR95" in printed
    assert f"protocol {protocol}" in printed
    assert sorted(os.listdir(out)) == [".ffs_det_ood_report", "hist_coco_ood_val.png", "hist_openimages_ood_val.png",
                                       "metrics.csv", "metrics.json", "roc.png"]
    for png in ("roc.png", "hist_coco_ood_val.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    umask = os.umask(0)
    os.umask(umask)
    assert (out / "metrics.json").stat().st_mode & 0o777 == 0o666 & ~umask  # not the temp file's private mode

    id_arrays, id_meta = load_records(record_files["id"])
    if protocol == "papers":
        thr, point = PAPERS_THRESHOLD, "closest"
    else:
        thr, _ = optimal_f1_threshold(id_arrays["score"], id_arrays["gt_matched"], n_positive_total=id_meta["num_gt"])
        point = "first"
    metrics = json.loads((out / "metrics.json").read_text())
    assert list(metrics) == ["coco_ood_val", "openimages_ood_val"]
    for name, key in (("coco_ood_val", "coco"), ("openimages_ood_val", "oi")):
        m = metrics[name]
        want = ood_metrics(_kept(record_files["id"], thr, "energy", protocol),
                           _kept(record_files[key], thr, "energy", protocol), fpr_point=point)
        assert m["threshold"] == pytest.approx(thr) and m["protocol"] == protocol
        assert (m["n_id"], m["n_ood"]) == (want["n_id"], want["n_ood"])
        for k in ("fpr95", "auroc", "aupr_in", "aupr_out", "fpr95_ood_positive"):
            assert m[k] == pytest.approx(want[k], abs=1e-12)
            assert 0.0 <= m[k] <= 1.0
    # the ID energies are shifted up: a working report sees clear separation
    assert metrics["coco_ood_val"]["auroc"] > 0.75
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert [r["ood_set"] for r in rows] == ["coco_ood_val", "openimages_ood_val"]
    assert {r["protocol"] for r in rows} == {protocol}
    assert float(rows[0]["auroc"]) == pytest.approx(metrics["coco_ood_val"]["auroc"])


def test_thres_and_score_key(record_files, tmp_path):
    out = tmp_path / "r"
    assert eval_ood.main(["--id", record_files["id"], "--ood", record_files["coco"], "--thres", "0.5",
                          "--score-key", "score", "--output-dir", str(out), "--protocol", "global-f1"]) == 0
    m = json.loads((out / "metrics.json").read_text())["coco_ood_val"]
    id_kept, ood_kept = _kept(record_files["id"], 0.5, "score"), _kept(record_files["coco"], 0.5, "score")
    want = ood_metrics(id_kept, ood_kept)
    assert m["threshold"] == 0.5 and m["score_key"] == "score"
    assert (m["n_id"], m["n_ood"]) == (id_kept.size, ood_kept.size)
    assert m["auroc"] == pytest.approx(want["auroc"]) and m["fpr95"] == pytest.approx(want["fpr95"])
    # a box-level scorer's output stored in the records works as a score key too
    assert eval_ood.main(["--id", record_files["id"], "--ood", record_files["coco"], "--thres", "0.5",
                          "--score-key", "knn", "--output-dir", str(tmp_path / "k")]) == 0
    m_knn = json.loads((tmp_path / "k" / "metrics.json").read_text())["coco_ood_val"]
    assert m_knn["auroc"] == pytest.approx(ood_metrics(_kept(record_files["id"], 0.5, "knn", "papers"),
                                                       _kept(record_files["coco"], 0.5, "knn", "papers"))["auroc"])
    # the protocols' own thresholds are different ones
    for protocol, want in (("papers", PAPERS_THRESHOLD), ("global-f1", None)):
        assert eval_ood.main(["--id", record_files["id"], "--ood", record_files["coco"], "--output-dir",
                              str(tmp_path / protocol), "--protocol", protocol]) == 0
        got = json.loads((tmp_path / protocol / "metrics.json").read_text())["coco_ood_val"]["threshold"]
        assert got != 0.5 and (want is None or got == want)


def _fails(args, tmp_path, capsys, match):
    out = tmp_path / "out"
    assert eval_ood.main(args + ["--output-dir", str(out)]) == 2
    assert match in capsys.readouterr().err
    assert not out.exists()  # no partial output


def test_unannotated_id_needs_thres(record_files, tmp_path, capsys):
    _fails(["--id", record_files["coco"], "--ood", record_files["oi"]], tmp_path, capsys, "pass --thres")
    assert eval_ood.main(["--id", record_files["coco"], "--ood", record_files["oi"], "--thres", "0.3",
                          "--output-dir", str(tmp_path / "ok")]) == 0


def test_errors_leave_no_output(record_files, tmp_path, capsys):
    bad = str(tmp_path / "bad.npz")
    arrays, meta = synthetic_records(10, 5, dataset="x")
    np.savez(bad, meta=np.array(json.dumps(meta)), **dict(arrays, energy=arrays["energy"][:5]))
    _fails(["--id", record_files["id"], "--ood", record_files["coco"], "--ood", bad], tmp_path, capsys,
           "bad.npz: 'energy'")
    _fails(["--id", record_files["id"], "--ood", record_files["coco"], "--thres", "1.5"], tmp_path, capsys,
           "none of its")
    _fails(["--id", record_files["id"], "--ood", record_files["coco"], "--score-key", "logits"], tmp_path, capsys,
           "usable --score-key values: energy, knn, score, msp")
    _fails(["--id", record_files["id"], "--ood", record_files["coco"], "--ood", record_files["coco"]], tmp_path,
           capsys, "given twice")
    _fails(["--id", record_files["id"], "--ood", str(tmp_path / "missing.npz")], tmp_path, capsys, "missing.npz")
    other = str(tmp_path / "other.npz")
    write_records(other, 10, 6, dataset="y", class_names=["x", "y", "z"])
    _fails(["--id", record_files["id"], "--ood", other], tmp_path, capsys, "classes")


def test_a_rerun_replaces_the_whole_report_and_foreign_folders_are_refused(record_files, tmp_path, capsys):
    out = tmp_path / "report"
    assert eval_ood.main(["--id", record_files["id"], "--ood", record_files["coco"], "--ood", record_files["oi"],
                          "--output-dir", str(out)]) == 0
    assert (out / "hist_openimages_ood_val.png").exists()
    assert eval_ood.main(["--id", record_files["id"], "--ood", record_files["coco"], "--output-dir", str(out)]) == 0
    # no plot of the first run stays beside the second run's metrics
    assert sorted(os.listdir(out)) == [".ffs_det_ood_report", "hist_coco_ood_val.png", "metrics.csv", "metrics.json",
                                       "roc.png"]
    assert list(json.loads((out / "metrics.json").read_text())) == ["coco_ood_val"]
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".report.")]  # no temporary folder left
    # a folder this tool did not write (here: an apply_net dataset folder) is refused and left as it is
    dataset_dir = tmp_path / "inference" / "voc_custom_val"
    dataset_dir.mkdir(parents=True)
    (dataset_dir / "metrics.json").write_text('{"bbox": {"AP": 50.0}}')
    (dataset_dir / "records.npz").write_bytes(b"records")
    capsys.readouterr()
    assert eval_ood.main(["--id", record_files["id"], "--ood", record_files["coco"], "--output-dir",
                          str(dataset_dir)]) == 2
    assert capsys.readouterr().err.strip() == (f"error: output folder {dataset_dir} holds files this tool did not "
                                               "write (metrics.json, records.npz); choose a new or empty folder, "
                                               "or remove them (nothing was written)")
    assert (dataset_dir / "metrics.json").read_text() == '{"bbox": {"AP": 50.0}}'
    assert sorted(os.listdir(dataset_dir)) == ["metrics.json", "records.npz"]
    # a file the user put into a report folder is not deleted by a rerun: the rerun is refused
    (out / "notes.txt").write_text("mine")
    capsys.readouterr()
    assert eval_ood.main(["--id", record_files["id"], "--ood", record_files["coco"], "--output-dir", str(out)]) == 2
    assert "holds files this tool did not write (notes.txt)" in capsys.readouterr().err
    assert (out / "notes.txt").read_text() == "mine" and (out / "metrics.json").is_file()


def test_id_records_given_as_ood_and_unmatched_id_records_are_refused(record_files, tmp_path, capsys):
    _fails(["--id", record_files["id"], "--ood", record_files["id"]], tmp_path, capsys,
           f"OOD records {record_files['id']} are of the ID set 'voc_custom_val'")
    arrays, meta = load_records(record_files["id"])
    copy = save_records(str(tmp_path / "copy.npz"), arrays, dict(meta, dataset="renamed"))
    _fails(["--id", record_files["id"], "--ood", copy], tmp_path, capsys,
           f"OOD records {copy} hold the same detections as the ID records")
    no_match = dict(arrays, gt_matched=np.zeros_like(arrays["gt_matched"]))
    unmatched = save_records(str(tmp_path / "unmatched.npz"), no_match, meta)
    _fails(["--id", unmatched, "--ood", record_files["coco"], "--protocol", "global-f1"], tmp_path, capsys, "(F1 = 0)")
    # annotated records from before apply_net stored the papers' threshold
    old = save_records(str(tmp_path / "old.npz"), arrays, {k: v for k, v in meta.items() if k != "papers_threshold"})
    _fails(["--id", old, "--ood", record_files["coco"]], tmp_path, capsys, "carry no 'papers_threshold'")


def test_few_detections_are_flagged_with_a_standard_error(tmp_path, capsys):
    paths = {"id": write_records(tmp_path / "id.npz", 40, 0, dataset="tiny_id"),
             "ood": write_records(tmp_path / "ood.npz", 40, 1, matched=None, dataset="tiny_ood")}
    assert eval_ood.main(["--id", paths["id"], "--ood", paths["ood"], "--thres", "0.0",
                          "--output-dir", str(tmp_path / "r")]) == 0
    m = json.loads((tmp_path / "r" / "metrics.json").read_text())["tiny_ood"]
    se = 100 * np.sqrt(m["fpr95"] * (1 - m["fpr95"]) / 40)
    assert (f"note: energy on tiny_ood: only 40 ID and 40 OOD detections kept; FPR95 has a binomial standard error of "
            f"{se:.1f} points") in capsys.readouterr().out


def test_cli_runs_as_a_script(record_files, tmp_path):
    out = tmp_path / "cli"
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "eval_ood.py"), "--id", record_files["id"],
                           "--ood", record_files["coco"], "--output-dir", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "coco_ood_val" in proc.stdout and (out / "metrics.json").is_file()


def test_draw_marks_flagged_detections_on_images(tmp_path):
    from PIL import Image

    from ffs_det.data.shapes import generate_world
    from ffs_det.evaluation.draw import ID_COLOUR, OOD_COLOUR

    generate_world(str(tmp_path / "data" / "shapes"), {"train": 0, "val": 3, "ood": 3, "far_ood": 0}, seed=2)
    paths = [write_records(tmp_path / f"{name}.npz", 60, seed, shift=shift, matched=None, dataset=name, images=3,
                           image_size=120) for name, seed, shift in (("shapes_val", 0, 3.0), ("shapes_ood", 1, -3.0))]
    out = tmp_path / "drawn"
    assert eval_ood.main(["--id", paths[0], "--ood", paths[1], "--thres", "0.2", "--draw", "2", "--dataset-dir",
                          str(tmp_path / "data"), "--output-dir", str(out)]) == 0
    for name, colour in (("shapes_val", ID_COLOUR), ("shapes_ood", OOD_COLOUR)):
        files = sorted(os.listdir(out / "images" / name))
        assert files == ["00000001.png", "00000002.png"]
        pix = np.asarray(Image.open(out / "images" / name / files[0]).convert("RGB"))
        assert (pix == colour).all(-1).sum() > 20  # box outlines in the expected colour


def test_draw_uses_the_image_files_the_records_name(tmp_path):
    """Records of apply_net name their images: a set that is not a built-in dataset is drawn from them."""
    from ffs_det.data.shapes import generate_world

    generate_world(str(tmp_path / "data" / "shapes"), {"train": 0, "val": 2, "ood": 2, "far_ood": 0}, seed=3)
    val = json.loads((tmp_path / "data" / "shapes" / "annotations" / "val.json").read_text())
    moved = tmp_path / "elsewhere"
    moved.mkdir()
    files = {}
    for im in val["images"]:  # the images under new names in another folder: only the records know them
        target = moved / f"img_{im['id']}.png"
        shutil.copy(tmp_path / "data" / "shapes" / "val" / im["file_name"], target)
        files[str(im["id"])] = str(target)
    paths = [write_records(tmp_path / f"{name}.npz", 40, seed, shift=shift, matched=None, dataset=name, images=2,
                           image_size=120, image_files=files)
             for name, seed, shift in (("custom_id", 0, 3.0), ("custom_ood", 1, -3.0))]
    out = tmp_path / "drawn"
    assert eval_ood.main(["--id", paths[0], "--ood", paths[1], "--thres", "0.2", "--draw", "5",
                          "--output-dir", str(out)]) == 0
    for name in ("custom_id", "custom_ood"):
        assert sorted(os.listdir(out / "images" / name)) == ["00000001.png", "00000002.png"]
