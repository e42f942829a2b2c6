"""Tests of outlier synthesis (ffs_det.density.synthesis): flow tail (FFS), Gaussian tail (VOS), none."""
import numpy as np
import pytest
import torch

from ffs_det.density.flow import FeatureFlow
from ffs_det.density.gaussians import Gaussians
from ffs_det.density.synthesis import (SYNTHESIS_KINDS, FlowTailSynthesizer, GaussianTailSynthesizer,
                                       NoSynthesis, build_synthesizer, shared_covariance_factor)


def random_flow(dim, coupling="glow", seed=0, std=0.15):
    """A flow whose zero-initialised subnets got random weights, so its density is not just N(0, I)."""
    flow = FeatureFlow(dim, coupling=coupling, blocks=3, hidden=32)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in flow.named_parameters():
            if p.requires_grad:
                noise = torch.randn(p.shape, generator=gen) * std
                if "global_" in name:  # AllInOneBlock's global affine: perturb around its initial value
                    p.add_(noise)
                else:
                    p.copy_(noise)
    return flow


# ---------------------------------------------------------------------------------------------- flow tail

@pytest.mark.parametrize("coupling, std", [("glow", 0.25), ("allinone", 1.0)])
def test_flow_tail_samples_are_in_the_low_likelihood_tail(coupling, std):
    torch.manual_seed(0)
    dim = 8
    flow = random_flow(dim, coupling, std=std)
    synth = build_synthesizer("flow", dim, flow=flow, sample_from=400, select=8)
    with torch.no_grad():
        reference = flow.log_prob(flow.sample(4000))
        # the flow's volume change varies a lot, so ranking latents by log N(z) alone (or with the
        # log-determinant's sign flipped) would rank the samples differently from their true likelihood
        z = torch.randn(4000, dim)
        x, _ = flow.inverse_with_log_det(z)
        lp_x = flow.log_prob(x)
        lp_z = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(1)
        rank_corr = np.corrcoef(np.argsort(np.argsort(lp_x.numpy())), np.argsort(np.argsort(lp_z.numpy())))[0, 1]
        assert rank_corr < 0.9

        for _ in range(3):
            out = synth.sample()
            lp_out = flow.log_prob(out)
            # each synthetic outlier is less likely than at least 95% of ordinary flow samples
            frac_above = (reference[None, :] > lp_out[:, None]).float().mean(dim=1)
            assert (frac_above >= 0.95).all(), frac_above


def test_flow_tail_output_is_detached_with_the_right_shape():
    flow = random_flow(5)
    synth = build_synthesizer("flow", 5, flow=flow, sample_from=50, select=3)
    assert isinstance(synth, FlowTailSynthesizer) and synth.ready
    out = synth.sample()
    assert out.shape == (3, 5) and out.dtype == torch.float32
    assert not out.requires_grad and out.grad_fn is None
    # sampling must not leave anything for backward, even with grad enabled around it
    with torch.enable_grad():
        assert not synth.sample().requires_grad
    synth.flow.double()  # samples follow the flow's dtype
    assert synth.sample().dtype == torch.float64


def test_flow_tail_observe_returns_a_flow_nll_loss_that_trains_the_flow():
    torch.manual_seed(0)
    flow = random_flow(4)
    synth = build_synthesizer("flow", 4, flow=flow, sample_from=20, select=2)
    features = (torch.randn(16, 4) * 2 + 1).requires_grad_()
    losses = synth.observe(features, torch.zeros(16, dtype=torch.long))
    assert set(losses) == {"loss_flow_nll"}
    loss = losses["loss_flow_nll"]
    assert loss.dim() == 0
    assert torch.allclose(loss, flow.nll(features.detach()))
    loss.backward()
    grads = [p.grad for p in flow.parameters() if p.requires_grad]
    assert all(g is not None for g in grads) and sum(float(g.abs().sum()) for g in grads) > 0
    # the loss trains the flow only: no gradient flows back into the features
    assert features.grad is None


def test_flow_tail_observe_on_no_boxes_still_reaches_the_flow():
    flow = random_flow(4, "allinone")
    synth = build_synthesizer("flow", 4, flow=flow)
    loss = synth.observe(torch.zeros(0, 4), torch.zeros(0, dtype=torch.long))["loss_flow_nll"]
    assert loss.item() == 0.0
    loss.backward()
    assert all(p.grad is not None for p in flow.parameters() if p.requires_grad)


def test_flow_tail_state_dict_contains_the_flow():
    flow = random_flow(4)
    synth = build_synthesizer("flow", 4, flow=flow)
    keys = synth.state_dict().keys()
    assert any(k.startswith("flow.") for k in keys)


# ------------------------------------------------------------------------------------------ gaussian tail

def feed(synth, cls, rows):
    """Observe ``rows`` (a list of feature rows) all labelled ``cls``."""
    x = torch.tensor(rows, dtype=torch.float32)
    return synth.observe(x, torch.full((x.shape[0],), cls, dtype=torch.long))


def test_gaussian_nothing_until_every_queue_is_full_then_select_per_class():
    synth = build_synthesizer("gaussian", 2, num_classes=3, queue_size=4, sample_from=100, select=5)
    assert isinstance(synth, GaussianTailSynthesizer)
    gen = torch.Generator().manual_seed(0)

    def rows(n, c):
        return (torch.randn(n, 2, generator=gen) + 10 * c).tolist()

    empty = synth.sample()
    assert empty.shape == (0, 2) and empty.dtype == torch.float32 and not synth.ready
    assert feed(synth, 0, rows(4, 0)) == {}  # class 0 full
    assert synth.sample().shape == (0, 2)
    feed(synth, 1, rows(10, 1))  # class 1 over-full (only the last 4 kept)
    assert synth.sample().shape == (0, 2)
    feed(synth, 2, rows(3, 2))  # class 2 one short
    assert not synth.ready and synth.sample().shape == (0, 2)
    assert synth.count.tolist() == [4, 4, 3]
    feed(synth, 2, rows(1, 2))
    assert synth.ready
    out = synth.sample()
    assert out.shape == (3 * 5, 2)
    assert not out.requires_grad
    # rows come class by class: class c's rows are around c's mean (10 * c, 10 * c)
    centers = out.reshape(3, 5, 2).mean(dim=1)
    for c in range(3):
        assert torch.allclose(centers[c], torch.full((2,), 10.0 * c), atol=6.0)


def test_gaussian_queue_is_fifo():
    synth = build_synthesizer("gaussian", 2, num_classes=2, queue_size=3, sample_from=10, select=1)
    feed(synth, 0, [[1, 1], [2, 2]])
    feed(synth, 0, [[3, 3], [4, 4]])  # 1 (the oldest) is dropped
    assert synth.queue[0].tolist() == [[2, 2], [3, 3], [4, 4]]
    # a batch mixing classes goes to the right queues, in batch order
    x = torch.tensor([[5.0, 5.0], [-1.0, -1.0], [6.0, 6.0], [-2.0, -2.0]])
    synth.observe(x, torch.tensor([0, 1, 0, 1]))
    assert synth.queue[0].tolist() == [[4, 4], [5, 5], [6, 6]]
    assert synth.queue[1, -2:].tolist() == [[-1, -1], [-2, -2]]
    assert synth.count.tolist() == [3, 2]
    # more new rows than the queue holds: only the newest queue_size are kept
    feed(synth, 1, [[10, 10], [11, 11], [12, 12], [13, 13], [14, 14]])
    assert synth.queue[1].tolist() == [[12, 12], [13, 13], [14, 14]]
    assert synth.count.tolist() == [3, 3]


def test_gaussian_samples_are_in_each_class_tail():
    torch.manual_seed(0)
    dim, num_classes, select = 4, 3, 6
    synth = build_synthesizer("gaussian", dim, num_classes=num_classes, queue_size=500, sample_from=2000,
                              select=select)
    gen = torch.Generator().manual_seed(1)
    a = torch.randn(dim, dim, generator=gen)
    cov_true = a @ a.T + 0.5 * torch.eye(dim)
    chol_true = torch.linalg.cholesky(cov_true)
    means_true = torch.randn(num_classes, dim, generator=gen) * 8
    for c in range(num_classes):
        x = means_true[c] + torch.randn(500, dim, generator=gen) @ chol_true.T
        synth.observe(x, torch.full((500,), c, dtype=torch.long))
    out = synth.sample().double()
    assert out.shape == (num_classes * select, dim)

    # class means and the shared covariance, computed independently from the queues
    q = synth.queue.double().numpy()
    means = q.mean(axis=1)
    centered = (q - means[:, None]).reshape(-1, dim)
    cov = centered.T @ centered / centered.shape[0]
    prec = torch.from_numpy(np.linalg.inv(cov))
    means = torch.from_numpy(means)

    def mahalanobis2(x, m):
        d = x - m
        return ((d @ prec) * d).sum(dim=-1)

    # typical squared distances of draws from the fitted class Gaussian: chi^2 with dim degrees of freedom
    typical = mahalanobis2(torch.from_numpy(np.random.default_rng(0).multivariate_normal(
        means[0].numpy(), cov, size=20000)), means[0])
    q99 = torch.quantile(typical, 0.99).item()  # about 13.3 for dim = 4
    assert 12.0 < q99 < 14.5
    for c in range(num_classes):
        rows = out[c * select:(c + 1) * select]
        d2 = torch.stack([mahalanobis2(rows, means[k]) for k in range(num_classes)])  # (classes, select)
        assert (d2[c] > q99).all(), d2[c]  # far out in the tail of their own class ...
        assert (d2.argmin(dim=0) == c).all()  # ... yet still nearest to their own class


def test_gaussian_tail_noise_matches_keeping_the_largest_of_full_draws():
    # the tail is drawn as chi-square norms times uniform directions; it must have the distribution of
    # "draw sample_from vectors e ~ N(0, I), keep the select largest |e|"
    from scipy.stats import ks_2samp

    torch.manual_seed(0)
    dim, sample_from, select, rounds = 6, 300, 2, 1500
    standard = Gaussians.shared_covariance(torch.zeros(1, dim), torch.eye(dim))  # e itself
    fast = torch.cat([standard.tail_sample(sample_from, select)[0] for _ in range(rounds)])
    brute = []
    for _ in range(rounds):
        e = torch.randn(sample_from, dim)
        brute.append(e[torch.topk((e * e).sum(1), select).indices])
    brute = torch.cat(brute)
    assert fast.shape == brute.shape == (rounds * select, dim)
    assert ks_2samp(fast.norm(dim=1).numpy(), brute.norm(dim=1).numpy()).pvalue > 1e-3
    for k in range(dim):  # directions uniform: every coordinate distributed alike
        assert ks_2samp(fast[:, k].numpy(), brute[:, k].numpy()).pvalue > 1e-3


def test_tail_samples_of_gaussians_with_their_own_covariances_lie_in_their_own_tails():
    gen = torch.Generator().manual_seed(0)
    means = torch.tensor([[0.0, 0.0, 0.0], [20.0, 0.0, 0.0]], dtype=torch.float64)
    chols = torch.stack([torch.eye(3, dtype=torch.float64), torch.diag(torch.tensor([5.0, 1.0, 0.2]))])
    g = Gaussians(means, chols, torch.log(torch.tensor([0.5, 0.5], dtype=torch.float64)), np.arange(2))
    out = g.tail_sample(2000, 4, gen)
    assert out.shape == (2, 4, 3)
    for k in range(2):
        own = g.whiten(out[k], k).pow(2).sum(1)  # squared distance in the component's own metric
        draws = g.whiten(g.means[k] + torch.randn(2000, 3, generator=gen, dtype=torch.float64) @ chols[k].T, k)
        assert (own > draws.pow(2).sum(1).quantile(0.99)).all()


def test_gaussian_queues_are_checkpointed():
    synth = build_synthesizer("gaussian", 3, num_classes=2, queue_size=5, sample_from=50, select=2)
    gen = torch.Generator().manual_seed(0)
    for c in range(2):
        synth.observe(torch.randn(5, 3, generator=gen), torch.full((5,), c, dtype=torch.long))
    state = synth.state_dict()
    assert set(state) == {"queue", "count", "_extra_state"}  # _extra_state: the draw stream
    assert state["queue"].shape == (2, 5, 3) and state["count"].tolist() == [5, 5]

    fresh = build_synthesizer("gaussian", 3, num_classes=2, queue_size=5, sample_from=50, select=2)
    assert not fresh.ready
    fresh.load_state_dict(state)
    assert torch.equal(fresh.queue, synth.queue) and torch.equal(fresh.count, synth.count)
    assert fresh.ready and fresh.sample().shape == (4, 3)
    # the restored state is a copy: new observations on one do not change the other
    synth.observe(torch.ones(1, 3), torch.zeros(1, dtype=torch.long))
    assert not torch.equal(fresh.queue, synth.queue)


def test_gaussian_bad_labels_and_features_raise_and_leave_queues_unchanged():
    synth = build_synthesizer("gaussian", 2, num_classes=2, queue_size=3, sample_from=10, select=1)
    feed(synth, 0, [[1, 1]])
    before_q, before_c = synth.queue.clone(), synth.count.clone()
    with pytest.raises(ValueError, match="class label"):
        synth.observe(torch.ones(2, 2), torch.tensor([0, 2]))  # class 0 is valid, class 2 is not
    with pytest.raises(ValueError, match="class label"):
        synth.observe(torch.ones(1, 2), torch.tensor([-1]))
    with pytest.raises(ValueError):
        synth.observe(torch.ones(2, 3), torch.tensor([0, 1]))  # wrong width
    with pytest.raises(ValueError):
        synth.observe(torch.ones(2, 2), torch.tensor([0]))  # one label for two rows
    with pytest.raises(ValueError):
        synth.observe(torch.ones(2, 2), torch.tensor([0.0, 1.0]))  # float labels
    assert torch.equal(synth.queue, before_q) and torch.equal(synth.count, before_c)


def test_gaussian_observe_of_no_boxes_changes_nothing():
    synth = build_synthesizer("gaussian", 2, num_classes=2, queue_size=3, sample_from=10, select=1)
    assert synth.observe(torch.zeros(0, 2), torch.zeros(0, dtype=torch.long)) == {}
    assert synth.count.tolist() == [0, 0]


# ------------------------------------------------------------------------------------------------- none

def test_none_gives_nothing():
    synth = build_synthesizer("none", 6)
    assert isinstance(synth, NoSynthesis) and not synth.ready
    assert synth.observe(torch.randn(3, 6), torch.zeros(3, dtype=torch.long)) == {}
    out = synth.sample()
    assert out.shape == (0, 6)
    assert synth.state_dict() == {}


# ------------------------------------------------------------------------------------------ bad arguments

@pytest.mark.parametrize("kind, kwargs", [
    ("vae", dict()),
    ("", dict()),
    ("flow", dict()),  # no flow given
    ("flow", dict(flow="width 5")),  # flow of another width, built below
    ("flow", dict(flow="ok", select=0)),
    ("flow", dict(flow="ok", select=11, sample_from=10)),
    ("gaussian", dict(num_classes=0)),
    ("gaussian", dict(queue_size=0)),
    ("gaussian", dict(select=0)),
    ("gaussian", dict(select=300, sample_from=200)),
    ("gaussian", dict(dim=0)),
    ("gaussian", dict(covariance="float16")),
    ("none", dict(dim=-1)),
])
def test_invalid_arguments_raise_value_error(kind, kwargs):
    kwargs = dict(kwargs)
    dim = kwargs.pop("dim", 4)
    if kwargs.get("flow") == "width 5":
        kwargs["flow"] = FeatureFlow(5, blocks=1, hidden=4)
    elif kwargs.get("flow") == "ok":
        kwargs["flow"] = FeatureFlow(4, blocks=1, hidden=4)
    with pytest.raises(ValueError):
        build_synthesizer(kind, dim, **kwargs)


def test_kinds_listed():
    assert set(SYNTHESIS_KINDS) == {"flow", "gaussian", "none"}
    for kind in SYNTHESIS_KINDS:
        flow = FeatureFlow(3, blocks=1, hidden=4) if kind == "flow" else None
        assert build_synthesizer(kind, 3, flow=flow).kind == kind


# ------------------------------------------------------------------------------ flow tail, standardised

def test_standardised_flow_density_is_the_change_of_variables_of_the_flows():
    torch.manual_seed(0)
    dim = 6
    scale = torch.linspace(0.5, 4.0, dim)
    shift = torch.linspace(-3.0, 3.0, dim)
    data = shift + scale * torch.randn(5000, dim)
    # a fresh flow is exactly N(0, I): standardised, its density is the Gaussian of the running statistics
    synth = build_synthesizer("flow", dim, flow=FeatureFlow(dim, hidden=16), standardize=True, momentum=1.0)
    synth.train()
    synth.observe(data, torch.zeros(len(data), dtype=torch.long))
    torch.testing.assert_close(synth.running_mean, data.mean(0))
    torch.testing.assert_close(synth.running_var, data.var(0))
    x = torch.randn(7, dim) * 3
    expected = torch.distributions.Normal(data.mean(0), data.std(0)).log_prob(x).sum(1)
    torch.testing.assert_close(synth.log_prob(x), expected, rtol=1e-4, atol=1e-4)
    # the NLL it trains on is the mean of -log p(x) of the observed features, in the same units
    nll = synth.observe(data[:100], torch.zeros(100, dtype=torch.long))["loss_flow_nll"]
    torch.testing.assert_close(nll, -synth.log_prob(data[:100]).mean(), rtol=1e-5, atol=1e-4)
    # and its samples are de-standardised: the tail of N(mean, diag var), far out in units of each scale
    out = synth.sample()
    assert out.shape == (1, dim)
    z = (out - synth.running_mean) / synth.running_var.sqrt()
    assert float(z.norm()) > float((torch.randn(2000, dim)).norm(dim=1).median())


def test_running_statistics_follow_a_drifting_distribution_and_ignore_eval_mode():
    torch.manual_seed(0)
    synth = build_synthesizer("flow", 3, flow=FeatureFlow(3, hidden=8), standardize=True, momentum=0.5)
    synth.train()
    labels = torch.zeros(64, dtype=torch.long)
    synth.observe(torch.randn(64, 3), labels)
    for _ in range(20):
        synth.observe(10 + 2 * torch.randn(64, 3), labels)
    assert torch.allclose(synth.running_mean, torch.full((3,), 10.0), atol=0.8)
    assert torch.allclose(synth.running_var.sqrt(), torch.full((3,), 2.0), atol=0.6)
    before = synth.running_mean.clone()
    synth.eval()
    synth.observe(torch.randn(64, 3) - 50, labels)
    assert torch.equal(synth.running_mean, before)
    # a constant dimension cannot make the standardised inputs explode: its scale is floored
    synth.train()
    fresh = build_synthesizer("flow", 3, flow=FeatureFlow(3, hidden=8), standardize=True)
    fresh.train()
    const = torch.randn(64, 3)
    const[:, 1] = 5.0
    fresh.observe(const, labels)
    assert torch.isfinite(fresh.log_prob(const)).all()
    assert float(fresh._scale()[1]) > 0


def test_unstandardised_flow_synthesizer_is_the_plain_flow():
    flow = random_flow(4)
    synth = build_synthesizer("flow", 4, flow=flow)
    x = torch.randn(9, 4)
    torch.testing.assert_close(synth.log_prob(x), flow.log_prob(x))
    synth.train()
    synth.observe(x * 100, torch.zeros(9, dtype=torch.long))
    assert int(synth.stats_count) == 0  # statistics are only kept when standardising


def test_gaussian_log_prob_is_the_best_class_gaussian():
    torch.manual_seed(0)
    synth = build_synthesizer("gaussian", 2, num_classes=2, queue_size=50, sample_from=10, select=1, eps=0.0)
    x = torch.randn(3, 2)
    assert torch.isnan(synth.log_prob(x)).all()  # no density until every queue is full
    data = torch.cat([torch.randn(50, 2) + torch.tensor([5.0, 0.0]), torch.randn(50, 2) - torch.tensor([5.0, 0.0])])
    synth.observe(data, torch.cat([torch.zeros(50), torch.ones(50)]).long())
    means = synth.queue.mean(1)
    centered = (synth.queue - means[:, None]).reshape(-1, 2)
    cov = centered.T @ centered / 100
    per_class = torch.stack([torch.distributions.MultivariateNormal(m, cov).log_prob(x) for m in means], 1)
    torch.testing.assert_close(synth.log_prob(x), per_class.max(1).values, rtol=1e-4, atol=1e-4)
    # the scorers' route through the same class Gaussians (rows and means whitened apart) agrees
    best = synth.gaussians().component_log_prob(x).max(1).values
    torch.testing.assert_close(best, synth.log_prob(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["flow", "gaussian"])
def test_seeded_synthesis_draws_from_its_own_stream(kind):
    def make(seed):
        if kind == "flow":
            return build_synthesizer("flow", 4, flow=random_flow(4), sample_from=30, select=2, seed=seed)
        s = build_synthesizer("gaussian", 4, num_classes=2, queue_size=5, sample_from=30, select=2, seed=seed)
        s.observe(torch.randn(10, 4, generator=torch.Generator().manual_seed(1)), torch.tensor([0, 1] * 5))
        return s

    torch.manual_seed(123)
    a, b = make(7), make(7)
    state = torch.get_rng_state()
    first = [a.sample() for _ in range(3)]
    assert torch.equal(torch.get_rng_state(), state)  # the global stream did not move
    assert all(torch.equal(x, y) for x, y in zip(first, [b.sample() for _ in range(3)]))  # same seed, same draws
    assert not torch.equal(first[0], first[1])  # the stream advances
    unseeded = make(None)
    unseeded.sample()
    assert not torch.equal(torch.get_rng_state(), state)


def _seeded(kind, seed=7):
    if kind == "flow":
        return build_synthesizer("flow", 4, flow=random_flow(4), sample_from=30, select=2, seed=seed)
    s = build_synthesizer("gaussian", 4, num_classes=2, queue_size=5, sample_from=30, select=2, seed=seed)
    s.observe(torch.randn(10, 4, generator=torch.Generator().manual_seed(1)), torch.tensor([0, 1] * 5))
    return s


@pytest.mark.parametrize("kind", ["flow", "gaussian"])
def test_the_draw_stream_is_checkpointed_and_a_restored_one_continues(kind):
    a = _seeded(kind)
    start = a.sample()
    a.sample()
    saved = {k: v.clone() for k, v in a.state_dict().items()}
    assert saved["_extra_state"].dtype == torch.uint8
    expected = a.sample()  # the next draw of the uninterrupted stream
    b = _seeded(kind)
    b.load_state_dict(saved)
    assert torch.equal(b.sample(), expected)  # continues, not a replay from the start
    assert torch.equal(_seeded(kind).sample(), start)  # a fresh one starts at the beginning
    c = _seeded(kind)
    c.load_state_dict(saved)
    assert torch.equal(c.state_dict()["_extra_state"], saved["_extra_state"])  # kept until the next draw


@pytest.mark.parametrize("kind", ["flow", "gaussian"])
def test_a_stream_restored_on_another_rank_is_a_new_stream(kind, monkeypatch):
    import ffs_det.density.synthesis as synthesis

    a = _seeded(kind)
    first = a.sample()
    saved = a.state_dict()
    expected = a.sample()
    monkeypatch.setattr(synthesis, "_process_rank", lambda: 1)
    b = _seeded(kind)
    b.load_state_dict(saved)
    other = b.sample()
    assert not torch.equal(other, expected) and not torch.equal(other, first)
    assert not torch.equal(_seeded(kind).sample(), first)  # rank 1's own stream: seed + 1


def test_an_unusable_saved_stream_starts_a_new_one():
    a = _seeded("flow")
    first = a.sample()
    state = a.state_dict()
    state["_extra_state"] = torch.zeros(3, dtype=torch.uint8)  # not a stream
    b = _seeded("flow")
    b.load_state_dict(state)
    assert torch.equal(b.sample(), first)


def test_an_explicit_generator_leaves_the_stream_alone():
    a, b = _seeded("flow"), _seeded("flow")
    a.sample(torch.Generator().manual_seed(3))
    assert torch.equal(a.sample(), b.sample())
    assert torch.equal(a.sample(torch.Generator().manual_seed(3)), b.sample(torch.Generator().manual_seed(3)))


def _stream_of_steps(synths, steps=60, dim=12, classes=3, seed=0, offset=40.0):
    """Feed the same random steps (1-25 rows, some classes absent, some batches longer than a queue) to each."""
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        n = int(torch.randint(1, 26, (1,), generator=g))
        x = torch.randn(n, dim, generator=g) * torch.linspace(0.5, 4, dim) + offset
        y = torch.randint(0, classes, (n,), generator=g)
        for s in synths:
            s.observe(x, y)


@pytest.mark.parametrize("offset", [0.0, 40.0])
def test_running_covariance_is_the_exact_one(offset, monkeypatch):
    """The running sums give the recomputed covariance up to float64 rounding, through evictions, a batch longer
    than a queue and features far from the origin (the sums' cancellation); the samples agree."""
    import ffs_det.density.synthesis as synthesis

    make = lambda cov: GaussianTailSynthesizer(12, 3, queue_size=10, sample_from=60, select=2, seed=0,  # noqa: E731
                                               covariance=cov)
    running, exact = make("running"), make("exact")
    _stream_of_steps([running, exact], offset=offset)
    assert running.ready
    (m1, c1), (m2, c2) = running._moments(), exact._moments()
    torch.testing.assert_close(m1, m2, rtol=1e-12, atol=1e-10)
    torch.testing.assert_close(c1, c2, rtol=1e-9, atol=1e-9 * float(c2.abs().max()))
    torch.testing.assert_close(running.sample(), exact.sample(), rtol=1e-5, atol=1e-5)
    # loaded into a fresh one, the sums are rebuilt from the queues
    fresh = make("running")
    fresh.load_state_dict(running.state_dict())
    torch.testing.assert_close(fresh._moments()[1], c1, rtol=1e-9, atol=1e-9 * float(c1.abs().max()))
    assert set(running.state_dict()) == {"queue", "count", "_extra_state"}  # the sums are not saved: rebuilt
    # rebuilt exactly every REFRESH updates, so rounding cannot accumulate
    monkeypatch.setattr(synthesis, "REFRESH", 4)
    _stream_of_steps([running, exact], steps=9, seed=1, offset=offset)
    torch.testing.assert_close(running._moments()[1], exact._moments()[1], rtol=1e-9,
                               atol=1e-9 * float(c2.abs().max()))
    assert running._updates < 4


# ------------------------------------------------------------------------- VOS covariance, rank-deficient

def rank_deficient_queue(num_classes, queue_size, dim, duplicate=False, scale=30.0, seed=0):
    """Queues of ``num_classes * queue_size`` features in ``dim`` dimensions, fewer rows than dimensions,
    on a low-dimensional subspace at the scale of detector box features (optionally with repeated rows)."""
    gen = torch.Generator().manual_seed(seed)
    basis = torch.randn(16, dim, generator=gen)
    coords = torch.randn(num_classes, queue_size, 16, generator=gen) * scale
    queue = coords @ basis + torch.randn(num_classes, 1, dim, generator=gen) * scale
    if duplicate:
        queue[:, queue_size // 2:] = queue[:, :queue_size - queue_size // 2]
    return queue


def filled_gaussian_synth(queue, eps):
    num_classes, queue_size, dim = queue.shape
    synth = GaussianTailSynthesizer(dim, num_classes, queue_size=queue_size, sample_from=500, select=3, eps=eps,
                                    seed=0)
    for c in range(num_classes):
        synth.observe(queue[c], torch.full((queue_size,), c))
    assert synth.ready
    return synth


@pytest.mark.parametrize("dim", [1024, 2048])
@pytest.mark.parametrize("duplicate", [False, True])
def test_gaussian_rank_deficient_queues_floor_the_covariance_and_warn_once(dim, duplicate, caplog):
    queue = rank_deficient_queue(2, 40, dim, duplicate=duplicate)
    synth = filled_gaussian_synth(queue, eps=0.0)  # rank <= 16 + 2 of dim: singular without a floor
    with caplog.at_level("WARNING", logger="ffs_det.density.synthesis"):
        samples = synth.sample()
        logp = synth.log_prob(queue[0, :5])
        synth.sample()
    assert samples.shape == (2 * 3, dim) and samples.dtype == torch.float32
    assert torch.isfinite(samples).all() and torch.isfinite(logp).all()
    warnings = [r for r in caplog.records if "floored" in r.getMessage()]
    assert len(warnings) == 1
    # the factor is of a positive definite matrix within the floor of the sample covariance
    means, chol, floored = shared_covariance_factor(queue, 0.0)
    assert floored
    x = queue.double()
    centered = (x - x.mean(dim=1, keepdim=True)).reshape(-1, dim)
    cov = centered.T @ centered / centered.shape[0]
    rebuilt = chol @ chol.T
    top = float(torch.linalg.eigvalsh(cov)[-1])
    assert torch.allclose(rebuilt, cov, atol=3e-6 * top)
    assert float(torch.linalg.eigvalsh(rebuilt)[0]) >= 0.5e-6 * top


def test_gaussian_covariance_is_accumulated_in_float64():
    # 2048-d features at box-feature scale, fewer rows than dimensions: the default eps makes the matrix
    # positive definite, which float64 sees; the factor reproduces cov + eps I to float64 precision
    queue = rank_deficient_queue(4, 100, 2048, scale=100.0)
    means, chol, floored = shared_covariance_factor(queue, 1e-4)
    assert not floored and chol.dtype == torch.float64
    x = queue.double()
    centered = (x - x.mean(dim=1, keepdim=True)).reshape(-1, 2048)
    cov = centered.T @ centered / centered.shape[0] + 1e-4 * torch.eye(2048, dtype=torch.float64)
    assert torch.allclose(chol @ chol.T, cov, rtol=0, atol=1e-9 * float(cov.diagonal().max()))
    assert torch.allclose(means, x.mean(dim=1))
    synth = filled_gaussian_synth(queue, eps=1e-4)
    assert torch.isfinite(synth.sample()).all()


def test_gaussian_covariance_of_non_finite_queues_is_one_clear_error():
    queue = rank_deficient_queue(2, 10, 64)
    queue[1, 3, 5] = float("nan")
    with pytest.raises(ValueError, match="NaN or infinite"):
        shared_covariance_factor(queue, 0.0)


# --------------------------------------------------------------------------- automatic mixed precision

def _autocast():
    """CPU autocast to bfloat16: what AMP does to the ROI head on a GPU (float16 there), on this machine."""
    return torch.autocast(device_type="cpu", dtype=torch.bfloat16)


@pytest.mark.parametrize("standardize", [False, True])
def test_flow_nll_samples_and_densities_stay_float32_under_autocast(standardize):
    x = torch.randn(64, 8, generator=torch.Generator().manual_seed(0)) * 3 + 5
    make = lambda: build_synthesizer("flow", 8, flow=random_flow(8), sample_from=40, select=3,  # noqa: E731
                                     standardize=standardize, seed=1)
    ref, amp, rounded = make(), make(), make()
    labels = torch.zeros(64, dtype=torch.long)
    want = ref.observe(x, labels)["loss_flow_nll"].detach()
    # the reference for AMP: the same features rounded to bfloat16, as a box head under autocast gives them
    want_rounded = rounded.observe(x.to(torch.bfloat16).float(), labels)["loss_flow_nll"].detach()
    with _autocast():
        got = amp.observe(x.to(torch.bfloat16), labels)["loss_flow_nll"].detach()
        sample, density = amp.sample(), amp.log_prob(x)
    assert got.dtype == sample.dtype == density.dtype == torch.float32
    torch.testing.assert_close(got, want_rounded, rtol=1e-6, atol=1e-5)
    assert abs(float(got) - float(want)) < 0.01 * abs(float(want)) + 0.05  # bfloat16 features: ~3 digits
    torch.testing.assert_close(sample, rounded.sample(), rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(density, rounded.log_prob(x), rtol=1e-6, atol=1e-4)


def test_gaussian_samples_stay_float32_under_autocast():
    make = lambda: _seeded("gaussian")  # noqa: E731
    ref, amp = make(), make()
    with _autocast():
        got = amp.sample()
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, ref.sample(), rtol=1e-6, atol=1e-6)
