"""Activation shaping: ASH and SCALE (ffs_det/density/scorers/shaping.py) and AdaSCALE (adascale.py), against
their formulas on rows worked out by hand and, for ASH and SCALE, against pytorch-ood's detectors."""
import copy

import numpy as np
import pytest
import torch
from scipy.special import logsumexp

import pytorch_ood.detector as pood  # a test dependency (setup.py extras "test"): its absence must fail

from ffs_det.density.scorers import NotFittedError, build_scorer, fit_and_score, fit_source
from ffs_det.density.scorers.adascale import adascale_perturb
from ffs_det.density.scorers.shaping import kept_count
from ffs_det.density.streaming import ArrayRows
from ffs_det.image.evaluate import resolve_scorers

# 10 activations: with percentile 70, k = 10 - round(7) = 3 are kept; s1 = 45, the kept ones sum to s2 = 24
ROWS = np.array([[0, 1, 2, 3, 4, 5, 6, 7, 8, 9],
                 [9, 0, 8, 1, 7, 2, 6, 3, 5, 4],  # the same values, the largest first in every other place
                 [0] * 10], dtype=np.float64)  # all zero: nothing to scale, the logits are the bias
W = np.array([[1.0, 0, 0, 0, 0, 0, 0, 0, 0, 0.5], [0, 0, 0.2, 0, 0, 0, 0, 0.1, 0, 0], [0.01] * 10])
B = np.array([0.5, -1.0, 0.0])
E = np.exp(45 / 24)


def energy(shaped):
    return logsumexp(np.asarray(shaped) @ W.T + B, axis=1)


def test_kept_count_rounds_as_the_references():
    assert kept_count(10, 70) == 3 and kept_count(10, 0) == 10 and kept_count(2048, 90) == 205
    assert kept_count(10, 65) == 4 and kept_count(10, 75) == 2  # round half to even: 6.5 -> 6, 7.5 -> 8
    with pytest.raises(ValueError, match="keeps no activation of 10"):
        kept_count(10, 96)


@pytest.mark.parametrize("variant, shaped", [
    ("p", [[0, 0, 0, 0, 0, 0, 0, 7, 8, 9], [9, 0, 8, 0, 7, 0, 0, 0, 0, 0], [0] * 10]),
    ("b", [[0, 0, 0, 0, 0, 0, 0, 15, 15, 15], [15, 0, 15, 0, 15, 0, 0, 0, 0, 0], [0] * 10]),
    ("s", [[0, 0, 0, 0, 0, 0, 0, 7 * E, 8 * E, 9 * E], [9 * E, 0, 8 * E, 0, 7 * E, 0, 0, 0, 0, 0], [0] * 10]),
])
def test_ash_by_hand(variant, shaped):
    ours = build_scorer("ash", variant=variant, percentile=70).fit(ROWS, head=(W, B)).score(ROWS)
    np.testing.assert_allclose(ours, energy(shaped), rtol=1e-13)
    assert ours[2] == pytest.approx(logsumexp(B), rel=1e-14)


def test_scale_by_hand():
    ours = build_scorer("scale", percentile=70).fit(ROWS, head=(W, B)).score(ROWS)
    np.testing.assert_allclose(ours, energy(ROWS * E), rtol=1e-13)  # every activation scaled, none pruned
    again = build_scorer("scale", percentile=65).fit(ROWS, head=(W, B)).score(ROWS[:1])  # k = 4: s2 = 30
    np.testing.assert_allclose(again, energy(ROWS[:1] * np.exp(45 / 30)), rtol=1e-13)


def test_ties_at_the_cut_are_kept_in_feature_order():
    row = np.array([[1.0, 2, 2, 2, 0, 0, 0, 0, 0, 0]])  # k = 2 of three tied 2s: the first two
    w = np.arange(30.0).reshape(3, 10) ** 2 / 100  # every activation weighted differently
    ours = build_scorer("ash", variant="b", percentile=80).fit(row, head=(w, B)).score(row)
    assert ours == pytest.approx(logsumexp(w @ [0, 3.5, 3.5, 0, 0, 0, 0, 0, 0, 0] + B), rel=1e-13)


def test_nothing_cut_is_plain_energy():
    x = np.abs(np.random.default_rng(0).normal(size=(20, 10)))
    plain = build_scorer("energy").fit(head=(W, B)).score(x)
    np.testing.assert_allclose(build_scorer("ash", variant="p", percentile=0).fit(x, head=(W, B)).score(x), plain,
                               rtol=1e-13)


@pytest.fixture(scope="module")
def model_and_data():
    """A small classifier (at its seeded initialisation: the formulas do not need a trained one) whose penultimate
    features are post-ReLU, as ResNet's pooled ones are, and fit / test inputs."""
    torch.manual_seed(0)
    encoder = torch.nn.Sequential(torch.nn.Linear(20, 64), torch.nn.ReLU(), torch.nn.Linear(64, 100), torch.nn.ReLU())
    head = torch.nn.Linear(100, 5)
    model = torch.nn.Sequential(encoder, head).eval()
    x, x_test = torch.randn(400, 20), torch.cat([torch.randn(100, 20), 3.0 * torch.randn(100, 20)])
    with torch.no_grad():
        f, f_test = encoder(x), encoder(x_test)
    return dict(model=model, encoder=encoder, head=head, x=x, x_test=x_test, f=f, f_test=f_test)


def _pood_parts(d):
    """pytorch-ood's backbone (the features as B x D x 1 x 1 maps) and head, in float64 like ours."""
    head64 = torch.nn.Linear(100, 5).double()
    head64.load_state_dict({k: v.double() for k, v in d["head"].state_dict().items()})
    return (lambda x: d["encoder"](x).double()[:, :, None, None]), (lambda z: head64(z.flatten(1)))


@pytest.mark.parametrize("variant", ["p", "b", "s"])
@pytest.mark.parametrize("percentile", [65, 90])
def test_ash_matches_pytorch_ood(model_and_data, variant, percentile):
    d = model_and_data
    backbone, head = _pood_parts(d)
    theirs = pood.ASH(backbone, head, variant=f"ash-{variant}", percentile=percentile / 100).predict(d["x_test"])
    ours = build_scorer("ash", variant=variant, percentile=percentile).fit(d["f"], head=d["head"]).score(d["f_test"])
    np.testing.assert_allclose(ours, -theirs.numpy(), rtol=1e-12, atol=1e-12)  # theirs: the energy, ours: minus it


@pytest.mark.parametrize("percentile", [65, 85])
def test_scale_matches_pytorch_ood(model_and_data, percentile):
    d = model_and_data
    backbone, head = _pood_parts(d)
    theirs = pood.SCALE(backbone, head, percentile=percentile / 100).predict(d["x_test"])
    ours = build_scorer("scale", percentile=percentile).fit(d["f"], head=d["head"]).score(d["f_test"])
    np.testing.assert_allclose(ours, -theirs.numpy(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", ["ash", "scale"])
def test_fit_checks_and_streams(model_and_data, name):
    d = model_and_data
    with pytest.raises(ValueError, match="final linear layer"):
        build_scorer(name).fit(d["f"])
    with pytest.raises(ValueError, match="expects 100"):
        build_scorer(name).fit(d["f"][:, :50], head=d["head"])
    with pytest.raises(NotFittedError):
        build_scorer(name).score(d["f"])
    scorer = build_scorer(name).fit(d["f"], head=d["head"])
    streamed = build_scorer(name).fit(ArrayRows(d["f"].numpy()), head=d["head"])
    np.testing.assert_array_equal(streamed.score(d["f_test"]), scorer.score(d["f_test"]))
    # the driver, as the box-score path calls it (sets with features and logits; the head given)
    out = fit_and_score(name, d["f"], None, {"a": {"features": d["f_test"], "logits": torch.zeros(200, 5)}},
                        head=d["head"])
    np.testing.assert_array_equal(out["a"], scorer.score(d["f_test"]))


def test_options_are_checked():
    for options, word in [({"variant": "x"}, "variant"), ({"percentile": 100}, "percentile"),
                          ({"percentile": -1}, "percentile")]:
        with pytest.raises(ValueError, match=word):
            build_scorer("ash", **options)
    with pytest.raises(ValueError, match="percentile"):
        build_scorer("scale", percentile=100)
    with pytest.raises(ValueError, match="keeps no activation of 10"):
        build_scorer("scale", percentile=99).fit(ROWS, head=(W, B)).score(ROWS)


def test_signed_activations_that_overflow_the_factor_are_refused():
    # the kept activation sums to s2 = -1e-3 and all of them to s1 = -10.001: exp(s1 / s2) overflows
    row = np.array([[-1e-3, -5.0, -5.0]])
    with pytest.raises(ValueError, match="overflows for 1 rows.*non-negative"):
        build_scorer("scale", percentile=60).fit(row, head=(np.ones((2, 3)), np.zeros(2))).score(row)


# AdaSCALE ----------------------------------------------------------------------------------------------------

def test_adascale_perturbation_by_hand():
    x = torch.zeros(1, 20)
    grad = torch.tensor([[3.0, -0.1, 2, 0.05, -4] + [1.0] * 15])
    out = adascale_perturb(x, grad, 0.1, 0.5)  # int(0.1 * 20) = 2 elements: those with |grad| 0.05 and 0.1
    expected = torch.zeros(1, 20)
    expected[0, 3], expected[0, 1] = 0.5, -0.5
    assert torch.equal(out, expected)
    with pytest.raises(ValueError, match="is none"):
        adascale_perturb(x, grad, 0.01, 0.5)


def test_adascale_steps_by_hand():
    scorer = build_scorer("adascale", k_perturbed=10, k_shift=5)  # of D = 20: the 2 and the 1 largest
    f = np.zeros((1, 20))
    f[0, 3], f[0, 7], f[0, 11] = 9.0, 8.0, 1.0
    fp = f + 0.3  # the other activations move too, but are not read
    fp[0, 3], fp[0, 7] = 7.0, -1.0
    # max(7, 0) + max(-1, 0) over the 2 largest, + 10 * |9 - 7| over the largest
    assert scorer.evidence(f, fp) == pytest.approx([27.0], rel=1e-14)
    scorer.fit_evidence_, scorer.dim_ = np.array([1.0, 2, 3, 4]), 20
    # F = 0, 1/2, 1/2, 1: p = 75 + (1 - F) * 10
    np.testing.assert_allclose(scorer.percentiles([0.0, 2, 2.5, 10]), [85, 80, 80, 75], rtol=1e-14)
    # evidence 0, 2, 10: p = 85, 80, 75 keep k = 3, 4, 5 of the 20 activations
    rows = np.zeros((3, 20))
    rows[:, :4] = [4.0, 3, 2, 1]  # s1 = 10; the 3, 4, 5 largest sum to s2 = 9, 10, 10: r = s1 / s2
    w, b = np.eye(3, 20), np.array([0.0, 1, 2])
    a = scorer.score_features((w, b), rows, [0.0, 2, 10])
    np.testing.assert_allclose(a, [logsumexp(rows[i] @ w.T * np.exp(r) + b) for i, r in
                                   enumerate([10 / 9, 1.0, 1.0])], rtol=1e-13)
    scorer.variant = "l"
    lo = scorer.score_features((w, b), rows, [0.0, 2, 10])
    np.testing.assert_allclose(lo, [logsumexp((rows[i] @ w.T + b) * r ** 2) for i, r in
                                    enumerate([10 / 9, 1.0, 1.0])], rtol=1e-13)


def _adascale_by_hand(model, encoder, x_fit, x, lam=10.0, o=0.05, step=0.5, p_lo=75.0, p_hi=85.0):
    """AdaSCALE-A sample by sample, in numpy but for the input gradients."""
    w = model[1].weight.detach().double().numpy()
    b = model[1].bias.detach().double().numpy()

    def evidence_and_features(xi):
        xi = xi.clone().requires_grad_(True)
        logits = model(xi[None])[0]
        (g,) = torch.autograd.grad(logits[logits.argmax()], xi)
        g = g.numpy()
        n = int(g.size * o)
        smallest = np.argsort(np.abs(g), kind="stable")[:n]
        xp = xi.detach().numpy().copy()
        xp[smallest] += step * np.sign(g[smallest])
        with torch.no_grad():
            f = encoder(xi[None])[0].double().numpy()
            fp = encoder(torch.as_tensor(xp)[None])[0].double().numpy()
        order = np.argsort(-f, kind="stable")
        k1, k2 = int(f.size * 5 / 100), int(f.size * 1 / 100)
        q = np.maximum(fp[order[:k1]], 0).sum() + lam * np.abs(f - fp)[order[:k2]].sum()
        return q, f

    fit_q = np.array([evidence_and_features(xi)[0] for xi in x_fit])
    scores = []
    for xi in x:
        q, f = evidence_and_features(xi)
        p = p_lo + (1 - np.mean(fit_q <= q)) * (p_hi - p_lo)
        k = f.size - int(np.round(f.size * p / 100))
        relu = np.maximum(f, 0)
        r = relu.sum() / np.sort(relu)[::-1][:k].sum()
        scores.append(logsumexp(w @ (f * np.exp(r)) + b))
    return np.array(scores)


def test_adascale_matches_its_formula(model_and_data):
    d = model_and_data
    model = copy.deepcopy(d["model"]).double()  # float64: per-sample and batched passes agree to rounding
    x_fit, x = d["x"][:120].double(), d["x_test"][::10].double()
    expected = _adascale_by_hand(model, model[0], x_fit, x)
    scorer = build_scorer("adascale").fit(model=model, inputs=[(x_fit[:50], None), x_fit[50:]])
    assert scorer.fit_evidence_.shape == (120,) and scorer.dim_ == 100
    np.testing.assert_allclose(scorer.score_inputs(model, x), expected, rtol=1e-10)
    # the driver: X=None, the model and the in-distribution inputs as fit options
    out = fit_and_score("adascale", None, test_sets={"t": {"model": model, "inputs": x}}, model=model,
                        inputs=x_fit)
    np.testing.assert_allclose(out["t"], expected, rtol=1e-10)
    # the source driver: fit_source passes the model and the inputs on
    fitted = fit_source(build_scorer("adascale"), None, None, inputs=[x_fit], model=model)
    np.testing.assert_allclose(fitted.fit_evidence_, scorer.fit_evidence_, rtol=1e-13)  # batched otherwise


def test_adascale_with_one_percentile_is_scale(model_and_data):
    d = model_and_data
    scorer = build_scorer("adascale", min_percentile=80, max_percentile=80).fit(model=d["model"], inputs=d["x"][:50])
    scale = build_scorer("scale", percentile=80).fit(d["f"], head=d["head"])
    np.testing.assert_allclose(scorer.score_inputs(d["model"], d["x_test"]), scale.score(d["f_test"]), rtol=1e-6)


def test_adascale_needs_and_checks(model_and_data):
    d = model_and_data
    with pytest.raises(NotFittedError):
        build_scorer("adascale").score_inputs(d["model"], d["x_test"])
    with pytest.raises(ValueError, match="needs the classifier"):
        build_scorer("adascale").fit(inputs=d["x"])
    with pytest.raises(ValueError, match="in-distribution inputs"):
        build_scorer("adascale").fit(model=d["model"])
    with pytest.raises(ValueError, match="k_shift.*give \\[1, 0\\]"):
        build_scorer("adascale", k_perturbed=1, k_shift=0.5).fit(model=d["model"], inputs=d["x"][:5])
    for options, word in [({"variant": "s"}, "variant"), ({"min_percentile": 90}, "min_percentile"),
                          ({"k_shift": 0}, "k_shift"), ({"perturb_fraction": 0}, "perturb_fraction"),
                          ({"shift_weight": -1}, "shift_weight")]:
        with pytest.raises(ValueError, match=word):
            build_scorer("adascale", **options)
    # the image benchmark gives it the classifier and the training set's images (tests/image/test_image_cli.py)
    assert {"ash", "scale", "adascale"} <= set(resolve_scorers("all"))
    with pytest.raises(ValueError, match="safe"):  # SAFE's perturbed objects it does not have
        resolve_scorers("adascale,safe")
