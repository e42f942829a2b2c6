"""MSP, energy, ODIN and ReAct on small cases with known answers."""
import math

import numpy as np
import pytest
import torch

from ffs_det.density.scorers import SCORERS, NotFittedError, build_scorer
from ffs_det.density.scorers.odin import odin_perturb
from ffs_det.density.inputs import final_linear


def test_registered():
    assert {"msp", "energy", "odin", "react", "fde"} <= set(SCORERS)
    assert SCORERS["msp"].kind == SCORERS["energy"].kind == "logits" and SCORERS["odin"].kind == "inputs"


def test_msp_closed_form():
    logits = np.array([[0.0, math.log(3.0)], [5.0, 5.0], [2.0, 0.0]])
    np.testing.assert_allclose(build_scorer("msp").score_logits(logits), [0.75, 0.5, 1 / (1 + math.exp(-2))],
                               rtol=1e-12)
    # temperature 2 halves the logit gap
    np.testing.assert_allclose(build_scorer("msp", temperature=2.0).score_logits(logits[2:]),
                               [1 / (1 + math.exp(-1))], rtol=1e-12)
    out = build_scorer("msp").score_logits(torch.tensor([[1000.0, 0.0, -1000.0]]))
    assert out.dtype == np.float64 and out.shape == (1,) and out[0] == 1.0


def test_energy_closed_form():
    logits = np.array([[0.0, 0.0], [2.0, 2.0], [1000.0, 1000.0]])
    np.testing.assert_allclose(build_scorer("energy").score_logits(logits),
                               [math.log(2), 2 + math.log(2), 1000 + math.log(2)], rtol=1e-12)
    np.testing.assert_allclose(build_scorer("energy", temperature=2.0).score_logits(logits[1:2]),
                               [2 * (1 + math.log(2))], rtol=1e-12)


@pytest.mark.parametrize("name", ["msp", "energy"])
def test_logit_scorers_reject_bad_input(name):
    with pytest.raises(ValueError, match="logits"):
        build_scorer(name).score_logits(np.zeros(3))
    with pytest.raises(ValueError, match="logits"):
        build_scorer(name).score_logits(None)
    with pytest.raises(ValueError, match="temperature"):
        build_scorer(name, temperature=0.0)
    with pytest.raises(NotFittedError, match="score_logits"):  # features need the head
        build_scorer(name).score(np.zeros((2, 3)))


@pytest.mark.parametrize("name", ["msp", "energy"])
def test_logit_scorers_score_features_through_the_head(name):
    head = torch.nn.Linear(3, 2).double()
    x = torch.randn(5, 3, dtype=torch.float64)
    scorer = build_scorer(name).fit(None, head=head)
    with torch.no_grad():
        np.testing.assert_allclose(scorer.score(x), build_scorer(name).score_logits(head(x)), rtol=1e-12)


@pytest.fixture
def classifier():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    return model, torch.randn(32, 3, 2, 2)


@pytest.mark.parametrize("temperature", [1.0, 1000.0])
def test_odin_without_perturbation_is_tempered_msp(classifier, temperature):
    model, x = classifier
    odin = build_scorer("odin", temperature=temperature, epsilon=0.0).score_inputs(model, x)
    with torch.no_grad():
        logits = model(x)
    np.testing.assert_allclose(odin, build_scorer("msp", temperature=temperature).score_logits(logits), rtol=1e-12)


def test_odin_perturbation_raises_the_predicted_class(classifier):
    model, x = classifier
    model.train()
    plain = build_scorer("odin", temperature=10.0, epsilon=0.0).score_inputs(model, x)
    pert = build_scorer("odin", temperature=10.0, epsilon=0.01).score_inputs(model, x)
    assert (pert > plain).mean() > 0.9
    assert model.training, "the model's mode must be restored"
    assert all(p.grad is None for p in model.parameters()), "parameters must not collect gradients"
    # input_std divides the sign step per channel: eps with std 2 is eps / 2 without it
    np.testing.assert_allclose(odin_perturb(model, x, 10.0, 0.02, input_std=[2.0, 2.0, 2.0]).numpy(),
                               odin_perturb(model, x, 10.0, 0.01).numpy(), rtol=0, atol=1e-7)
    with pytest.raises(ValueError, match="input_std"):
        odin_perturb(model, x, 10.0, 0.01, input_std=[1.0, 2.0])
    with pytest.raises(ValueError, match="model"):
        build_scorer("odin").score_inputs(None, x)
    with pytest.raises(ValueError, match="epsilon"):
        build_scorer("odin", epsilon=-1)


def test_react_clips_at_the_training_percentile():
    head = torch.nn.Linear(3, 2)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]]))
        head.bias.copy_(torch.tensor([0.5, -0.5]))
    train = np.arange(12, dtype=np.float32).reshape(4, 3)  # activations 0..11
    react = build_scorer("react", percentile=50).fit(train, head=torch.nn.Sequential(torch.nn.ReLU(), head))
    assert react.threshold_ == pytest.approx(5.5)  # median of 0..11
    test = np.array([[1.0, 2.0, 3.0], [10.0, 0.0, 20.0]])
    clipped = np.minimum(test, 5.5)
    logits = clipped @ np.array([[1, 0, 0], [0, 1, 1]]).T + np.array([0.5, -0.5])
    expected = np.log(np.exp(logits).sum(1))
    np.testing.assert_allclose(react.score(test), expected, rtol=1e-12)
    # percentile 100 never clips the training range: plain energy of the head's logits
    full = build_scorer("react", percentile=100).fit(train, head=head)
    with torch.no_grad():
        plain = head(torch.tensor(test[:1], dtype=torch.float32)).double()
    np.testing.assert_allclose(full.score(test[:1]), torch.logsumexp(plain, 1).numpy(), rtol=1e-6)


def test_react_errors():
    with pytest.raises(NotFittedError, match="fit"):
        build_scorer("react").score(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="final linear layer"):
        build_scorer("react").fit(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="final linear layer expects 4"):
        build_scorer("react").fit(np.zeros((2, 3)), head=torch.nn.Linear(4, 2))
    with pytest.raises(ValueError, match="no nn.Linear"):
        final_linear(torch.nn.Conv2d(1, 1, 1))
    with pytest.raises(ValueError, match="percentile"):
        build_scorer("react", percentile=0)


def test_react_matches_pytorch_ood():
    import pytorch_ood.detector as pood
    torch.manual_seed(1)
    head = torch.nn.Linear(8, 5)
    train, test = torch.randn(200, 8).relu(), torch.randn(50, 8).relu() * 2
    ours = build_scorer("react", percentile=85).fit(train, head=head)
    theirs = pood.ReAct(backbone=lambda x: x, head=head, threshold=ours.threshold_).predict(test)
    np.testing.assert_allclose(ours.score(test), -theirs.detach().double().numpy(), rtol=1e-5)
