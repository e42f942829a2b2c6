"""On a GPU: the ROI head's losses agree with the CPU's, every method trains on CUDA with AMP off and on, the
training seed reaches CUDA's random stream, the synthesis stream lives and resumes on the device, and the tools
run end to end (train_net with 1 process, and 2 where two GPUs exist; a CPU config's processes beside the
GPUs; apply_net; eval_ood). Skipped, with the reason, where CUDA is absent; ``tools/gpu_check.sh`` runs them."""
import argparse
import copy
import json
import os
import subprocess
import sys

import pytest
import torch

from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

from ffs_det.benchmark.detector import shapes_inputs
from ffs_det.engine import Trainer
from ffs_det.engine.setup import build_cfg, resolve_config_file, setup_cfg

from detector_utils import tiny_opts, write_tiny_coco
from repo_paths import REPO_ROOT

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (tools/gpu_check.sh)")]

CONFIGS = {"none": "Shapes/vanilla_mobilenet.yaml", "gaussian": "Shapes/vos_mobilenet.yaml",
           "flow": "Shapes/ffs_mobilenet.yaml"}
ENV = dict(os.environ, OMP_NUM_THREADS="1")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from ffs_det.data import register_coco

    root = tmp_path_factory.mktemp("gpu")
    sets = {}
    for name, n, seed in (("gpu_train", 16, 1), ("gpu_id", 8, 1), ("gpu_ood", 6, 2)):
        sets[name] = write_tiny_coco(str(root / name), num_images=n, seed=seed)
        register_coco(name, *sets[name])
    register = [arg for name, (j, r) in sets.items() for arg in ("--register-coco", name, j, r)]
    return root, register


@pytest.fixture
def strict_fp32():
    """No TF32 in convolutions and matmuls, so CPU and CUDA compute the same float32 operations."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def _proposals(targets, per_box=8, seed=0):
    """Deterministic proposals around the ground truth (shifted copies), the same on every device."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for t in targets:
        boxes = t.gt_boxes.tensor.repeat(per_box, 1)
        wh = (boxes[:, 2:] - boxes[:, :2]).repeat(1, 2)
        boxes = boxes + (torch.rand(boxes.shape, generator=g) - 0.5) * 0.6 * wh
        inst = Instances(t.image_size)
        inst.proposal_boxes = Boxes(boxes)
        inst.objectness_logits = torch.zeros(len(boxes))
        out.append(inst)
    return out


@pytest.mark.parametrize("synthesis", ["none", "gaussian", "flow"])
def test_roi_head_losses_match_between_cpu_and_cuda(synthesis, strict_fp32):
    # every proposal kept (no subsampling), the same fixed outliers on both devices: the same losses
    cfg = build_cfg(CONFIGS[synthesis], ["MODEL.MOBILENET.WEIGHTS", "", "MODEL.DEVICE", "cpu",
                                         "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "4096", "FFS.START_ITER", "0"],
                    cpu_fallback=False)
    torch.manual_seed(0)
    cpu_model = build_model(cfg).train()
    batch = shapes_inputs(cfg, 2, seed=0, train=True)
    targets = [x["instances"] for x in batch]
    proposals = _proposals(targets)
    head = cpu_model.roi_heads
    dim = head.synthesizer.dim
    outliers = torch.randn(5, dim, generator=torch.Generator().manual_seed(1)).abs()
    losses = {}
    for device in ("cpu", "cuda"):
        model = cpu_model if device == "cpu" else copy.deepcopy(cpu_model).to(device)
        model.roi_heads.synthesizer.sample = lambda generator=None, d=device: outliers.to(d)
        with torch.no_grad():
            images = model.preprocess_image([dict(x, instances=x["instances"].to(device)) for x in batch])
            features = model.backbone(images.tensor)
        with EventStorage(0):
            _, got = model.roi_heads(images, features, [p.to(device) for p in proposals],
                                     [t.to(device) for t in targets])
        losses[device] = {k: float(v.detach()) for k, v in got.items()}
    assert losses["cpu"].keys() == losses["cuda"].keys()
    assert ("loss_energy_margin" in losses["cpu"]) == (synthesis != "none")
    for k, v in losses["cpu"].items():
        assert losses["cuda"][k] == pytest.approx(v, rel=1e-3, abs=1e-5), (k, losses)


def _train(out, synthesis, dataset, amp, max_iter=50, seed=0, device="cuda"):
    opts = tiny_opts(out, synthesis, dataset=dataset, max_iter=max_iter, start_iter=10)
    args = argparse.Namespace(config_file=resolve_config_file(CONFIGS[synthesis]), eval_only=False, resume=False,
                              opts=opts + ["MODEL.MOBILENET.WEIGHTS", "", "MODEL.DEVICE", device, "SEED", str(seed),
                                           "SOLVER.AMP.ENABLED", str(amp), "FFS.LOG_PERIOD", "1"])
    cfg = setup_cfg(args)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    return trainer, cfg


@pytest.mark.parametrize("amp", [False, True])
@pytest.mark.parametrize("synthesis", ["none", "gaussian", "flow"])
def test_fifty_iterations_on_cuda(tiny, tmp_path, synthesis, amp):
    trainer, cfg = _train(tmp_path, synthesis, "gpu_train", amp)
    assert next(trainer.model.parameters()).is_cuda
    lines = [json.loads(x) for x in open(tmp_path / "metrics.json")]
    assert lines and all(torch.isfinite(torch.tensor(r["total_loss"])) for r in lines if "total_loss" in r)
    margin = [r["loss_energy_margin"] for r in lines if "loss_energy_margin" in r and r["iteration"] >= 10]
    if synthesis == "none":
        assert not margin
    else:  # outliers were synthesised on the device and the margin trained
        assert margin and max(margin) > 0
        synth = trainer.model.roi_heads.synthesizer
        assert synth.sample().is_cuda and synth.sample().dtype == torch.float32
    if synthesis == "flow":
        nll = [r["ffs/flow_nll_per_box"] for r in lines if "ffs/flow_nll_per_box" in r]
        assert nll and all(torch.isfinite(torch.tensor(nll)))
    assert (tmp_path / "model_final.pth").exists()


def test_the_training_seed_reaches_the_cuda_stream(tmp_path):
    """SEED seeds CUDA's generator (detectron2's proposal sampling draws there); building the FFS head must not
    reseed it with FFS.FLOW.SEED (every SEED would then share one stream)."""
    seeds = {}
    for seed in (11, 12):
        args = argparse.Namespace(config_file=resolve_config_file(CONFIGS["flow"]), eval_only=False, resume=False,
                                  opts=["MODEL.MOBILENET.WEIGHTS", "", "MODEL.DEVICE", "cuda", "SEED", str(seed),
                                        "OUTPUT_DIR", str(tmp_path / str(seed))])
        cfg = setup_cfg(args)
        build_model(cfg)
        seeds[seed] = torch.cuda.initial_seed()
        seeds[f"draw{seed}"] = torch.randperm(1000, device="cuda")[:10].tolist()
    assert seeds[11] == 11 and seeds[12] == 12
    assert seeds["draw11"] != seeds["draw12"]


@pytest.mark.parametrize("synthesis", ["gaussian", "flow"])
def test_the_synthesis_stream_is_on_the_device_and_resumes(synthesis):
    cfg = build_cfg(CONFIGS[synthesis], ["MODEL.MOBILENET.WEIGHTS", "", "MODEL.DEVICE", "cuda",
                                         "FFS.QUEUE_SIZE", "4"], cpu_fallback=False)
    model = build_model(cfg)
    synth = model.roi_heads.synthesizer
    if synthesis == "gaussian":
        synth.observe(torch.randn(4 * synth.num_classes, synth.dim, device="cuda"),
                      torch.arange(synth.num_classes, device="cuda").repeat(4))
    synth.sample()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    expected = synth.sample()
    other = build_model(cfg)
    other.load_state_dict(state)
    torch.testing.assert_close(other.roi_heads.synthesizer.sample(), expected)


def _run(cmd, timeout=420):
    proc = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=timeout, cwd=REPO_ROOT)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def _tool(name):
    return [sys.executable, os.path.join(REPO_ROOT, "tools", name)]


def test_train_apply_eval_on_cuda(tiny, tmp_path):
    root, register = tiny
    opts = tiny_opts(tmp_path / "run", "flow", dataset="gpu_train", max_iter=30, start_iter=10)
    gpus = [1] + ([2] if torch.cuda.device_count() >= 2 else [])
    for n in gpus:
        out = tmp_path / f"run{n}"
        _run(_tool("train_net.py") + ["--num-gpus", str(n), "--config-file", CONFIGS["flow"], *register, *opts,
                                      "MODEL.MOBILENET.WEIGHTS", "", "MODEL.DEVICE", "cuda", "OUTPUT_DIR", str(out)])
        assert (out / "model_final.pth").exists()
    weights = str(tmp_path / "run1" / "model_final.pth")
    inference = tmp_path / "inference"
    _run(_tool("apply_net.py") + ["--config-file", CONFIGS["flow"], "--test-dataset", "gpu_id", "--test-dataset",
                                  "gpu_ood", "--flow-loglik", "--save-features", "--output-dir", str(inference),
                                  *register, "MODEL.WEIGHTS", weights, "MODEL.DEVICE", "cuda",
                                  "INPUT.MIN_SIZE_TEST", "128", "FFS.FLOW.HIDDEN", "64"])
    report = tmp_path / "report"
    _run(_tool("eval_ood.py") + ["--id", str(inference / "gpu_id" / "records.npz"), "--ood",
                                 str(inference / "gpu_ood" / "records.npz"), "--thres", "0.0",
                                 "--output-dir", str(report)])
    metrics = json.loads((report / "metrics.json").read_text())
    assert all(0.0 <= m["auroc"] <= 1.0 for m in metrics.values())


def test_a_cpu_config_trains_in_two_processes_on_a_gpu_machine(tiny, tmp_path):
    """The launcher would pick NCCL for CPU processes; train_net hides the GPUs from them (gloo)."""
    root, register = tiny
    out = tmp_path / "cpu2"
    _run(_tool("train_net.py") + ["--num-gpus", "2", "--config-file", CONFIGS["flow"], *register,
                                  *tiny_opts(out, "flow", dataset="gpu_train", max_iter=4, start_iter=2),
                                  "MODEL.MOBILENET.WEIGHTS", "", "MODEL.DEVICE", "cpu"])
    assert (out / "model_final.pth").exists()
