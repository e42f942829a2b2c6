"""Box-level density scores added to detection records, then evaluated like the detector's energy."""
import hashlib
import importlib.util
import inspect
import os

import numpy as np
import pytest

from ffs_det.evaluation.box_scores import add_box_scores, compare_box_scores, fuse_scores
from ffs_det.evaluation.ood_report import RecordSet, evaluate_ood, kept_detections
from ffs_det.evaluation.records import load_records
from records_factory import write_records
from repo_paths import REPO_ROOT as REPO

# box features in class clusters 6 units apart (an OOD set is shifted off them), scores unrelated to the logits
CLUSTERED = {"features": 16, "clusters": 6.0, "score": (0.5, 1.0)}


@pytest.fixture
def record_files(tmp_path):
    rng = np.random.default_rng(0)
    return (write_records(tmp_path / "train.npz", 300, rng, dataset="train", matched="all", **CLUSTERED),
            write_records(tmp_path / "id.npz", 120, rng, dataset="id", matched="all", **CLUSTERED),
            write_records(tmp_path / "ood.npz", 120, rng, dataset="ood", feature_shift=4.0, matched=None,
                          **CLUSTERED))


def _digest(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


@pytest.mark.parametrize("scorer,kwargs", [("knn", {"k": 5}), ("mahalanobis", {})])
def test_scores_are_added_and_evaluate_like_energy(record_files, tmp_path, scorer, kwargs):
    train, id_path, ood_path = record_files
    before = [_digest(p) for p in record_files]
    out = add_box_scores(scorer, train, [id_path, ood_path], str(tmp_path / "scored"), **kwargs)
    assert out == [str(tmp_path / "scored" / "id" / "records.npz"), str(tmp_path / "scored" / "ood" / "records.npz")]
    assert [_digest(p) for p in record_files] == before  # inputs untouched
    arrays, meta = load_records(out[0])
    # fitted as compare_box_scores fits: every 5th training image is held out for calibration
    assert arrays[scorer].shape == arrays["score"].shape and meta["box_scores"][scorer]["fitted_on"] == 240
    metrics = evaluate_ood(out[0], [out[1]], thres=0.0, score_key=scorer).metrics("ood")
    assert metrics["auroc"] > 0.95  # OOD boxes sit 4 units off the class clusters


def test_records_without_features_are_named(tmp_path):
    rng = np.random.default_rng(1)
    train = write_records(tmp_path / "train.npz", 50, rng, dataset="train", features=0)
    test = write_records(tmp_path / "id.npz", 20, rng, dataset="id", matched="all", **CLUSTERED)
    with pytest.raises(ValueError, match="train.npz.*--save-features"):
        add_box_scores("knn", train, [test], str(tmp_path / "out"))
    assert not os.path.exists(tmp_path / "out")


def test_cli_writes_and_reports_errors(record_files, tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("score_boxes", os.path.join(REPO, "tools", "score_boxes.py"))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    train, id_path, ood_path = record_files
    assert tool.main(["--scorer", "knn", "--option", "k=3", "--train", train, "--records", id_path,
                      "--records", ood_path, "--output-dir", str(tmp_path / "cli")]) == 0
    assert "wrote" in capsys.readouterr().out
    assert tool.main(["--scorer", "knn", "--train", str(tmp_path / "nope.npz"), "--records", id_path,
                      "--output-dir", str(tmp_path / "cli2")]) == 2
    assert "nope.npz" in capsys.readouterr().err
    # a mistyped option is an error, not a silent default
    assert tool.main(["--scorer", "knn", "--option", "K=3", "--train", train, "--records", id_path,
                      "--output-dir", str(tmp_path / "cli3")]) == 2
    assert capsys.readouterr().err.startswith("error: scorer 'knn': unknown option(s) K; it takes k, ")
    assert not (tmp_path / "cli3").exists()


def test_compare_box_scores_on_the_same_kept_detections(record_files, tmp_path):
    train, id_path, ood_path = record_files
    comparison, info = compare_box_scores(train, id_path, [ood_path], scorers=("mahalanobis", "knn", "fde"),
                                          fuse=[("energy", "mahalanobis")], thres=0.6,
                                          options={"knn": {"k": 5}, "fde": {"epochs": 2, "hidden": 32}})
    assert list(comparison.scores) == ["energy", "mahalanobis", "knn", "fde", "energy+mahalanobis"]
    assert info["fit_on"] + info["calibrated_on"] == 300 and info["calibrated_on"] == 60  # every 5th image
    id_arrays, _ = load_records(id_path)
    kept = kept_detections(RecordSet.load(id_path), 0.6)  # the box's max inlier probability reaches 0.6
    assert 0 < kept.sum() < len(kept) and not np.array_equal(kept, id_arrays["score"] >= 0.6)
    for name, sets in comparison.scores.items():  # every score on the detections eval_ood keeps
        assert sets["id"].shape == (int(kept.sum()),), name
    np.testing.assert_array_equal(comparison.scores["energy"]["id"], id_arrays["energy"][kept])
    ev = evaluate_ood(id_path, [ood_path], thres=0.6)
    assert comparison.metrics["energy"]["ood"]["auroc"] == ev.metrics("ood")["auroc"]
    assert comparison.metrics["energy"]["ood"]["fpr95"] == ev.metrics("ood")["fpr95"] and info["protocol"] == "papers"
    with pytest.raises(ValueError, match="evaluation is of the records"):  # an evaluation of other records
        compare_box_scores(train, ood_path, [id_path], scorers=("mahalanobis",), fuse=(), evaluation=ev)
    # under the other protocol, the detections kept by their own class score
    old, _ = compare_box_scores(train, id_path, [ood_path], scorers=("mahalanobis",), fuse=(), thres=0.6,
                                protocol="global-f1")
    np.testing.assert_array_equal(old.scores["energy"]["id"], id_arrays["energy"][id_arrays["score"] >= 0.6])
    # the density scores see the OOD shift the (random) energy does not
    assert comparison.metrics["mahalanobis"]["ood"]["auroc"] > 0.95 > comparison.metrics["energy"]["ood"]["auroc"]


def test_fused_score_sees_no_ood_data(record_files, tmp_path):
    """The fused score is calibrated on ID training detections only: its ID scores do not depend on the OOD
    set, and fuse_scores takes no OOD input."""
    assert list(inspect.signature(fuse_scores).parameters) == ["calibration", "scores", "weights"]
    train, id_path, ood_path = record_files
    other = write_records(tmp_path / "ood2.npz", 120, 5, dataset="ood", feature_shift=-7.0, matched=None, **CLUSTERED)
    runs = [compare_box_scores(train, id_path, [p], scorers=("mahalanobis",), fuse=[("energy", "mahalanobis")],
                               thres=0.6)[0]
            for p in (ood_path, other)]
    np.testing.assert_array_equal(runs[0].scores["energy+mahalanobis"]["id"], runs[1].scores["energy+mahalanobis"]["id"])
    cal = {"a": np.array([0.0, 2.0]), "b": np.array([10.0, 10.0, 30.0, 30.0])}
    # z-scores 0 and 2, averaged with equal weights (or weighted)
    np.testing.assert_allclose(fuse_scores(cal, {"a": np.array([1.0]), "b": np.array([40.0])}), [1.0])
    np.testing.assert_allclose(fuse_scores(cal, {"a": np.array([1.0]), "b": np.array([40.0])}, {"a": 1.0, "b": 3.0}),
                               [1.5])
    with pytest.raises(ValueError, match="same two or more parts"):
        fuse_scores({"a": cal["a"]}, {"a": np.array([1.0])})


def test_a_part_that_is_pure_noise_does_not_pull_the_fused_score_below_the_good_part():
    """The fused score's weights come from ID calibration detections vs in-image negatives: a part that does
    not separate them (noise) weighs about nothing, so the fused score keeps the good part's FPR95."""
    from ffs_det.density.metrics import ood_metrics
    from ffs_det.evaluation.box_scores import fusion_weights

    rng = np.random.default_rng(0)
    n = 4000
    calibration = {"good": rng.normal(0, 1, n), "noise": rng.normal(0, 1, n)}
    negatives = {"good": rng.normal(-3, 1, n), "noise": rng.normal(0, 1, n)}
    weights = fusion_weights(calibration, negatives)
    assert weights["good"] > 2.5 and weights["noise"] < 0.1
    test_id = {"good": rng.normal(0, 1, n), "noise": rng.normal(0, 1, n)}
    test_ood = {"good": rng.normal(-2, 1, n), "noise": rng.normal(0, 1, n)}
    fused = [fuse_scores(calibration, s, weights) for s in (test_id, test_ood)]
    good = ood_metrics(test_id["good"], test_ood["good"])["fpr95"]
    assert ood_metrics(*fused)["fpr95"] <= good + 0.01
    # equal weights (the previous rule) lose to the good part: the noise dilutes it
    equal = [fuse_scores(calibration, s) for s in (test_id, test_ood)]
    assert ood_metrics(*equal)["fpr95"] > good + 0.1
    # a part that ranks negatives above ID detections gets weight 0, not a negative weight
    assert fusion_weights({"a": np.arange(10.0)}, {"a": np.arange(10.0) + 100})["a"] == 0.0
