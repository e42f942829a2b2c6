"""The energy-margin regulariser (ffs_det.modeling.energy): temperature, reductions, diagnostics."""
import pytest
import torch
import torch.nn.functional as F

from ffs_det.modeling.energy import EnergyMargin


def test_energy_is_weighted_logsumexp_at_temperature():
    torch.manual_seed(0)
    m = EnergyMargin(4)
    logits = torch.randn(6, 4) * 5
    torch.testing.assert_close(m.energy(logits), torch.logsumexp(logits, 1))
    torch.testing.assert_close(m.energy(logits, 40.0), 40 * torch.logsumexp(logits / 40, 1))
    with torch.no_grad():
        m.class_weights.copy_(torch.tensor([2.0, 0.5, -1.0, 1.0]))  # negative weights count as 0 (relu)
    w = torch.tensor([2.0, 0.5, 0.0, 1.0])
    torch.testing.assert_close(m.energy(logits, 3.0), 3 * torch.log((w * torch.exp(logits / 3)).sum(1)))


def test_outliers_are_scored_at_their_temperature_and_inliers_at_one():
    torch.manual_seed(0)
    m = EnergyMargin(3, outlier_temperature=40.0)
    inl, out = torch.randn(5, 3), torch.randn(2, 3)
    energies = torch.cat([torch.logsumexp(inl, 1), 40 * torch.logsumexp(out / 40, 1)])
    targets = torch.tensor([1] * 5 + [0] * 2)
    expected = F.cross_entropy(m.logistic(energies[:, None]), targets)
    torch.testing.assert_close(m(inl, out), expected)


def test_balanced_reduction_weighs_outliers_as_much_as_inliers():
    torch.manual_seed(0)
    inl, out = torch.randn(99, 3), torch.randn(1, 3) - 3
    mean, bal = EnergyMargin(3), EnergyMargin(3, reduction="balanced")
    bal.load_state_dict(mean.state_dict())
    energies = torch.cat([torch.logsumexp(inl, 1), torch.logsumexp(out, 1)])
    ce = F.cross_entropy(mean.logistic(energies[:, None]), torch.tensor([1] * 99 + [0]), reduction="none")
    torch.testing.assert_close(mean(inl, out), ce.mean())
    torch.testing.assert_close(bal(inl, out), 0.5 * (ce[:99].mean() + ce[99]))
    # with one side empty, the balanced loss is that side's mean
    torch.testing.assert_close(bal(inl, out[:0]), ce[:99].mean(), rtol=1e-5, atol=1e-6)


def test_diagnostics_report_energies_and_accuracy():
    m = EnergyMargin(2)
    with torch.no_grad():  # logistic regression: class 1 (inlier) when energy > 0
        m.logistic.weight.copy_(torch.tensor([[-1.0], [1.0]]))
        m.logistic.bias.zero_()
    inl = torch.tensor([[3.0, 3.0], [4.0, 0.0], [-9.0, -9.0]])  # the last inlier has a negative energy
    out = torch.tensor([[-5.0, -5.0]])
    d = m.diagnostics(inl, out)
    assert d["margin_inlier_accuracy"] == pytest.approx(2 / 3) and d["margin_outlier_accuracy"] == 1.0
    assert d["margin_accuracy"] == pytest.approx((2 / 3 + 1) / 2)  # balanced over the two sides
    assert d["energy_inlier"] == pytest.approx(float(torch.logsumexp(inl, 1).mean()))
    assert d["energy_outlier"] == pytest.approx(float(torch.logsumexp(out, 1)))
    # one outlier among many inliers: a margin that calls everything an inlier is at 50%, not ~99%
    with torch.no_grad():
        m.logistic.bias.copy_(torch.tensor([-100.0, 100.0]))
    d = m.diagnostics(torch.ones(99, 2), out)
    assert (d["margin_inlier_accuracy"], d["margin_outlier_accuracy"], d["margin_accuracy"]) == (1.0, 0.0, 0.5)


@pytest.mark.parametrize("kwargs, match", [({"outlier_temperature": 0.0}, "OUTLIER_TEMPERATURE"),
                                           ({"reduction": "sum"}, "MARGIN_REDUCTION")])
def test_bad_settings_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        EnergyMargin(3, **kwargs)


def test_the_margin_is_float32_under_autocast():
    """AMP gives the ROI head half-precision logits; the margin's log-sum-exp and logistic loss stay float32."""
    gen = torch.Generator().manual_seed(0)
    inl, out = torch.randn(20, 5, generator=gen) * 4, torch.randn(3, 5, generator=gen) * 4
    margin = EnergyMargin(5, weight_init="uniform")
    with torch.no_grad():
        margin.class_weights[0] = -1.0  # a class whose weight is cut to 0 by the ReLU
    want = margin(inl, out)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        got = margin(inl.to(torch.bfloat16), out.to(torch.bfloat16))
    assert got.dtype == torch.float32 and torch.isfinite(got)
    want_rounded = margin(inl.to(torch.bfloat16).float(), out.to(torch.bfloat16).float())
    torch.testing.assert_close(got, want_rounded, rtol=1e-6, atol=1e-6)
    assert abs(float(got) - float(want)) < 0.05
