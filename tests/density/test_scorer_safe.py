"""SAFE's meta-classifier (ffs_det.density.scorers.safe): the paper's MLP, trained on clean vs perturbed objects."""
import numpy as np
import pytest
import torch

from ffs_det.density.scorers import build_scorer
from ffs_det.density.scorers.safe import safe_mlp


def _objects(n=300, d=16, shift=1.0, seed=0):
    rng = np.random.default_rng(seed)
    clean = rng.normal(size=(n, d))
    # perturbed copies: the same objects moved along one direction (the MLP is linear: no activations)
    return clean, clean + shift + 0.3 * rng.normal(size=(n, d))


def test_the_mlp_is_the_papers():
    net = safe_mlp(40)
    linear = [m for m in net if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linear] == [(40, 20), (20, 10), (10, 1)]
    assert isinstance(net[2], torch.nn.Dropout) and net[2].p == 0.5
    assert all(torch.all(m.bias == 0.01) for m in linear)
    assert not any(isinstance(m, (torch.nn.ReLU, torch.nn.Sigmoid)) for m in net)  # no activation between layers


def test_clean_objects_score_above_their_perturbed_copies():
    clean, adv = _objects()
    scorer = build_scorer("safe", epochs=30).fit(clean[:200], adversarial=adv[:200])
    s_clean, s_adv = scorer.score(clean[200:]), scorer.score(adv[200:])
    assert s_clean.dtype == np.float64 and s_clean.shape == (100,)
    assert (s_clean[:, None] > s_adv[None, :]).mean() > 0.9  # AUROC on held-out objects
    assert scorer.history_[-1] < scorer.history_[0]
    np.testing.assert_allclose(scorer.mean_.numpy(), clean[:200].mean(0), rtol=1e-5)  # centred on clean objects


def test_seeded_and_leaves_the_global_stream_alone():
    clean, adv = _objects(n=80)
    torch.manual_seed(123)
    before = torch.rand(3)
    torch.manual_seed(123)
    a = build_scorer("safe", seed=4).fit(clean, adversarial=adv).score(clean)
    np.testing.assert_array_equal(torch.rand(3).numpy(), before.numpy())
    b = build_scorer("safe", seed=4).fit(clean, adversarial=adv).score(clean)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, build_scorer("safe", seed=5).fit(clean, adversarial=adv).score(clean))


def test_bad_inputs_are_named():
    clean, adv = _objects(n=20)
    with pytest.raises(ValueError, match="give adversarial="):
        build_scorer("safe").fit(clean)
    with pytest.raises(ValueError, match="must pair with the clean ones"):
        build_scorer("safe").fit(clean, adversarial=adv[:5])
    nan = adv.copy()
    nan[:19] = np.nan  # images without ground truth: their rows are no negatives
    with pytest.raises(ValueError, match="at least 2 clean and 2 perturbed"):
        build_scorer("safe").fit(clean, adversarial=nan)
    nan[:10] = adv[:10]
    assert np.isfinite(build_scorer("safe").fit(clean, adversarial=nan).score(clean)).all()
    with pytest.raises(ValueError, match="dropout must be in"):
        build_scorer("safe", dropout=1.0)


def test_the_image_benchmark_leaves_it_out():
    from ffs_det.image.evaluate import resolve_scorers

    assert "safe" not in resolve_scorers("all") and "knn" in resolve_scorers("all")
    with pytest.raises(ValueError, match=r"\['safe'\] need fit inputs the image benchmark does not have"):
        resolve_scorers("knn,safe")
