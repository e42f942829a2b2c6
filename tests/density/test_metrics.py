"""Tests of the OOD metrics (ffs_det.density.metrics). Convention: higher score = more in-distribution."""
import numpy as np
import pytest
import torch
from sklearn.metrics import auc, average_precision_score, roc_auc_score, roc_curve

from ffs_det.density.inputs import as_scores
from ffs_det.density.metrics import ood_metrics, optimal_f1_threshold, roc_curve_points

KEYS = {"fpr95", "fpr95_threshold", "fpr95_ood_positive", "auroc", "aupr_in", "aupr_out", "n_id", "n_ood"}


def sklearn_reference(id_scores, ood_scores):
    scores = np.concatenate([id_scores, ood_scores])
    is_id = np.r_[np.ones(len(id_scores)), np.zeros(len(ood_scores))]
    return {
        "auroc": roc_auc_score(is_id, scores),
        "aupr_in": average_precision_score(is_id, scores),
        "aupr_out": average_precision_score(1 - is_id, -scores),
    }


def brute_force_fpr95(id_scores, ood_scores, level=0.95):
    """Straight from the definitions, over every candidate threshold."""
    id_scores, ood_scores = np.asarray(id_scores, float), np.asarray(ood_scores, float)
    cands = np.unique(np.r_[id_scores, ood_scores])
    keep = [t for t in cands if np.mean(id_scores >= t) >= level - 1e-12]
    t_in = max(keep)
    catch = [t for t in cands if np.mean(ood_scores <= t) >= level - 1e-12]
    t_out = min(catch)
    return np.mean(ood_scores >= t_in), t_in, np.mean(id_scores <= t_out)


@pytest.mark.parametrize("seed", range(12))
def test_agrees_with_sklearn_and_definitions_on_random_data_with_ties(seed):
    rng = np.random.default_rng(seed)
    n_id, n_ood = rng.integers(1, 300, size=2)
    id_scores = rng.normal(1.0, 1.0, n_id)
    ood_scores = rng.normal(0.0, 1.5, n_ood)
    if seed % 3 == 0:  # heavy ties: only a handful of distinct values, shared by ID and OOD
        id_scores, ood_scores = np.round(id_scores), np.round(ood_scores)
    elif seed % 3 == 1:
        id_scores, ood_scores = np.round(id_scores, 1), np.round(ood_scores, 1)
    m = ood_metrics(id_scores, ood_scores)
    assert set(m) == KEYS
    assert m["n_id"] == n_id and m["n_ood"] == n_ood
    ref = sklearn_reference(id_scores, ood_scores)
    for key in ("auroc", "aupr_in", "aupr_out"):
        assert abs(m[key] - ref[key]) < 1e-10, (key, m[key], ref[key])
    fpr, thr, fpr_ood = brute_force_fpr95(id_scores, ood_scores)
    assert m["fpr95"] == pytest.approx(fpr, abs=1e-12)
    assert m["fpr95_threshold"] == thr
    assert m["fpr95_ood_positive"] == pytest.approx(fpr_ood, abs=1e-12)


def test_heavy_ties_single_value_shared():
    # every score is 1: at the only threshold, 1, all ID and all OOD pass.
    # ROC: (0,0) -> (1,1), AUROC 0.5; FPR95 = 1 in both conventions.
    # AUPR-In: one threshold, recall 1, precision 2/5 -> 0.4; AUPR-Out: precision 3/5 -> 0.6.
    m = ood_metrics([1, 1], [1, 1, 1])
    assert m["auroc"] == 0.5
    assert m["fpr95"] == 1.0 and m["fpr95_ood_positive"] == 1.0 and m["fpr95_threshold"] == 1.0
    assert m["aupr_in"] == pytest.approx(0.4, abs=1e-12)
    assert m["aupr_out"] == pytest.approx(0.6, abs=1e-12)


def test_fpr95_hand_computed_with_ties_at_the_threshold():
    # 20 ID scores: ten 5s, five 4s, three 3s, one 2, one 1.
    #   ID kept by t (ID >= t): t=5 -> 10, t=4 -> 15, t=3 -> 18, t=2 -> 19, t=1 -> 20.
    #   At least 95% of 20 = 19 must be kept -> the highest such t is 2.
    # 20 OOD scores: one 6, two 2s, ten 1s, seven 0s.
    #   OOD with score >= 2: the 6 and both 2s (ties at the threshold count) -> 3/20 = 0.15.
    # OOD-positive view: OOD caught by t (OOD <= t): t=0 -> 7, t=1 -> 17, t=2 -> 19 >= 19 -> t = 2.
    #   ID with score <= 2: the 2 and the 1 -> 2/20 = 0.1.
    id_scores = [5] * 10 + [4] * 5 + [3] * 3 + [2] + [1]
    ood_scores = [6] + [2] * 2 + [1] * 10 + [0] * 7
    m = ood_metrics(id_scores, ood_scores)
    assert m["fpr95"] == pytest.approx(0.15, abs=1e-12)
    assert m["fpr95_threshold"] == 2.0
    assert m["fpr95_ood_positive"] == pytest.approx(0.10, abs=1e-12)


def test_fpr95_hand_computed_when_95_percent_means_everything():
    # 5 ID scores [3, 3, 3, 3, 1]: 95% of 5 is 4.75, so all 5 must be kept -> t = 1.
    # OOD [1, 0, 2]: OOD >= 1 are 1 and 2 -> fpr95 = 2/3.
    # OOD-positive: 95% of 3 is 2.85 -> all 3 OOD must be caught -> t = 2; ID <= 2 is only the 1 -> 1/5.
    m = ood_metrics([3, 3, 3, 3, 1], [1, 0, 2])
    assert m["fpr95"] == pytest.approx(2 / 3, abs=1e-12)
    assert m["fpr95_threshold"] == 1.0
    assert m["fpr95_ood_positive"] == pytest.approx(0.2, abs=1e-12)
    # AUROC by pairs (ID > OOD counts 1, ties 1/2): each 3 beats all three OOD (4 * 3 = 12);
    # the 1 beats 0, ties 1, loses to 2 (1.5). (12 + 1.5) / 15 = 0.9.
    assert m["auroc"] == pytest.approx(0.9, abs=1e-12)


def test_fpr95_exactly_95_percent_of_id():
    # 20 ID scores 1..20: 19 of them (95% exactly) are >= 2, so t = 2 (not 1).
    # OOD [0.5, 1.5, 2, 2, 3.5, 21]: OOD >= 2 -> 2, 2, 3.5, 21 -> 4/6.
    # OOD-positive: 95% of 6 is 5.7, so all 6 OOD -> t = 21; every ID score is <= 21 -> 1.0.
    m = ood_metrics(np.arange(1, 21), [0.5, 1.5, 2, 2, 3.5, 21])
    assert m["fpr95_threshold"] == 2.0
    assert m["fpr95"] == pytest.approx(4 / 6, abs=1e-12)
    assert m["fpr95_ood_positive"] == 1.0


def test_tpr_level_other_than_95():
    # ID [4, 3, 2, 1], level 0.5: keep 2 of 4 -> t = 3; OOD [3.5, 2.5, 0] -> OOD >= 3 is 3.5 -> 1/3.
    # OOD-positive at 0.5: catch 1.5 -> 2 of 3 OOD -> t = 2.5; ID <= 2.5 are 2 and 1 -> 2/4.
    m = ood_metrics([4, 3, 2, 1], [3.5, 2.5, 0], tpr_level=0.5)
    assert m["fpr95_threshold"] == 3.0
    assert m["fpr95"] == pytest.approx(1 / 3, abs=1e-12)
    assert m["fpr95_ood_positive"] == pytest.approx(0.5, abs=1e-12)
    for bad in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="tpr_level"):
            ood_metrics([1.0, 2.0], [0.0], tpr_level=bad)


def test_perfect_and_reversed_separation():
    m = ood_metrics([2.0, 3.0, 4.0], [0.0, 1.0])
    assert m["auroc"] == 1.0 and m["fpr95"] == 0.0 and m["fpr95_ood_positive"] == 0.0
    assert m["aupr_in"] == 1.0 and m["aupr_out"] == 1.0
    assert m["fpr95_threshold"] == 2.0  # all 3 ID needed (95% of 3 = 2.85): t = lowest ID score
    r = ood_metrics([0.0, 1.0], [2.0, 3.0, 4.0])
    assert r["auroc"] == 0.0 and r["fpr95"] == 1.0 and r["fpr95_ood_positive"] == 1.0


def test_scale_and_shift_invariance_and_swap_symmetry():
    rng = np.random.default_rng(5)
    a, b = rng.normal(1, 1, 200), rng.normal(0, 1, 150)
    m = ood_metrics(a, b)
    m2 = ood_metrics(3 * a + 7, 3 * b + 7)
    for key in ("fpr95", "fpr95_ood_positive", "auroc", "aupr_in", "aupr_out"):
        assert m[key] == pytest.approx(m2[key], abs=1e-12)
    # negating scores and swapping roles swaps AUPR-In/Out and the two FPR95 conventions
    s = ood_metrics(-b, -a)
    assert s["auroc"] == pytest.approx(m["auroc"], abs=1e-12)
    assert s["aupr_in"] == pytest.approx(m["aupr_out"], abs=1e-12)
    assert s["aupr_out"] == pytest.approx(m["aupr_in"], abs=1e-12)
    assert s["fpr95"] == pytest.approx(m["fpr95_ood_positive"], abs=1e-12)


@pytest.mark.parametrize("id_scores, ood_scores, name", [
    ([], [1.0], "id_scores"),
    ([1.0], [], "ood_scores"),
    ([1.0, float("nan")], [0.0], "id_scores"),
    ([1.0], [0.0, float("nan")], "ood_scores"),
    ([1.0], [float("inf")], "ood_scores"),
    ([float("-inf"), 1.0], [0.0], "id_scores"),
    ([[1.0, 2.0], [3.0, 4.0]], [0.0], "id_scores"),
    ([1.0, 2.0], np.zeros((2, 1)), "ood_scores"),
    (3.0, [0.0], "id_scores"),
    (["a", "b"], [0.0], "id_scores"),
    ([1.0], ["0.5", "0.2"], "ood_scores"),  # numeric strings are not scores either
    ([1.0], np.array(["0.5"]), "ood_scores"),
    ([1.0], np.array([0.5, "x"], dtype=object), "ood_scores"),
    ([1.0, 2.0], [[1.0], [2.0, 3.0]], "ood_scores"),  # ragged
    (None, [0.0], "id_scores"),
    ([1 + 2j], [0.0], "id_scores"),
])
def test_bad_inputs_raise_value_error_naming_the_argument(id_scores, ood_scores, name):
    with pytest.raises(ValueError, match=name):
        ood_metrics(id_scores, ood_scores)


def test_torch_tensors_accepted():
    rng = np.random.default_rng(1)
    a, b = np.round(rng.normal(1, 1, 64), 1), np.round(rng.normal(0, 1, 48), 1)
    expected = ood_metrics(a, b)
    for dtype in (torch.float64, torch.float32):
        got = ood_metrics(torch.tensor(a, dtype=dtype, requires_grad=True), torch.tensor(b, dtype=dtype))
        for key in ("fpr95", "fpr95_ood_positive", "auroc", "aupr_in", "aupr_out"):
            assert got[key] == pytest.approx(expected[key], abs=1e-12)
    # half precision tensors (numpy has no bfloat16)
    small = [0.5, 1.0, 2.0, 3.0]
    for dtype in (torch.float16, torch.bfloat16):
        got = ood_metrics(torch.tensor(small, dtype=dtype), torch.tensor([0.0, 1.0], dtype=dtype))
        assert got["auroc"] == pytest.approx(ood_metrics(small, [0.0, 1.0])["auroc"])
    assert ood_metrics(torch.tensor([3, 4]), torch.tensor([1, 2]))["auroc"] == 1.0  # integer tensors
    with pytest.raises(ValueError, match="ood_scores"):
        ood_metrics(torch.ones(3), torch.tensor([0.0, float("nan")]))


def test_as_scores_returns_float64_1d():
    out = as_scores([1, 2, 3], "x")
    assert out.dtype == np.float64 and out.shape == (3,)
    assert as_scores(np.array([True, False]), "x").tolist() == [1.0, 0.0]


def test_roc_curve_points_match_sklearn():
    rng = np.random.default_rng(3)
    a, b = np.round(rng.normal(1, 1, 120), 1), np.round(rng.normal(0, 1, 90), 1)
    fpr, tpr, thr = roc_curve_points(a, b)
    assert (fpr[0], tpr[0]) == (0.0, 0.0) and (fpr[-1], tpr[-1]) == (1.0, 1.0)
    assert np.isinf(thr[0]) and np.all(np.diff(thr) < 0)
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)
    y = np.r_[np.ones(a.size), np.zeros(b.size)]
    s = np.r_[a, b]
    sk_fpr, sk_tpr, _ = roc_curve(y, s)
    assert auc(fpr, tpr) == pytest.approx(auc(sk_fpr, sk_tpr), abs=1e-12)
    assert auc(fpr, tpr) == pytest.approx(ood_metrics(a, b)["auroc"], abs=1e-12)
    # every point of ours with sklearn's full (non-dropped) curve
    full_fpr, full_tpr, full_thr = roc_curve(y, s, drop_intermediate=False)
    assert np.allclose(fpr, full_fpr) and np.allclose(tpr, full_tpr)
    assert np.array_equal(thr[1:], full_thr[1:])


def test_roc_curve_points_small_hand_case():
    # ID [3, 1], OOD [2]. Thresholds 3, 2, 1: ID >= t -> 1, 1, 2 of 2; OOD >= t -> 0, 1, 1 of 1.
    fpr, tpr, thr = roc_curve_points([3, 1], [2])
    assert fpr.tolist() == [0.0, 0.0, 1.0, 1.0]
    assert tpr.tolist() == [0.0, 0.5, 0.5, 1.0]
    assert thr[1:].tolist() == [3.0, 2.0, 1.0]


def test_optimal_f1_threshold_hand_computed():
    scores = [0.9, 0.8, 0.8, 0.6, 0.3, 0.2]
    is_pos = [1, 1, 0, 1, 0, 0]
    # 3 positives; F1 = 2TP / (2TP + FP + FN) for "score >= t":
    #   t=0.9: TP1 FP0 FN2 -> 2/4 = 0.5
    #   t=0.8: TP2 FP1 FN1 -> 4/6 = 0.667 (the tied 0.8s go together)
    #   t=0.6: TP3 FP1 FN0 -> 6/7 = 0.857  <- best
    #   t=0.3: TP3 FP2 FN0 -> 6/8 = 0.75
    #   t=0.2: TP3 FP3 FN0 -> 6/9 = 0.667
    t, f1 = optimal_f1_threshold(scores, is_pos)
    assert t == 0.6 and f1 == pytest.approx(6 / 7, abs=1e-12)
    # torch inputs give the same
    t2, f12 = optimal_f1_threshold(torch.tensor(scores), torch.tensor(is_pos, dtype=torch.bool))
    assert t2 == pytest.approx(0.6) and f12 == pytest.approx(6 / 7, abs=1e-12)


def test_optimal_f1_threshold_with_unmatched_positives():
    scores = [0.9, 0.8, 0.7, 0.6, 0.2]
    is_pos = [1, 0, 0, 0, 1]
    # without missed positives (2 in total):
    #   t=0.9: TP1 FP0 FN1 -> 2/3;  t=0.8: 2/4;  t=0.7: 2/5;  t=0.6: 2/6;  t=0.2: TP2 FP3 FN0 -> 4/7
    t, f1 = optimal_f1_threshold(scores, is_pos)
    assert t == 0.9 and f1 == pytest.approx(2 / 3, abs=1e-12)
    # 10 ground-truth positives, 8 of them never detected (FN grows by 8):
    #   t=0.9: 2/(2+0+9) = 2/11 = 0.182;  t=0.8: 2/12;  t=0.7: 2/13;  t=0.6: 2/14
    #   t=0.2: 4/(4+3+8) = 4/15 = 0.267  <- best
    t, f1 = optimal_f1_threshold(scores, is_pos, n_positive_total=10)
    assert t == 0.2 and f1 == pytest.approx(4 / 15, abs=1e-12)


def test_optimal_f1_threshold_bad_inputs():
    with pytest.raises(ValueError):
        optimal_f1_threshold([0.5, 0.4], [1, 1], n_positive_total=1)  # fewer than the matched ones
    with pytest.raises(ValueError):
        optimal_f1_threshold([0.5, 0.4], [0, 0])  # no positives at all
    with pytest.raises(ValueError):
        optimal_f1_threshold([0.5, 0.4], [1, 0, 1])  # shape mismatch
    with pytest.raises(ValueError, match="scores"):
        optimal_f1_threshold([0.5, float("nan")], [1, 0])
