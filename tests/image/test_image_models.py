"""Classifiers by name with local weights; preprocessing; MobileNetV2 with its real ImageNet weights."""
import numpy as np
import pytest
import torch
from PIL import Image

from ffs_det.image.bundled import natural_photos
from ffs_det.image.models import (build_classifier, find_mobilenet_v2_weights, load_state_dict_file, preprocessing,
                                  save_state_dict)
from ffs_det.image.small_cnn import SmallCNN
from ffs_det.image.threads import torch_threads


def test_local_weights_round_trip_and_class_count(tmp_path):
    torch.manual_seed(0)
    net = SmallCNN(num_classes=7).eval()
    path = str(tmp_path / "w.pt")
    save_state_dict(net, path)
    loaded = build_classifier("small_cnn", path)  # class count read from the file
    assert loaded.fc.out_features == 7 and not loaded.training
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        np.testing.assert_array_equal(loaded(x).numpy(), net(x).numpy())
    torch.save({"state_dict": {"module." + k: v for k, v in net.state_dict().items()}}, tmp_path / "wrapped.pt")
    assert set(load_state_dict_file(str(tmp_path / "wrapped.pt"))) == set(net.state_dict())


def test_weight_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        build_classifier("small_cnn", str(tmp_path / "missing.pt"))
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="junk.pt: cannot load weights"):
        build_classifier("small_cnn", str(tmp_path / "junk.pt"))
    save_state_dict(SmallCNN(channels=8), str(tmp_path / "narrow.pt"))
    with pytest.raises(ValueError, match=r"narrow.pt does not fit small_cnn: .*shape mismatches"):
        build_classifier("small_cnn", str(tmp_path / "narrow.pt"))
    with pytest.raises(ValueError, match="unknown classifier 'resnet_9000'"):
        build_classifier("resnet_9000")


def test_preprocessing():
    gray = preprocessing("small_cnn", 28)
    x = gray.transform(Image.new("RGB", (40, 40), (255, 255, 255)))
    assert x.shape == (1, 28, 28)
    assert torch.allclose(x, torch.full_like(x, (1 - gray.mean[0]) / gray.std[0]))
    rgb = preprocessing("resnet18")
    assert rgb.transform(Image.new("L", (300, 260))).shape == (3, 224, 224)
    assert tuple(rgb.std) == pytest.approx((0.229, 0.224, 0.225))


@pytest.fixture(scope="module")
def mobilenet():
    try:
        weights = find_mobilenet_v2_weights()
    except FileNotFoundError as e:
        pytest.skip(str(e))
    return build_classifier("mobilenet_v2", weights), preprocessing("mobilenet_v2")


def test_mobilenet_v2_real_weights_recognise_the_bundled_photos(mobilenet):
    """Chelsea is a cat (ImageNet classes 281-285) and coffee an espresso (967): the weights are real."""
    model, prep = mobilenet
    photos = natural_photos()
    x = torch.stack([prep.transform(Image.fromarray(photos[k])) for k in ("chelsea", "coffee")])
    with torch_threads(1), torch.no_grad():
        top = model(x).argmax(1).tolist()
    assert 281 <= top[0] <= 285 and top[1] == 967, top
