"""FDE: flow log-likelihood of normalised penultimate features."""
import numpy as np
import pytest
import torch

from ffs_det.density.metrics import ood_metrics
from ffs_det.density.scorers import build_scorer

FAST = dict(epochs=15, hidden=32, blocks=2, batch_size=64, lr=3e-3)


@pytest.fixture(scope="module")
def features():
    """ID: ReLU features around one direction; OOD: around another direction (L2 normalisation keeps the
    difference) and a scaled copy of ID (which L2 normalisation hides)."""
    gen = torch.Generator().manual_seed(0)
    d = 6
    mean_id = torch.tensor([3.0, 2.0, 1.0, 0.5, 0.0, 0.0])
    mean_ood = torch.tensor([0.0, 0.5, 1.0, 2.0, 3.0, 0.0])
    def draw(mean, n):
        return (mean + 0.4 * torch.randn(n, d, generator=gen)).relu()
    return dict(train=draw(mean_id, 600), test=draw(mean_id, 200), ood=draw(mean_ood, 200))


def test_fde_separates_directions(features):
    fde = build_scorer("fde", **FAST).fit(features["train"])
    m = ood_metrics(fde.score(features["test"]), fde.score(features["ood"]))
    assert m["auroc"] > 0.95, m
    assert [h["epoch"] for h in fde.history_] == list(range(1, 16)) and fde.history_[-1]["nll"] < fde.history_[0]["nll"]
    s = fde.score(features["test"].numpy())
    assert s.dtype == np.float64 and s.shape == (200,) and np.isfinite(s).all()


def test_fde_l2_normalisation_ignores_scale(features):
    fde = build_scorer("fde", **FAST).fit(features["train"])
    np.testing.assert_allclose(fde.score(features["test"] * 5), fde.score(features["test"]),
                               rtol=1e-5, atol=1e-4)
    raw = build_scorer("fde", normalize="none", **FAST).fit(features["train"])
    assert not np.allclose(raw.score(features["test"] * 5), raw.score(features["test"]))


@pytest.mark.parametrize("normalize", ["l2_standardize", "standardize"])
def test_fde_other_normalisations_work(features, normalize):
    fde = build_scorer("fde", normalize=normalize, **FAST).fit(features["train"])
    assert ood_metrics(fde.score(features["test"]), fde.score(features["ood"]))["auroc"] > 0.9


def test_fde_is_deterministic_and_configurable(features):
    a = build_scorer("fde", coupling="realnvp", seed=3, **FAST).fit(features["train"])
    b = build_scorer("fde", coupling="realnvp", seed=3, **FAST).fit(features["train"])
    np.testing.assert_array_equal(a.score(features["ood"]), b.score(features["ood"]))
    assert a.flow_.config["coupling"] == "realnvp" and a.flow_.config["blocks"] == 2


def test_fde_errors(features):
    with pytest.raises(ValueError, match="normalisation"):
        build_scorer("fde", normalize="l3")
    with pytest.raises(ValueError, match="fit"):
        build_scorer("fde").score(features["test"])
    fde = build_scorer("fde", **dict(FAST, epochs=1)).fit(features["train"])
    with pytest.raises(ValueError, match="width 4.*fitted on width 6"):
        fde.score(np.zeros((3, 4)))
    with pytest.raises(ValueError, match="epochs"):
        build_scorer("fde", epochs=0)
    with pytest.raises(ValueError, match="lr"):
        build_scorer("fde", lr=-1.0).fit(features["train"])
