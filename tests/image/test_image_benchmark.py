"""The embedded real-data benchmark at reduced size: every registered scorer beats chance on Fashion-MNIST
vs digits (and textures); the report files and the MobileNetV2 photo check are produced."""
import csv
import json
import os

import pytest

from ffs_det.density.scorers import SCORERS, scorer_class
from ffs_det.image.datasets import find_fashion_mnist
from ffs_det.image.evaluate import PROVIDES, resolve_scorers
from ffs_det.image.fashion_benchmark import SIZES, preset_options, run_fashion_benchmark


# every scorer but box-only SAFE (AdaSCALE is fitted on the training images the benchmark gives it)
BENCHMARK_SCORERS = {n for n, c in SCORERS.items() if set(c.requires) <= PROVIDES}


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    try:
        find_fashion_mnist()
    except FileNotFoundError as e:
        pytest.skip(f"Fashion-MNIST is not installed ({e})")
    out_dir = str(tmp_path_factory.mktemp("fashion"))
    out = run_fashion_benchmark(out_dir, size="reduced", threads=1, progress=False, log=lambda *a: None)
    return out_dir, out


def test_every_scorer_beats_chance(bench):
    _, out = bench
    result = out["result"]
    assert set(result.scorers) == BENCHMARK_SCORERS and "adascale" in BENCHMARK_SCORERS
    for name, res in result.scorers.items():
        assert res.status == "ok", (name, res.message)
        assert res.metrics["digits"]["auroc"] > 0.5, (name, res.metrics["digits"])
        assert res.metrics["textures"]["auroc"] > 0.5, (name, res.metrics["textures"])
    assert out["summary"]["test_accuracy"] > 0.6  # a trained classifier, not chance (10%)


def test_report_files(bench):
    out_dir, out = bench
    data = json.load(open(os.path.join(out_dir, "results.json")))
    assert data["id"] == "fashion-mnist" and data["ood"] == ["digits", "textures"]
    assert data["scorers"]["fde"]["metrics"]["digits"]["n_ood"] == SIZES["reduced"]["digits"]
    assert data["scorers"]["fde"]["params"]["epochs"] == SIZES["reduced"]["fde_epochs"]
    rows = list(csv.DictReader(open(os.path.join(out_dir, "results.csv"))))
    assert {r["scorer"] for r in rows} == BENCHMARK_SCORERS
    msp = next(r for r in rows if r["scorer"] == "msp" and r["ood_set"] == "digits")
    assert float(msp["auroc"]) == pytest.approx(data["scorers"]["msp"]["metrics"]["digits"]["auroc"])
    table = open(os.path.join(out_dir, "table.txt")).read()
    msp_row = next(line.split() for line in table.splitlines() if line.startswith("msp ") and " digits " in line)
    assert float(msp_row[5]) == pytest.approx(100 * data["scorers"]["msp"]["metrics"]["digits"]["auroc"], abs=0.006)
    assert out["table"] == table
    for name in ["roc_digits.png", "roc_textures.png", "hist_fde.png", "hist_odin.png", "summary.json"]:
        assert os.path.getsize(os.path.join(out_dir, name)) > 0, name
    assert not [f for f in os.listdir(out_dir) if f.endswith(".tmp")]
    summary = json.load(open(os.path.join(out_dir, "summary.json")))
    steps = {"train_classifier", "extract_features", "evaluate_scorers", "mobilenet_photo_check"}
    assert steps <= set(summary["seconds"])


def test_mobilenet_photo_check(bench):
    _, out = bench
    photos = out["summary"]["mobilenet_photos"]
    assert photos["top5"]["coffee"][0][0] == "espresso"
    assert set(photos["status"].values()) == {"ok"} and set(photos["metrics"]) == {"msp", "energy", "fde"}


def test_reduced_preset_caps_training_epochs():
    opts = preset_options("reduced", scorers=["fde", "msp"], options={"fde": {"hidden": 64}})
    assert opts == {"fde": {"epochs": SIZES["reduced"]["fde_epochs"], "hidden": 64}}
    assert preset_options("full", scorers=["fde"], options={"fde": {"epochs": 1}}) == {"fde": {"epochs": 1}}
    with pytest.raises(ValueError, match="unknown scorer"):
        preset_options("full", scorers=["nope"])
    with pytest.raises(ValueError, match="size"):
        run_fashion_benchmark("/tmp/unused", size="tiny")


def test_unknown_scorers_are_named_by_the_registry():
    """The benchmark's choice of scorers (names and the scorers of options) refuses an unknown name with the
    registry's one message."""
    with pytest.raises(ValueError) as registry:
        scorer_class("nope")
    for scorers, options in [("knn,nope", None), ("knn", {"nope": {"k": 1}})]:
        with pytest.raises(ValueError) as chosen:
            resolve_scorers(scorers, options)
        assert str(chosen.value) == str(registry.value)
