"""tools/image_ood.py: extract -> evaluate step by step equals run in one go; report files; errors."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from ffs_det.image.cli import main, parse_named, parse_scorer_options
from ffs_det.image.feature_store import FeatureStore
from ffs_det.image.models import save_state_dict
from ffs_det.image.small_cnn import SmallCNN
from repo_paths import REPO_ROOT as ROOT

SCORERS = "msp,energy,react,odin,fde,adascale"  # adascale: fitted on the training set's raw images
OPTS = ["--opt", "fde.epochs=2", "--opt", "fde.hidden=32", "--opt", "odin.temperature=100"]


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    torch.manual_seed(0)
    path = str(tmp_path_factory.mktemp("w") / "cnn.pt")
    save_state_dict(SmallCNN(), path)
    return path


def test_step_by_step_equals_run(tmp_path, weights):
    model = ["--model", "small_cnn", "--weights", weights]
    common = ["--no-progress", "--batch-size", "64"]
    stores = {}
    for name, spec, extra in [("train", "digits", ["--max-samples", "300", "--seed", "1"]),
                              ("test", "digits", ["--max-samples", "100", "--seed", "2"]),
                              ("tex", "textures", ["--n-generated", "80"])]:
        stores[name] = str(tmp_path / "stores" / name)
        assert main(["--threads", "1", "extract", *model, "--data", spec, "--out", stores[name], *extra, *common]) == 0
    assert len(FeatureStore(stores["test"])) == 100 and FeatureStore(stores["train"]).dim("features") == 128
    step_dir = str(tmp_path / "step")
    assert main(["--threads", "1", "evaluate", "--id-train", stores["train"], "--id-test", stores["test"],
                 "--ood", f"tex={stores['tex']}", "--scorers", SCORERS, *OPTS, "--output-dir", step_dir,
                 *common]) == 0
    run_dir = str(tmp_path / "run")
    assert main(["--threads", "1", "run", *model, "--id-train", "digits", "--max-train", "300", "--id-test", "digits",
                 "--max-test", "100", "--ood", "tex=textures", "--n-generated", "80", "--scorers", SCORERS, *OPTS,
                 "--output-dir", run_dir, *common, "--seed", "0"]) == 0
    step = json.load(open(os.path.join(step_dir, "results.json")))
    assert {k: v["status"] for k, v in step["scorers"].items()} == {k: "ok" for k in SCORERS.split(",")}
    assert step["scorers"]["odin"]["params"]["input_std"] == pytest.approx([0.353])  # rebuilt from store metadata
    for f in ["results.csv", "table.txt", "scores.npz", "roc_tex.png", "hist_react.png"]:
        assert os.path.getsize(os.path.join(step_dir, f)) > 0, f
    # same model, same texture crops; the run's ID subsets use seed 0 instead of 1 and 2
    # without the training set's images, the scorer fitted on them is skipped, naming what it lacks
    from ffs_det.image.evaluate import evaluate_scorers
    from ffs_det.image.pipeline import ModelSpec, load_classifier
    skipped = evaluate_scorers(FeatureStore(stores["train"]), FeatureStore(stores["test"]),
                               {"tex": FeatureStore(stores["tex"])}, scorers="adascale",
                               model=load_classifier(ModelSpec("small_cnn", weights))[0], datasets={},
                               progress=False, log=lambda *a: None).scorers["adascale"]
    assert skipped.status == "skipped" and "['id_train', 'id', 'tex']" in skipped.message
    step_scores = np.load(os.path.join(step_dir, "scores.npz"))
    run_scores = np.load(os.path.join(run_dir, "scores.npz"))
    np.testing.assert_allclose(step_scores["odin__tex"], run_scores["odin__tex"], rtol=1e-6)
    np.testing.assert_allclose(step_scores["energy__tex"], run_scores["energy__tex"], rtol=1e-6)
    # re-running re-uses the extracted stores
    mtime = os.path.getmtime(os.path.join(run_dir, "work", "features", "tex", "meta.json"))
    assert main(["--threads", "1", "run", *model, "--id-train", "digits", "--max-train", "300", "--id-test", "digits",
                 "--max-test", "100", "--ood", "tex=textures", "--n-generated", "80", "--scorers", "msp",
                 "--output-dir", run_dir, "--no-plots", *common]) == 0
    assert os.path.getmtime(os.path.join(run_dir, "work", "features", "tex", "meta.json")) == mtime


def test_cli_errors(tmp_path, capsys):
    assert main(["evaluate", "--id-train", str(tmp_path / "none"), "--id-test", "x", "--ood", "a=b",
                 "--output-dir", str(tmp_path)]) == 2
    assert "feature store" in capsys.readouterr().err
    assert main(["extract", "--model", "small_cnn", "--data", "cifar10:" + str(tmp_path), "--out",
                 str(tmp_path / "s")]) == 2
    assert "download=True" in capsys.readouterr().err
    with pytest.raises(ValueError, match="NAME=VALUE"):
        parse_named(["digits"], "--ood")
    with pytest.raises(ValueError, match="SCORER.PARAM=VALUE"):
        parse_scorer_options(["epochs=3"])
    assert parse_scorer_options(["fde.epochs=3", "fde.normalize=l2", "odin.input_std=[0.5]"]) == \
        {"fde": {"epochs": 3, "normalize": "l2"}, "odin": {"input_std": [0.5]}}


def test_script_runs():
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "image_ood.py"), "--help"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "fashion-benchmark" in proc.stdout


def test_sharded_extraction_reads_as_one_store(tmp_path, weights):
    """Two processes extract one shard each; the folder reads as the store one process would write, and a
    streamed fit on it equals the in-memory fit on the unsharded store."""
    args = ["--model", "small_cnn", "--weights", weights, "--data", "digits", "--max-samples", "301", "--seed", "3",
            "--no-progress", "--batch-size", "64"]
    sharded, single = str(tmp_path / "sharded"), str(tmp_path / "single")
    env = {**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, os.path.join(ROOT, "tools", "image_ood.py"), "--threads", "1",
                               "extract", *args, "--out", sharded, "--shard", f"{i}/2"], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    assert sorted(os.listdir(sharded)) == ["shard-00000-of-00002", "shard-00001-of-00002"]
    assert main(["--threads", "1", "extract", *args, "--out", single]) == 0
    a, b = FeatureStore(sharded), FeatureStore(single)
    assert len(a) == 301 and len(a.shards) == 2 and [len(s) for s in a.shards] == [150, 151]
    assert a.info == b.info and a.names() == b.names() and a.dim("features") == 128
    for name in b.names():
        np.testing.assert_allclose(a[name], b[name], rtol=1e-6)
        np.testing.assert_allclose(np.concatenate(list(a.chunks(name, 100))), b[name], rtol=1e-6)
        np.testing.assert_allclose(a.rows(name).take([300, 0, 149, 150]), b[name][[300, 0, 149, 150]], rtol=1e-6)
    # evaluate from the sharded store, streamed, against the single store in memory
    tex = str(tmp_path / "tex")
    assert main(["--threads", "1", "extract", "--model", "small_cnn", "--weights", weights, "--data", "textures",
                 "--n-generated", "40", "--out", tex, "--no-progress"]) == 0
    test = str(tmp_path / "test")  # the ID test set: other images than the training store's
    assert main(["--threads", "1", "extract", *args[:7], "60", "--seed", "4", "--no-progress", "--out", test]) == 0
    scores = {}
    for train, stream in [(sharded, "always"), (single, "never")]:
        out = str(tmp_path / f"eval-{stream}")
        assert main(["--threads", "1", "evaluate", "--id-train", train, "--id-test", test, "--ood", f"tex={tex}",
                     "--scorers", "mahalanobis,knn", "--opt", "knn.k=5", "--output-dir", out, "--no-plots",
                     "--no-progress", "--stream", stream]) == 0
        scores[stream] = np.load(os.path.join(out, "scores.npz"))
    for key in ["mahalanobis__tex", "mahalanobis__id", "knn__tex"]:
        np.testing.assert_allclose(scores["always"][key], scores["never"][key], rtol=1e-6, atol=1e-6)
    # a missing shard is named; an unsharded store is not overwritten by shards
    import shutil
    shutil.rmtree(os.path.join(sharded, "shard-00001-of-00002"))
    with pytest.raises(FileNotFoundError, match=r"sharded 2 ways but shard\(s\) \[1\] are missing"):
        FeatureStore(sharded)
    assert main(["--threads", "1", "extract", *args, "--out", single, "--shard", "0/2"]) == 2


def test_parse_shard():
    from ffs_det.image.pipeline import parse_shard, shard_rows
    assert parse_shard(None) is None and parse_shard("1/4") == (1, 4)
    assert parse_shard("auto", env={}) is None
    assert parse_shard("auto", env={"RANK": "2", "WORLD_SIZE": "3"}) == (2, 3)
    for bad in ["4/4", "-1/2", "1", "a/b", "0/0"]:
        with pytest.raises(ValueError, match="--shard must be I/N"):
            parse_shard(bad)
    parts = [shard_rows(10, (i, 3)) for i in range(3)]
    assert [list(p) for p in parts] == [[0, 1, 2], [3, 4, 5], [6, 7, 8, 9]]
