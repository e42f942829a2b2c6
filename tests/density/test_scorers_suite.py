"""Feature-space scorers (mahalanobis, residual_flow, gmm, heat, knn, vim, likelihood_ratio, lid) and
``fit_and_score``: detection on a synthetic feature benchmark, exact identities at initialisation, errors."""
import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from ffs_det.density import FeatureFlow
from ffs_det.density.metrics import ood_metrics
from ffs_det.density.scorers import build_scorer, fit_and_score
from ffs_det.density.scorers.lid import encoder_jacobian
from ffs_det.density.scorers.likelihood_ratio import mutate

D, C = 16, 4


@pytest.fixture(scope="module")
def bench():
    """Class-clustered Gaussian features with an anisotropic covariance, a linear classifier trained on them,
    and two OOD sets: features of unseen classes lying between the known ones, and the known classes with
    heavy-tailed (Student-t, 2 d.o.f.) noise. A second "layer" is a random ReLU projection of the features."""
    rng = np.random.default_rng(0)
    mix = rng.normal(size=(D, D)) * np.exp(-np.arange(D) / 5.0)
    means = rng.normal(scale=2.0, size=(C, D))
    proj = rng.normal(size=(D, 12)) / np.sqrt(D)

    def draw(mu, n, heavy=False):
        k = rng.integers(0, len(mu), n)
        noise = rng.standard_t(2.0, size=(n, D)) / np.sqrt(2) if heavy else rng.normal(size=(n, D))
        return mu[k] + noise @ mix.T, k

    x_train, y_train = draw(means, 1200)
    x_test, _ = draw(means, 400)
    novel_means = 0.5 * (means[[0, 1, 2]] + means[[1, 2, 3]]) + rng.normal(scale=0.5, size=(3, D))
    ood = {"novel": draw(novel_means, 200)[0], "heavy": draw(means, 200, heavy=True)[0]}
    ood["mixed"] = np.concatenate([ood["novel"], ood["heavy"]])

    head = torch.nn.Linear(D, C).double()
    opt = torch.optim.LBFGS(head.parameters(), max_iter=200)
    xt, yt = torch.as_tensor(x_train), torch.as_tensor(y_train)

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(head(xt), yt) + 1e-3 * head.weight.pow(2).sum()
        loss.backward()
        return loss

    torch.manual_seed(0)
    opt.step(closure)
    assert (head(xt).argmax(1) == yt).double().mean() > 0.95
    return dict(x_train=x_train, y_train=y_train, x_test=x_test, ood=ood, weight=head.weight.detach(),
                bias=head.bias.detach(), layers=lambda x: {"features": x, "relu_proj": np.maximum(x @ proj, 0.0)})


# name -> (registered scorer, constructor arguments); small flows and short training keep this on CPU
CASES = {
    "mahalanobis": ("mahalanobis", {}),
    "residual_flow": ("residual_flow", dict(epochs=10)),
    "gmm": ("gmm", {}),
    "heat_gmm": ("heat", dict(priors="gmm", epochs=30)),
    "heat_gmm_sgld": ("heat", dict(priors="gmm", epochs=5, negatives="sgld", sgld_steps=10)),
    "heat_gmm+energy": ("heat", dict(epochs=30)),  # priors="auto" with the head given: both
    "knn": ("knn", dict(k=10)),
    "vim": ("vim", dict(d=C)),
    "likelihood_ratio": ("likelihood_ratio", dict(blocks=2, hidden=64, epochs=20)),
    "lid": ("lid", dict(blocks=2, hidden=64, epochs=20)),
}


def _fit_score(bench, name, kwargs):
    scorer = build_scorer(name, **kwargs)
    inputs = bench["layers"] if name == "residual_flow" else (lambda x: x)
    scorer.fit(inputs(bench["x_train"]), bench["y_train"], head=(bench["weight"], bench["bias"]))
    return {k: scorer.score(inputs(x)) for k, x in [("id", bench["x_test"]), *bench["ood"].items()]}


@pytest.mark.parametrize("case", list(CASES))
def test_scorer_beats_chance_on_feature_benchmark(bench, case):
    name, kwargs = CASES[case]
    scores = _fit_score(bench, name, kwargs)
    assert all(s.dtype == np.float64 and s.ndim == 1 and np.isfinite(s).all() for s in scores.values())
    auroc = {k: ood_metrics(scores["id"], scores[k])["auroc"] for k in ("novel", "heavy", "mixed")}
    print(f"{case}: AUROC " + ", ".join(f"{k}={v:.3f}" for k, v in auroc.items()))
    assert all(v > 0.5 for v in auroc.values()), auroc


def test_heat_residual_improves_its_energy_prior(bench):
    """The learned correction must fix the logit energy, which ranks heavy-tailed features poorly."""
    logits = lambda x: torch.as_tensor(x) @ bench["weight"].T + bench["bias"]
    energy = build_scorer("energy")
    base = ood_metrics(energy.score_logits(logits(bench["x_test"])),
                       energy.score_logits(logits(bench["ood"]["mixed"])))["auroc"]
    heat = _fit_score(bench, "heat", dict(priors=("energy",), epochs=60))
    assert ood_metrics(heat["id"], heat["mixed"])["auroc"] > base + 0.03


def test_heat_untrained_is_its_prior_and_composition_is_standardised_sum(bench):
    x, y, x_te = bench["x_train"], bench["y_train"], bench["x_test"]
    heat = build_scorer("heat", priors=("gmm", "energy"), epochs=0).fit(x, y, head=(bench["weight"], bench["bias"]))
    energies = heat.energies(x_te)
    gmm = build_scorer("gmm").fit(x, y)
    np.testing.assert_allclose(energies["gmm"], -gmm.score(x_te) / heat.energies_["gmm"].t_prior,
                               rtol=1e-10)
    neg_energy = torch.logsumexp(torch.as_tensor(x_te) @ bench["weight"].T + bench["bias"], dim=1).numpy()
    np.testing.assert_allclose(energies["energy"], -neg_energy / heat.energies_["energy"].t_prior, rtol=1e-10)
    total = sum((e - heat.energies_[k].mean) / heat.energies_[k].scale for k, e in energies.items())
    np.testing.assert_allclose(heat.score(x_te), -total, rtol=1e-10)
    # training moves the energy away from the prior; "auto" without a head uses the GMM prior alone
    trained = build_scorer("heat", epochs=5).fit(x, y).energies(x_te)
    assert list(trained) == ["gmm"] and not np.allclose(trained["gmm"], energies["gmm"])
    # a whole classifier as model: its last nn.Linear is the head of the energy prior
    clf = torch.nn.Sequential(torch.nn.Identity(), torch.nn.Linear(D, C).double())
    clf[1].weight.data, clf[1].bias.data = bench["weight"].clone(), bench["bias"].clone()
    auto = build_scorer("heat", epochs=0).fit(x, y, head=clf).energies(x_te)
    assert list(auto) == ["gmm", "energy"]
    np.testing.assert_allclose(auto["energy"], energies["energy"], rtol=1e-10)


def test_residual_flow_validation_options(bench):
    layers, x, y = bench["layers"], bench["x_train"], bench["y_train"]
    tiny = dict(epochs=2, hidden=16)
    given = build_scorer("residual_flow", **tiny).fit(layers(x), y,
                                                     X_val_ood=layers(bench["ood"]["heavy"][:100]))
    assert given.combiner_.coef.shape == (2,)
    summed = build_scorer("residual_flow", combine="sum", **tiny).fit(layers(x), y)
    per_layer = summed.layer_scores(layers(bench["x_test"]))
    assert set(per_layer) == {"features", "relu_proj"}
    np.testing.assert_allclose(summed.score(layers(bench["x_test"])), sum(per_layer.values()))
    one = build_scorer("residual_flow", layers=["relu_proj"], val_proxy="shuffle", **tiny)
    one.fit(layers(x), y)
    assert one.combiner_ is None and list(one.layer_scores(layers(x[:5]))) == ["relu_proj"]


def test_lid_of_untrained_flow_counts_every_dimension(bench):
    """An untrained flow is a permutation: every decoder singular value is 1, so LID = D / (1 + sigma^2)."""
    sigma = 0.5
    lid = build_scorer("lid", sigma=sigma, epochs=0, blocks=2, hidden=16).fit(bench["x_train"])
    _, values = lid.components(bench["ood"]["mixed"])
    np.testing.assert_allclose(values, D / (1 + sigma ** 2), rtol=1e-5)
    # a given (here untrained) flow is used on the raw features, without training
    given = build_scorer("lid", sigma=sigma, flow=FeatureFlow(D, blocks=2, hidden=16)).fit(bench["x_train"])
    np.testing.assert_allclose(given.components(bench["x_test"][:20])[1], D / (1 + sigma ** 2), rtol=1e-5)
    # the dual-threshold score is the smaller of the two standardised components
    ll, values = lid.components(bench["x_test"])
    (m_l, s_l), (m_d, s_d) = lid.stats_["loglik"], lid.stats_["lid"]
    np.testing.assert_allclose(lid.score(bench["x_test"]),
                               np.minimum((ll - m_l) / s_l, (values - m_d) / s_d))


def test_encoder_jacobian_is_exact():
    flow = FeatureFlow(6, blocks=3, hidden=32, seed=1)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in flow.parameters():
            if p.is_floating_point():  # leave the (integer) permutations alone
                p.copy_(0.2 * torch.randn(p.shape, generator=gen))
    x = torch.randn(5, 6, generator=gen)
    jac = encoder_jacobian(flow.eval(), x)
    ref = torch.stack([torch.autograd.functional.jacobian(lambda v: flow(v[None])[0][0], row) for row in x])
    assert ref.abs().max() > 1.5  # a non-trivial map
    torch.testing.assert_close(jac, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(torch.linalg.slogdet(jac.double())[1], flow(x)[1].double().detach(), atol=1e-5,
                               rtol=1e-5)


def test_likelihood_ratio_perturbation_and_identical_flows():
    x = torch.randn(2000, 8, dtype=torch.float64)
    perturbed = mutate(x, 0.25, torch.Generator().manual_seed(0))
    assert abs((perturbed != x).double().mean().item() - 0.25) < 0.02
    # every value still comes from its own column
    for j in range(8):
        assert torch.isin(perturbed[:, j], x[:, j]).all()
    untrained = build_scorer("likelihood_ratio", epochs=0, blocks=2, hidden=16).fit(x)
    np.testing.assert_allclose(untrained.score(x[:50]), 0.0, atol=1e-5)


def test_knn_gmm_details(bench):
    x = bench["x_train"]
    assert np.allclose(build_scorer("knn", k=1).fit(x).score(x[:30]), 0.0, atol=1e-7)
    sub = build_scorer("knn", k=5, train_fraction=0.1, backend="sklearn").fit(x)
    assert sub.index_.n_samples_fit_ == 120
    assert build_scorer("knn", k=5, train_fraction=0.1, backend="faiss").fit(x).index_.ntotal == 120
    # feature maps (N, C, H, W) are average pooled
    maps = np.repeat(x[:, :, None, None], 4, axis=2).repeat(3, axis=3)
    np.testing.assert_allclose(build_scorer("knn", k=3).fit(maps).score(maps[:10]),
                               build_scorer("knn", k=3).fit(x).score(x[:10]), atol=1e-12)
    # several components per class via scikit-learn, and the label-free mixture
    two = build_scorer("gmm", n_components=2).fit(x, bench["y_train"])
    assert two.gaussians_.means.shape == (2 * C, D)
    assert np.isfinite(build_scorer("gmm").fit(x).score(x[:10])).all()


def test_fit_and_score_on_numpy_box_features(bench):
    x, y, sets = bench["x_train"], bench["y_train"], {"id": bench["x_test"], "ood": bench["ood"]["mixed"]}
    out = fit_and_score("mahalanobis", x, y, sets, ridge=1e-5)
    direct = build_scorer("mahalanobis", ridge=1e-5).fit(x, y)
    assert set(out) == {"id", "ood"}
    np.testing.assert_allclose(out["ood"], direct.score(sets["ood"]))
    vim = fit_and_score("vim", x, None, sets, d=C, head=(bench["weight"].numpy(), bench["bias"].numpy()))
    assert vim["id"].shape == (400,) and vim["id"].dtype == np.float64
    multi = fit_and_score("residual_flow", {"features": bench["layers"](x)}, y,
                          {"id": {"features": bench["layers"](sets["id"])}}, epochs=1, hidden=16)
    assert multi["id"].shape == (400,)
    # logit scorers score sets without logits through the head
    energy = fit_and_score("energy", x, None, sets, head=(bench["weight"], bench["bias"]))
    logits = torch.as_tensor(sets["ood"]) @ bench["weight"].T + bench["bias"]
    np.testing.assert_allclose(energy["ood"], torch.logsumexp(logits, dim=1).numpy(), rtol=1e-12)
    # unknown options are refused, naming them; fit options of the scorer are accepted
    with pytest.raises(ValueError, match="unknown option.*kk"):
        fit_and_score("knn", x, y, sets, kk=3)
    with pytest.raises(ValueError, match="unknown option.*X_val"):
        fit_and_score("knn", x, y, sets, X_val=x)
    with pytest.raises(ValueError, match="unknown scorer"):
        fit_and_score("nope", x, y, sets)
    with pytest.raises(ValueError, match="test_sets"):
        fit_and_score("knn", x, y, {})


@pytest.mark.parametrize("name", ["mahalanobis", "residual_flow", "gmm", "heat", "knn", "vim",
                                  "likelihood_ratio", "lid"])
def test_score_before_fit_names_the_scorer(name):
    with pytest.raises(ValueError, match=f"{name}: call fit"):
        build_scorer(name).score(np.zeros((3, D)))


def test_bad_inputs_are_named(bench):
    x, y = bench["x_train"], bench["y_train"]
    with pytest.raises(ValueError, match="labels"):
        build_scorer("mahalanobis").fit(x, y[:-1])
    with pytest.raises(ValueError, match="labels"):
        build_scorer("gmm").fit(x, y.astype(float) + 0.5)
    with pytest.raises(ValueError, match="features"):
        build_scorer("mahalanobis").fit(x[:, 0], y)
    with pytest.raises(ValueError, match="features"):
        build_scorer("knn").fit(None)
    with pytest.raises(ValueError, match="width"):
        build_scorer("knn", k=3).fit(x).score(x[:, :5])
    with pytest.raises(ValueError, match="final linear layer"):
        build_scorer("vim").fit(x)
    with pytest.raises(ValueError, match="final linear layer"):
        build_scorer("heat", priors=("energy",)).fit(x, y)
    with pytest.raises(ValueError, match="k=5000"):
        build_scorer("knn", k=5000).fit(x)
    with pytest.raises(ValueError, match="lacks layer"):
        build_scorer("residual_flow", layers=["conv9"]).fit(bench["layers"](x), y)
    with pytest.raises(ValueError, match="same number of rows"):
        build_scorer("residual_flow").fit({"a": x, "b": x[:10]}, y)
    with pytest.raises(ValueError, match="NaN"):
        build_scorer("lid").fit(np.full((10, D), np.nan))
    with pytest.raises(ValueError, match="priors"):
        build_scorer("heat", priors=("knn",))


def test_scores_rank_like_their_closed_forms(bench):
    """Sanity of the closed forms: Mahalanobis ranks like the tied-covariance class log-likelihood."""
    x, y, t = bench["x_train"], bench["y_train"], bench["x_test"]
    gmm_tied = build_scorer("gmm", normalize=False, covariance="tied").fit(x, y)
    maha = build_scorer("mahalanobis").fit(x, y)
    comps = gmm_tied.gaussians_.component_log_prob(torch.as_tensor(t)).max(dim=1).values.numpy()
    np.testing.assert_allclose(maha.score(t) + maha.log_normalizer(), comps, rtol=1e-10)
    assert spearmanr(maha.score(t), gmm_tied.score(t)).statistic > 0.99


def test_scorers_on_reduced_fashion_mnist_benchmark(tmp_path):
    """The same scorers on real features: the reduced embedded image benchmark (Fashion-MNIST vs digits and
    textures), with shortened training for the flow- and MLP-based ones."""
    from ffs_det.image import fashion_benchmark as fashion
    from ffs_det.image.datasets import find_fashion_mnist

    try:
        find_fashion_mnist()
    except FileNotFoundError as e:  # `make test` installs it (`make data`) where it can
        pytest.skip(f"Fashion-MNIST not available: {e}")
    options = {"residual_flow": dict(epochs=3), "heat": dict(max_steps=150),
               "likelihood_ratio": dict(epochs=3, blocks=2, hidden=128),
               "lid": dict(epochs=3, blocks=2, hidden=128, calibration_rows=500), "knn": dict(k=10)}
    names = ["mahalanobis", "residual_flow", "gmm", "heat", "knn", "vim", "likelihood_ratio", "lid"]
    out = fashion.run_fashion_benchmark(str(tmp_path), size="reduced", scorers={n: {} for n in names},
                                        options=options, photos=False, progress=False, log=lambda *a: None)
    for name in names:
        res = out["result"].scorers[name]
        assert res.status == "ok", (name, res.message)
        auroc = {k: m["auroc"] for k, m in res.metrics.items()}
        print(f"fashion-mnist {name}: AUROC " + ", ".join(f"{k}={v:.3f}" for k, v in auroc.items()))
        assert set(auroc) == {"digits", "textures"} and all(v > 0.5 for v in auroc.values()), (name, auroc)


@pytest.mark.parametrize("normalize", [True, False])
def test_knn_faiss_and_sklearn_agree(bench, normalize):
    """The faiss index (float32, exact) gives the scikit-learn index's k-th neighbour distances."""
    x, t = bench["x_train"], np.concatenate([bench["x_test"], bench["ood"]["mixed"]])
    ours = {b: build_scorer("knn", k=10, normalize=normalize, backend=b).fit(x) for b in ("faiss", "sklearn")}
    assert ours["faiss"].backend_ == "faiss" and ours["sklearn"].backend_ == "sklearn"
    assert build_scorer("knn").fit(x).backend_ == "faiss"  # the default when faiss is installed
    a, b = ours["faiss"].score(t), ours["sklearn"].score(t)
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * np.abs(b).max())
    assert spearmanr(a, b).statistic > 0.9999
