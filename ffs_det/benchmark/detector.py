"""Detector timings: one training step of plain Faster R-CNN / VOS / FFS, and apply_net-style inference.

All three models come from the embedded shapes configs (``configs/Shapes/*_mobilenet.yaml``), are built
from the same seed (so the shared layers start identical) and see the same images: scenes of the shapes
world rendered in memory by :func:`ffs_det.data.shapes.render_scene` and resized as detectron2's
``DatasetMapper`` does. The training step is measured with synthesis active: the event-storage iteration
is ``FFS.START_ITER`` and the VOS class queues are full.
"""
from typing import Dict, List, Sequence

import numpy as np
import torch

import ffs_det  # noqa: F401  (registers the ROI heads and backbones)
from detectron2.data import detection_utils
from detectron2.data import transforms as T
from detectron2.modeling import build_model
from detectron2.solver import build_optimizer
from detectron2.structures import BoxMode
from detectron2.utils.events import EventStorage

from ..data.shapes import ID_CLASSES, render_scene
from ..engine.setup import build_cfg
from .synthesis import fill_queues
from .timing import interleaved, paired_ratio, summarize

__all__ = ["MODES", "PAPER_HEAD_OPTS", "PAPER_DETECTOR", "detector_cfg", "shapes_inputs", "build_models",
           "time_training_steps", "time_inference", "step_peak_memory"]

# benchmark name -> config file
MODES = {"plain": "Shapes/vanilla_mobilenet.yaml", "vos": "Shapes/vos_mobilenet.yaml",
         "ffs": "Shapes/ffs_mobilenet.yaml"}


# The papers' (VOC) head sizes on top of the shapes configs: 1024-d box features, 20 classes, 512 sampled
# RoIs per image; VOS queues of 1000 per class and 10000 draws per class; FFS's 2-block GLOW flow with
# 2048-wide subnets (configs/VOC/*_regnetx.yaml). Images, backbone and RPN stay the shapes world's.
PAPER_HEAD_OPTS = {
    "all": ["MODEL.ROI_BOX_HEAD.FC_DIM", "1024", "MODEL.ROI_HEADS.NUM_CLASSES", "20",
            "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "512"],
    "plain": [],
    "vos": ["FFS.QUEUE_SIZE", "1000", "FFS.SAMPLE_FROM", "10000"],
    "ffs": ["FFS.SAMPLE_FROM", "200", "FFS.FLOW.BLOCKS", "2", "FFS.FLOW.HIDDEN", "2048"],
}


# The papers' whole detector: configs/VOC/*_regnetx.yaml (RegNetX-4.0GF FPN, 1024-d box head, 20 classes, 512
# RoIs per image, the released VOS/FFS settings), trained at 800 px; randomly initialised (no ImageNet file read)
PAPER_DETECTOR = {"plain": "VOC/vanilla_regnetx.yaml", "vos": "VOC/vos_regnetx.yaml", "ffs": "VOC/ffs_regnetx.yaml"}


def detector_cfg(mode: str, device: str = "cpu", images_per_batch: int = None, extra_opts=(), configs=None):
    """The config of ``mode`` in ``configs`` (default :data:`MODES`; plus ``extra_opts``, detectron2 ``KEY VALUE``
    pairs); the trunk is randomly initialised (no weight file is read — the step time does not depend on the
    weight values)."""
    opts = ["MODEL.DEVICE", device, "MODEL.MOBILENET.WEIGHTS", "", "MODEL.WEIGHTS", ""]
    # learning rates 0: the timed steps repeat one batch, which can drive a moving flow to a non-finite NLL;
    # with the weights held fixed every step costs the same work (the optimizer still runs its update)
    opts += ["SOLVER.BASE_LR", "0.0", "FFS.FLOW.BASE_LR", "0.0"]
    if images_per_batch:
        opts += ["SOLVER.IMS_PER_BATCH", str(images_per_batch)]
    opts += list(extra_opts)
    cfg = build_cfg((configs or MODES)[mode], opts, cpu_fallback=False)
    cfg.freeze()
    return cfg


def shapes_inputs(cfg, num_images: int, seed: int = 0, train: bool = True) -> List[Dict]:
    """``num_images`` shapes-world scenes as detectron2 model inputs (with ``instances`` when ``train``)."""
    if train:
        aug = T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN, "choice")
    else:
        aug = T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST)
    inputs = []
    for i in range(num_images):
        pixels, objects = render_scene(np.random.default_rng([seed, 0, i]), ID_CLASSES)
        height, width = pixels.shape[:2]
        aug_input = T.AugInput(pixels)
        transforms = aug(aug_input)
        image = aug_input.image
        item = {"image": torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1))),
                "height": height, "width": width}
        if train:
            annos = [detection_utils.transform_instance_annotations(
                {"bbox": box, "bbox_mode": BoxMode.XYWH_ABS, "category_id": cls}, transforms, image.shape[:2])
                for cls, box, _ in objects]
            item["instances"] = detection_utils.annotations_to_instances(annos, image.shape[:2])
        inputs.append(item)
    return inputs


def build_models(cfgs: Dict[str, object], seed: int = 0) -> Dict[str, torch.nn.Module]:
    """One model per config, each built from ``seed``; VOS queues filled so that VOS synthesises."""
    models = {}
    for mode, cfg in cfgs.items():
        torch.manual_seed(seed)
        model = build_model(cfg)
        synth = model.roi_heads.synthesizer
        if synth.kind == "gaussian":
            fill_queues(synth)
        models[mode] = model
    return models


def time_training_steps(models: Dict[str, torch.nn.Module], cfgs, batch: Sequence[Dict], warmup: int,
                        repeats: int, device: str = "cpu") -> Dict:
    """Forward + backward + optimizer step of each model on ``batch``, interleaved; synthesis active."""
    optimizers = {mode: build_optimizer(cfgs[mode], model) for mode, model in models.items()}
    losses_seen = {}

    def step(mode):
        model, opt = models[mode], optimizers[mode]
        with EventStorage(cfgs[mode].FFS.START_ITER):
            losses = model(batch)
            total = sum(losses.values())
            opt.zero_grad(set_to_none=True)
            total.backward()
            opt.step()
        losses_seen[mode] = sorted(losses)

    for model in models.values():
        model.train()
    times = interleaved({mode: (lambda m=mode: step(m)) for mode in models}, warmup, repeats, device)
    out = {mode: dict(summarize(t), losses=losses_seen[mode]) for mode, t in times.items()}
    out["ratios"] = {f"{mode}/plain": paired_ratio(times[mode], times["plain"]) for mode in models if mode != "plain"}
    out["ratio_rounds"] = {f"{mode}/plain": [a / b for a, b in zip(times[mode], times["plain"])]
                           for mode in models if mode != "plain"}
    out["images_per_batch"] = len(batch)
    return out


def step_peak_memory(models: Dict[str, torch.nn.Module], cfgs, batch: Sequence[Dict], device: str) -> Dict:
    """Per model: the CUDA memory one training step (forward, backward, optimizer) allocates at its peak above
    what was allocated before it (the models, their gradients and optimizer state of earlier steps stay
    resident), and the model's parameter and buffer bytes; empty on a CPU."""
    if torch.device(device).type != "cuda":
        return {}
    out = {}
    for mode, model in models.items():
        opt = build_optimizer(cfgs[mode], model)
        model.train()
        for measured in (False, True):  # the first step allocates gradients and optimizer state
            torch.cuda.synchronize(device)
            before = torch.cuda.memory_allocated(device)
            torch.cuda.reset_peak_memory_stats(device)
            with EventStorage(cfgs[mode].FFS.START_ITER):
                losses = model(batch)
                opt.zero_grad(set_to_none=False)
                sum(losses.values()).backward()
                opt.step()
            torch.cuda.synchronize(device)
            if measured:
                held = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
                out[mode] = {"step_peak_mb": (torch.cuda.max_memory_allocated(device) - before) / 2 ** 20,
                             "resident_mb": before / 2 ** 20, "model_mb": held / 2 ** 20}
        del opt
    return out


def time_inference(models: Dict[str, torch.nn.Module], images: Sequence[Dict], warmup: int, repeats: int,
                   device: str = "cpu") -> Dict:
    """apply_net's path: ``model.eval()``, one image per forward (the test loader's batch size), no grad.

    Each timed call runs over all ``images``; images/s = len(images) / seconds. The models are given the
    same box-head and backbone weights (the plain model's), so they produce the same detections and the
    comparison isolates the head's inference overhead.
    """
    reference = models["plain"].state_dict()
    for model in models.values():
        model.load_state_dict(reference, strict=False)
        model.eval()
    detections = {}

    def run(mode):
        with torch.no_grad():
            outputs = [models[mode]([image])[0]["instances"] for image in images]
        detections[mode] = sum(len(o) for o in outputs)

    times = interleaved({mode: (lambda m=mode: run(m)) for mode in models}, warmup, repeats, device)
    out = {}
    for mode, t in times.items():
        s = summarize(t)
        out[mode] = dict(s, images=len(images), images_per_s=len(images) / s["median_s"],
                         detections=detections[mode])
    # images/s ratio = inverse time ratio
    names = [m for m in models if m != "plain"]
    out["ratios"] = {f"{m}/plain": paired_ratio(times["plain"], times[m]) for m in names}
    out["ratio_rounds"] = {f"{m}/plain": [a / b for a, b in zip(times["plain"], times[m])] for m in names}
    return out
