"""SAFE's layers on the papers' backbones: RegNetX-4.0GF (the VOC configs) and detectron2's ResNet-50, as SAFE's
code reads them; a forward pass gives each detection the expected feature width."""
import os

import numpy as np
import pytest
import torch

from ffs_det.evaluation.safe import SafeFeatureModel, safe_layers


def _model(config):
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model

    from ffs_det.engine.setup import build_cfg

    small = ["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", "", "INPUT.MIN_SIZE_TEST", "128", "INPUT.MAX_SIZE_TEST", "128",
             "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0", "MODEL.RPN.POST_NMS_TOPK_TEST", "50"]
    if config.endswith(".yaml") and os.path.isabs(config):  # a stock detectron2 config
        cfg = get_cfg()
        cfg.merge_from_file(config)
        cfg.merge_from_list(small)
    else:
        cfg = build_cfg(config, small)
    torch.manual_seed(0)
    return build_model(cfg).eval()


@pytest.mark.parametrize("backbone", ["regnetx", "resnet50"])
def test_safe_reads_the_shortcut_layers_of_the_papers_backbones(backbone):
    if backbone == "regnetx":
        model, width = _model("VOC/vanilla_regnetx.yaml"), 80 + 240 + 560 + 1360
        expected = [f"backbone.bottom_up.s{i}.b1.bn" for i in range(1, 5)]
    else:
        import detectron2

        stock = os.path.join(os.path.dirname(detectron2.__file__), "model_zoo", "configs", "COCO-Detection",
                             "faster_rcnn_R_50_FPN_1x.yaml")
        model, width = _model(stock), 256 + 512 + 1024 + 2048
        expected = [f"backbone.bottom_up.res{i}.0.shortcut" for i in range(2, 6)]
    assert safe_layers(model) == expected
    image = torch.as_tensor(np.random.default_rng(0).integers(0, 255, (3, 128, 160)), dtype=torch.uint8)
    with torch.no_grad():
        out = SafeFeatureModel(model)([{"image": image, "height": 128, "width": 160}])[0]["instances"]
    assert out.safe_features.shape == (len(out), width) and torch.isfinite(out.safe_features).all()


def test_a_backbone_without_known_layers_is_named():
    with pytest.raises(ValueError, match="SAFE knows the layers of regnet, resnet, mobilenetv2 backbones"):
        safe_layers(torch.nn.Sequential(torch.nn.Linear(2, 2)))


def test_the_attack_leaves_the_detecting_model_and_the_random_streams_as_they_were():
    """The FGSM step runs a training-mode pass, which updates an FFS model's flow statistics and a VOS model's
    queues: it runs on a copy, so the detections and flow log-densities of later images are the model's own."""
    from ffs_det.benchmark.detector import detector_cfg, shapes_inputs
    from ffs_det.benchmark.safe import _records

    cfg = detector_cfg("ffs", "cpu", 1, ["FFS.FLOW.STANDARDIZE", "True"])
    from detectron2.modeling import build_model

    torch.manual_seed(0)
    model = build_model(cfg).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    images = shapes_inputs(cfg, 2, 1, train=False)
    for i, image in enumerate(images):
        image["image_id"] = i
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    with torch.no_grad():
        out = SafeFeatureModel(model, records=_records(2, 1))([images[0]])[0]["instances"]
    torch.testing.assert_close(torch.rand(3), expected)  # the caller's stream is untouched
    assert torch.isfinite(out.safe_features_adv).all() and out.safe_features_adv.shape == out.safe_features.shape
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
