"""Tests of the feature flow (ffs_det.density.flow): invertibility, exact log-determinants, log-density,
sampling, persistence, seeding, input checks, empty batches, and maximum-likelihood fitting."""
import math

import numpy as np
import pytest
import torch

from ffs_det.density.flow import COUPLINGS, FeatureFlow

ALL_COUPLINGS = ["glow", "realnvp", "nice", "allinone"]


def test_every_coupling_is_covered():
    assert sorted(COUPLINGS) == sorted(ALL_COUPLINGS)


def randomize(flow, seed=0, std=0.1):
    """Give every trainable parameter a random value: the subnets' last layers start at zero, which makes
    each coupling the identity, and a test on such a flow would pass trivially. Subnet weights are drawn
    afresh with a small std (the flow stays well conditioned); AllInOneBlock's global affine parameters
    are perturbed around their initial value."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in flow.named_parameters():
            if not p.requires_grad:
                continue
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float64).to(p.dtype) * std
            if "global_" in name:
                p.add_(noise)
            else:
                p.copy_(noise)
    return flow


def make(dim, coupling, blocks=3, hidden=16, clamp=2.0, seed=0, rand_seed=0, dtype=torch.float32):
    flow = randomize(FeatureFlow(dim, coupling=coupling, blocks=blocks, hidden=hidden, clamp=clamp, seed=seed),
                     seed=rand_seed)
    return flow.to(dtype)


def perm_tensors(flow):
    """The fixed permutations of a flow (PermuteRandom's index vectors, AllInOneBlock's matrices)."""
    return {k: v for k, v in flow.state_dict().items() if "perm" in k}


@pytest.mark.parametrize("coupling", ALL_COUPLINGS)
def test_new_flow_is_identity_and_standard_normal(coupling):
    # zero-initialised subnets: z == (a permutation of) x with log_det 0, so log_prob is the N(0, I) density
    flow = FeatureFlow(5, coupling=coupling, blocks=2, hidden=8)
    x = torch.randn(10, 5)
    z, log_det = flow(x)
    assert torch.allclose(torch.sort(z, dim=1).values, torch.sort(x, dim=1).values, atol=1e-6)
    assert torch.allclose(log_det, torch.zeros(10), atol=1e-6)


@pytest.mark.parametrize("coupling", ALL_COUPLINGS)
def test_inverse_of_forward_is_identity(coupling):
    torch.manual_seed(0)
    flow = make(6, coupling, blocks=4, hidden=32)
    x = torch.randn(256, 6) * 2.0
    z, _ = flow(x)
    # the randomised flow is far from the identity, so the round trip is a real test
    assert (z - x).abs().max() > 0.1
    x_back = flow.inverse(z)
    assert x_back.dtype == torch.float32
    assert torch.allclose(x_back, x, atol=1e-4, rtol=0)
    # and the other way round
    w = torch.randn(256, 6)
    z_back, _ = flow(flow.inverse(w))
    assert torch.allclose(z_back, w, atol=1e-4, rtol=0)


@pytest.mark.parametrize("coupling", ALL_COUPLINGS)
@pytest.mark.parametrize("dim", [2, 5, 8])
def test_log_det_matches_autograd_jacobian(coupling, dim):
    flow = make(dim, coupling, blocks=3, hidden=16, rand_seed=dim, dtype=torch.float64)
    gen = torch.Generator().manual_seed(100 + dim)
    xs = torch.randn(4, dim, generator=gen, dtype=torch.float64) * 1.5
    _, log_det = flow(xs)
    z = flow(xs)[0]
    _, log_det_inv = flow.inverse_with_log_det(z)
    nonzero = 0
    for i in range(xs.shape[0]):
        jac = torch.autograd.functional.jacobian(lambda v: flow(v[None])[0][0], xs[i])
        sign, expected = torch.linalg.slogdet(jac)
        assert sign != 0
        got = log_det[i]
        if coupling == "nice":  # volume preserving
            assert abs(expected.item()) < 1e-8 and got.item() == 0.0
        else:
            assert abs(got.item() - expected.item()) <= 1e-4 * abs(expected.item()) + 1e-10
            nonzero += abs(expected.item()) > 1e-3
        # the inverse pass reports log|det dx/dz| = -log|det dz/dx|
        assert abs(log_det_inv[i].item() + expected.item()) <= 1e-4 * abs(expected.item()) + 1e-10
    if coupling != "nice":
        assert nonzero == xs.shape[0]  # the check is not trivially 0 == 0


@pytest.mark.parametrize("coupling", ALL_COUPLINGS)
def test_log_prob_is_base_density_plus_log_det(coupling):
    flow = make(4, coupling, dtype=torch.float64)
    x = torch.randn(50, 4, dtype=torch.float64)
    z, log_det = flow(x)
    base = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(dim=1)
    assert torch.allclose(flow.log_prob(x), base + log_det, atol=1e-10, rtol=0)
    assert torch.allclose(flow.nll(x), -(base + log_det).mean(), atol=1e-10, rtol=0)


def test_log_prob_of_new_flow_is_standard_normal_density():
    flow = FeatureFlow(3, blocks=2, hidden=8)
    x = torch.tensor([[0.0, 0.0, 0.0], [1.0, -2.0, 0.5]])
    expected = torch.tensor([-1.5 * math.log(2 * math.pi), -1.5 * math.log(2 * math.pi) - 0.5 * 5.25])
    assert torch.allclose(flow.log_prob(x), expected, atol=1e-6)


@pytest.mark.parametrize("coupling", ALL_COUPLINGS)
def test_sample_shape_dtype_and_no_grad(coupling):
    flow = make(5, coupling)
    s = flow.sample(37)
    assert s.shape == (37, 5) and s.dtype == torch.float32
    assert torch.isfinite(s).all() and not s.requires_grad
    assert flow.sample(0).shape == (0, 5)
    assert flow.double().sample(3).dtype == torch.float64


def test_sample_is_distributed_as_the_flow():
    # samples of a flow are mapped to N(0, I) latents by its forward pass
    torch.manual_seed(1)
    flow = make(3, "glow")
    z, _ = flow(flow.sample(20000))
    assert z.mean(0).abs().max() < 0.05
    assert (z.std(0) - 1).abs().max() < 0.05
    # low temperature concentrates the latents
    z_cold, _ = flow(flow.sample(5000, temperature=0.5))
    assert (z_cold.std(0) - 0.5).abs().max() < 0.05


@pytest.mark.parametrize("coupling", ALL_COUPLINGS)
def test_save_load_round_trip(tmp_path, coupling):
    flow = make(7, coupling, blocks=2, hidden=8, seed=123)
    path = str(tmp_path / "flow.pt")
    flow.save(path)
    loaded = FeatureFlow.load(path)
    assert loaded.config == flow.config
    x = torch.randn(20, 7)
    assert torch.equal(loaded.log_prob(x), flow.log_prob(x))
    assert torch.equal(loaded.inverse(x), flow.inverse(x))


def test_save_load_keeps_float64(tmp_path):
    flow = make(4, "glow", dtype=torch.float64)
    path = str(tmp_path / "flow64.pt")
    flow.save(path)
    loaded = FeatureFlow.load(path)
    x = torch.randn(10, 4, dtype=torch.float64)
    assert torch.equal(loaded.log_prob(x), flow.log_prob(x))


def test_load_rejects_other_files(tmp_path):
    path = str(tmp_path / "other.pt")
    torch.save({"weights": torch.zeros(3)}, path)
    with pytest.raises(ValueError, match="not a saved FeatureFlow"):
        FeatureFlow.load(path)


@pytest.mark.parametrize("dim", [2, 7, 33])
@pytest.mark.parametrize("coupling", ALL_COUPLINGS)
def test_any_width(dim, coupling):
    flow = make(dim, coupling, blocks=2, hidden=12)
    x = torch.randn(9, dim)
    z, log_det = flow(x)
    assert z.shape == (9, dim) and log_det.shape == (9,)
    assert flow.log_prob(x).shape == (9,)
    assert torch.allclose(flow.inverse(z), x, atol=1e-4)
    assert flow.sample(4).shape == (4, dim)


def test_single_row_batch():
    flow = make(4, "allinone")
    x = torch.randn(1, 4)
    assert flow.log_prob(x).shape == (1,)
    assert torch.allclose(flow.log_prob(x), flow.log_prob(torch.cat([x, x]))[:1], atol=1e-6)


@pytest.mark.parametrize("coupling", ALL_COUPLINGS)
def test_same_seed_same_permutations_and_global_rng_untouched(coupling):
    np.random.seed(2024)
    state_before = np.random.get_state()
    a = FeatureFlow(33, coupling=coupling, blocks=3, hidden=4, seed=7)
    b = FeatureFlow(33, coupling=coupling, blocks=3, hidden=4, seed=7)
    c = FeatureFlow(33, coupling=coupling, blocks=3, hidden=4, seed=8)
    state_after = np.random.get_state()
    assert state_before[0] == state_after[0]
    assert np.array_equal(state_before[1], state_after[1]) and state_before[2:] == state_after[2:]

    pa, pb, pc = perm_tensors(a), perm_tensors(b), perm_tensors(c)
    assert len(pa) > 0 and pa.keys() == pb.keys() == pc.keys()
    assert all(torch.equal(pa[k], pb[k]) for k in pa)
    assert not all(torch.equal(pa[k], pc[k]) for k in pa)  # the seed matters
    # the blocks of one flow get different permutations from each other
    first = [v for k, v in pa.items() if k.endswith("perm")]
    assert len(first) == 3 and not torch.equal(first[0], first[1])


def test_unseeded_flows_use_the_global_rng():
    np.random.seed(0)
    a = FeatureFlow(33, blocks=2, hidden=4, seed=None)
    b = FeatureFlow(33, blocks=2, hidden=4, seed=None)
    pa, pb = perm_tensors(a), perm_tensors(b)
    assert not all(torch.equal(pa[k], pb[k]) for k in pa)
    np.random.seed(0)
    a2 = FeatureFlow(33, blocks=2, hidden=4, seed=None)
    assert all(torch.equal(pa[k], v) for k, v in perm_tensors(a2).items())


@pytest.mark.parametrize("coupling", ["glow", "allinone"])
def test_bad_input_shape_raises(coupling):
    flow = FeatureFlow(4, coupling=coupling, blocks=1, hidden=4)
    for bad in [torch.randn(3, 5), torch.randn(4), torch.randn(2, 3, 4), torch.randn(3, 0)]:
        with pytest.raises(ValueError, match=r"\(N, 4\)"):
            flow(bad)
        with pytest.raises(ValueError):
            flow.inverse(bad)
        with pytest.raises(ValueError):
            flow.log_prob(bad)
        with pytest.raises(ValueError):
            flow.nll(bad)
    with pytest.raises(ValueError):
        flow.nll(torch.zeros(0, 3))
    with pytest.raises(ValueError):
        flow(np.zeros((3, 4), dtype=np.float32))


@pytest.mark.parametrize("kwargs", [dict(dim=8, coupling="maf"), dict(dim=1), dict(dim=4, blocks=0),
                                    dict(dim=4, hidden=0)])
def test_bad_construction_raises(kwargs):
    with pytest.raises(ValueError):
        FeatureFlow(**kwargs)


@pytest.mark.parametrize("coupling", ALL_COUPLINGS)
def test_nll_of_empty_batch_is_zero_and_reaches_every_parameter(coupling):
    flow = make(6, coupling, blocks=2, hidden=8)
    loss = flow.nll(torch.zeros(0, 6))
    assert loss.dim() == 0 and loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    trainable = [(n, p) for n, p in flow.named_parameters() if p.requires_grad]
    assert trainable
    for name, p in trainable:
        assert p.grad is not None, name
        assert torch.count_nonzero(p.grad) == 0, name
    z, log_det = flow(torch.zeros(0, 6))
    assert z.shape == (0, 6) and log_det.shape == (0,)
    assert flow.inverse(torch.zeros(0, 6)).shape == (0, 6)
    assert flow.log_prob(torch.zeros(0, 6)).shape == (0,)


def test_nll_gradient_is_nonzero_on_data():
    flow = make(4, "glow")
    flow.nll(torch.randn(32, 4) + 3.0).backward()
    grads = [p.grad for p in flow.parameters() if p.requires_grad]
    assert all(g is not None for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0


def test_fit_correlated_gaussian_reaches_its_entropy():
    """Maximum likelihood on a 2-D Gaussian: the held-out NLL tends to the differential entropy
    H = 0.5 * log((2 pi e)^d det(Sigma)), the lowest expected NLL any density can reach."""
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    mean = torch.tensor([1.0, -2.0])
    cov = torch.tensor([[2.0, 1.2], [1.2, 1.0]])
    chol = torch.linalg.cholesky(cov)
    x_train = mean + torch.randn(8192, 2, generator=gen) @ chol.T
    x_test = mean + torch.randn(20000, 2, generator=gen) @ chol.T
    entropy = 0.5 * math.log((2 * math.pi * math.e) ** 2 * torch.linalg.det(cov).item())  # 2.5480 nats

    flow = FeatureFlow(2, coupling="glow", blocks=4, hidden=32, clamp=2.0)
    with torch.no_grad():
        nll_before = flow.nll(x_test).item()
    assert nll_before > entropy + 1.0  # an unfitted flow is far off, so reaching H below is a real result
    opt = torch.optim.Adam([p for p in flow.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(300):
        batch = x_train[torch.randint(0, x_train.shape[0], (512,), generator=gen)]
        loss = flow.nll(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        nll_test = flow.nll(x_test).item()
    # the test-set mean of -log p has a standard error of about 1/sqrt(20000) = 0.007 nats
    assert abs(nll_test - entropy) < 0.05, (nll_test, entropy)
