"""The paper configs hold the released code's settings (docs/paper_parity.md), and the keys that express them
build what the released code builds."""
import numpy as np
import pytest
import torch

from ffs_det.density.flow import FeatureFlow
from ffs_det.engine.setup import build_cfg
from ffs_det.modeling.energy import EnergyMargin

# the released FFS head (nish03/FFS b9f58be, Flow-Feature-Synthesis/detection/modeling/flow_generator.py)
FFS_HEAD = {"FFS.SYNTHESIS": "flow", "FFS.SAMPLE_FROM": 200, "FFS.SELECT": 1, "FFS.NLL_WEIGHT": 1e-4,
            "FFS.ENERGY_LOSS_WEIGHT": 0.1, "FFS.FEATURE_SPACE": "output", "FFS.OUTLIER_MAP": "none",
            "FFS.OUTLIER_TEMPERATURE": 1.0, "FFS.ENERGY_WEIGHT_INIT": "uniform", "FFS.FLOW.COUPLING": "glow",
            "FFS.FLOW.BLOCKS": 2, "FFS.FLOW.HIDDEN": 2048, "FFS.FLOW.CLAMP": 2.0, "FFS.FLOW.INIT": "default",
            "FFS.FLOW.PERMUTATION_SEEDS": "per_block", "FFS.FLOW.BASE_LR": 0.0, "FFS.FLOW.STANDARDIZE": False,
            "FFS.FLOW.CLIP_GRAD_NORM": 0.0, "FFS.HARDEST_OUTLIERS": 0, "FFS.MARGIN_REDUCTION": "mean", "SEED": 0}
# the released VOS head (deeplearning-wisc/vos 6dd9c27, detection/modeling/roihead_gmm.py)
VOS_HEAD = {"FFS.SYNTHESIS": "gaussian", "FFS.SAMPLE_FROM": 10000, "FFS.SELECT": 1, "FFS.ENERGY_LOSS_WEIGHT": 0.1,
            "FFS.OUTLIER_TEMPERATURE": 1.0, "FFS.ENERGY_WEIGHT_INIT": "uniform", "FFS.COV_EPS": 1e-4, "SEED": 0}
RELEASED = {
    # FFS configs/VOC-Detection/faster-rcnn/regnetx.yaml
    "VOC/ffs_regnetx.yaml": dict(FFS_HEAD, **{
        "SOLVER.IMS_PER_BATCH": 16, "SOLVER.BASE_LR": 0.02, "SOLVER.WEIGHT_DECAY": 5e-5,
        "SOLVER.STEPS": (12000, 16000), "SOLVER.MAX_ITER": 24000, "SOLVER.WARMUP_ITERS": 100,
        "FFS.START_ITER": 12000, "MODEL.ROI_HEADS.NUM_CLASSES": 20, "INPUT.MIN_SIZE_TEST": 800,
        "INPUT.MIN_SIZE_TRAIN": tuple(range(480, 801, 32)), "DATASETS.TRAIN": ("voc_custom_train",)}),
    # VOS detection/configs/VOC-Detection/faster-rcnn/regnetx.yaml
    "VOC/vos_regnetx.yaml": dict(VOS_HEAD, **{
        "SOLVER.IMS_PER_BATCH": 16, "SOLVER.BASE_LR": 0.02, "SOLVER.WEIGHT_DECAY": 5e-5,
        "SOLVER.STEPS": (12000, 16000), "SOLVER.MAX_ITER": 18000, "SOLVER.WARMUP_ITERS": 100,
        "FFS.START_ITER": 12000, "FFS.QUEUE_SIZE": 1000, "MODEL.ROI_HEADS.NUM_CLASSES": 20}),
    # VOS detection/configs/BDD-Detection/faster-rcnn/regnetx.yaml
    "BDD/vos_regnetx.yaml": dict(VOS_HEAD, **{
        "SOLVER.IMS_PER_BATCH": 16, "SOLVER.WEIGHT_DECAY": 5e-5, "SOLVER.STEPS": (60000, 80000),
        "SOLVER.MAX_ITER": 90000, "SOLVER.WARMUP_ITERS": 100, "FFS.START_ITER": 60000, "FFS.QUEUE_SIZE": 300,
        "MODEL.ROI_HEADS.NUM_CLASSES": 10, "DATASETS.TRAIN": ("bdd_custom_train",)}),
    # FFS configs/BDD100k/FFS_regnet.yaml (8 classes: see the config's comment)
    "BDD/ffs_regnetx.yaml": dict(FFS_HEAD, **{
        "SOLVER.IMS_PER_BATCH": 4, "SOLVER.BASE_LR": 0.02, "SOLVER.WEIGHT_DECAY": 1e-4,
        "SOLVER.STEPS": (36000, 48000), "SOLVER.MAX_ITER": 52500, "SOLVER.WARMUP_ITERS": 5000,
        "FFS.START_ITER": 36000, "INPUT.MIN_SIZE_TRAIN": (800,), "MODEL.ROI_HEADS.NUM_CLASSES": 8,
        "DATASETS.TRAIN": ("bdd_tracking_2k_train",)}),
    # FFS configs/VIS/FFS_regnet.yaml (MAX_ITER: its comment's 60000, see the config)
    "VIS/ffs_regnetx.yaml": dict(FFS_HEAD, **{
        "SOLVER.IMS_PER_BATCH": 16, "SOLVER.WEIGHT_DECAY": 5e-5, "SOLVER.STEPS": (30000, 45000),
        "SOLVER.MAX_ITER": 60000, "SOLVER.WARMUP_ITERS": 1000, "FFS.START_ITER": 30000,
        "INPUT.MIN_SIZE_TRAIN": (800,), "MODEL.ROI_HEADS.NUM_CLASSES": 40}),
}
# the RegNetX-FPN detector every released RegNetX model shares
SHARED = {"MODEL.PIXEL_STD": [57.375, 57.120, 58.395], "MODEL.BACKBONE.FREEZE_AT": 2, "MODEL.REGNET.DEPTH": 23,
          "MODEL.REGNET.W_A": 38.65, "MODEL.REGNET.W_0": 96, "MODEL.REGNET.W_M": 2.43,
          "MODEL.REGNET.GROUP_WIDTH": 40, "MODEL.FPN.IN_FEATURES": ["s1", "s2", "s3", "s4"],
          "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE": 512, "MODEL.ROI_HEADS.SCORE_THRESH_TEST": 0.05,
          "MODEL.ROI_HEADS.NMS_THRESH_TEST": 0.5, "TEST.DETECTIONS_PER_IMAGE": 100, "SOLVER.MOMENTUM": 0.9}


def _get(cfg, dotted):
    node = cfg
    for part in dotted.split("."):
        node = node[part]
    return tuple(node) if isinstance(node, (list, tuple)) and not isinstance(node, str) else node


@pytest.mark.parametrize("config", sorted(RELEASED))
def test_paper_configs_hold_the_released_settings(config):
    cfg = build_cfg(config)
    for key, want in {**SHARED, **RELEASED[config]}.items():
        want = tuple(want) if isinstance(want, list) else want
        got = _get(cfg, key)
        assert got == pytest.approx(want) if isinstance(want, float) else got == want, (config, key, got, want)


def test_flow_init_and_permutation_seeds_as_released():
    x = torch.randn(6, 8)
    identity = FeatureFlow(8, hidden=16, blocks=2, permute=False)
    assert torch.equal(identity(x)[0], x)  # zeroed last layers: each coupling starts as the identity
    default = FeatureFlow(8, hidden=16, blocks=2, permute=False, init="default")
    assert not torch.allclose(default(x)[0], x) and default.inn.module_list[0].subnet1[2].weight.abs().sum() > 0
    per_block = FeatureFlow(8, hidden=16, blocks=2, permutation_seeds="per_block")
    stream = FeatureFlow(8, hidden=16, blocks=2)
    for k, block in enumerate((1, 3)):  # FrEIA's PermuteRandom(seed=k): numpy's permutation under seed k
        np.random.seed(k)
        assert per_block.inn.module_list[block].perm.tolist() == np.random.permutation(8).tolist()
    assert torch.equal(per_block.inn.module_list[1].perm, stream.inn.module_list[1].perm)
    assert not torch.equal(per_block.inn.module_list[3].perm, stream.inn.module_list[3].perm)
    with pytest.raises(ValueError, match="flow init"):
        FeatureFlow(8, init="zeros")


def test_energy_weights_start_uniform_as_released():
    torch.manual_seed(0)
    w = EnergyMargin(20, weight_init="uniform").class_weights.detach()
    assert w.shape == (20,) and bool(((w > 0) & (w < 1)).all()) and w.std() > 0.1
    assert torch.equal(EnergyMargin(20).class_weights.detach(), torch.ones(20))
    with pytest.raises(ValueError, match="ENERGY_WEIGHT_INIT"):
        EnergyMargin(20, weight_init="normal")
