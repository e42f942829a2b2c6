"""Fitting from row sources (ffs_det.density.streaming): the readers, and every streaming scorer fitted block by
block from a .npy file against the same scorer fitted in memory."""
import os

import numpy as np
import pytest
import torch

from ffs_det.density.scorers import SCORERS, build_scorer
from ffs_det.density.streaming import (ArrayRows, ConcatRows, FeatureRows, NpyRows, class_counts, column_mean_std,
                                       read_labels)


def _save(path, array, version=None):
    with open(path, "wb") as f:
        np.lib.format.write_array(f, array, version=version)
    return str(path)


@pytest.mark.parametrize("version", [(1, 0), (2, 0)])
def test_npy_rows_read_and_take(tmp_path, version):
    a = np.arange(7 * 3, dtype=np.float32).reshape(7, 3)
    rows = NpyRows(_save(tmp_path / "a.npy", a, version))
    assert rows.shape == (7, 3) and rows.dtype == np.float32 and len(rows) == 7
    np.testing.assert_array_equal(rows.read(2, 5), a[2:5])
    np.testing.assert_array_equal(rows.read(5, 100), a[5:])
    assert rows.read(4, 4).shape == (0, 3)
    idx = [6, 0, 3, 3, 4, 1]  # unsorted, repeated, with runs
    np.testing.assert_array_equal(rows.take(idx), a[idx])
    np.testing.assert_array_equal(np.concatenate([b for _, b in rows.blocks(3)]), a)
    with pytest.raises(IndexError, match="out of range"):
        rows.take([7])
    labels = NpyRows(_save(tmp_path / "y.npy", np.array([2, 0, 2, 1], np.int64)))
    np.testing.assert_array_equal(read_labels(labels, 4), [2, 0, 2, 1])
    classes, counts = class_counts(labels, 4, rows=3)
    assert classes.tolist() == [0, 1, 2] and counts.tolist() == [1, 1, 2]


def test_npy_rows_bad_files(tmp_path):
    path = _save(tmp_path / "a.npy", np.ones((100, 4), np.float32))
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) - 5)
    with pytest.raises(ValueError, match="a.npy: truncated"):
        NpyRows(path)
    (tmp_path / "junk.npy").write_bytes(b"not an npy file at all")
    with pytest.raises(ValueError, match="junk.npy: unreadable .npy header"):
        NpyRows(str(tmp_path / "junk.npy"))
    fortran = _save(tmp_path / "f.npy", np.asfortranarray(np.ones((3, 2))))
    with pytest.raises(ValueError, match="C-ordered numeric"):
        NpyRows(fortran)
    obj = str(tmp_path / "o.npy")
    np.save(obj, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="C-ordered numeric"):  # refused from the header: nothing is unpickled
        NpyRows(obj)


def test_concat_rows_reads_across_parts(tmp_path):
    a, b = np.arange(10.0).reshape(5, 2), np.arange(10.0, 16.0).reshape(3, 2)
    rows = ConcatRows([NpyRows(_save(tmp_path / "a.npy", a)), ArrayRows(b)])
    full = np.concatenate([a, b])
    assert rows.shape == (8, 2)
    np.testing.assert_array_equal(rows.read(3, 7), full[3:7])
    np.testing.assert_array_equal(rows.take([7, 0, 5, 4]), full[[7, 0, 5, 4]])
    with pytest.raises(ValueError, match="parts differ"):
        ConcatRows([ArrayRows(a), ArrayRows(np.ones((2, 3)))])


def test_feature_rows_name_the_bad_block(tmp_path):
    a = np.ones((10, 3), np.float32)
    a[7, 1] = np.nan
    rows = FeatureRows(NpyRows(_save(tmp_path / "a.npy", a)), "train", block_rows=4)
    with pytest.raises(ValueError, match="train rows 4-7"):
        list(rows.blocks())
    with pytest.raises(ValueError, match="empty"):
        FeatureRows(ArrayRows(np.ones((0, 3))))


def test_column_mean_std_matches_torch():
    x = torch.randn(1000, 5, dtype=torch.float64) * 3 + 1
    mean, std = column_mean_std(FeatureRows(ArrayRows(x), block_rows=64))
    torch.testing.assert_close(mean, x.mean(0), rtol=0, atol=1e-12)
    torch.testing.assert_close(std, x.std(0), rtol=0, atol=1e-12)


# scorer -> (options, tolerance on the scores). Exact statistics agree to rounding; flows train on the same
# minibatches (read from disk instead of indexed in memory) and agree to float32 rounding.
CASES = {
    "mahalanobis": ({}, 1e-9),
    "gmm": ({"covariance": "full"}, 1e-9),
    "vim": ({"d": 4}, 1e-9),
    "react": ({}, 1e-9),
    "knn": ({"k": 5}, 1e-5),
    "heat": ({"epochs": 1, "max_steps": 3, "hidden": 8}, 1e-6),
    "fde": ({"epochs": 1, "hidden": 16, "blocks": 1}, 1e-4),
    "residual_flow": ({"epochs": 1, "hidden": 8, "blocks": 1}, 1e-4),
    "lid": ({"epochs": 1, "hidden": 8, "blocks": 1, "calibration_rows": 50}, 1e-4),
    "ash": ({}, 1e-9),
    "scale": ({}, 1e-9),
    "fdbd": ({}, 1e-9),
    "nnguide": ({"k": 5}, 1e-5),
}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 200)
    x = (rng.normal(size=(600, 12)) + np.eye(3, 12)[y] * 3).astype(np.float32)
    order = rng.permutation(600)
    x, y = x[order], y[order]
    folder = tmp_path_factory.mktemp("rows")
    test = rng.normal(size=(50, 12)) * 1.5
    return {"x": _save(folder / "x.npy", x), "y": _save(folder / "y.npy", y), "x_mem": x, "y_mem": y,
            "test": test}


def _head():
    torch.manual_seed(0)
    return torch.nn.Linear(12, 3).double()


def test_every_feature_scorer_streams():
    feature_scorers = {n for n, c in SCORERS.items() if c.kind == "features" and not c.requires}
    assert {n for n in feature_scorers if SCORERS[n].streams} == feature_scorers
    assert feature_scorers - {"likelihood_ratio"} == set(CASES)


@pytest.mark.parametrize("name", sorted(CASES))
def test_streamed_fit_equals_in_memory_fit(store, name):
    options, tol = CASES[name]
    cls = SCORERS[name]
    head = _head() if cls.uses_head != "none" else None
    in_memory = build_scorer(name, **options).fit(store["x_mem"], store["y_mem"] if cls.uses_labels else None,
                                                  head=head)
    rows = FeatureRows(NpyRows(store["x"]), block_rows=64)  # 10 blocks
    streamed = build_scorer(name, **options).fit(rows, NpyRows(store["y"]) if cls.uses_labels else None,
                                                 head=head)
    a, b = in_memory.score(store["test"]), streamed.score(store["test"])
    assert np.isfinite(b).all()
    np.testing.assert_allclose(b, a, rtol=tol, atol=tol * np.abs(a).max())


def test_gmm_mixture_subsample(store):
    full = build_scorer("gmm", covariance="full", n_components=2, mixture_rows=None).fit(store["x_mem"], store["y_mem"])
    rows = FeatureRows(NpyRows(store["x"]), block_rows=64)
    streamed = build_scorer("gmm", covariance="full", n_components=2, mixture_rows=None).fit(rows, NpyRows(store["y"]))
    np.testing.assert_allclose(streamed.score(store["test"]), full.score(store["test"]), rtol=1e-6)
    sub = build_scorer("gmm", covariance="full", n_components=2, mixture_rows=300).fit(rows, NpyRows(store["y"]))
    assert np.isfinite(sub.score(store["test"])).all()
    assert not np.allclose(sub.score(store["test"]), full.score(store["test"]))  # it did fit on fewer rows


def test_likelihood_ratio_streams_deterministically(store):
    opts = {"epochs": 1, "hidden": 8, "blocks": 1}
    rows = FeatureRows(NpyRows(store["x"]), block_rows=64)
    a = build_scorer("likelihood_ratio", **opts).fit(rows).score(store["test"])
    b = build_scorer("likelihood_ratio", **opts).fit(rows).score(store["test"])
    assert np.isfinite(a).all()
    np.testing.assert_array_equal(a, b)


def test_knn_compressed_index(store):
    pytest.importorskip("faiss")
    rows = FeatureRows(NpyRows(store["x"]), block_rows=64)
    exact = build_scorer("knn", k=5).fit(rows)
    sq8 = build_scorer("knn", k=5, index="SQ8").fit(rows)
    ivf = build_scorer("knn", k=5, index="IVF8,Flat", nprobe=8).fit(rows)  # nprobe = nlist: exhaustive
    assert exact.index_bytes_ == 600 * 12 * 4 and sq8.index_bytes_ == 600 * 12
    e = exact.score(store["test"])
    np.testing.assert_allclose(sq8.score(store["test"]), e, atol=0.02)
    np.testing.assert_allclose(ivf.score(store["test"]), e, rtol=1e-5)
    with pytest.raises(ValueError, match="faiss index"):
        build_scorer("knn", index="SQ8", backend="sklearn")


def test_labels_must_match(store):
    rows = FeatureRows(NpyRows(store["x"]))
    with pytest.raises(ValueError, match=r"shape \(600,\)"):
        build_scorer("mahalanobis").fit(rows, ArrayRows(store["y_mem"][:10]))


@pytest.mark.parametrize("kind", ["normal", "relu", "ties"])
def test_block_percentile_equals_numpy(kind):
    from ffs_det.density.streaming import percentile
    rng = np.random.default_rng(1)
    x = rng.normal(size=(400, 7))
    if kind == "relu":
        x = np.maximum(x, 0)  # most values tie at 0
    elif kind == "ties":
        x = np.round(x, 1)
    rows = FeatureRows(ArrayRows(x), block_rows=33)
    for q in [0, 0.1, 37.5, 50, 90, 99.9, 100]:
        # few bins and a tiny collection limit force several refinement passes
        assert percentile(rows, q, bins=4, max_collect=3) == pytest.approx(np.percentile(x, q), abs=1e-12)
        assert percentile(rows, q) == pytest.approx(np.percentile(x, q), abs=1e-12)
