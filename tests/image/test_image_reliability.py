"""tools/image_ood.py refuses wrong inputs with one named `error:` line and exit 2, writes nothing then, and
never deletes what it did not write: store folders (--out, run's work dir, shards), report folders (one
generation, marked), sharded stores (duplicated shards), untrained networks (seeded), bad arrays/images."""
import json
import os
import shutil

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ffs_det.atomic_io import replace_folder_keeping
from ffs_det.image.cli import main
from ffs_det.image.feature_store import FeatureStore, FeatureStoreWriter, check_store_target, shard_name
from ffs_det.image.models import build_classifier
from ffs_det.image.pipeline import ModelSpec, SetSpec, _info, load_classifier
from ffs_det.image.report import REPORT_MARKER

COLUMNS = {"features": ((4,), "float32"), "logits": ((3,), "float32"), "labels": ((), "int64")}
EXTRACT = ["--threads", "1", "extract", "--model", "small_cnn", "--data", "digits", "--max-samples", "8",
           "--no-progress", "--batch-size", "8"]
RUN = ["--threads", "1", "run", "--model", "small_cnn", "--id-train", "digits", "--max-train", "24", "--id-test",
       "digits", "--max-test", "12", "--n-generated", "12", "--scorers", "msp,energy", "--no-progress"]
EVAL = ["--threads", "1", "evaluate", "--scorers", "msp,energy", "--no-progress"]


def _store(path, n=6, info=None, seed=0, fill=None):
    rng = np.random.default_rng(seed)
    with FeatureStoreWriter(str(path), n, COLUMNS, info=info) as w:
        w.append(features=rng.normal(size=(n, 4)) if fill is None else np.full((n, 4), fill),
                 logits=rng.normal(size=(n, 3)) + seed, labels=np.arange(n) % 3)
    return str(path)


def _tree(root):
    """Every file under ``root`` with its contents, and every folder: to show nothing changed."""
    out = {}
    for dirpath, dirs, files in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        out[rel + "/"] = None
        for f in files:
            with open(os.path.join(dirpath, f), "rb") as fh:
                out[os.path.join(rel, f)] = fh.read()
    return out


def _err(capsys):
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, lines
    return lines[0]


def _no_temporaries(folder):
    assert not [f for f in os.listdir(folder) if f.endswith((".tmp", ".old"))], os.listdir(folder)


# ---------------------------------------------------------------------------------- 1. store output folders
def test_extract_never_deletes_a_users_folder(tmp_path, capsys, monkeypatch):
    user = tmp_path / "thesis"
    (user / "chapters").mkdir(parents=True)
    (user / "thesis.tex").write_text("\\section{}")
    (user / "chapters" / "one.tex").write_text("x")
    before = _tree(user)
    monkeypatch.chdir(user)
    assert main([*EXTRACT, "--out", "."]) == 2
    assert _err(capsys) == ("error: output folder . holds files image_ood did not write (chapters, thesis.tex); "
                            "choose a new or empty folder, or remove them (nothing was written)")
    assert main([*EXTRACT, "--out", str(user), "--overwrite"]) == 2
    assert "(chapters, thesis.tex)" in _err(capsys)
    assert _tree(user) == before
    _no_temporaries(tmp_path)
    # a complete store with a README beside it is not replaced either (before: wiped with exit 0)
    store = _store(tmp_path / "store")
    (tmp_path / "store" / "README").write_text("mine")
    before = _tree(tmp_path / "store")
    assert main([*EXTRACT, "--out", store]) == 2
    assert _err(capsys).startswith(f"error: output folder {store} holds files image_ood did not write (README)")
    assert _tree(tmp_path / "store") == before
    # a sharded store is named as such
    _store(tmp_path / "sharded" / shard_name(0, 1), info={"shard": [0, 1]})
    assert main([*EXTRACT, "--out", str(tmp_path / "sharded")]) == 2
    assert "holds a sharded feature store (shard-00000-of-00001)" in _err(capsys)
    # an empty folder, and a store image_ood wrote, are fine
    (tmp_path / "empty").mkdir()
    assert main([*EXTRACT, "--out", str(tmp_path / "empty")]) == 0
    assert main([*EXTRACT, "--out", str(tmp_path / "empty"), "--max-samples", "5"]) == 0
    assert len(FeatureStore(str(tmp_path / "empty"))) == 5
    _no_temporaries(tmp_path)


def test_shards_touch_only_their_own_folder(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert main([*EXTRACT, "--out", str(out), "--shard", "0/2"]) == 0
    assert (out / "notes.txt").read_text() == "mine"
    (out / shard_name(1, 2)).mkdir()
    (out / shard_name(1, 2) / "thesis.tex").write_text("x")
    assert main([*EXTRACT, "--out", str(out), "--shard", "1/2"]) == 2
    assert _err(capsys).startswith(f"error: output folder {out / shard_name(1, 2)} holds files image_ood did not "
                                   "write (thesis.tex)")
    assert (out / shard_name(1, 2) / "thesis.tex").read_text() == "x"


def test_run_checks_its_store_folders_before_any_work(tmp_path, capsys):
    work = tmp_path / "work"
    (work / "features" / "t").mkdir(parents=True)
    (work / "features" / "t" / "data.csv").write_text("1,2")
    out = tmp_path / "out"
    assert main([*RUN, "--ood", "t=textures", "--work-dir", str(work), "--output-dir", str(out)]) == 2
    assert _err(capsys).startswith(f"error: output folder {work / 'features' / 't'} holds files image_ood did not "
                                   "write (data.csv)")
    assert sorted(os.listdir(work / "features")) == ["t"] and not out.exists()  # nothing extracted, no report


def test_writer_guards_itself(tmp_path):
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "keep.txt").write_text("x")
    with pytest.raises(ValueError, match=r"holds files image_ood did not write \(keep.txt\)"):
        _store(tmp_path / "s")
    assert os.listdir(tmp_path / "s") == ["keep.txt"]
    _no_temporaries(tmp_path)


FOREIGN = ["thesis.tex", ".hidden", "sub/", "sub/a.txt", shard_name(0, 2) + "/", "features.npy.bak", "meta.json"]


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(store=st.booleans(), extra=st.lists(st.sampled_from(FOREIGN), max_size=3, unique=True),
       drop=st.sampled_from([None, "logits.npy"]))
def test_property_a_folder_is_replaced_only_when_it_is_a_store(tmp_path_factory, capsys, store, extra, drop):
    """Whatever the folder holds: either it is (a part of) a store and is replaced, or extract (and the
    writer itself) refuses it and every file stays as it was."""
    path = tmp_path_factory.mktemp("p") / "out"
    path.mkdir()
    if store:
        _store(path, seed=1)
        if drop:
            os.remove(path / drop)
    for name in extra:
        if name == "meta.json" and store:
            continue
        if name.endswith("/"):
            (path / name).mkdir(exist_ok=True)
        else:
            (path / name).parent.mkdir(exist_ok=True)
            (path / name).write_text("user")
    before = _tree(path)
    ours = not extra or (store and extra == ["meta.json"])
    if ours:
        assert main([*EXTRACT, "--out", str(path)]) == 0
        assert len(FeatureStore(str(path))) == 8 and sorted(os.listdir(path)) == \
            ["features.npy", "labels.npy", "logits.npy", "meta.json"]
    else:
        assert main([*EXTRACT, "--out", str(path)]) == 2
        msg = _err(capsys)
        assert msg.startswith(f"error: output folder {path} holds ") and ("did not write" in msg or "sharded" in msg)
        with pytest.raises(ValueError, match="(did not write|sharded feature store)"):
            _store(path, n=4, seed=2)
        assert _tree(path) == before
    _no_temporaries(path.parent)


# --------------------------------------------------------------------------------------- 2. sharded stores
def test_a_duplicated_shard_is_refused(tmp_path, capsys):
    folder = tmp_path / "sharded"
    _store(folder / shard_name(0, 2), n=4, info={"shard": [0, 2]})
    shutil.copytree(folder / shard_name(0, 2), folder / shard_name(1, 2))  # shard 0 copied as shard 1
    with pytest.raises(ValueError, match=rf"{shard_name(1, 2)}: its meta.json says it holds shard \[0, 2\]"):
        FeatureStore(str(folder))
    test, ood = _store(tmp_path / "test"), _store(tmp_path / "ood", seed=3)
    assert main([*EVAL, "--id-train", str(folder), "--id-test", test, "--ood", f"o={ood}", "--output-dir",
                 str(tmp_path / "r")]) == 2
    assert _err(capsys).startswith(f"error: {folder / shard_name(1, 2)}: its meta.json says it holds shard [0, 2]")
    assert not (tmp_path / "r").exists()
    # shard lengths must be the consecutive split of the total (3 + 5 is not 4 + 4)
    shutil.rmtree(folder)
    _store(folder / shard_name(0, 2), n=3, info={"shard": [0, 2]})
    _store(folder / shard_name(1, 2), n=5, info={"shard": [1, 2]})
    with pytest.raises(ValueError, match=r"3 rows, but shard 0 of 2 of a 8-row set holds 4"):
        FeatureStore(str(folder))
    shutil.rmtree(folder / shard_name(0, 2))
    _store(folder / shard_name(0, 2), n=4, info={"shard": [0, 2]})
    _store(folder / shard_name(1, 2), n=4, info={"shard": [1, 2]})  # replaced: a store it wrote
    assert len(FeatureStore(str(folder))) == 8


# ------------------------------------------------------------------------------------- 3. untrained network
def test_untrained_network_is_seeded_and_shards_agree(tmp_path, capsys):
    sharded, single = str(tmp_path / "sharded"), str(tmp_path / "single")
    for i in range(2):
        assert main([*EXTRACT, "--out", sharded, "--shard", f"{i}/2"]) == 0
    assert "warning: no --weights given: the features come from an untrained small_cnn" in capsys.readouterr().err
    assert main([*EXTRACT, "--out", single]) == 0
    state = torch.get_rng_state()
    load_classifier(ModelSpec("small_cnn"))
    assert torch.equal(torch.get_rng_state(), state), "building the network must not move the global RNG"
    a, b = FeatureStore(sharded), FeatureStore(single)
    assert b.info["model"]["init_seed"] == 0 and a.info == b.info
    np.testing.assert_allclose(a["features"], b["features"], rtol=1e-6)
    # another --seed: another network (and subset), recorded
    assert main([*EXTRACT, "--out", str(tmp_path / "seed1"), "--seed", "1"]) == 0
    assert FeatureStore(str(tmp_path / "seed1")).info["model"]["init_seed"] == 1
    # shards of two seeds do not read as one store
    assert main([*EXTRACT, "--out", sharded, "--shard", "1/2", "--seed", "1"]) == 0
    with pytest.raises(ValueError, match=r"other settings than shard 0 \(dataset.seed 1 vs 0, model.init_seed 1 vs 0\)"):
        FeatureStore(sharded)
    # evaluate rebuilds the same network from the store's info
    model_spec = ModelSpec(**b.info["model"])
    rebuilt = load_classifier(model_spec)[0]
    again = build_classifier("small_cnn", init_seed=0)
    assert all(torch.equal(p, q) for p, q in zip(rebuilt.state_dict().values(), again.state_dict().values()))
    # torchvision models too (their init draws from torch's generator)
    a, b = (build_classifier("resnet18", init_seed=3).state_dict() for _ in range(2))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_weights_keep_the_store_info_as_before(tmp_path):
    weights = str(tmp_path / "w.pt")
    torch.save(build_classifier("small_cnn", init_seed=3).state_dict(), weights)
    spec = ModelSpec("small_cnn", weights, init_seed=5)
    assert spec.init_seed is None and "init_seed" not in _info(spec, SetSpec("digits"))["model"]
    a = build_classifier("small_cnn", weights, init_seed=1).state_dict()
    b = build_classifier("small_cnn", weights).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


# ------------------------------------------------------------------------------------------ 4. report folder
def test_report_folder_is_one_generation(tmp_path, capsys):
    train, test = _store(tmp_path / "s" / "train"), _store(tmp_path / "s" / "test", seed=1)
    a, b = _store(tmp_path / "s" / "a", seed=4), _store(tmp_path / "s" / "b", seed=5)
    out = tmp_path / "report"
    assert main([*EVAL, "--id-train", train, "--id-test", test, "--ood", f"a={a}", "--ood", f"b={b}",
                 "--output-dir", str(out)]) == 0
    assert {"roc_a.png", "roc_b.png", "hist_msp.png", REPORT_MARKER} <= set(os.listdir(out))
    assert main([*EVAL, "--id-train", train, "--id-test", test, "--ood", f"b={b}", "--output-dir", str(out),
                 "--no-plots"]) == 0
    assert sorted(os.listdir(out)) == sorted([REPORT_MARKER, "results.csv", "results.json", "scores.npz",
                                              "table.txt"])
    assert json.load(open(out / "results.json"))["ood"] == ["b"]
    (out / "notes.md").write_text("mine")
    before = _tree(out)
    assert main([*EVAL, "--id-train", train, "--id-test", test, "--ood", f"b={b}", "--output-dir", str(out)]) == 2
    assert _err(capsys) == (f"error: output folder {out} holds files image_ood did not write (notes.md); choose a "
                            "new or empty folder, or remove them (nothing was written)")
    assert _tree(out) == before
    # input stores inside the output folder are kept; other folders there are not the tool's to replace
    assert main([*EVAL, "--id-train", train, "--id-test", test, "--ood", f"b={b}", "--output-dir",
                 str(tmp_path / "s"), "--no-plots"]) == 2
    assert "holds files image_ood did not write (a/)" in _err(capsys)
    assert main([*EVAL, "--id-train", train, "--id-test", test, "--ood", f"a={a}", "--ood", f"b={b}",
                 "--output-dir", str(tmp_path / "s"), "--no-plots"]) == 0
    assert {"train", "test", "a", "b", "results.json"} <= set(os.listdir(tmp_path / "s"))
    assert len(FeatureStore(train)) == 6
    assert main([*EVAL, "--id-train", train, "--id-test", test, "--ood", f"b={b}", "--output-dir", test]) == 2
    assert _err(capsys) == f"error: output folder {test} holds a feature store; write the report to another folder " \
                           "(nothing was written)"


def test_run_report_keeps_the_work_folder(tmp_path):
    out = tmp_path / "out"
    assert main([*RUN, "--ood", "t=textures", "--ood", "d=digits", "--max-ood", "10", "--output-dir", str(out)]) == 0
    assert {"roc_t.png", "roc_d.png", "work"} <= set(os.listdir(out))
    meta = out / "work" / "features" / "t" / "meta.json"
    mtime = os.path.getmtime(meta)
    assert main([*RUN, "--ood", "t=textures", "--max-ood", "10", "--output-dir", str(out)]) == 0
    assert "roc_d.png" not in os.listdir(out) and "roc_t.png" in os.listdir(out)
    assert os.path.getmtime(meta) == mtime  # the stores were kept and re-used
    assert json.load(open(out / REPORT_MARKER))[-1] == "work/"
    _no_temporaries(tmp_path)


def test_kept_entries_come_back_when_the_swap_fails(tmp_path, monkeypatch):
    out = tmp_path / "out"
    replace_folder_keeping(str(out), {"a.txt": b"1"}, ".m")
    (out / "work").mkdir()
    (out / "work" / "cache.npy").write_bytes(b"c")
    real_rename, failed = os.rename, []

    def rename(src, dst):  # the new generation cannot take the folder's place (once)
        if str(dst) == str(out) and ".tmp" in str(src) and not failed:
            failed.append(src)
            raise OSError("disk gone")
        return real_rename(src, dst)

    monkeypatch.setattr(os, "rename", rename)
    with pytest.raises(OSError, match="disk gone"):
        replace_folder_keeping(str(out), {"b.txt": b"2"}, ".m", keep=["work"])
    monkeypatch.undo()
    assert sorted(os.listdir(out)) == [".m", "a.txt", "work"] and (out / "work" / "cache.npy").read_bytes() == b"c"
    _no_temporaries(tmp_path)


# ---------------------------------------------------------------------------------------------- 5. the rest
def test_arrays_without_a_row_dimension_are_named(tmp_path, capsys):
    path = _store(tmp_path / "s")
    np.save(os.path.join(path, "labels.npy"), np.int64(3))
    with pytest.raises(ValueError, match=r"labels\.npy: a 0-d array \(int64\[\]\), meta.json says int64\[6\]"):
        FeatureStore(path)
    meta = json.load(open(os.path.join(path, "meta.json")))
    meta["arrays"]["labels"]["shape"] = []
    json.dump(meta, open(os.path.join(path, "meta.json"), "w"))
    with pytest.raises(ValueError, match=r"meta.json: array 'labels' has shape \[\] \(0-d\)"):
        FeatureStore(path)
    assert main([*EVAL, "--id-train", path, "--id-test", path, "--ood", f"o={path}", "--output-dir",
                 str(tmp_path / "r")]) == 2
    assert "array 'labels' has shape [] (0-d)" in _err(capsys) and not (tmp_path / "r").exists()


def test_output_folder_that_is_a_file(tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("x")
    store = _store(tmp_path / "s")
    for argv in ([*EVAL, "--id-train", store, "--id-test", store, "--ood", f"o={store}"], [*RUN, "--ood", "t=textures"],
                 ["fashion-benchmark", "--size", "reduced"]):
        assert main([*argv, "--output-dir", str(afile)]) == 2
        assert _err(capsys) == f"error: output folder {afile} exists and is not a folder"
    assert afile.read_text() == "x" and sorted(os.listdir(tmp_path)) == ["afile", "s"]
    # below a file (before: a bare '[Errno 17] File exists' / 'Not a directory')
    assert main([*EXTRACT, "--out", str(afile / "store")]) == 2
    assert _err(capsys) == (f"error: output folder {afile / 'store'} cannot be created: {afile} exists and is not a "
                            "folder")
    assert main([*RUN, "--ood", "t=textures", "--output-dir", str(tmp_path / "r"), "--work-dir", str(afile)]) == 2
    assert f"cannot be created: {afile} exists and is not a folder" in _err(capsys)
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "work").write_text("x")
    assert main([*RUN, "--ood", "t=textures", "--output-dir", str(tmp_path / "r")]) == 2
    assert f"{tmp_path / 'r' / 'work'} exists and is not a folder" in _err(capsys)


def test_a_shard_that_would_be_empty_is_refused(tmp_path, capsys):
    out = tmp_path / "out"
    assert main([*EXTRACT, "--max-samples", "2", "--out", str(out), "--shard", "0/4"]) == 2
    assert _err(capsys) == ("error: --shard 0/4: digits has only 2 images, fewer than the 4 shards: some shards would "
                            "be empty and the sharded store could never be read; use at most 2 shards (nothing was "
                            "written)")
    assert not out.exists()


def test_nonfinite_features_name_the_file(tmp_path, capsys):
    train, test = _store(tmp_path / "train"), _store(tmp_path / "test", seed=1)
    bad = _store(tmp_path / "bad", seed=2)
    features = np.load(os.path.join(bad, "features.npy"), mmap_mode="r+")
    features[2, 1], features[4, 0] = np.nan, np.inf
    features.flush()
    del features
    assert main([*EVAL, "--id-train", train, "--id-test", test, "--ood", f"o={bad}", "--output-dir",
                 str(tmp_path / "r")]) == 2
    assert _err(capsys) == (f"error: {os.path.join(bad, 'features.npy')}: 2 of 6 rows of 'features' hold NaN or "
                            "infinite values (first at row 2); scorers cannot use them: re-extract the store with a "
                            "classifier that gives finite outputs")
    assert not (tmp_path / "r").exists()


def test_unreadable_image_in_a_folder_is_named(tmp_path, capsys):
    from PIL import Image

    images = tmp_path / "images" / "cls"
    images.mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(images / "ok.png")
    (images / "broken.jpg").write_bytes(b"not an image")
    for data in (tmp_path / "images", images):  # class subfolders, and a flat folder
        assert main([*EXTRACT[:5], "--data", f"folder:{data}", "--out", str(tmp_path / "s"), "--no-progress"]) == 2
        assert _err(capsys) == (f"error: image {images / 'broken.jpg'} cannot be read: not an image file PIL can "
                                "decode (corrupt, truncated or another format: UnidentifiedImageError); remove or "
                                "replace it")
    assert not (tmp_path / "s").exists()


def test_check_store_target_accepts_absent_empty_and_stores(tmp_path):
    check_store_target(str(tmp_path / "a" / "b"))
    (tmp_path / "e").mkdir()
    check_store_target(str(tmp_path / "e"))
    check_store_target(_store(tmp_path / "s"))


def test_one_set_in_two_roles_is_refused(tmp_path, capsys):
    from ffs_det.image.cli import main
    from ffs_det.image.feature_store import FeatureStoreWriter

    def store(path, dataset):
        columns = {"features": ((4,), "float32"), "logits": ((3,), "float32"), "labels": ((), "int64")}
        with FeatureStoreWriter(str(path), 6, columns, {"dataset": dataset}) as w:
            rng = np.random.default_rng(0)
            w.append(features=rng.normal(size=(6, 4)), logits=rng.normal(size=(6, 3)), labels=np.arange(6) % 3)
        return str(path)

    train = store(tmp_path / "train", {"spec": "digits@train", "seed": 0})
    test = store(tmp_path / "test", {"spec": "digits@test", "seed": 0})
    again = store(tmp_path / "again", {"spec": "digits@train", "seed": 0})
    base = ["evaluate", "--scorers", "knn", "--no-rebuild", "--no-progress", "--output-dir", str(tmp_path / "r")]
    assert main([*base, "--id-train", train, "--id-test", train, "--ood", f"o={test}"]) == 2
    assert "--id-test store" in capsys.readouterr().err
    assert main([*base, "--id-train", train, "--id-test", again, "--ood", f"o={test}"]) == 2
    assert "was extracted from the same data as the --id-train store" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
    assert main(["run", "--model", "small_cnn", "--id-train", "digits@train", "--id-test", "digits@train",
                 "--ood", "t=textures", "--output-dir", str(tmp_path / "r2"), "--no-progress"]) == 2
    assert "are the same data" in capsys.readouterr().err and not (tmp_path / "r2").exists()


def test_stores_of_two_networks_are_not_compared(tmp_path, capsys):
    from ffs_det.image.feature_store import FeatureStoreWriter

    def store(path, dataset, sha):
        columns = {"features": ((4,), "float32"), "logits": ((3,), "float32"), "labels": ((), "int64")}
        info = {"dataset": dataset, "model": {"name": "small_cnn"}, "weights_sha256": sha}
        with FeatureStoreWriter(str(path), 6, columns, info) as w:
            rng = np.random.default_rng(0)
            w.append(features=rng.normal(size=(6, 4)), logits=rng.normal(size=(6, 3)), labels=np.arange(6) % 3)
        return str(path)

    train = store(tmp_path / "train", {"spec": "digits@train"}, "a" * 64)
    test = store(tmp_path / "test", {"spec": "digits@test"}, "a" * 64)
    ood = store(tmp_path / "ood", {"spec": "textures"}, "b" * 64)
    assert main(["evaluate", "--scorers", "knn", "--no-rebuild", "--no-progress", "--output-dir", str(tmp_path / "r"),
                 "--id-train", train, "--id-test", test, "--ood", f"o={ood}"]) == 2
    assert "--ood o store" in capsys.readouterr().err and not (tmp_path / "r").exists()
