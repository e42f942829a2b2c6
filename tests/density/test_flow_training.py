"""Tests of flow training on fixed features (ffs_det.density.flow_training): the minibatch schedule, the
training loop, fitting from memory or a row source, batched log-densities, the non-finite floor, and the
seeded construction of a flow."""
import itertools
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from ffs_det.density.flow import seeded_init
from ffs_det.density.flow_training import (FlowConfig, finite_or_floor, fit_flow, flow_log_prob, minibatches,
                                           train_flow)
from ffs_det.density.streaming import ArrayRows, FeatureRows

SMALL = dict(blocks=2, hidden=16, batch_size=64)


def gaussian(n, seed=0):
    """``n`` rows of a correlated 3-d Gaussian away from the origin, float64."""
    gen = torch.Generator().manual_seed(seed)
    mix = torch.tensor([[1.5, 0.0, 0.0], [0.9, 0.6, 0.0], [-0.4, 0.3, 0.4]], dtype=torch.float64)
    return torch.tensor([2.0, -1.0, 0.5], dtype=torch.float64) + torch.randn(n, 3, generator=gen,
                                                                             dtype=torch.float64) @ mix.T


def _schedule(n, batch_size, epochs, max_steps, seed=0):
    return list(minibatches(n, batch_size, epochs, max_steps, torch.Generator().manual_seed(seed)))


def _state(module):
    return {k: v.clone() for k, v in module.state_dict().items()}


def _same_state(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ----------------------------------------------------------------------------------------------- minibatches

def test_minibatches_cover_every_row_once_per_epoch():
    batches = _schedule(10, 4, epochs=3, max_steps=None)
    assert [e for e, _ in batches] == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert [len(idx) for _, idx in batches] == [4, 4, 2] * 3
    orders = [torch.cat([idx for e, idx in batches if e == epoch]) for epoch in range(3)]
    for order in orders:
        assert sorted(order.tolist()) == list(range(10))
    assert not torch.equal(orders[0], orders[1])  # reshuffled every epoch


def test_max_steps_caps_the_epochs_and_none_of_both_is_endless():
    assert len(_schedule(10, 4, epochs=3, max_steps=5)) == 5
    assert len(_schedule(10, 4, epochs=1, max_steps=100)) == 3  # the epochs end first
    capped = _schedule(10, 4, epochs=None, max_steps=7)
    assert [e for e, _ in capped] == [0, 0, 0, 1, 1, 1, 2]
    endless = minibatches(10, 4, None, None, torch.Generator().manual_seed(0))
    assert len(list(itertools.islice(endless, 50))) == 50
    assert _schedule(10, 4, epochs=0, max_steps=None) == []


def test_minibatch_order_is_fixed_by_the_seed():
    a, b, c = (_schedule(50, 8, 2, None, seed) for seed in (3, 3, 4))
    assert all(ea == eb and torch.equal(ia, ib) for (ea, ia), (eb, ib) in zip(a, b))
    assert not all(torch.equal(ia, ic) for (_, ia), (_, ic) in zip(a, c))


# ------------------------------------------------------------------------------------------------ train_flow

def test_train_flow_lowers_the_nll_of_a_gaussian():
    x = gaussian(1024)
    config = FlowConfig(epochs=8, max_steps=None, lr=5e-3, **SMALL)
    flow = config.build(3)
    with torch.no_grad():
        before = float(flow.nll(x.float()))
    history = train_flow(flow, x, config)
    assert [h["epoch"] for h in history] == list(range(1, 9))
    with torch.no_grad():
        after = float(flow.nll(gaussian(2048, seed=1).float()))  # held out
    entropy = 0.5 * math.log((2 * math.pi * math.e) ** 3 * (1.5 * 0.6 * 0.4) ** 2)
    assert history[-1]["nll"] < history[0]["nll"] - 1.0
    assert after < before - 2.0 and after < entropy + 0.5, (before, after, entropy)


def test_on_step_stops_training_and_max_steps_counts_steps():
    x, steps = gaussian(256), []
    endless = FlowConfig(epochs=None, max_steps=None, **SMALL)
    train_flow(endless.build(3), x, endless, lambda step, loss: steps.append(step) or step == 6)
    assert steps == [1, 2, 3, 4, 5, 6]
    steps.clear()
    capped = FlowConfig(epochs=5, max_steps=6, **SMALL)
    history = train_flow(capped.build(3), x, capped, lambda step, loss: steps.append(step))
    assert steps == [1, 2, 3, 4, 5, 6] and len(history) == 2  # 4 steps per epoch: the second one is cut short


class _Broken(torch.nn.Module):
    """A model whose NLL is NaN (a flow that overflowed)."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))

    def nll(self, batch):
        return self.w * float("nan") + batch.sum() * 0


def test_a_non_finite_loss_raises_or_continues_as_configured():
    x = gaussian(64)
    with pytest.raises(ValueError, match=r"training loss became nan in epoch 1; lower lr"):
        train_flow(_Broken(), x, FlowConfig(epochs=1, batch_size=32))
    history = train_flow(_Broken(), x, FlowConfig(epochs=1, batch_size=32, nonfinite="continue"))
    assert len(history) == 1 and math.isnan(history[0]["nll"])
    with pytest.raises(ValueError, match="nonfinite must be 'raise' or 'continue'"):
        train_flow(_Broken(), x, FlowConfig(nonfinite="skip"))


# ---------------------------------------------------------------------------------------------------- fit_flow

def test_fit_flow_from_memory_and_from_a_row_source_agree():
    x = gaussian(300)
    config = FlowConfig(epochs=2, **SMALL)
    in_memory = fit_flow(x, config)
    streamed = fit_flow(FeatureRows(ArrayRows(x.numpy()), block_rows=50), config)
    assert not in_memory.training and not streamed.training
    assert _same_state(_state(in_memory), _state(streamed))  # the same minibatches, read instead of indexed
    assert not _same_state(_state(in_memory), _state(config.build(3)))  # and it did train


def test_fit_flow_with_no_epochs_is_the_untrained_flow():
    config = FlowConfig(epochs=0, **SMALL)
    flow = fit_flow(gaussian(50), config)
    assert not flow.training and _same_state(_state(flow), _state(config.build(3)))


# ------------------------------------------------------------------------------------------------ flow_log_prob

def test_flow_log_prob_in_batches_is_one_pass():
    """Equal to float32 rounding (a batch of one row may take another matrix kernel)."""
    flow = fit_flow(gaussian(200), FlowConfig(epochs=1, **SMALL))
    x = gaussian(103, seed=2)
    with torch.no_grad():
        whole = flow.log_prob(x.float()).double()
    for batch_size in (1, 10, 103, 4096):
        got = flow_log_prob(flow, x, batch_size=batch_size)
        assert got.dtype == torch.float64 and got.device.type == "cpu"
        torch.testing.assert_close(got, whole, rtol=0, atol=1e-5)
    torch.testing.assert_close(flow_log_prob(flow, FeatureRows(ArrayRows(x.numpy()), block_rows=16)), whole,
                               rtol=0, atol=1e-5)
    assert flow_log_prob(flow, x[:0]).shape == (0,)


# ----------------------------------------------------------------------------------------------- finite_or_floor

def test_finite_or_floor_puts_non_finite_values_below_every_finite_one():
    values = torch.tensor([-3.5, float("nan"), 2.0, float("-inf"), float("inf")], dtype=torch.float32)
    out = finite_or_floor(values)
    assert isinstance(out, np.ndarray) and out.dtype == np.float64
    np.testing.assert_array_equal(out, [-3.5, -4.5, 2.0, -4.5, -4.5])
    np.testing.assert_array_equal(finite_or_floor(torch.tensor([1.0, 2.0])), [1.0, 2.0])
    np.testing.assert_array_equal(finite_or_floor(torch.tensor([float("nan"), float("inf")])), [-1e30, -1e30])


# ------------------------------------------------------------------------------------------------- FlowConfig

def test_build_is_fixed_by_the_seed_and_leaves_the_global_streams_alone():
    torch_state, numpy_state = torch.random.get_rng_state(), np.random.get_state()
    a, b, c = FlowConfig(seed=3, **SMALL).build(5), FlowConfig(seed=3, **SMALL).build(5), \
        FlowConfig(seed=4, **SMALL).build(5)
    assert _same_state(_state(a), _state(b)) and not _same_state(_state(a), _state(c))
    assert torch.equal(torch.random.get_rng_state(), torch_state)
    assert np.array_equal(np.random.get_state()[1], numpy_state[1])
    other = FlowConfig(seed=3, init="default", permutation_seeds="per_block", **SMALL).build(5)
    assert other.config["init"] == "default" and other.config["permutation_seeds"] == "per_block"
    assert not _same_state(_state(a), _state(other))


def test_an_unseeded_build_draws_from_the_callers_stream():
    config = FlowConfig(seed=3, **SMALL)
    with seeded_init(3):
        inside = config.build(5, seeded=False)
        after = torch.rand(4)  # the stream went on past the flow's weights
    assert _same_state(_state(inside), _state(config.build(5)))
    with seeded_init(3):
        assert not torch.equal(after, torch.rand(4))


def test_from_options_reads_the_fields_an_object_has():
    options = SimpleNamespace(coupling="nice", blocks=2.0, hidden=np.int64(8), clamp=3, epochs=4, max_steps=None,
                              lr=1, seed=np.int64(7), device=None, normalize="l2")  # normalize: not a field
    config = FlowConfig.from_options(options)
    assert config == FlowConfig(coupling="nice", blocks=2, hidden=8, clamp=3.0, epochs=4, max_steps=None, lr=1.0,
                                seed=7, device="cpu")
    assert type(config.blocks) is int and type(config.hidden) is int and type(config.clamp) is float
    assert type(config.seed) is int
    assert FlowConfig.from_options(SimpleNamespace()) == FlowConfig()
