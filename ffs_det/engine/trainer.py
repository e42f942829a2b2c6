"""Trainer: detectron2's DefaultTrainer with ffs_det's evaluator and a DDP set-up that works on CPU."""
import logging
import weakref

import torch
from torch.nn.parallel import DistributedDataParallel

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.engine import AMPTrainer, DefaultTrainer, SimpleTrainer, TrainerBase
from detectron2.evaluation import COCOEvaluator
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from ..detectron2_compat import COMPILED_OPS_AVAILABLE

__all__ = ["Trainer", "wrap_ddp"]


def wrap_ddp(model: torch.nn.Module, cfg) -> torch.nn.Module:
    """DistributedDataParallel for >1 processes; the model itself for one.

    ``device_ids`` is only given for CUDA models (gloo on CPU takes none). With outlier synthesis the
    energy-margin parameters get no gradient before ``FFS.START_ITER`` (there are no outliers yet), so
    DDP runs with ``find_unused_parameters=True`` rather than adding zero-weighted dummy losses; from
    ``START_ITER`` on, every parameter receives a gradient on every rank at every step. Plain training
    (``SYNTHESIS: none``) uses every parameter at every step and keeps DDP's fast path.
    """
    if comm.get_world_size() == 1:
        return model
    on_cuda = next(model.parameters()).is_cuda
    return DistributedDataParallel(
        model,
        device_ids=[comm.get_local_rank()] if on_cuda else None,
        broadcast_buffers=False,
        find_unused_parameters=cfg.FFS.SYNTHESIS != "none",
    )


class Trainer(DefaultTrainer):
    def __init__(self, cfg):
        # DefaultTrainer.__init__, with wrap_ddp instead of create_ddp_model (which assumes CUDA)
        TrainerBase.__init__(self)
        if not logging.getLogger("detectron2").isEnabledFor(logging.INFO):
            setup_logger()
        cfg = DefaultTrainer.auto_scale_workers(cfg, comm.get_world_size())
        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg)
        model = wrap_ddp(model, cfg)
        self._trainer = (AMPTrainer if cfg.SOLVER.AMP.ENABLED else SimpleTrainer)(model, data_loader, optimizer)
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = DetectionCheckpointer(model, cfg.OUTPUT_DIR, trainer=weakref.proxy(self))
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.register_hooks(self.build_hooks())

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        return COCOEvaluator(dataset_name, output_dir=output_folder or cfg.OUTPUT_DIR,
                             use_fast_impl=COMPILED_OPS_AVAILABLE)
