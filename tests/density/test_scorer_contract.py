"""Every registered scorer keeps the contract of ffs_det.density.scorers.base (scikit-learn style)."""
import inspect

import numpy as np
import pytest
import torch

from ffs_det.density.scorers import (SCORERS, NotFittedError, build_scorer, classifier_needs, fit_and_score, fit_source,
                                     make_scorer, score_source, scorer_class, streams_fit)
from ffs_det.density.scorers import apply
from ffs_det.density.scorers.base import option_names
from ffs_det.density.streaming import ArrayRows

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
                            "heat", "knn", "vim", "likelihood_ratio", "lid", "safe"} | {"ash", "scale", "adascale"} | {"gen", "fdbd", "nnguide"}


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


def test_names_and_options_are_checked_in_one_place(data):
    """build_scorer and make_scorer refuse a name or option with scorer_class's message, word for word."""
    x, _, _ = data
    with pytest.raises(ValueError) as one:
        scorer_class("nope")
    for call in (lambda: build_scorer("nope"), lambda: make_scorer("nope")):
        with pytest.raises(ValueError) as other:
            call()
        assert str(other.value) == str(one.value) and str(one.value).startswith("unknown scorer 'nope'; available: ")
    with pytest.raises(ValueError) as one:
        scorer_class("residual_flow", ["X_val"])  # a fit option is not a constructor option
    with pytest.raises(ValueError) as other:
        build_scorer("residual_flow", X_val=x)
    assert str(other.value) == str(one.value) and "fit:" not in str(one.value)
    with pytest.raises(ValueError) as one:
        scorer_class("residual_flow", ["typo"], fit=True)
    with pytest.raises(ValueError) as other:
        make_scorer("residual_flow", {"typo": 1})
    assert str(other.value) == str(one.value)
    assert scorer_class("residual_flow", ["epochs", "X_val"], fit=True) is SCORERS["residual_flow"]


class _Source:
    """Named row arrays in memory, recording how each is read: the interface of a feature store."""

    def __init__(self, **arrays):
        self.arrays, self.calls = arrays, []

    def __len__(self):
        return len(self.arrays["features"])

    def load(self, key):
        self.calls.append(("load", key))
        return np.array(self.arrays[key])

    def rows(self, key):
        self.calls.append(("rows", key))
        return ArrayRows(self.arrays[key])

    def read(self, key, start, stop):
        self.calls.append(("read", key))
        return np.array(self.arrays[key][start:stop])


@pytest.fixture
def source(data):
    x, y, head = data
    return _Source(features=x, labels=y, logits=head(torch.as_tensor(x)).detach().numpy())


def test_fits_stream_exactly_when_asked(source, monkeypatch):
    n_bytes = 8 * 60 * 6
    for name, cls in SCORERS.items():
        can = cls.kind == "features" and cls.streams
        assert streams_fit(cls, source, "always") is can and not streams_fit(cls, source, "never")
        monkeypatch.setattr(apply, "STREAM_AUTO_BYTES", n_bytes - 1)
        assert streams_fit(cls, source, "auto") is can
        monkeypatch.setattr(apply, "STREAM_AUTO_BYTES", n_bytes)  # "auto" streams only above the limit
        assert not streams_fit(cls, source, "auto")
    with pytest.raises(ValueError, match="stream must be one of"):
        streams_fit(SCORERS["knn"], source, "sometimes")


@pytest.mark.parametrize("stream, how", [("always", "rows"), ("never", "load")])
def test_fit_source_reads_what_the_scorer_needs(source, data, stream, how):
    _, _, head = data
    fit_source(build_scorer("mahalanobis"), source, head, stream)
    assert source.calls == [(how, "features"), (how, "labels")]
    source.calls.clear()
    fit_source(build_scorer("knn", k=3), source, head, stream)
    assert source.calls == [(how, "features")]
    source.calls.clear()
    energy = fit_source(build_scorer("energy"), source, head, stream)
    assert source.calls == [] and energy.head_ is None  # it scores the source's logits: no head
    assert fit_source(build_scorer("vim", d=2), source, head, stream).is_fitted()  # the head it needs is given


def test_score_source_chunks_the_array_a_scorer_reads(source, data):
    x, _, head = data
    maha = fit_source(build_scorer("mahalanobis"), source, head, "never")
    source.calls.clear()
    scores = score_source(maha, source, chunk_size=25, what="set")
    assert source.calls == [("read", "features")] * 3
    np.testing.assert_array_equal(scores, np.concatenate([maha.score(x[i:i + 25]) for i in (0, 25, 50)]))
    source.calls.clear()
    msp = score_source(build_scorer("msp"), source, chunk_size=40)
    assert source.calls == [("read", "logits")] * 2
    np.testing.assert_array_equal(msp, build_scorer("msp").score_logits(source.arrays["logits"]))
    with pytest.raises(ValueError, match="returned 6 scores for 60 samples of set"):
        score_source(build_scorer("odin"), source, inputs=[torch.as_tensor(x[:6], dtype=torch.float32)],
                     model=torch.nn.Linear(6, 3), what="set")


def test_classifier_needs():
    assert classifier_needs(SCORERS["odin"]) == ("model", "inputs")
    assert classifier_needs(SCORERS["vim"]) == classifier_needs(SCORERS["react"]) == ("head",)
    assert classifier_needs(SCORERS["knn"]) == classifier_needs(SCORERS["energy"]) == ()
