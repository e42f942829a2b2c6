"""Training behaviour of FFSROIHeads on a tiny set: synthetic outliers in the support of the box features,
a flow NLL that falls, the ffs/* diagnostics in metrics.json, seeds that reproduce, a detector random
stream that synthesis leaves alone, VOS without a margin until its queues are full, the flow's own
optimizer group."""
import argparse
import json
import os

import pytest
import torch

from detectron2.modeling import build_model
from detectron2.data import build_detection_train_loader
from detectron2.utils.events import EventStorage

from ffs_det.engine import Trainer
from ffs_det.engine.setup import build_cfg, setup_cfg

from detector_utils import register_tiny_coco, tiny_opts
from repo_paths import REPO_ROOT

TRAINING_ONLY = ("roi_heads.synthesizer.", "roi_heads.energy_margin.")


@pytest.fixture(scope="module")
def tiny_set(tmp_path_factory):
    return register_tiny_coco(tmp_path_factory.mktemp("tiny_ffs"), "tiny_ffs_train", num_images=8)


def _config(synthesis):
    return f"Shapes/{ {'none': 'vanilla', 'gaussian': 'vos', 'flow': 'ffs'}[synthesis] }_mobilenet.yaml"


def _train(out, synthesis, extra=(), max_iter=4, start_iter=2, seed=3):
    """Train as tools/train_net.py and the demo do: setup_cfg (default_setup seeds) then the Trainer."""
    opts = tiny_opts(out, synthesis, dataset="tiny_ffs_train", max_iter=max_iter, start_iter=start_iter)
    args = argparse.Namespace(config_file=_config(synthesis), eval_only=False, resume=False,
                              opts=opts + ["SEED", str(seed), "MODEL.MOBILENET.WEIGHTS", ""] + list(extra))
    from ffs_det.engine.setup import resolve_config_file
    args.config_file = resolve_config_file(args.config_file)
    trainer = Trainer(setup_cfg(args))
    trainer.resume_or_load(resume=False)
    trainer.train()
    return trainer


def _detector_state(trainer):
    return {k: v for k, v in trainer.model.state_dict().items() if not k.startswith(TRAINING_ONLY)}


def test_default_ffs_outliers_lie_in_the_support_and_the_flow_nll_falls(tiny_set, tmp_path):
    trainer = _train(tmp_path, "flow", ["FFS.LOG_PERIOD", "2", "FFS.SAMPLE_FROM", "200"], max_iter=16, start_iter=8)
    lines = [json.loads(x) for x in open(os.path.join(tmp_path, "metrics.json"))]
    nll = [r["ffs/flow_nll_per_box"] for r in lines if "ffs/flow_nll_per_box" in r]
    assert len(nll) == 8 and nll[-1] < nll[0] - 20, nll
    synthesis_rows = [r for r in lines if r["iteration"] >= 8]
    for key in ("outlier_negative_frac", "outlier_active_frac", "inlier_active_frac", "outlier_norm",
                "outlier_loglik_percentile", "energy_inlier", "energy_outlier", "margin_accuracy",
                "margin_outlier_accuracy", "num_outliers"):
        assert all(f"ffs/{key}" in r for r in synthesis_rows), key
    assert not any("ffs/outlier_norm" in r for r in lines if r["iteration"] < 8)  # nothing synthesised before
    # the default config synthesises outliers that a ReLU box head could output: no negative entries, sparse
    assert all(r["ffs/outlier_negative_frac"] == 0.0 for r in synthesis_rows)
    outliers = trainer.model.roi_heads.synthesize_outliers(50)
    assert outliers.shape == (50, trainer.cfg.MODEL.ROI_BOX_HEAD.FC_DIM) and bool((outliers >= 0).all())
    assert 0.0 < float((outliers > 0).float().mean()) < 0.9
    assert all(0.0 <= r["ffs/outlier_loglik_percentile"] <= 100.0 for r in synthesis_rows)


@pytest.mark.parametrize("synthesis", ["none", "gaussian", "flow"])
def test_same_seed_same_model_other_seed_other_model(tiny_set, tmp_path, synthesis):
    a = _detector_state(_train(tmp_path / "a", synthesis, seed=5))
    b = _detector_state(_train(tmp_path / "b", synthesis, seed=5))
    assert all(torch.equal(a[k], b[k]) for k in a)
    c = _detector_state(_train(tmp_path / "c", synthesis, seed=6))
    assert not all(torch.equal(a[k], c[k]) for k in a)


@pytest.mark.parametrize("synthesis", ["gaussian", "flow"])
def test_synthesis_leaves_the_detectors_random_stream_alone(tiny_set, tmp_path, synthesis):
    """With the margin's weight at 0, VOS/FFS train exactly the plain detector, synthesis phase included: the
    flow/margin initialisation and the outlier draws take nothing from the detector's random stream."""
    plain = _detector_state(_train(tmp_path / "plain", "none", max_iter=5, start_iter=2))
    trainer = _train(tmp_path / synthesis, synthesis, ["FFS.ENERGY_LOSS_WEIGHT", "0.0", "FFS.QUEUE_SIZE", "2"],
                     max_iter=5, start_iter=2)
    other = _detector_state(trainer)
    assert all(torch.equal(plain[k], other[k]) for k in plain)
    if synthesis == "flow":  # synthesis did run
        lines = [json.loads(x) for x in open(os.path.join(tmp_path / synthesis, "metrics.json"))]
        assert any("loss_energy_margin" in r for r in lines)


def _forbid_cuda_seeding(monkeypatch):
    """Record every CUDA seeding (``torch.manual_seed`` seeds every CUDA generator through these)."""
    calls = []
    monkeypatch.setattr(torch.cuda, "manual_seed_all", lambda seed: calls.append(("manual_seed_all", seed)))
    monkeypatch.setattr(torch.cuda, "manual_seed", lambda seed: calls.append(("manual_seed", seed)))
    return calls


@pytest.mark.parametrize("synthesis", ["gaussian", "flow", "none"])
def test_building_the_model_seeds_no_cuda_generator(synthesis, monkeypatch):
    """On a GPU a CUDA seeding here would give every SEED (and every rank) detectron2's proposal sampling
    stream of FFS.FLOW.SEED; the flow and margin initialisation touch the CPU generator only, and restore it."""
    calls = _forbid_cuda_seeding(monkeypatch)
    torch.manual_seed(0)  # the check itself: torch.manual_seed goes through the recorder
    assert calls == [("manual_seed_all", 0)]
    calls.clear()
    cfg = build_cfg(_config(synthesis), ["MODEL.MOBILENET.WEIGHTS", ""])
    build_model(cfg)
    from ffs_det.density.flow_training import FlowConfig
    FlowConfig(seed=5, hidden=8, blocks=1).build(4)
    assert calls == []


def test_vos_has_no_margin_until_every_queue_is_full(tiny_set, tmp_path):
    cfg = build_cfg(_config("gaussian"), tiny_opts(tmp_path, "gaussian", dataset="tiny_ffs_train", start_iter=0)
                    + ["FFS.QUEUE_SIZE", "100000", "MODEL.MOBILENET.WEIGHTS", ""])
    torch.manual_seed(0)
    model = build_model(cfg)
    data = iter(build_detection_train_loader(cfg))
    synth = model.roi_heads.synthesizer
    with EventStorage(0) as storage:
        losses = model(next(data))
        assert not synth.ready and float(losses["loss_energy_margin"]) == 0.0
        assert losses["loss_energy_margin"].grad_fn is None  # nothing trained on inliers alone
        # full queues: now outliers are synthesised, one per class, and the margin trains
        synth.count.fill_(synth.queue_size)
        synth.queue.normal_()
        assert synth.sample().shape == (cfg.MODEL.ROI_HEADS.NUM_CLASSES * cfg.FFS.SELECT, synth.dim)
        storage.iter = 1
        losses = model(next(data))
        assert float(losses["loss_energy_margin"]) > 0.0
        losses["loss_energy_margin"].backward()
        assert model.roi_heads.energy_margin.logistic.weight.grad is not None


def test_flow_trains_in_its_own_group_with_a_clipped_gradient(tmp_path):
    cfg = build_cfg(_config("flow"), tiny_opts(tmp_path, "flow") + ["FFS.FLOW.BASE_LR", "0.003",
                                                                     "FFS.FLOW.CLIP_GRAD_NORM", "2.0",
                                                                     "MODEL.MOBILENET.WEIGHTS", ""])
    model = build_model(cfg)
    opt = Trainer.build_optimizer(cfg, model)
    flow_ids = {id(p) for p in model.roi_heads.synthesizer.flow.parameters() if p.requires_grad}
    groups = [g for g in opt.param_groups if any(id(p) in flow_ids for p in g["params"])]
    assert len(groups) == 1 and {id(p) for p in groups[0]["params"]} == flow_ids
    assert groups[0]["lr"] == pytest.approx(0.003)
    assert all(g["lr"] == pytest.approx(cfg.SOLVER.BASE_LR) for g in opt.param_groups if g is not groups[0])
    flow_params = [p for p in model.roi_heads.synthesizer.flow.parameters() if p.requires_grad]
    for p in flow_params:
        p.grad = torch.full_like(p, 100.0)
    opt.step()
    total = torch.norm(torch.stack([p.grad.norm() for p in flow_params]))
    assert float(total) == pytest.approx(2.0, rel=1e-4)
    # without FFS.FLOW.BASE_LR the flow is in the detector's groups (the papers' set-up)
    cfg2 = build_cfg(_config("flow"), tiny_opts(tmp_path, "flow") + ["FFS.FLOW.BASE_LR", "0.0",
                                                                      "MODEL.MOBILENET.WEIGHTS", ""])
    model2 = build_model(cfg2)
    opt2 = Trainer.build_optimizer(cfg2, model2)
    assert all(g["lr"] == pytest.approx(cfg2.SOLVER.BASE_LR) for g in opt2.param_groups)


@pytest.mark.parametrize("imports", ["from ffs_det.config import add_ffs_config",
                                     "import ffs_det",
                                     "import ffs_det.density"])
def test_importing_the_package_or_its_config_is_enough_to_build_the_model(imports):
    """detectron2 projects register their components on import of what a user already imports."""
    import subprocess
    import sys

    code = ("from detectron2.config import get_cfg\nfrom detectron2.modeling import ROI_HEADS_REGISTRY, build_model\n"
            f"{imports}\n"
            "assert 'FFSROIHeads' in ROI_HEADS_REGISTRY\n"
            "if 'add_ffs_config' in dir():\n"
            "    cfg = get_cfg(); add_ffs_config(cfg)\n"
            "    cfg.merge_from_file('configs/Shapes/ffs_mobilenet.yaml', allow_unsafe=False)\n"
            "    cfg.MODEL.MOBILENET.WEIGHTS = ''\n"
            "    print(type(build_model(cfg).roi_heads).__name__)\n"
            "else:\n"
            "    print('FFSROIHeads')\n")
    repo = REPO_ROOT
    proc = subprocess.run([sys.executable, "-c", code], cwd=repo, capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == "FFSROIHeads"
