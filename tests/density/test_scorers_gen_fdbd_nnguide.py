"""GEN, fDBD and NNGuide: each against its paper's formula computed by hand on a few fixed rows, against
pytorch-ood 0.4.0's detector of the same name (the classifier of test_scorers_parity.py), from a row source as
in memory, and on box-like sets through the driver."""
from decimal import Decimal, getcontext

import numpy as np
import pytest
import torch

import pytorch_ood.detector as pood
from ffs_det.density.scorers import build_scorer, fit_and_score
from ffs_det.density.streaming import FeatureRows, NpyRows, sample_indices
from test_scorers_parity import N_CLASSES, assert_parity, model_and_data  # noqa: F401 (a fixture)


def _head(weight, bias):
    return torch.as_tensor(weight, dtype=torch.float64), torch.as_tensor(bias, dtype=torch.float64)


def _npy_rows(tmp_path, x):
    path = tmp_path / "x.npy"
    np.save(path, np.asarray(x))
    return FeatureRows(NpyRows(str(path)), block_rows=7)  # several blocks


# ----------------------------------------------------------------------------------------------------- GEN

def _gen_exact(logits_row, gamma, m):
    """The paper's ``sum_{j <= M} p_(j)^gamma (1 - p_(j))^gamma`` in 60-digit decimal arithmetic."""
    getcontext().prec = 60
    e = [Decimal(float(v)).exp() for v in logits_row]
    p = sorted((v / sum(e) for v in e), reverse=True)[:m]
    g = Decimal(gamma)
    return float(sum((g * q.ln()).exp() * (g * (1 - q).ln()).exp() for q in p))


def test_gen_by_hand():
    logits = np.array([[0.0, 0.0, 0.0, 0.0], [2.0, 1.0, 0.0, -1.0], [3.0, -2.0, 0.5, 0.5]])
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    for gamma, top_m in [(0.5, 2), (0.1, 4), (2.0, 1)]:
        top = -np.sort(-p, axis=1)[:, :top_m]
        expected = -(top ** gamma * (1 - top) ** gamma).sum(1)
        ours = build_scorer("gen", gamma=gamma, top_m=top_m).score_logits(logits)
        np.testing.assert_allclose(ours, expected, rtol=1e-12)
    # four equal probabilities 1/4 at gamma 1/2: 4 sqrt(1/4 * 3/4) = sqrt(3), half of it over the top two
    assert build_scorer("gen", gamma=0.5, top_m=4).score_logits(logits[:1])[0] == pytest.approx(-np.sqrt(3), 1e-14)
    assert build_scorer("gen", gamma=0.5, top_m=2).score_logits(logits[:1])[0] == pytest.approx(-np.sqrt(3) / 2,
                                                                                                1e-14)
    # M above the number of classes is clipped to it; the default is the paper's M = 100, gamma = 0.1
    np.testing.assert_array_equal(build_scorer("gen").score_logits(logits),
                                  build_scorer("gen", gamma=0.1, top_m=4).score_logits(logits))
    assert build_scorer("gen").get_params() == {"gamma": 0.1, "top_m": 100}
    # one class: p = 1, nothing uncertain
    assert build_scorer("gen").score_logits([[3.0], [-1.0]]).tolist() == [0.0, 0.0]


def test_gen_keeps_the_exact_terms_of_a_saturated_softmax():
    # p = (1, e^-50, e^-50) / (1 + 2 e^-50): 1 - p_1 = 2 e^-50 / (1 + 2 e^-50) is below float64's resolution at 1,
    # so p_1^g (1 - p_1)^g computed from p_1 would be 0 instead of about (2 e^-50)^0.1 = 0.0072
    logits = np.array([[0.0, -50.0, -50.0], [30.0, 0.0, -10.0]])
    ours = build_scorer("gen", gamma=0.1).score_logits(logits)
    exact = [-_gen_exact(row, 0.1, 3) for row in logits]
    np.testing.assert_allclose(ours, exact, rtol=1e-12)
    top = (2 * np.exp(-50.0)) ** 0.1
    assert -ours[0] > top > 0.007


def test_gen_matches_pytorch_ood_where_it_does_not_clamp(model_and_data):  # noqa: F811
    logits = model_and_data["logits_test"]
    p = logits.softmax(dim=1)
    free = ((p >= 1e-7) & (p <= 1 - 1e-7)).all(dim=1).numpy()  # rows untouched by pytorch-ood's clamp
    assert 100 < free.sum() < len(free)
    for gamma, top_m, their_m in [(0.1, 100, None), (0.5, 3, 3), (2.0, 5, 5)]:
        ours = build_scorer("gen", gamma=gamma, top_m=top_m).score_logits(logits)
        theirs = pood.GEN.score(logits, gamma=gamma, M=their_m).numpy()
        m = min(top_m, N_CLASSES)
        # pytorch-ood averages the M terms, the paper sums them: a factor M
        assert_parity(ours[free], theirs[free], scale=m)
        np.testing.assert_allclose(ours[free], -m * theirs[free], rtol=1e-10)
        # on saturated rows it clamps p to [1e-7, 1 - 1e-7], which changes the values (not the paper's formula):
        # ours are the exact ones there
        sat = np.flatnonzero(~free)[:5]
        exact = [-_gen_exact(logits[i].tolist(), gamma, m) for i in sat]
        np.testing.assert_allclose(ours[sat], exact, rtol=1e-9)
        if gamma < 1:  # a small gamma magnifies the clamped tail
            assert np.all(np.abs(-m * theirs[sat] - ours[sat]) > 1e-3 * np.abs(ours[sat]))


def test_gen_options_and_box_logits():
    for bad in [dict(gamma=0), dict(gamma=float("nan")), dict(gamma=None), dict(top_m=0), dict(top_m=2.5),
                dict(top_m=True), dict(top_m="5")]:
        with pytest.raises(ValueError, match=next(iter(bad))):
            build_scorer("gen", **bad)
    # the box path gives logit scorers the inlier columns of the detector's logits (background last, dropped)
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(20, 4)) * 3
    out = fit_and_score("gen", rng.normal(size=(20, 6)), None, {"boxes": {"features": rng.normal(size=(20, 6)),
                                                                          "logits": logits[:, :-1]}})
    np.testing.assert_array_equal(out["boxes"], build_scorer("gen").score_logits(logits[:, :-1]))


# ---------------------------------------------------------------------------------------------------- fDBD

W3 = [[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]
B3 = [0.5, 0.0, 0.0]
TRAIN3 = [[0.0, 0.0], [2.0, 0.0], [1.0, 3.0], [1.0, -3.0]]  # mean (1, 0)


def _fdbd_by_hand(z, w, b, mu):
    z, w, b, mu = (np.asarray(v, float) for v in (z, w, b, mu))
    out = []
    for row in z:
        pred = int(np.argmax(w @ row + b))
        d = [abs((w[pred] - w[c]) @ row + (b[pred] - b[c])) / np.linalg.norm(w[pred] - w[c])
             for c in range(len(w)) if c != pred]
        out.append(np.mean(d) / np.linalg.norm(row - mu))
    return np.array(out)


def test_fdbd_by_hand(tmp_path):
    z = np.array([[2.0, 1.0], [-1.0, 2.0], [0.5, -4.0]])
    scorer = build_scorer("fdbd").fit(TRAIN3, head=_head(W3, B3))
    ours = scorer.score(z)
    np.testing.assert_allclose(ours, _fdbd_by_hand(z, W3, B3, np.mean(TRAIN3, 0)), rtol=1e-13)
    # z = (2, 1): logits (2.5, 1, -2), class 0; boundaries to class 1 at 1.5 / sqrt(2), to class 2 at 4.5 / 2;
    # their mean over ||z - mu|| = ||(1, 1)|| = sqrt(2)
    assert ours[0] == pytest.approx((1.5 / np.sqrt(2) + 2.25) / 2 / np.sqrt(2), rel=1e-14)
    np.testing.assert_allclose(scorer.mean_.numpy(), [1.0, 0.0])
    # from a row source, block by block: the same
    streamed = build_scorer("fdbd").fit(_npy_rows(tmp_path, TRAIN3 * 5), head=_head(W3, B3))
    np.testing.assert_allclose(streamed.score(z), ours, rtol=1e-13)


def test_fdbd_matches_pytorch_ood(model_and_data):  # noqa: F811
    d = model_and_data
    # pytorch-ood's fDBD is the paper's formula (mean over C - 1 boundaries, l2 distance to the training mean)
    # in float32
    theirs = pood.fDBD(None, d["head"]).fit_features(d["f_train"]).predict_features(d["f_test"])
    ours = build_scorer("fdbd").fit(d["f_train"], head=d["head"]).score(d["f_test"])
    assert_parity(ours, theirs)


def test_fdbd_refuses_what_has_no_boundary():
    with pytest.raises(ValueError, match="final linear layer"):
        build_scorer("fdbd").fit(TRAIN3)
    with pytest.raises(ValueError, match="classes 0 and 2 have the same weight"):
        build_scorer("fdbd").fit(TRAIN3, head=_head([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]], B3))
    with pytest.raises(ValueError, match="at least 2 classes"):
        build_scorer("fdbd").fit(TRAIN3, head=_head([[1.0, 0.0]], [0.0]))
    with pytest.raises(ValueError, match="width"):
        build_scorer("fdbd").fit(TRAIN3, head=_head(W3, B3)).score([[1.0, 2.0, 3.0]])


# ------------------------------------------------------------------------------------------------- NNGuide

def _nnguide_by_hand(x, bank, w, b, k):
    x, bank, w, b = (np.asarray(v, float) for v in (x, bank, w, b))

    def energy(v):
        logits = v @ w.T + b
        return np.log(np.exp(logits).sum(1))

    scaled = bank / np.linalg.norm(bank, axis=1, keepdims=True) * energy(bank)[:, None]
    products = (x / np.linalg.norm(x, axis=1, keepdims=True)) @ scaled.T
    return -np.sort(-products, axis=1)[:, :k].mean(1) * energy(x)


@pytest.mark.parametrize("backend", ["faiss", "sklearn"])
def test_nnguide_by_hand(tmp_path, backend):
    w, b = [[1.0, 0.0], [0.0, 1.0], [-1.0, -1.0]], [0.0, 0.5, -1.0]
    bank = [[2.0, 0.0], [0.0, 3.0], [1.0, 1.0], [-2.0, -1.0], [3.0, -1.0]]
    x = np.array([[1.0, 0.0], [0.0, -2.0], [-1.0, 1.5], [4.0, 4.0]])
    tol = 1e-6 if backend == "faiss" else 1e-12  # faiss's float32 distances
    for k in (1, 2, 5):
        ours = build_scorer("nnguide", k=k, backend=backend).fit(bank, head=_head(w, b)).score(x)
        np.testing.assert_allclose(ours, _nnguide_by_hand(x, bank, w, b, k), rtol=tol, atol=tol)
    # x = (1, 0), k = 1: its nearest scaled bank row by inner product is E(3, -1) (3, -1) / sqrt(10)
    e = np.log(np.exp([1.0, 0.5, -2.0]).sum())
    e_row = np.log(np.exp([3.0, -0.5, -3.0]).sum())
    one = build_scorer("nnguide", k=1, backend=backend).fit(bank, head=_head(w, b)).score(x[:1])[0]
    assert one == pytest.approx(e * e_row * 3 / np.sqrt(10), rel=tol)
    # from a row source, block by block: the same
    rows = _npy_rows(tmp_path, np.tile(bank, (3, 1)))
    streamed = build_scorer("nnguide", k=4, backend=backend).fit(rows, head=_head(w, b)).score(x)
    np.testing.assert_allclose(streamed, _nnguide_by_hand(x, np.tile(bank, (3, 1)), w, b, 4), rtol=tol, atol=tol)


@pytest.mark.parametrize("backend", ["faiss", "sklearn"])
def test_nnguide_matches_pytorch_ood(model_and_data, backend):  # noqa: F811
    d = model_and_data
    theirs = pood.NNGuide(None, d["head"], k=10).fit_features(d["f_train"], d["y_train"]).predict_features(
        d["f_test"])
    ours = build_scorer("nnguide", k=10, backend=backend).fit(d["f_train"], head=d["head"])
    # the guidance is a mean of inner products that may cross zero: 1e-5 of the largest magnitude as absolute
    # slack for pytorch-ood's float32 arithmetic
    assert_parity(ours.score(d["f_test"]), theirs, atol_of_max=1e-5)


def test_nnguide_bank_size_and_options():
    rng = np.random.default_rng(0)
    x, test = rng.normal(size=(50, 4)), rng.normal(size=(6, 4))
    head = _head(rng.normal(size=(3, 4)), rng.normal(size=3))
    sub = build_scorer("nnguide", k=3, bank_size=20, seed=1).fit(x, head=head)
    assert sub.bank_rows_ == 20 and sub.index_.index_.ntotal == 20
    expected = _nnguide_by_hand(test, x[sample_indices(50, 20, 1)], *head, k=3)
    np.testing.assert_allclose(sub.score(test), expected, rtol=1e-6)
    other = build_scorer("nnguide", k=3, bank_size=20, seed=2).fit(x, head=head).score(test)
    assert not np.allclose(other, expected)
    everything = build_scorer("nnguide", k=3).fit(x, head=head).score(test)
    np.testing.assert_array_equal(build_scorer("nnguide", k=3, bank_size=500).fit(x, head=head).score(test),
                                  everything)
    assert build_scorer("nnguide").get_params() == {"k": 10, "bank_size": None, "seed": 0, "backend": "auto"}
    for bad, word in [(dict(k=0), "k must"), (dict(k=None), "k must"), (dict(bank_size=0), "bank_size"),
                      (dict(bank_size=2.5), "bank_size"), (dict(backend="annoy"), "backend")]:
        with pytest.raises(ValueError, match=word):
            build_scorer("nnguide", **bad)
    with pytest.raises(ValueError, match="k=5 exceeds the number of bank features \\(4\\)"):
        build_scorer("nnguide", k=5, bank_size=4).fit(x, head=head)
    with pytest.raises(ValueError, match="final linear layer"):
        build_scorer("nnguide").fit(x)


# -------------------------------------------------------------------------------------------- box features

def test_on_box_features_with_the_inlier_rows_of_the_head():
    """Box-head features and a detector head whose last class is background: the feature scorers read the
    inlier rows of the head (as the box path's logit scorers read the inlier logit columns)."""
    rng = np.random.default_rng(0)
    means = np.eye(3, 8) * 4
    y = np.repeat(np.arange(3), 40)
    fit = np.maximum(means[y] + rng.normal(size=(120, 8)), 0)  # the box head's output: after a ReLU
    ood = np.maximum(rng.normal(size=(40, 8)) * 2, 0)
    weight = np.vstack([means, -np.ones((1, 8))])  # 3 classes + background
    bias = np.zeros(4)
    inlier = _head(weight[:-1], bias[:-1])
    sets = {"id": np.maximum(means[y[:40]] + rng.normal(size=(40, 8)), 0), "ood": ood}
    for name in ("fdbd", "nnguide"):
        out = fit_and_score(name, fit, None, sets, head=inlier)
        assert out["id"].shape == (40,) and np.isfinite(out["ood"]).all()
        assert out["id"].mean() > out["ood"].mean(), name
    gen = fit_and_score("gen", fit, None, {k: {"features": v} for k, v in sets.items()}, head=inlier)
    logits = torch.as_tensor(sets["ood"]) @ inlier[0].T + inlier[1]
    np.testing.assert_allclose(gen["ood"], build_scorer("gen").score_logits(logits), rtol=1e-12)
