"""Our scorers against pytorch-ood's on the same model and data.

pytorch-ood returns outlier scores (higher = more OOD); ours are higher = more ID, so each comparison is
against ``-scale * theirs`` with the scale stated in the test. Both rank correlation (Spearman, exactly 1)
and values (1e-4 relative) must agree.
"""
import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from ffs_det.density.scorers import build_scorer

import pytorch_ood.detector as pood  # a test dependency (setup.py extras "test"): its absence must fail

N_CLASSES, IN_DIM, FEAT_DIM = 5, 20, 16


@pytest.fixture(scope="module")
def model_and_data():
    """A small trained classifier (encoder -> linear head) and ID train / mixed test inputs."""
    gen = torch.Generator().manual_seed(0)
    centres = 3.0 * torch.randn(N_CLASSES, IN_DIM, generator=gen)
    y_train = torch.arange(600) % N_CLASSES
    x_train = centres[y_train] + torch.randn(600, IN_DIM, generator=gen)
    x_test = torch.cat([centres[torch.arange(150) % N_CLASSES] + torch.randn(150, IN_DIM, generator=gen),
                        2.0 * torch.randn(150, IN_DIM, generator=gen)])  # ID, then OOD noise
    torch.manual_seed(0)
    encoder = torch.nn.Sequential(torch.nn.Linear(IN_DIM, 32), torch.nn.ReLU(), torch.nn.Linear(32, FEAT_DIM))
    head = torch.nn.Linear(FEAT_DIM, N_CLASSES)
    model = torch.nn.Sequential(encoder, head)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(100):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x_train), y_train).backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        f_train, f_test = encoder(x_train), encoder(x_test)
    # logits in float64 for both libraries, so that float32 rounding of saturated softmax values (ties) does
    # not decide the rank comparison
    return dict(model=model, head=head, x_train=x_train, y_train=y_train, x_test=x_test, f_train=f_train,
                f_test=f_test, logits_test=head(f_test).detach().double())


class Float64Logits(torch.nn.Module):
    """The classifier with its logits cast to float64 (inputs and weights stay float32)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x).double()


def assert_parity(ours, theirs_outlier, scale=1.0, atol_of_max=1e-9):
    """Equal ranks and values within 1e-4 relative; ``atol_of_max`` (a fraction of the largest magnitude)
    covers scores that are differences of larger terms and cross zero."""
    ref = -scale * np.asarray(torch.as_tensor(theirs_outlier).double())
    ours = np.asarray(ours)
    assert ours.shape == ref.shape and ours.dtype == np.float64
    assert spearmanr(ours, ref).statistic == pytest.approx(1.0, abs=1e-12)
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=atol_of_max * np.abs(ref).max())


def test_mahalanobis_matches_pytorch_ood(model_and_data):
    d = model_and_data
    n = d["f_train"].shape[0]
    theirs = pood.Mahalanobis(None).fit_features(d["f_train"], d["y_train"]).predict_features(d["f_test"])
    # pytorch-ood's covariance is the unnormalised scatter S (+1e-6 I); ours is S / N (+ridge I), so with
    # ridge = 1e-6 / N its half squared distance is N times ours
    ours = build_scorer("mahalanobis", ridge=1e-6 / n).fit(d["f_train"], d["y_train"])
    assert_parity(ours.score(d["f_test"]), theirs, scale=n)


def test_knn_matches_pytorch_ood(model_and_data):
    d = model_and_data
    theirs = pood.KNN(None, k=10).fit_features(d["f_train"], d["y_train"]).predict_features(d["f_test"])
    ours = build_scorer("knn", k=10).fit(d["f_train"]).score(d["f_test"])
    assert_parity(ours, theirs)


def test_vim_matches_pytorch_ood(model_and_data):
    d = model_and_data
    w, b = d["head"].weight.detach(), d["head"].bias.detach()
    # d = number of classes: the principal subspace is the span of the class means, which is separated from
    # the residual by a wide eigenvalue gap, so pytorch-ood's float32 eigendecomposition finds the same one
    theirs = pood.ViM(None, d=N_CLASSES, w=w, b=b).fit_features(d["f_train"], d["y_train"]).predict_features(
        d["f_test"])
    ours = build_scorer("vim", d=N_CLASSES).fit(d["f_train"], head=(w, b))
    # the score is a difference of two terms of ~10 that cancels near zero: 1e-5 of the largest magnitude
    # absolute slack for pytorch-ood's float32 arithmetic there
    assert_parity(ours.score(d["f_test"]), theirs, atol_of_max=1e-5)
    # the head can also be given as the nn.Linear itself
    same = build_scorer("vim", d=N_CLASSES).fit(d["f_train"], head=d["head"]).score(d["f_test"])
    np.testing.assert_allclose(same, ours.score(d["f_test"]), rtol=1e-12)


def test_gmm_matches_pytorch_ood(model_and_data):
    d = model_and_data
    theirs = pood.GMM(None, reg=1e-6).fit_features(d["f_train"], d["y_train"]).predict_features(d["f_test"])
    ours = build_scorer("gmm", normalize=False, covariance="full", ridge=1e-6)
    assert_parity(ours.fit(d["f_train"], d["y_train"]).score(d["f_test"]), theirs)


def test_residual_flow_at_initialisation_is_mahalanobis(model_and_data):
    d = model_and_data
    maha = build_scorer("mahalanobis").fit(d["f_train"], d["y_train"])
    flow = build_scorer("residual_flow", epochs=0).fit(d["f_train"], d["y_train"])
    expected = maha.score(d["f_test"]) + maha.log_normalizer()
    np.testing.assert_allclose(flow.score(d["f_test"]), expected, rtol=1e-5)
    # per layer too, for a multi-layer dict (validation features given, so every fit row is used)
    layers = {"penultimate": d["f_train"], "logits": d["head"](d["f_train"]).detach()}
    test_layers = {"penultimate": d["f_test"], "logits": d["logits_test"]}
    multi = build_scorer("residual_flow", epochs=0).fit(layers, d["y_train"],
                                                        X_val=test_layers)
    for name, scores in multi.layer_scores(test_layers).items():
        m = build_scorer("mahalanobis").fit(layers[name], d["y_train"])
        np.testing.assert_allclose(scores, m.score(test_layers[name]) + m.log_normalizer(), rtol=1e-5)


@pytest.mark.parametrize("temperature", [1.0, 3.0])
def test_msp_matches_pytorch_ood(model_and_data, temperature):
    logits = model_and_data["logits_test"]
    ours = build_scorer("msp", temperature=temperature).score_logits(logits)
    assert_parity(ours, pood.MaxSoftmax.score(logits, t=temperature))


@pytest.mark.parametrize("temperature", [1.0, 3.0])
def test_energy_matches_pytorch_ood(model_and_data, temperature):
    logits = model_and_data["logits_test"]
    ours = build_scorer("energy", temperature=temperature).score_logits(logits)
    # pytorch-ood returns the energy -T logsumexp(logits / T); ours is its negative
    assert_parity(ours, pood.EnergyBased.score(logits, t=temperature))


@pytest.mark.parametrize("temperature, eps", [(1000.0, 0.0014), (10.0, 0.05)])
def test_odin_matches_pytorch_ood(model_and_data, temperature, eps):
    d = model_and_data
    model = Float64Logits(d["model"])
    theirs = pood.ODIN(model, eps=eps, temperature=temperature).predict(d["x_test"])
    ours = build_scorer("odin", temperature=temperature, epsilon=eps).score_inputs(model, d["x_test"])
    assert_parity(ours, theirs)
