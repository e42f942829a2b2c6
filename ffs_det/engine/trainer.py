"""Trainer: detectron2's DefaultTrainer with ffs_det's evaluator, a DDP set-up that works on CPU, and the
reliability pieces: checked training data, atomic finite-only checkpoints (:mod:`.checkpoint`), a
configurable metrics period (``FFS.LOG_PERIOD``), a metrics.json that continues cleanly on ``--resume``, and
a checkpoint on SIGTERM (what schedulers send before preemption).
"""
import json
import logging
import os
import signal
import threading
import weakref

import torch
from torch.nn.parallel import DistributedDataParallel

from detectron2.data import build_detection_train_loader, get_detection_dataset_dicts
from detectron2.engine import AMPTrainer, DefaultTrainer, SimpleTrainer, TrainerBase, hooks
from detectron2.evaluation import COCOEvaluator
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from ..data.validate import CheckedDatasetMapper, ImageReadError, check_image_files, check_num_classes
from .checkpoint import CheckpointMismatchError, CheckpointSaveError, SafeCheckpointer

__all__ = ["Trainer", "wrap_ddp", "trim_metrics", "TrainingInterrupted", "SigtermCheckpoint"]


class TrainingInterrupted(Exception):
    """Training stopped on SIGTERM after saving a checkpoint; the message names it and how to continue."""


# errors whose message already names the loss/iteration, file or key: logged without detectron2's traceback
CLEAR_TRAINING_ERRORS = (FloatingPointError, ImageReadError, CheckpointMismatchError, CheckpointSaveError,
                         TrainingInterrupted)


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


class SigtermCheckpoint(hooks.HookBase):
    """On SIGTERM, finish the current step, save a checkpoint of it and stop with :class:`TrainingInterrupted`.

    With several processes, each installs the handler and they agree after every step (one all_gather of
    a flag), so all stop after the same iteration; the main process saves and the others wait for it. The
    hook runs before the evaluation hook, so a periodic evaluation does not delay the checkpoint. A second
    SIGTERM gets the previous handler (by default: the process ends at once). The handler is installed only
    in a main thread (Python's rule for signal handlers) and the previous one is restored when training ends,
    before the final evaluation.
    """

    def __init__(self):
        self._signalled = False
        self._previous = None

    def _on_sigterm(self, signum, frame):
        self._signalled = True
        if self._previous is not None:  # a second SIGTERM is not swallowed
            signal.signal(signal.SIGTERM, self._previous)

    def before_train(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)

    def after_train(self):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None

    def after_step(self):
        stop = self._signalled
        if comm.get_world_size() > 1:
            stop = any(comm.all_gather(stop))
        if not stop:
            return
        iteration = self.trainer.iter
        name = f"model_{iteration:07d}"
        self.trainer.checkpointer.save(name, iteration=iteration)  # on the main process only
        comm.synchronize()  # no process ends before the checkpoint is written
        path = os.path.join(self.trainer.checkpointer.save_dir, name + ".pth")
        raise TrainingInterrupted(f"stopped by SIGTERM after iteration {iteration}: saved {path}; continue with "
                                  "the same command and --resume")


def _no_usable_boxes(names) -> str:
    from detectron2.data import DatasetCatalog

    dicts = [d for name in names for d in DatasetCatalog.get(name)]
    anns = [a for d in dicts for a in d.get("annotations", [])]
    crowd = sum(1 for a in anns if a.get("iscrowd", 0))
    return (f"training set {', '.join(names)}: no image has a usable box ({len(dicts)} images, {len(anns)} boxes kept "
            f"by the box rule, {crowd} of them crowd); boxes under 1 px or outside their image are dropped: are the "
            "json's bboxes COCO [x, y, width, height] in pixels (not normalised to [0, 1])?")


class Trainer(DefaultTrainer):
    """detectron2's DefaultTrainer with ffs_det's checkpointer, optimizer, loaders and hooks;
    ``allow_pickle``: read ``.pkl`` MODEL.WEIGHTS (with pickle, which runs code from the file)."""

    def __init__(self, cfg, allow_pickle: bool = False):
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
        # the class names travel with every checkpoint, so inference knows them without the training set
        self.checkpointer = SafeCheckpointer(model, cfg.OUTPUT_DIR, trainer=weakref.proxy(self),
                                             class_names=check_num_classes(cfg) or None, allow_pickle=allow_pickle)
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.register_hooks(self.build_hooks())

    @classmethod
    def build_optimizer(cls, cfg, model):
        """detectron2's SGD; with ``FFS.FLOW.BASE_LR > 0`` the flow's parameters form their own group at that
        learning rate (same momentum, weight decay and schedule), instead of training at SOLVER.BASE_LR; with
        ``FFS.FLOW.CLIP_GRAD_NORM > 0`` the flow's gradient norm is clipped to it before every step."""
        optimizer = super().build_optimizer(cfg, model)
        flow = getattr(getattr(getattr(model, "roi_heads", None), "synthesizer", None), "flow", None)
        if flow is None:
            return optimizer
        flow_params = [p for p in flow.parameters() if p.requires_grad]
        max_norm = cfg.FFS.FLOW.CLIP_GRAD_NORM
        if max_norm > 0:
            def clip_flow_gradient(*_):
                torch.nn.utils.clip_grad_norm_([p for p in flow_params if p.grad is not None], max_norm)

            optimizer.register_step_pre_hook(clip_flow_gradient)
        if cfg.FFS.FLOW.BASE_LR <= 0:
            return optimizer
        ids = {id(p) for p in flow_params}
        for group in optimizer.param_groups:
            group["params"] = [p for p in group["params"] if id(p) not in ids]
        optimizer.param_groups = [g for g in optimizer.param_groups if g["params"]]
        optimizer.add_param_group({"params": flow_params, "lr": cfg.FFS.FLOW.BASE_LR,
                                   "weight_decay": cfg.SOLVER.WEIGHT_DECAY})
        return optimizer

    @classmethod
    def build_train_loader(cls, cfg):
        """detectron2's train loader, after checking the class count and that every image file exists;
        image read errors name the file."""
        check_num_classes(cfg)
        try:
            dicts = get_detection_dataset_dicts(
                cfg.DATASETS.TRAIN, filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS,
                min_keypoints=cfg.MODEL.ROI_KEYPOINT_HEAD.MIN_KEYPOINTS_PER_IMAGE if cfg.MODEL.KEYPOINT_ON else 0,
                proposal_files=cfg.DATASETS.PROPOSAL_FILES_TRAIN if cfg.MODEL.LOAD_PROPOSALS else None)
        except AssertionError as e:
            if "No valid data found" not in str(e):
                raise
            raise ValueError(_no_usable_boxes(cfg.DATASETS.TRAIN)) from None
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
        evals = [i for i, h in enumerate(ret) if isinstance(h, hooks.EvalHook)]
        ret.insert(evals[0] if evals else len(ret), SigtermCheckpoint())  # before a (long) evaluation
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
        return COCOEvaluator(dataset_name, output_dir=output_folder or cfg.OUTPUT_DIR)
