"""The on-disk feature store: round trip, streaming writes, atomicity and clear errors on bad files."""
import json
import os
import tracemalloc

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from ffs_det.image import extract as extract_mod
from ffs_det.image.extract import FeatureExtractor, extract_to_store
from ffs_det.image.feature_store import FeatureStore, FeatureStoreWriter

COLUMNS = {"features": ((4,), "float32"), "logits": ((3,), "float32"), "labels": ((), "int64")}


def _write(path, n=10, chunk=3, info=None):
    rng = np.random.default_rng(0)
    data = {"features": rng.normal(size=(n, 4)).astype(np.float32),
            "logits": rng.normal(size=(n, 3)).astype(np.float32), "labels": np.arange(n)}
    with FeatureStoreWriter(str(path), n, COLUMNS, info=info) as w:
        for s in range(0, n, chunk):
            w.append(**{k: v[s:s + chunk] for k, v in data.items()})
    return data


def test_round_trip(tmp_path):
    data = _write(tmp_path / "s", info={"model": "m", "dataset": {"spec": "digits"}})
    store = FeatureStore(str(tmp_path / "s"))
    assert len(store) == 10 and store.dim("features") == 4 and store.names() == ["features", "labels", "logits"]
    for k, v in data.items():
        np.testing.assert_array_equal(store[k], v)
    assert isinstance(store["features"], np.memmap) and not store["features"].flags.writeable
    assert store.info == {"model": "m", "dataset": {"spec": "digits"}}
    np.testing.assert_array_equal(np.concatenate(list(store.chunks("logits", 4))), data["logits"])
    meta = json.load(open(tmp_path / "s" / "meta.json"))
    assert meta["arrays"]["features"]["shape"] == [10, 4]
    with pytest.raises(KeyError, match="no array 'probs'"):
        store["probs"]


def test_rewrite_replaces_and_failure_leaves_nothing(tmp_path):
    path = tmp_path / "s"
    _write(path, n=10)
    _write(path, n=6)  # an existing store is replaced as a whole
    assert len(FeatureStore(str(path))) == 6
    with pytest.raises(ValueError, match="only 3 of 8 rows"):
        with FeatureStoreWriter(str(tmp_path / "t"), 8, COLUMNS) as w:
            w.append(features=np.zeros((3, 4)), logits=np.zeros((3, 3)), labels=np.zeros(3))
    with pytest.raises(RuntimeError):
        with FeatureStoreWriter(str(tmp_path / "u"), 3, COLUMNS) as w:
            raise RuntimeError("interrupted")
    assert sorted(os.listdir(tmp_path)) == ["s"], "no partial store or temporary folder may remain"


def test_writer_rejects_bad_chunks(tmp_path):
    with FeatureStoreWriter(str(tmp_path / "s"), 4, COLUMNS) as w:
        with pytest.raises(ValueError, match="features rows have shape"):
            w.append(features=np.zeros((2, 5)), logits=np.zeros((2, 3)), labels=np.zeros(2))
        with pytest.raises(ValueError, match="got arrays"):
            w.append(features=np.zeros((2, 4)), logits=np.zeros((2, 3)))
        w.append(features=np.zeros((4, 4)), logits=np.zeros((4, 3)), labels=np.zeros(4))
        with pytest.raises(ValueError, match="declared with 4"):
            w.append(features=np.zeros((1, 4)), logits=np.zeros((1, 3)), labels=np.zeros(1))


def test_clear_errors_naming_the_file(tmp_path):
    path = tmp_path / "s"
    _write(path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        FeatureStore(str(tmp_path / "nope"))
    meta_file = path / "meta.json"
    meta = json.loads(meta_file.read_text())
    meta["arrays"]["features"]["shape"] = [10, 5]
    meta_file.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"features\.npy: holds float32\[10, 4\], meta.json says"):
        FeatureStore(str(path))
    _write(path)
    with open(path / "logits.npy", "r+b") as f:  # truncate the data
        f.truncate(100)
    with pytest.raises(ValueError, match=r"logits\.npy: unreadable or truncated"):
        FeatureStore(str(path))
    _write(path)
    np.save(path / "labels.npy", np.array([object()] * 10), allow_pickle=True)  # pickled objects are refused
    with pytest.raises(ValueError, match=r"labels\.npy"):
        FeatureStore(str(path))
    _write(path)
    (path / "meta.json").write_text("{not json")
    with pytest.raises(ValueError, match="meta.json: corrupted"):
        FeatureStore(str(path))
    os.remove(path / "meta.json")
    with pytest.raises(FileNotFoundError, match="meta.json is missing"):
        FeatureStore(str(path))


def test_streaming_write_does_not_hold_the_set_in_memory(tmp_path):
    n, d, chunk = 200_000, 64, 2_000  # 51 MB of features, written 0.5 MB at a time
    tracemalloc.start()
    try:
        with FeatureStoreWriter(str(tmp_path / "big"), n, {"features": ((d,), "float32")}) as w:
            for s in range(0, n, chunk):
                w.append(features=np.full((chunk, d), s, dtype=np.float32))
        store = FeatureStore(str(tmp_path / "big"))
        total = sum(float(c[:, 0].sum()) for c in store.chunks("features", 4_000))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    full = n * d * 4
    assert peak < full / 10, f"peak {peak / 1e6:.1f} MB for a {full / 1e6:.0f} MB set"
    assert total == float(sum(s * chunk for s in range(0, n, chunk)))
    assert os.path.getsize(tmp_path / "big" / "features.npy") >= full


class _Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(6, 5), torch.nn.ReLU())
        self.fc = torch.nn.Linear(5, 3)

    def forward(self, x):
        return self.fc(self.body(x))


def test_extract_streams_batches_into_the_store(tmp_path, monkeypatch):
    torch.manual_seed(0)
    net = _Net().eval()
    x, y = torch.randn(50, 2, 3), torch.arange(50)
    sizes = []
    append = extract_mod.FeatureStoreWriter.append
    monkeypatch.setattr(extract_mod.FeatureStoreWriter, "append",
                        lambda self, **kw: (sizes.append(len(kw["labels"])), append(self, **kw))[1])
    store = extract_to_store(net, TensorDataset(x, y), str(tmp_path / "s"), batch_size=16, progress=False,
                             info={"note": "test"})
    assert sizes == [16, 16, 16, 2]
    with torch.no_grad():
        np.testing.assert_allclose(store["features"], net.body(x).numpy(), rtol=1e-6)
        np.testing.assert_allclose(store["logits"], net(x).numpy(), rtol=1e-6)
    np.testing.assert_array_equal(store["labels"], y.numpy())
    assert store.info == {"note": "test"}
    assert not net.fc._forward_hooks, "the extraction hook must be removed"


def test_extractor_refuses_models_whose_output_is_not_the_last_linear():
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Softmax(dim=1))
    with pytest.raises(ValueError, match="not the output of its last nn.Linear"):
        FeatureExtractor(model)(torch.randn(2, 4))
    with pytest.raises(ValueError, match="empty"):
        extract_to_store(torch.nn.Linear(2, 2), TensorDataset(torch.zeros(0, 2), torch.zeros(0)), "/tmp/x")
