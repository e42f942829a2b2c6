"""Every registered scorer keeps the contract of ffs_det.density.scorers.base (scikit-learn style)."""
import inspect

import numpy as np
import pytest
import torch

from ffs_det.density.scorers import SCORERS, NotFittedError, build_scorer, fit_and_score, make_scorer
from ffs_det.density.scorers.base import option_names

# small settings so that every scorer fits in well under a second
FAST = {"fde": dict(epochs=1, hidden=16, blocks=1), "residual_flow": dict(epochs=1, hidden=8, blocks=1),
        "heat": dict(epochs=1, max_steps=2, hidden=8), "likelihood_ratio": dict(epochs=1, hidden=8, blocks=1),
        "lid": dict(epochs=1, hidden=8, blocks=1, calibration_rows=20), "knn": dict(k=3), "vim": dict(d=2)}


def _fit_extra(name, x):
    """What a scorer needs besides ``X, y, head``: SAFE its negatives (here the rows with noise added)."""
    noise = np.random.default_rng(1).normal(size=x.shape)
    return {"adversarial": x + 2 * noise} if name == "safe" else {}


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 6)) + np.repeat(np.eye(3, 6) * 3, 20, axis=0)
    torch.manual_seed(0)
    return x, np.repeat(np.arange(3), 20), torch.nn.Linear(6, 3).double()


def test_the_registry_has_every_scorer():
    assert set(SCORERS) == {"msp", "energy", "odin", "react", "fde", "mahalanobis", "residual_flow", "gmm",
                            "heat", "knn", "vim", "likelihood_ratio", "lid", "safe"}


@pytest.mark.parametrize("name", sorted(SCORERS))
def test_signatures_take_no_catch_all(name):
    cls = SCORERS[name]
    for method in (cls.__init__, cls.fit, cls.score):
        kinds = {p.kind for p in inspect.signature(method).parameters.values()}
        assert inspect.Parameter.VAR_KEYWORD not in kinds and inspect.Parameter.VAR_POSITIONAL not in kinds, method
    fit = inspect.signature(cls.fit).parameters
    assert list(fit)[:3] == ["self", "X", "y"] and fit["head"].kind is inspect.Parameter.KEYWORD_ONLY
    assert list(inspect.signature(cls.score).parameters) == ["self", "X"]
    assert cls.kind in ("features", "logits", "inputs") and cls.uses_head in ("none", "optional", "required")


@pytest.mark.parametrize("name", sorted(SCORERS))
def test_init_only_stores_options(name):
    scorer = build_scorer(name)
    assert not scorer.is_fitted()
    params = scorer.get_params()
    assert list(params) == option_names(SCORERS[name])
    # the stored options rebuild an equal scorer (nothing is transformed in __init__)
    assert build_scorer(name, **params).get_params() == params
    with pytest.raises(ValueError, match="unknown option"):
        build_scorer(name, not_an_option=1)


@pytest.mark.parametrize("name", sorted(n for n in SCORERS if SCORERS[n].kind == "features"))
def test_fit_returns_self_and_marks_fitted_attributes(name, data):
    x, y, head = data
    scorer = build_scorer(name, **FAST.get(name, {}))
    with pytest.raises(NotFittedError, match=f"{name}: call fit"):
        scorer.score(x)
    extra = _fit_extra(name, x)
    assert scorer.fit(x, y, head=head, **extra) is scorer
    assert scorer.is_fitted()
    fitted = [k for k in vars(scorer) if k.endswith("_")]
    assert fitted and not set(fitted) & set(option_names(SCORERS[name]))
    scores = scorer.score(x[:7])
    assert scores.dtype == np.float64 and scores.shape == (7,) and np.isfinite(scores).all()
    # the driver gives the same scores
    again = fit_and_score(name, x, y, {"a": x[:7]}, head=head, **FAST.get(name, {}), **extra)["a"]
    np.testing.assert_allclose(again, scores, rtol=1e-9, atol=1e-9)


def test_old_keyword_calls_fail_loudly(data):
    x, y, _ = data
    with pytest.raises(TypeError):
        build_scorer("knn", k=3).fit(features=x)
    with pytest.raises(TypeError):
        build_scorer("mahalanobis").fit(x, labels=y)


def test_make_scorer_splits_fit_options(data):
    x, y, _ = data
    scorer, fit_options = make_scorer("residual_flow", {"epochs": 1, "X_val": x})
    assert scorer.epochs == 1 and set(fit_options) == {"X_val"}
    with pytest.raises(ValueError, match="unknown option.*typo.*fit: X_val"):
        make_scorer("residual_flow", {"typo": 1})
