"""Released VOS/FFS checkpoints convert into ffs_det's model: a state dict with the authors' names and shapes
(their ROI heads: deeplearning-wisc/vos detection/modeling/roihead_gmm.py, nish03/FFS
Flow-Feature-Synthesis/detection/modeling/flow_generator.py; trunk, FPN, RPN and box head/predictor carry
detectron2's names on both sides)."""
import os

import numpy as np
import pytest
import torch

from detectron2.modeling import build_model

from ffs_det.engine.checkpoint import SafeCheckpointer
from ffs_det.engine.released import convert_state_dict
from ffs_det.engine.setup import build_cfg
from repo_paths import load_tool

DIM, HIDDEN = 1024, 2048  # the box head's width and the released flow's subnet width


def _cfg(config, *opts):
    return build_cfg(config, ["MODEL.WEIGHTS", "", "MODEL.DEVICE", "cpu", *opts])


def released_state(cfg, flow: bool, num_classes: int, seed: int = 0):
    """A checkpoint as the authors' code saves it: detectron2's shared modules (names from a plain model of the
    same trunk), the authors' ROI-head extras, and the buffers their meta-architecture registers."""
    g = torch.Generator().manual_seed(seed)
    plain = cfg.clone()
    plain.defrost()
    plain.FFS.SYNTHESIS = "none"
    plain.MODEL.ROI_HEADS.NUM_CLASSES = num_classes
    state = {k: torch.randn(v.shape, generator=g) if v.is_floating_point() else v.clone()
             for k, v in build_model(plain).state_dict().items()}
    state.update({
        "pixel_mean": torch.tensor(cfg.MODEL.PIXEL_MEAN).view(3, 1, 1),
        "pixel_std": torch.tensor(cfg.MODEL.PIXEL_STD).view(3, 1, 1),
        "roi_heads.weight_energy.weight": torch.rand(1, num_classes, generator=g),  # nn.Linear(K, 1)
        "roi_heads.weight_energy.bias": torch.rand(1, generator=g),
        "roi_heads.logistic_regression.weight": torch.randn(2, 1, generator=g),  # nn.Linear(1, 2)
        "roi_heads.logistic_regression.bias": torch.randn(2, generator=g),
    })
    if flow:  # GraphINN of GLOWCouplingBlock, PermuteRandom(seed=0), GLOWCouplingBlock, PermuteRandom(seed=1)
        for block in (0, 2):
            for sub in ("subnet1", "subnet2"):
                p = f"roi_heads.flow_model.module_list.{block}.{sub}"
                # the scale of PyTorch's default Linear initialisation, as the released flow starts
                state[f"{p}.0.weight"] = torch.randn(HIDDEN, DIM // 2, generator=g) * 0.02
                state[f"{p}.0.bias"] = torch.randn(HIDDEN, generator=g) * 0.02
                state[f"{p}.2.weight"] = torch.randn(DIM, HIDDEN, generator=g) * 0.02
                state[f"{p}.2.bias"] = torch.randn(DIM, generator=g) * 0.02
            perm = torch.randperm(DIM, generator=g)
            state[f"roi_heads.flow_model.module_list.{block + 1}.perm"] = perm
            state[f"roi_heads.flow_model.module_list.{block + 1}.perm_inv"] = torch.argsort(perm)
    return state


@pytest.mark.parametrize("config,flow", [("VOC/ffs_regnetx.yaml", True), ("VOC/vos_regnetx.yaml", False)])
def test_released_voc_checkpoints_load_into_ffs_det(tmp_path, config, flow, capsys):
    cfg = _cfg(config)
    released = released_state(cfg, flow, 20)
    src = tmp_path / "model_final.pth"
    torch.save({"model": released, "iteration": 23999, "optimizer": {}, "scheduler": {}}, src)
    out = tmp_path / "converted.pth"
    assert load_tool("convert_checkpoint").main(["--config-file", config, "--input", str(src), "--output", str(out)]) == 0
    assert "wrote" in capsys.readouterr().out

    model = build_model(cfg)
    SafeCheckpointer(model).resume_or_load(str(out), resume=False)
    got = model.state_dict()
    blob = torch.load(out, weights_only=True)
    assert set(blob["model"]) == set(got) and blob["converted_from"]["iteration"] == 23999
    assert blob["class_names"][:3] == ["person", "bird", "cat"]
    for key in ("backbone.bottom_up.stem.conv.weight", "roi_heads.box_predictor.cls_score.weight"):
        assert torch.equal(got[key], released[key])
    heads = model.roi_heads
    assert torch.equal(heads.energy_margin.class_weights.detach(), released["roi_heads.weight_energy.weight"][0])
    assert torch.equal(heads.energy_margin.logistic.weight.detach(), released["roi_heads.logistic_regression.weight"])
    if flow:
        inn = heads.synthesizer.flow.inn
        assert torch.equal(inn.module_list[3].perm, released["roi_heads.flow_model.module_list.3.perm"])
        assert torch.equal(inn.module_list[2].subnet2[2].weight.detach(),
                           released["roi_heads.flow_model.module_list.2.subnet2.2.weight"])
        # the flow is the authors' map: inverse(forward(x)) == x with their weights
        x = torch.randn(3, DIM)
        with torch.no_grad():
            z, _ = heads.synthesizer.flow(x)
            assert torch.allclose(heads.synthesizer.flow.inverse(z), x, atol=1e-3)
    else:
        assert int(heads.synthesizer.count.sum()) == 0  # VOS queues start empty, as after a released restart


def test_unknown_missing_and_misshapen_keys_are_named():
    cfg = _cfg("VOC/vos_regnetx.yaml")
    model_state = build_model(cfg).state_dict()
    released = released_state(cfg, False, 20)
    extra = dict(released, **{"roi_heads.mystery.weight": torch.zeros(3)})
    with pytest.raises(ValueError, match=r"1 keys ffs_det has no place for: roi_heads\.mystery\.weight"):
        convert_state_dict(extra, model_state)
    short = {k: v for k, v in released.items() if k != "roi_heads.box_head.fc2.weight"}
    with pytest.raises(ValueError, match=r"missing: roi_heads\.box_head\.fc2\.weight"):
        convert_state_dict(short, model_state)
    with pytest.raises(ValueError, match=r"cls_score\.weight: checkpoint \(11, 1024\) vs model \(21, 1024\).*"
                                         r"NUM_CLASSES"):
        convert_state_dict(released_state(cfg, False, 10), model_state)
    with pytest.raises(ValueError, match="pixel_mean"):
        convert_state_dict(dict(released, pixel_mean=torch.zeros(3, 1, 1)), model_state, cfg.MODEL.PIXEL_MEAN)


def test_permutations_missing_from_a_checkpoint_come_from_the_released_seeds():
    """A checkpoint saved by a FrEIA that did not store PermuteRandom's permutations: with the released seeding
    (per_block, seed 0) a new model's permutations are the released ones; otherwise they are missing keys."""
    cfg = _cfg("VOC/ffs_regnetx.yaml")
    model_state = build_model(cfg).state_dict()
    released = {k: v for k, v in released_state(cfg, True, 20).items() if not k.endswith(("perm", "perm_inv"))}
    state = convert_state_dict(released, model_state, fill_permutations=True)
    for k in (0, 1):
        np.random.seed(k)  # FrEIA's PermuteRandom(seed=k)
        assert state[f"roi_heads.synthesizer.flow.inn.module_list.{2 * k + 1}.perm"].tolist() == \
            np.random.permutation(DIM).tolist()
    with pytest.raises(ValueError, match=r"missing: roi_heads\.synthesizer\.flow\.inn\.module_list\.1\.perm"):
        convert_state_dict(released, model_state)


def test_drop_classes_for_the_released_bdd_model(tmp_path, capsys):
    """The released FFS BDD model has 10 outputs on 8-class data; --drop-classes 8,9 keeps the trained ones."""
    cfg = _cfg("BDD/ffs_regnetx.yaml")
    released = released_state(cfg, True, 10)
    src = tmp_path / "bdd.pth"
    torch.save({"model": released}, src)
    tool = load_tool("convert_checkpoint")
    out = tmp_path / "bdd_converted.pth"
    assert tool.main(["--config-file", "BDD/ffs_regnetx.yaml", "--input", str(src), "--output", str(out)]) == 2
    assert "--drop-classes 8,9" in capsys.readouterr().err and not out.exists()
    assert tool.main(["--config-file", "BDD/ffs_regnetx.yaml", "--input", str(src), "--output", str(out),
                      "--drop-classes", "8,9"]) == 0
    state = torch.load(out, weights_only=True)["model"]
    cls = released["roi_heads.box_predictor.cls_score.weight"]
    assert torch.equal(state["roi_heads.box_predictor.cls_score.weight"], torch.cat([cls[:8], cls[10:]]))
    assert torch.equal(state["roi_heads.box_predictor.bbox_pred.weight"],
                       released["roi_heads.box_predictor.bbox_pred.weight"][:32])
    assert torch.equal(state["roi_heads.energy_margin.class_weights"], released["roi_heads.weight_energy.weight"][0, :8])
    # an existing output is never overwritten; a pickle that needs code to load is refused
    capsys.readouterr()
    assert tool.main(["--config-file", "BDD/ffs_regnetx.yaml", "--input", str(src), "--output", str(out)]) == 2
    assert "exists" in capsys.readouterr().err
    evil = tmp_path / "evil.pth"
    torch.save({"model": {"x": os.system}}, evil)
    assert tool.main(["--config-file", "BDD/ffs_regnetx.yaml", "--input", str(evil), "--output",
                      str(tmp_path / "e.pth")]) == 2
    assert "without running code" in capsys.readouterr().err and not (tmp_path / "e.pth").exists()
