"""Dataset adapters: Fashion-MNIST discovery and IDX reading, image folders, generated sets, spec parsing,
and the errors for missing data."""
import gzip
import os

import numpy as np
import pytest
from PIL import Image

from ffs_det.image import datasets as ds
from ffs_det.image.bundled import digits_images, photo_crops, texture_crops
from ffs_det.image.idx import read_idx


def _idx_bytes(arr: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, arr.ndim]) + b"".join(int(s).to_bytes(4, "big") for s in arr.shape)
    return header + arr.astype(np.uint8).tobytes()


def _fake_fashion(folder, n_train=6, n_test=4, gz=True):
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(0)
    arrays = {"train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28)),
              "train-labels-idx1-ubyte": np.arange(n_train) % 10,
              "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28)),
              "t10k-labels-idx1-ubyte": np.arange(n_test) % 10}
    for name, arr in arrays.items():
        data = _idx_bytes(arr)
        if gz:
            with gzip.open(os.path.join(folder, name + ".gz"), "wb") as f:
                f.write(data)
        else:
            with open(os.path.join(folder, name), "wb") as f:
                f.write(data)
    return arrays


def test_find_fashion_mnist_custom_folder_env_and_torchvision_layout(tmp_path, monkeypatch):
    arrays = _fake_fashion(tmp_path / "plain")
    assert ds.find_fashion_mnist(str(tmp_path / "plain")) == str(tmp_path / "plain")
    images, labels = ds.load_fashion_mnist("train", str(tmp_path / "plain"))
    np.testing.assert_array_equal(images, arrays["train-images-idx3-ubyte"])
    np.testing.assert_array_equal(labels, arrays["train-labels-idx1-ubyte"])
    _fake_fashion(tmp_path / "tv" / "FashionMNIST" / "raw", gz=False)
    assert ds.find_fashion_mnist(str(tmp_path / "tv")).endswith(os.path.join("FashionMNIST", "raw"))
    monkeypatch.setenv(ds.FASHION_MNIST_ENV, str(tmp_path / "tv"))
    assert len(ds.build_dataset("fashion-mnist@test")) == 4
    dset = ds.build_dataset(f"fashion-mnist:{tmp_path / 'plain'}@train")
    img, label = dset[1]
    assert img.size == (28, 28) and label == 1


def test_missing_fashion_mnist_says_how_to_get_it(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist") as e:
        ds.find_fashion_mnist(str(tmp_path))
    assert str(tmp_path) in str(e.value) and ds.FASHION_MNIST_ENV in str(e.value)
    monkeypatch.setenv(ds.FASHION_MNIST_ENV, str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError, match=r"\$FFS_DET_FASHION_MNIST"):
        ds.build_dataset("fashion-mnist@train")


def test_idx_reader_errors(tmp_path):
    bad = tmp_path / "bad.idx"
    bad.write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(ValueError, match="not an IDX file"):
        read_idx(str(bad))
    short = tmp_path / "short.idx"
    short.write_bytes(_idx_bytes(np.zeros((3, 2, 2)))[:-1])
    with pytest.raises(ValueError, match="truncated"):
        read_idx(str(short))
    with pytest.raises(FileNotFoundError, match="nope.idx"):
        read_idx(str(tmp_path / "nope.idx"))
    ok = tmp_path / "ok.idx"
    ok.write_bytes(_idx_bytes(np.arange(12).reshape(3, 4)))
    out = read_idx(str(ok))
    assert out.shape == (3, 4) and out.flags.writeable and out[2, 3] == 11


def test_image_folders(tmp_path):
    for cls in ("b_cls", "a_cls"):
        os.makedirs(tmp_path / "tree" / cls)
        for i in range(2):
            Image.new("L", (10, 8), color=i * 50).save(tmp_path / "tree" / cls / f"{i}.png")
    tree = ds.build_dataset(f"folder:{tmp_path / 'tree'}")
    assert len(tree) == 4 and tree[0][1] == 0 and tree[3][1] == 1  # sorted classes, like ImageNet val
    assert tree[0][0].mode == "RGB"
    os.makedirs(tmp_path / "flat")
    Image.new("RGB", (5, 5)).save(tmp_path / "flat" / "x.jpg")
    (tmp_path / "flat" / "notes.txt").write_text("not an image")
    flat = ds.build_dataset(f"folder:{tmp_path / 'flat'}")
    assert len(flat) == 1 and flat[0][1] == -1
    os.makedirs(tmp_path / "empty" / "sub")
    with pytest.raises(FileNotFoundError, match="holds no images"):
        ds.build_dataset(f"folder:{tmp_path / 'empty'}")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ds.build_dataset(f"folder:{tmp_path / 'missing'}")


@pytest.mark.parametrize("spec, hint", [("cifar10:{}", "cifar-10-batches-py"),
                                        ("cifar100:{}@train", "cifar-100-python"),
                                        ("svhn:{}@test", "test_32x32.mat")])
def test_missing_torchvision_sets(tmp_path, spec, hint):
    with pytest.raises(FileNotFoundError, match="download=True") as e:
        ds.build_dataset(spec.format(tmp_path))
    assert hint in str(e.value)


@pytest.mark.parametrize("spec, message", [("", "non-empty"), ("imagenet:/x", "unknown kind"),
                                           ("folder", "needs a folder"), ("cifar10:/x@val", "split 'val'"),
                                           ("digits@train", "has no splits")])
def test_bad_specs(spec, message):
    with pytest.raises(ValueError, match=message):
        ds.parse_spec(spec)


def test_generated_sets():
    images, labels = digits_images(28)
    assert images.shape == (1797, 28, 28) and images.dtype == np.uint8 and images.max() == 255
    assert set(labels) == set(range(10))
    a, b = texture_crops(12, size=28, seed=1), texture_crops(12, size=28, seed=1)
    np.testing.assert_array_equal(a, b)
    assert a.shape == (12, 28, 28) and not np.array_equal(a, texture_crops(12, size=28, seed=2))
    assert texture_crops(3, size=32, rgb=True).shape == (3, 32, 32, 3)
    with pytest.raises(ValueError, match="unknown scikit-image texture"):
        texture_crops(2, names=("marble",))
    crops, which, names = photo_crops(4, size=64)
    assert crops.shape == (4, 64, 64, 3) and "chelsea" in names and list(which) == [0, 1, 2, 3]
    sub = ds.build_dataset("digits", max_samples=100, seed=3)
    assert len(sub) == 100 and sub[0][0].size == (28, 28)
    again = ds.build_dataset("digits", max_samples=100, seed=3)
    assert [sub[i][1] for i in range(5)] == [again[i][1] for i in range(5)]
    assert len(ds.build_dataset("textures", image_size=16, n_generated=7)) == 7
