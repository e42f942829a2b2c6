"""Kill and resume: a training run killed with SIGKILL after a checkpoint resumes from it with --resume
(iteration, optimizer, scheduler, flow and VOS queues restored) and ends where an uninterrupted run ends,
with a metrics.json that logs every iteration once."""
import fcntl
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch


from detectron2.modeling import build_model

from ffs_det.engine import Trainer
from ffs_det.engine.checkpoint import STREAM_KEY, CheckpointMismatchError, SafeCheckpointer
from ffs_det.engine.setup import build_cfg
from ffs_det.engine.trainer import trim_metrics

from detector_utils import register_tiny_coco
from repo_paths import REPO_ROOT as REPO

MAX_ITER = 20


def _opts(out, synthesis, dataset, max_iter=MAX_ITER, period=4):
    return ["DATASETS.TRAIN", f"('{dataset}',)", "DATASETS.TEST", "()", "FFS.SYNTHESIS", synthesis,
            "FFS.START_ITER", "2", "FFS.QUEUE_SIZE", "3", "FFS.SAMPLE_FROM", "50", "FFS.FLOW.HIDDEN", "32",
            "SOLVER.IMS_PER_BATCH", "2", "SOLVER.MAX_ITER", str(max_iter), "SOLVER.STEPS", "(10,)",
            "SOLVER.WARMUP_ITERS", "0", "SOLVER.CHECKPOINT_PERIOD", str(period), "SOLVER.BASE_LR", "0.005",
            "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "32", "MODEL.RPN.BATCH_SIZE_PER_IMAGE", "64",
            "INPUT.MIN_SIZE_TRAIN", "(128,)", "INPUT.MIN_SIZE_TEST", "128", "DATALOADER.NUM_WORKERS", "0",
            "MODEL.MOBILENET.WEIGHTS", "", "FFS.LOG_PERIOD", "1", "OUTPUT_DIR", str(out)]


@pytest.fixture(scope="module")
def tiny_set(tmp_path_factory):
    return register_tiny_coco(tmp_path_factory.mktemp("tiny_resume"), "tiny_resume", num_images=6)


def _metrics(out):
    with open(os.path.join(out, "metrics.json")) as f:
        return [json.loads(line) for line in f if line.strip()]


ENV = dict(os.environ, OMP_NUM_THREADS="1")


def _train_net(tiny_set, config, *launcher_args):
    json_path, image_root = tiny_set
    return [sys.executable, os.path.join(REPO, "tools", "train_net.py"), *launcher_args, "--config-file", config,
            "--register-coco", "tiny_resume", json_path, image_root]


def _logged_past(out, iteration):
    return os.path.exists(out / "metrics.json") and any(m["iteration"] > iteration for m in _metrics(out))


def _start_until(cmd, ready):
    """Start a training in the background; return it once ``ready()`` holds, asserting it still runs."""
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None and not ready():
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be signalled: " + proc.stderr.read()[-2000:]
    return proc


def _interrupted_checkpoint(out, stderr):
    """The iteration SIGTERM saved, after checking the exit status and the one message line."""
    k = int((out / "last_checkpoint").read_text()[len("model_"):-len(".pth")])
    assert [ln for ln in stderr.splitlines() if ln.startswith("interrupted:")] == [
        f"interrupted: stopped by SIGTERM after iteration {k}: saved {out / f'model_{k:07d}.pth'}; continue with "
        "the same command and --resume"]  # once, from the process that saved it
    assert torch.load(out / f"model_{k:07d}.pth", map_location="cpu", weights_only=True)["iteration"] == k
    return k


def _assert_restored(cfg, checkpoint_file):
    """A Trainer resumed from ``cfg.OUTPUT_DIR`` holds exactly the state saved in ``checkpoint_file``."""
    saved = torch.load(checkpoint_file, map_location="cpu", weights_only=True)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=True)
    assert trainer.start_iter == saved["iteration"] + 1
    model = trainer.model.state_dict()
    assert set(model) == set(saved["model"])
    for k, v in saved["model"].items():
        assert torch.equal(model[k], v), k
    state = saved["trainer"]  # iteration, optimizer (under _trainer) and the LR scheduler (under hooks)
    assert state["iteration"] == saved["iteration"]
    opt, saved_opt = trainer.optimizer.state_dict(), state["_trainer"]["optimizer"]
    assert opt["param_groups"] == saved_opt["param_groups"]
    assert opt["state"].keys() == saved_opt["state"].keys() and opt["state"]
    for i, st in saved_opt["state"].items():
        assert torch.equal(opt["state"][i]["momentum_buffer"], st["momentum_buffer"])
    assert trainer.scheduler.state_dict() == state["hooks"]["LRScheduler"]
    assert trainer.scheduler.last_epoch == saved["iteration"] + 1
    return trainer, saved


def test_sigkill_then_resume_continues_from_the_checkpoint(tiny_set, tmp_path):
    out = tmp_path / "run"
    cmd = _train_net(tiny_set, "Shapes/vos_mobilenet.yaml")
    last = out / "last_checkpoint"
    # kill once a checkpoint exists and some iterations after it were logged (they are trained again)
    proc = _start_until(cmd + _opts(out, "gaussian", "tiny_resume"), lambda: last.exists() and _logged_past(
        out, int(last.read_text()[len("model_"):-len(".pth")])))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    ckpt = out / last.read_text()
    assert ckpt.name != "model_final.pth" and not (out / "model_final.pth").exists()
    assert not [f for f in os.listdir(out) if f.endswith(".tmp")]  # checkpoints are written atomically

    cfg = build_cfg("Shapes/vos_mobilenet.yaml", _opts(out, "gaussian", "tiny_resume"))
    trainer, saved = _assert_restored(cfg, str(ckpt))
    k = saved["iteration"]
    queue = trainer.model.roi_heads.synthesizer.queue
    assert torch.equal(queue, saved["model"]["roi_heads.synthesizer.queue"]) and queue.abs().sum() > 0
    assert int(trainer.model.roi_heads.synthesizer.count.sum()) > 0
    del trainer

    proc = subprocess.run(cmd + ["--resume"] + _opts(out, "gaussian", "tiny_resume"), env=ENV,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"Starting training from iteration {k + 1}" in proc.stdout + proc.stderr
    final = torch.load(out / "model_final.pth", map_location="cpu", weights_only=True)
    assert final["iteration"] == MAX_ITER - 1  # as an uninterrupted run
    metrics = _metrics(out)
    assert [m["iteration"] for m in metrics] == list(range(MAX_ITER))  # every iteration once, in order
    assert all(torch.isfinite(torch.tensor(m["total_loss"])) for m in metrics)
    # the restored scheduler keeps the step at iteration 10
    assert all(m["lr"] == pytest.approx(0.005 if m["iteration"] < 10 else 0.0005) for m in metrics)


def test_resume_restores_the_flow_and_optimizer(tiny_set, tmp_path):
    cfg = build_cfg("Shapes/ffs_mobilenet.yaml", _opts(tmp_path, "flow", "tiny_resume", max_iter=3, period=2))
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    flow = {k: v.clone() for k, v in trainer.model.roi_heads.synthesizer.flow.state_dict().items()}
    del trainer
    # a longer run resumes from model_final (iteration 2) with the trained flow
    cfg = build_cfg("Shapes/ffs_mobilenet.yaml", _opts(tmp_path, "flow", "tiny_resume", max_iter=5, period=2))
    trainer, saved = _assert_restored(cfg, str(tmp_path / "model_final.pth"))
    assert saved["iteration"] == 2
    for k, v in trainer.model.roi_heads.synthesizer.flow.state_dict().items():
        assert torch.equal(v, flow[k]), k
    del trainer
    # another flow width: fine for inference (the flow is training-only), an error for resuming
    other = build_cfg("Shapes/ffs_mobilenet.yaml", _opts(tmp_path, "flow", "tiny_resume") + ["FFS.FLOW.HIDDEN", "16"])
    SafeCheckpointer(build_model(other), full_model=True).load(str(tmp_path / "model_final.pth"))
    with pytest.raises(CheckpointMismatchError, match=r"model_final\.pth does not fit.*subnet1.*"
                                                      r"flow or synthesis settings"):
        Trainer(other).resume_or_load(resume=True)
    # the flow's draw stream is saved with it; a checkpoint from before it was saved still resumes (new stream)
    ckpt = torch.load(tmp_path / "model_final.pth", map_location="cpu", weights_only=True)
    assert ckpt["model"].pop(STREAM_KEY).dtype == torch.uint8
    torch.save(ckpt, tmp_path / "model_final.pth")
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=True)
    assert trainer.start_iter == 3


def test_trim_metrics_drops_repeated_iterations_and_a_partial_line(tmp_path):
    path = tmp_path / "metrics.json"
    lines = [json.dumps({"iteration": i, "total_loss": 1.0}) for i in range(6)]
    path.write_text("\n".join(lines) + "\n" + '{"iteration": 6, "total_lo')
    assert trim_metrics(str(path), 4) == 3
    assert path.read_text() == "\n".join(lines[:4]) + "\n"
    assert trim_metrics(str(path), 4) == 0
    assert trim_metrics(str(tmp_path / "absent.json"), 4) == 0


def test_sigterm_saves_a_checkpoint_and_resume_continues(tiny_set, tmp_path):
    out = tmp_path / "run"
    cmd = _train_net(tiny_set, "Shapes/ffs_mobilenet.yaml")
    # checkpoints only at the end: the one found after SIGTERM is the interrupted step's
    proc = _start_until(cmd + _opts(out, "flow", "tiny_resume", max_iter=400, period=1000),
                        lambda: _logged_past(out, 2))
    with open(out / ".train.lock", "a") as lock, pytest.raises(BlockingIOError):  # held while it trains
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    k = _interrupted_checkpoint(out, stderr)
    assert 3 <= k < 399 and not (out / "model_final.pth").exists()
    # the same command with --resume (a shorter schedule, to end quickly) continues from the next iteration
    opts = _opts(out, "flow", "tiny_resume", max_iter=k + 3, period=1000)
    proc = subprocess.run(cmd + ["--resume"] + opts, env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"Starting training from iteration {k + 1}" in proc.stdout + proc.stderr
    assert [m["iteration"] for m in _metrics(out)] == list(range(k + 3))


def test_sigterm_to_the_launcher_of_two_processes_saves_one_checkpoint(tiny_set, tmp_path):
    out = tmp_path / "run"
    cmd = _train_net(tiny_set, "Shapes/vos_mobilenet.yaml", "--num-gpus", "2")
    proc = _start_until(cmd + _opts(out, "gaussian", "tiny_resume", max_iter=400, period=1000),
                        lambda: _logged_past(out, 1))
    proc.send_signal(signal.SIGTERM)  # to the launching process only, as a container runtime does
    _, stderr = proc.communicate(timeout=180)
    assert proc.returncode == 143, stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    _interrupted_checkpoint(out, stderr)
