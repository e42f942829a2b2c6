"""Weights files SafeCheckpointer reads: pycls ``.pyth`` ImageNet weights (the RegNetX configs) onto the CPU and
without running code, as ``.pth`` checkpoints are read."""
import pickle
import os

import pytest
import torch
import torch.serialization
from torch import nn

from ffs_det.engine.checkpoint import SafeCheckpointer


class Backbone(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
        self.head = nn.Linear(4, 2)


def _pycls_state(seed=0):
    g = torch.Generator().manual_seed(seed)
    state = {k: torch.randn(v.shape, generator=g) if v.is_floating_point() else v.clone()
             for k, v in Backbone().state_dict().items()}
    return state  # pycls names match detectron2's modules by suffix (matching heuristics)


def test_pyth_weights_saved_on_a_gpu_load_on_the_cpu(tmp_path, monkeypatch):
    state = _pycls_state()
    path = tmp_path / "RegNetX-4.0GF_dds_8gpu.pyth"
    with monkeypatch.context() as m:  # as a GPU run writes it: every storage tagged cuda:0
        m.setattr(torch.serialization, "location_tag", lambda storage: "cuda:0")
        torch.save({"epoch": 100, "model_state": state, "optimizer_state": {}}, path)
    if not torch.cuda.is_available():  # a bare torch.load (detectron2's) fails here
        with pytest.raises(RuntimeError, match="CUDA"):
            torch.load(path, weights_only=True)
    model = Backbone()
    SafeCheckpointer(model).load(str(path))
    for k, v in model.state_dict().items():
        if not k.endswith("num_batches_tracked"):
            assert torch.equal(v, state[k]), k


class _RunsCode:
    def __reduce__(self):
        return (os.system, (f"touch {os.environ['FFS_MARKER']}",))


def test_a_pyth_file_that_would_run_code_is_refused(tmp_path, monkeypatch):
    marker = tmp_path / "ran"
    monkeypatch.setenv("FFS_MARKER", str(marker))
    path = tmp_path / "evil.pyth"
    with open(path, "wb") as f:
        torch.save({"model_state": _pycls_state(), "extra": _RunsCode()}, f, pickle_module=pickle)
    with pytest.raises(ValueError, match=r"checkpoint .*evil\.pyth: cannot be read as a torch checkpoint"):
        SafeCheckpointer(Backbone()).load(str(path))
    assert not marker.exists()


def test_a_pyth_file_without_model_state_is_one_clear_error(tmp_path):
    path = tmp_path / "other.pyth"
    torch.save({"state_dict": _pycls_state()}, path)
    with pytest.raises(ValueError, match=r"checkpoint .*other\.pyth: a \.pyth \(pycls\) file must hold a "
                                         r"'model_state' dict"):
        SafeCheckpointer(Backbone()).load(str(path))
