"""Non-finite losses and parameters: a named error (FFS.NONFINITE raise), a skipped step (skip), and a
checkpointer that never writes NaN weights."""
import logging
import os

import pytest
import torch

from detectron2.modeling import build_model

from ffs_det.density.flow import FeatureFlow
from ffs_det.engine import Trainer
from ffs_det.engine.checkpoint import SafeCheckpointer
from ffs_det.engine.setup import build_cfg

from detector_utils import register_tiny_coco, tiny_opts


@pytest.fixture(scope="module")
def tiny_set(tmp_path_factory):
    return register_tiny_coco(tmp_path_factory.mktemp("tiny_nan"), "tiny_nan_train", num_images=6)


def _trainer(tmp_path, nonfinite, max_iter=3, start_iter=1):
    opts = tiny_opts(tmp_path, "flow", dataset="tiny_nan_train", max_iter=max_iter, start_iter=start_iter)
    cfg = build_cfg("Shapes/ffs_mobilenet.yaml", opts + ["FFS.NONFINITE", nonfinite, "MODEL.MOBILENET.WEIGHTS", ""])
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    return trainer


def _nan_nll_from(iteration):
    """A FeatureFlow.nll that returns NaN from the given training iteration on."""
    real = FeatureFlow.nll

    def nll(self, x):
        from detectron2.utils.events import get_event_storage

        value = real(self, x)
        return value * float("nan") if get_event_storage().iter >= iteration else value
    return nll


def test_nan_flow_loss_raises_naming_loss_and_iteration(tiny_set, tmp_path, monkeypatch):
    monkeypatch.setattr(FeatureFlow, "nll", _nan_nll_from(1))
    trainer = _trainer(tmp_path, "raise")
    with pytest.raises(FloatingPointError, match=r"loss_flow_nll is nan at iteration 1"):
        trainer.train()
    # the failed step changed nothing: every parameter is still finite, and no final checkpoint exists
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
    assert not os.path.exists(os.path.join(tmp_path, "model_final.pth"))


def test_nan_flow_loss_is_skipped_and_logged(tiny_set, tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(FeatureFlow, "nll", _nan_nll_from(1))
    trainer = _trainer(tmp_path, "skip")
    with caplog.at_level(logging.WARNING, logger="ffs_det"):
        trainer.train()
    skipped = [r.getMessage() for r in caplog.records if "skipped for this step" in r.getMessage()]
    assert skipped and all(m.startswith("loss_flow_nll is nan at iteration") for m in skipped)
    assert {int(m.split("iteration ")[1].split(":")[0]) for m in skipped} == {1, 2}
    assert trainer.iter == 3  # every step ran
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
    assert os.path.isfile(os.path.join(tmp_path, "model_final.pth"))


def test_nan_energy_loss_raises(tiny_set, tmp_path, monkeypatch):
    from ffs_det.modeling.energy import EnergyMargin

    real = EnergyMargin.forward
    monkeypatch.setattr(EnergyMargin, "forward", lambda self, *a: real(self, *a) * float("inf"))
    trainer = _trainer(tmp_path, "raise", start_iter=1)
    with pytest.raises(FloatingPointError, match=r"loss_energy_margin is (inf|nan) at iteration 1"):
        trainer.train()


def test_checkpoint_with_nan_weights_is_never_written(tmp_path):
    cfg = build_cfg("Shapes/ffs_mobilenet.yaml", ["MODEL.MOBILENET.WEIGHTS", "", "FFS.FLOW.HIDDEN", "16"])
    model = build_model(cfg)
    ckpt = SafeCheckpointer(model, str(tmp_path))
    ckpt.save("model_0000009")
    good = (tmp_path / "model_0000009.pth").read_bytes()
    with torch.no_grad():
        model.roi_heads.box_predictor.cls_score.weight[0, :3] = float("nan")
    with pytest.raises(FloatingPointError, match=r"refusing to save checkpoint 'model_0000019'.*"
                                                 r"roi_heads\.box_predictor\.cls_score\.weight \(3 of"):
        ckpt.save("model_0000019")
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_0000009.pth"]  # no partial/temp file
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000009.pth"
    assert (tmp_path / "model_0000009.pth").read_bytes() == good


def test_a_full_disk_while_saving_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    import errno

    from ffs_det.engine.checkpoint import CheckpointSaveError

    cfg = build_cfg("Shapes/vanilla_mobilenet.yaml", ["MODEL.MOBILENET.WEIGHTS", ""])
    ckpt = SafeCheckpointer(build_model(cfg), str(tmp_path))
    ckpt.save("model_0000009")
    good = (tmp_path / "model_0000009.pth").read_bytes()
    real_save = torch.save

    def full_disk(obj, f, *args, **kwargs):
        real_save({"part": torch.zeros(10)}, f)  # some bytes reach the file, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(CheckpointSaveError) as info:
        ckpt.save("model_0000019")
    assert str(info.value) == (f"cannot save checkpoint {tmp_path / 'model_0000019.pth'}: No space left on device; "
                               f"the previous checkpoint {tmp_path / 'model_0000009.pth'} is kept (resume from it "
                               "with --resume once there is room)")
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_0000009.pth"]  # no partial/temp file
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000009.pth"
    assert (tmp_path / "model_0000009.pth").read_bytes() == good
