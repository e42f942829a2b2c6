"""Trainer: detectron2's DefaultTrainer with ffs_det's evaluator, a DDP set-up that works on CPU, and the
reliability pieces: checked training data, atomic finite-only checkpoints (:mod:`.checkpoint`), a
configurable metrics period (``FFS.LOG_PERIOD``), and a metrics.json that continues cleanly on ``--resume``.
"""
import json
import logging
import os
import weakref

import torch
from torch.nn.parallel import DistributedDataParallel

from detectron2.data import build_detection_train_loader, get_detection_dataset_dicts
from detectron2.engine import AMPTrainer, DefaultTrainer, SimpleTrainer, TrainerBase, hooks
from detectron2.evaluation import COCOEvaluator
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from ..data.validate import CheckedDatasetMapper, ImageReadError, check_image_files, check_num_classes
from ..detectron2_compat import COMPILED_OPS_AVAILABLE
from .checkpoint import CheckpointMismatchError, SafeCheckpointer

__all__ = ["Trainer", "wrap_ddp", "trim_metrics"]

# errors whose message already names the loss/iteration, file or key: logged without detectron2's traceback
CLEAR_TRAINING_ERRORS = (FloatingPointError, ImageReadError, CheckpointMismatchError)


class _ClearErrorFilter(logging.Filter):
    """detectron2 logs every exception in the training loop with its traceback; for the errors above the
    one-line message is the useful part."""

    def filter(self, record):
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, CLEAR_TRAINING_ERRORS):
            record.msg, record.args, record.exc_info, record.exc_text = f"{record.msg} {exc}", (), None, None
        return True


def trim_metrics(path: str, start_iter: int) -> int:
    """Cut ``metrics.json`` (one JSON object per line) after the last line of an iteration < ``start_iter``,
    dropping the lines of iterations a resumed run repeats and a partly written last line.

    The file is truncated in place (detectron2's JSONWriter may already hold it open for appending).
    Returns the number of lines dropped.
    """
    if not os.path.isfile(path):
        return 0
    with open(path, "rb") as f:
        lines = f.read().split(b"\n")
    keep_bytes, dropped = 0, 0
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            it = json.loads(line).get("iteration")
        except (ValueError, AttributeError):
            it = None
        if not isinstance(it, int) or it >= start_iter:
            dropped = sum(1 for rest in lines[i:] if rest.strip())
            break
        keep_bytes += len(line) + 1
    if dropped:
        os.truncate(path, keep_bytes)
    return dropped


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
        self.checkpointer = SafeCheckpointer(model, cfg.OUTPUT_DIR, trainer=weakref.proxy(self))
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.register_hooks(self.build_hooks())

    @classmethod
    def build_train_loader(cls, cfg):
        """detectron2's train loader, after checking the class count and that every image file exists;
        image read errors name the file."""
        check_num_classes(cfg)
        dicts = get_detection_dataset_dicts(
            cfg.DATASETS.TRAIN, filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS,
            min_keypoints=cfg.MODEL.ROI_KEYPOINT_HEAD.MIN_KEYPOINTS_PER_IMAGE if cfg.MODEL.KEYPOINT_ON else 0,
            proposal_files=cfg.DATASETS.PROPOSAL_FILES_TRAIN if cfg.MODEL.LOAD_PROPOSALS else None)
        check_image_files(dicts, f"training set {', '.join(cfg.DATASETS.TRAIN)}")
        return build_detection_train_loader(cfg, mapper=CheckedDatasetMapper(cfg, True), dataset=dicts)

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        from detectron2.data import build_detection_test_loader

        return build_detection_test_loader(cfg, dataset_name, mapper=CheckedDatasetMapper(cfg, False))

    def build_hooks(self):
        ret = super().build_hooks()
        for h in ret:
            if isinstance(h, hooks.PeriodicWriter):
                h._period = self.cfg.FFS.LOG_PERIOD  # detectron2 hard-codes 20
        return ret

    def resume_or_load(self, resume=True):
        """detectron2's, with a whole-model check of the resumed checkpoint; metrics.json is cut back to the
        resumed iteration so its loss curve continues without repeated iterations."""
        super().resume_or_load(resume=resume)
        if resume and self.start_iter > 0 and comm.is_main_process():
            dropped = trim_metrics(os.path.join(self.cfg.OUTPUT_DIR, "metrics.json"), self.start_iter)
            if dropped:
                logging.getLogger(__name__).info("metrics.json: dropped %d lines logged after the checkpoint "
                                                 "(iterations >= %d are trained again)", dropped, self.start_iter)

    def train(self):
        logger = logging.getLogger("detectron2.engine.train_loop")
        flt = _ClearErrorFilter()
        logger.addFilter(flt)
        try:
            return super().train()
        finally:
            logger.removeFilter(flt)

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        return COCOEvaluator(dataset_name, output_dir=output_folder or cfg.OUTPUT_DIR,
                             use_fast_impl=COMPILED_OPS_AVAILABLE)
