"""Processes of a CPU config use gloo on a machine with GPUs: detectron2's launcher picks NCCL (and one GPU per
process) whenever CUDA is available, so train_net hides the GPUs from the CPU processes it spawns."""
import os
import subprocess
import sys

import pytest
import torch

from ffs_det.engine.setup import ConfigError, build_cfg, launch_environment

from detector_utils import register_tiny_coco, tiny_opts
from repo_paths import REPO_ROOT

# a stand-in for a machine with two GPUs, in the spawned processes too (it obeys CUDA_VISIBLE_DEVICES as CUDA does)
FAKE_CUDA = """
import os, torch
torch.cuda.is_available = lambda: os.environ.get("CUDA_VISIBLE_DEVICES") != ""
torch.cuda.device_count = lambda: 0 if os.environ.get("CUDA_VISIBLE_DEVICES") == "" else 2
"""


def test_cpu_processes_hide_the_gpus_and_cuda_ones_need_enough_of_them(monkeypatch):
    cpu = build_cfg("Shapes/ffs_mobilenet.yaml")
    assert cpu.MODEL.DEVICE == "cpu"
    assert launch_environment(cpu, 2) == {"CUDA_VISIBLE_DEVICES": ""}
    assert launch_environment(cpu, 1) == {}  # one process: no process group
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    cuda = build_cfg("Shapes/ffs_mobilenet.yaml", ["MODEL.DEVICE", "cuda"])
    assert launch_environment(cuda, 2) == {}
    with pytest.raises(ConfigError, match=r"--num-gpus 4 with MODEL.DEVICE cuda, but this machine has 2 GPU\(s\): "
                                          r"use --num-gpus 2, or MODEL.DEVICE cpu"):
        launch_environment(cuda, 4)


def test_two_cpu_processes_train_on_a_machine_with_gpus(tmp_path):
    json_path, image_root = register_tiny_coco(tmp_path / "data", "tiny_launch", num_images=4)
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(FAKE_CUDA)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]))
    env.pop("CUDA_VISIBLE_DEVICES", None)
    check = subprocess.run([sys.executable, "-c", "import torch; print(torch.cuda.is_available())"], env=env,
                           capture_output=True, text=True)
    assert check.stdout.strip() == "True"  # the stand-in is active
    out = tmp_path / "run"
    cmd = [sys.executable, os.path.join(REPO_ROOT, "tools", "train_net.py"), "--num-gpus", "2",
           "--config-file", "Shapes/ffs_mobilenet.yaml", "--register-coco", "tiny_launch", json_path, image_root,
           *tiny_opts(out, "flow", dataset="tiny_launch", max_iter=3, start_iter=1), "MODEL.MOBILENET.WEIGHTS", ""]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "model_final.pth").exists()
