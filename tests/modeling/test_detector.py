"""FFSROIHeads in its three modes, on CPU, on small generated images."""
import glob
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from detectron2.data import build_detection_train_loader
from detectron2.data.detection_utils import read_image
from detectron2.engine import DefaultPredictor
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

from ffs_det.density.synthesis import FlowTailSynthesizer, GaussianTailSynthesizer, NoSynthesis
from ffs_det.engine import Trainer
from ffs_det.engine.setup import CONFIGS_DIR, ConfigError, build_cfg

from detector_utils import register_tiny_coco, tiny_opts
from repo_paths import REPO_ROOT as REPO


@pytest.fixture(scope="module")
def tiny_set(tmp_path_factory):
    return register_tiny_coco(tmp_path_factory.mktemp("tiny"), "tiny_train", num_images=8)


def _cfg(tmp_path, synthesis, **kw):
    return build_cfg(f"Shapes/{'vanilla' if synthesis == 'none' else 'ffs'}_mobilenet.yaml",
                     tiny_opts(tmp_path, synthesis, **kw))


@pytest.mark.parametrize("synthesis", ["none", "gaussian", "flow"])
def test_each_mode_trains_with_expected_losses(tiny_set, tmp_path, synthesis):
    torch.manual_seed(0)
    np.random.seed(0)  # the training sampler's seed: the same batches whatever ran before
    cfg = _cfg(tmp_path, synthesis, start_iter=3)
    model = build_model(cfg)
    expected_synth = {"none": NoSynthesis, "gaussian": GaussianTailSynthesizer, "flow": FlowTailSynthesizer}
    assert isinstance(model.roi_heads.synthesizer, expected_synth[synthesis])
    # the trainer's optimizer: the flow in its own group (FFS.FLOW.BASE_LR) with its gradient clipped (a plain
    # SGD at the detector's rate lets the flow's NLL diverge within 3 steps on some batch orders)
    opt = Trainer.build_optimizer(cfg, model)
    data = iter(build_detection_train_loader(cfg))
    history, ready = [], []
    with EventStorage(0) as storage:
        for it in range(6):
            storage.iter = it
            losses = model(next(data))
            assert all(torch.isfinite(v) for v in losses.values()), losses
            opt.zero_grad()
            sum(losses.values()).backward()
            opt.step()
            history.append({k: float(v.detach()) for k, v in losses.items()})
            ready.append(model.roi_heads.synthesizer.ready)  # after this step's observe, before its sample
    keys = {"loss_cls", "loss_box_reg", "loss_rpn_cls", "loss_rpn_loc"}
    if synthesis != "none":
        keys.add("loss_energy_margin")
    if synthesis == "flow":
        keys.add("loss_flow_nll")
    assert set(history[0]) == keys
    if synthesis != "none":
        assert all(h["loss_energy_margin"] == 0.0 for h in history[:3])
        # from START_ITER on, a margin loss exactly when outliers exist (VOS: once every class queue is full)
        assert [h["loss_energy_margin"] > 0.0 for h in history[3:]] == ready[3:]
    if synthesis == "flow":
        assert all(ready)
    if synthesis == "gaussian":
        # the queues received the foreground features (whether all fill in 6 iterations depends on sampling)
        assert int(model.roi_heads.synthesizer.count.sum()) > 0


def test_flow_width_follows_the_box_head(tmp_path):
    cfg = build_cfg("VOC/ffs_regnetx.yaml", ["MODEL.WEIGHTS", "", "FFS.FLOW.HIDDEN", "16"])
    model = build_model(cfg)
    assert model.roi_heads.synthesizer.flow.dim == 1024 == cfg.MODEL.ROI_BOX_HEAD.FC_DIM
    cfg = build_cfg("Shapes/ffs_mobilenet.yaml", ["MODEL.ROI_BOX_HEAD.FC_DIM", "96"])
    assert build_model(cfg).roi_heads.synthesizer.flow.dim == 96


@pytest.mark.parametrize("opts", [[], ["FFS.FLOW.INIT", "default", "FFS.FLOW.PERMUTATION_SEEDS", "per_block",
                                       "FFS.FLOW.SEED", "4", "FFS.FLOW.COUPLING", "realnvp"]])
def test_the_heads_flow_is_its_flow_config_seeded_with_the_flow_seed(opts):
    """The head builds its flow from FlowConfig, first in the generator seeded with FFS.FLOW.SEED (the energy
    margin's initial weights come after it): the same flow as FlowConfig's own seeded build."""
    from ffs_det.modeling.roi_heads import flow_config

    cfg = build_cfg("Shapes/ffs_mobilenet.yaml", ["MODEL.MOBILENET.WEIGHTS", "", "FFS.FLOW.HIDDEN", "16"] + opts)
    flow = build_model(cfg).roi_heads.synthesizer.flow
    expected = flow_config(cfg.FFS.FLOW).build(flow.dim)
    assert flow.config == expected.config and flow.config["coupling"] == cfg.FFS.FLOW.COUPLING
    got, want = flow.state_dict(), expected.state_dict()
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in got)


def test_zero_foreground_batch_gives_zero_nll_with_gradients(tmp_path):
    cfg = _cfg(tmp_path, "flow", start_iter=0)
    model = build_model(cfg)
    empty = Instances((128, 128), gt_boxes=Boxes(torch.zeros(0, 4)), gt_classes=torch.zeros(0, dtype=torch.long))
    batch = [{"image": torch.randint(0, 255, (3, 128, 128), dtype=torch.uint8), "instances": empty}] * 2
    with EventStorage(5):
        losses = model(batch)
    assert float(losses["loss_flow_nll"]) == 0.0
    sum(losses.values()).backward()
    flow_params = [p for p in model.roi_heads.synthesizer.flow.parameters() if p.requires_grad]
    assert flow_params and all(p.grad is not None for p in flow_params)
    # outliers were still synthesised and scored: the energy margin trained on them alone
    assert float(losses["loss_energy_margin"]) > 0


def test_checkpoint_loads_into_default_predictor(tiny_set, tmp_path):
    cfg = _cfg(tmp_path, "flow", max_iter=2, start_iter=1)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    weights = os.path.join(cfg.OUTPUT_DIR, "model_final.pth")
    assert os.path.isfile(weights)
    cfg2 = cfg.clone()
    cfg2.defrost()
    cfg2.MODEL.WEIGHTS = weights
    cfg2.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0
    predictor = DefaultPredictor(cfg2)
    trained = trainer.model.roi_heads.synthesizer.flow.state_dict()
    loaded = predictor.model.roi_heads.synthesizer.flow.state_dict()
    assert all(torch.equal(trained[k], loaded[k]) for k in trained)
    image = read_image(sorted(glob.glob(os.path.join(tiny_set[1], "*.png")))[0], format="BGR")
    inst = predictor(image)["instances"]
    assert len(inst) > 0
    assert inst.logits.shape == (len(inst), cfg.MODEL.ROI_HEADS.NUM_CLASSES + 1)
    torch.testing.assert_close(inst.energy, torch.logsumexp(inst.logits[:, :-1], dim=1))
    # detection score = softmax probability of the predicted class, from the same logits
    probs = torch.softmax(inst.logits, dim=1)
    torch.testing.assert_close(inst.scores, probs[torch.arange(len(inst)), inst.pred_classes])
    # FFS detections carry the flow's log-density of their box feature; in the output feature space the box
    # features are what the flow models, so it is the synthesizer's log_prob of the features themselves
    assert not inst.has("flow_loglik")  # opt-in: it costs a flow pass per detection
    cfg2.FFS.OUTPUT_FLOW_LOGLIK = True
    inst = DefaultPredictor(cfg2)(image)["instances"]
    assert inst.flow_loglik.shape == (len(inst),) and torch.isfinite(inst.flow_loglik).all()
    cfg3 = cfg2.clone()
    cfg3.FFS.FEATURE_SPACE, cfg3.FFS.OUTPUT_BOX_FEATURES = "output", True
    predictor3 = DefaultPredictor(cfg3)
    inst3 = predictor3(image)["instances"]
    with torch.no_grad():
        expected = predictor3.model.roi_heads.synthesizer.log_prob(inst3.features)
    assert len(inst3) > 0 and inst3.flow_loglik.abs().max() > 0
    torch.testing.assert_close(inst3.flow_loglik, expected)
    # the flow's own log_prob with the standardisation's Jacobian (nats of the unstandardised features)
    synth = predictor3.model.roi_heads.synthesizer
    u = (inst3.features - synth.running_mean) / synth._scale()
    with torch.no_grad():
        torch.testing.assert_close(inst3.flow_loglik, synth.flow.log_prob(u) - synth._scale().log().sum())


def test_two_process_cpu_launch_keeps_ranks_in_sync(tiny_set, tmp_path):
    json_path, image_root = tiny_set
    script = os.path.join(REPO, "tests", "scripts", "ddp_train.py")
    proc = subprocess.run([sys.executable, script, str(tmp_path), json_path, image_root],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    states = [torch.load(tmp_path / f"rank{r}.pth", weights_only=True) for r in range(2)]
    assert states[0]["iter"] == states[1]["iter"] == 4
    for key, value in states[0]["model"].items():
        if key == "roi_heads.synthesizer._extra_state":  # each rank draws its outliers from its own stream
            assert not torch.equal(value, states[1]["model"][key])
            continue
        assert torch.equal(value, states[1]["model"][key]), key
    # synthesis was active: the energy-margin weights moved away from their initialisation
    assert not torch.equal(states[0]["model"]["roi_heads.energy_margin.logistic.weight"],
                           states[0]["init_logistic_weight"])


def test_config_files_resolve_and_bad_keys_are_named():
    for path in glob.glob(os.path.join(CONFIGS_DIR, "*", "*.yaml")):
        rel = os.path.relpath(path, CONFIGS_DIR)
        if not rel.startswith("Inference"):
            assert build_cfg(rel).MODEL.ROI_HEADS.NAME == "FFSROIHeads"
    cfg = build_cfg("VOC/ffs_regnetx.yaml")
    assert (cfg.SOLVER.IMS_PER_BATCH, cfg.SOLVER.BASE_LR, cfg.FFS.START_ITER, cfg.FFS.SAMPLE_FROM) == (16, 0.02, 12000, 200)
    with pytest.raises(ConfigError, match="FFS.NOPE"):
        build_cfg("VOC/ffs_regnetx.yaml", ["FFS.NOPE", "1"])
    with pytest.raises(ConfigError, match="nowhere.yaml"):
        build_cfg("nowhere.yaml")
    with pytest.raises(ConfigError, match="SYNTHESIS"):
        build_cfg("VOC/ffs_regnetx.yaml", ["FFS.SYNTHESIS", "gauss"])
