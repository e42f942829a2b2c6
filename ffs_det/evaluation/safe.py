"""SAFE's sensitivity-aware box features, read from a detectron2 Faster R-CNN while it detects.

SAFE (Wilson et al., ICCV 2023; scorer :class:`ffs_det.density.scorers.safe.SafeScorer`) describes a detected box
by the outputs of the backbone's residual convolution + batch-norm layers on the shortcut of each stage's first
block (before the residual add and the ReLU), each averaged over the box (``roi_align`` to one cell), concatenated
from shallow to deep. Which modules, per backbone (:func:`safe_layers`):

* RegNetX (detectron2's ``RegNet``, the papers' RegNetX-4.0GF): ``backbone.bottom_up.s{1..4}.b1.bn``, as SAFE's
  code (``SAFE/shared/tracker.py``);
* ResNet (detectron2's): every ``backbone.bottom_up.res<stage>.<block>.shortcut`` (conv + its frozen BN), as SAFE's
  code: ``res{2..5}.0.shortcut`` in a ResNet-50;
* MobileNetV2 (the shapes world's trunk), which has no shortcut convolutions: the projection convolution + BN
  (linear bottleneck, no activation) of the first block of each stride level, the block that changes resolution
  and width where ResNet/RegNet stages have their shortcut conv: ``backbone.bottom_up.features.{2,4,7,14}.conv.3``.

:class:`SafeFeatureModel` wraps the detector for ``inference_on_dataset``: the layers' outputs are captured by
forward hooks during the detector's own pass (no second backbone pass), and each output ``Instances`` gets
``safe_features``. For a training set it also attacks each image (:func:`fgsm_images`: one signed-gradient step
of ``epsilon`` on the 0-255 pixel scale against the detector's training losses on the ground truth, as SAFE's
``SAFE/RCNN.py``), runs the backbone on the perturbed image and pools the same boxes into ``safe_features_adv``
(NaN rows for an image without ground-truth boxes, which SAFE leaves out). Boxes are mapped to each map by its
exact stride (SAFE scales by the padded map's height over the original image's, slightly off for padded images).
"""
import contextlib
import copy
import re
from typing import Dict, List, Optional, Sequence

import torch
from torch import nn
from torchvision.ops import roi_align

from detectron2.structures import Boxes, BoxMode, Instances
from detectron2.utils.events import EventStorage

__all__ = ["SAFE_LAYERS", "safe_layers", "capture_outputs", "pool_boxes", "fgsm_images", "SafeFeatureModel",
           "DEFAULT_EPSILON"]

# backbone -> the modules SAFE reads (checked in this order; the first whose modules all exist is used). ResNet:
# every shortcut convolution, as SAFE's code selects them (4 in a ResNet-50; 3 in a ResNet-18/34, whose res2 has none)
SAFE_LAYERS = {
    "regnet": [f"backbone.bottom_up.s{i}.b1.bn" for i in range(1, 5)],
    "resnet": re.compile(r"backbone\.bottom_up\.res\d\.\d+\.shortcut"),
    "mobilenetv2": [f"backbone.bottom_up.features.{i}.conv.3" for i in (2, 4, 7, 14)],
}
DEFAULT_EPSILON = 8.0  # SAFE's default, on the 0-255 pixel scale
# the detector's training losses the attack ascends (detectron2's RPN and box head; not ffs_det's extra losses)
ATTACK_LOSSES = ("loss_rpn_cls", "loss_rpn_loc", "loss_cls", "loss_box_reg")


def safe_layers(model: nn.Module, layers: Optional[Sequence[str]] = None) -> List[str]:
    """The module names SAFE reads in ``model``: ``layers`` when given (each must exist), else those of the first
    backbone of :data:`SAFE_LAYERS` whose modules all exist."""
    names = dict(model.named_modules())
    if layers:
        missing = [n for n in layers if n not in names]
        if missing:
            raise ValueError(f"SAFE layers not in the model: {missing}")
        return list(layers)
    for modules in SAFE_LAYERS.values():
        if isinstance(modules, re.Pattern):
            found = [n for n in names if modules.fullmatch(n)]
            if found:
                return found
        elif all(n in names for n in modules):
            return list(modules)
    raise ValueError(f"SAFE knows the layers of {', '.join(SAFE_LAYERS)} backbones; this model has none of "
                     f"them (its backbone is {type(getattr(model, 'backbone', model)).__name__})")


@contextlib.contextmanager
def capture_outputs(model: nn.Module, layers: Sequence[str]):
    """Within the block, ``outputs[name]`` is the latest output of each module ``name`` (forward hooks)."""
    modules = dict(model.named_modules())
    outputs: Dict[str, torch.Tensor] = {}
    handles = [modules[name].register_forward_hook(lambda m, i, o, name=name: outputs.__setitem__(name, o))
               for name in layers]
    try:
        yield outputs
    finally:
        for h in handles:
            h.remove()


def pool_boxes(maps: Sequence[torch.Tensor], index: int, boxes: torch.Tensor, input_size) -> torch.Tensor:
    """``(N, sum of channels)``: each map's channels averaged over each box (XYXY in the coordinates of the
    padded input of size ``input_size = (H, W)``), for image ``index`` of the batch."""
    height, width = input_size
    out = []
    for fmap in maps:
        scale = fmap.shape[-1] / width  # 1 / the map's stride
        if abs(fmap.shape[-2] / height - scale) > 1e-6:
            raise ValueError(f"SAFE: a map of shape {tuple(fmap.shape)} is not a uniform stride of the input {input_size}")
        pooled = roi_align(fmap[index:index + 1].float(), [boxes.float()], output_size=(1, 1), spatial_scale=scale,
                           sampling_ratio=-1, aligned=False)
        out.append(pooled.flatten(1))
    return torch.cat(out, 1) if out else boxes.new_zeros((len(boxes), 0))


def _gt_instances(record: dict, image_size) -> Instances:
    """The ground truth of a dataset record in the coordinates of its resized image (test-time resizing only
    scales)."""
    height, width = image_size
    scale = torch.tensor([width / record["width"], height / record["height"]] * 2)
    anns = [a for a in record.get("annotations", []) if not a.get("iscrowd", 0)]
    xyxy = [BoxMode.convert(a["bbox"], a.get("bbox_mode", BoxMode.XYWH_ABS), BoxMode.XYXY_ABS) for a in anns]
    boxes = torch.tensor(xyxy, dtype=torch.float32).reshape(-1, 4) * scale
    inst = Instances((height, width))
    inst.gt_boxes = Boxes(boxes)
    inst.gt_classes = torch.tensor([a["category_id"] for a in anns], dtype=torch.int64)
    return inst


def attack_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model`` for :func:`fgsm_images`: a training-mode pass updates state besides the weights (the
    FFS flow's feature statistics, the VOS queues), which the model that detects must not see; a non-finite
    FFS loss of the copy is skipped, not raised (only detectron2's losses are attacked)."""
    attacker = copy.deepcopy(model)
    if hasattr(getattr(attacker, "roi_heads", None), "nonfinite"):
        attacker.roi_heads.nonfinite = "skip"
    return attacker


def _seed(device: torch.device, seed: int) -> None:
    torch.default_generator.manual_seed(seed)
    if device.type == "cuda":
        with torch.cuda.device(device):
            torch.cuda.manual_seed(seed)


def fgsm_images(model: nn.Module, inputs: List[dict], records: List[dict], epsilon: float = DEFAULT_EPSILON,
                seed: int = 0) -> List[Optional[torch.Tensor]]:
    """Each input image after one FGSM step: ``clamp(x + epsilon * sign(grad_x L), 0, 255)`` with ``L`` the sum of
    the detector's training losses (:data:`ATTACK_LOSSES`) on the record's ground truth; None for an image
    without ground-truth boxes. The model runs in training mode with its normalisation layers in eval mode, its
    proposal sampling seeded with ``seed`` + the image id (the callers' random streams are restored); its
    training mode is restored, but a training-mode pass may update other state: pass :func:`attack_copy`."""
    was_training = model.training
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._NormBase)]
    device = next(model.parameters()).device
    rng_devices = [device] if device.type == "cuda" else []  # the sampling draws on the model's device
    out: List[Optional[torch.Tensor]] = []
    try:
        model.train()
        for m in norms:
            m.eval()
        for inp, record in zip(inputs, records):
            gt = _gt_instances(record, inp["image"].shape[-2:])
            if len(gt) == 0:
                out.append(None)
                continue
            image = inp["image"].float().detach().requires_grad_(True)
            with torch.enable_grad(), torch.random.fork_rng(devices=rng_devices), EventStorage(0):
                _seed(device, int(seed) + int(inp.get("image_id", 0)))
                losses = model([dict(inp, image=image, instances=gt.to(image.device))])
                loss = sum(losses[k] for k in ATTACK_LOSSES if k in losses)
                grad, = torch.autograd.grad(loss, image)
            out.append((image.detach() + float(epsilon) * grad.sign()).clamp(0, 255))
    finally:
        model.train(was_training)
    return out


class SafeFeatureModel(nn.Module):
    """``model`` (a detectron2 GeneralizedRCNN) whose output ``Instances`` carry ``safe_features`` and, with
    ``records`` (image id -> dataset record with ground truth), ``safe_features_adv`` (module doc)."""

    def __init__(self, model: nn.Module, layers: Optional[Sequence[str]] = None,
                 records: Optional[Dict[int, dict]] = None, epsilon: float = DEFAULT_EPSILON, seed: int = 0):
        super().__init__()
        self.model = model
        self.layers = safe_layers(model, layers)
        self.records, self.epsilon, self.seed = records, float(epsilon), int(seed)
        self.attacker = attack_copy(model) if records is not None else None

    @property
    def device(self):
        return self.model.device

    def _pool(self, captured, inputs, outputs, padded_size, key):
        maps = [captured[name] for name in self.layers]
        for i, (inp, out) in enumerate(zip(inputs, outputs)):
            inst = out["instances"]
            h, w = inp["image"].shape[-2:]
            boxes = inst.pred_boxes.tensor * torch.tensor([w / inp["width"], h / inp["height"]] * 2,
                                                          device=inst.pred_boxes.tensor.device)
            inst.set(key, pool_boxes(maps, i, boxes, padded_size).to(inst.pred_boxes.tensor.device))

    def forward(self, inputs: List[dict]):
        with capture_outputs(self.model, self.layers) as captured:
            outputs = self.model(inputs)
            padded = self.model.preprocess_image(inputs).tensor.shape[-2:]
            self._pool(captured, inputs, outputs, padded, "safe_features")
            if self.records is not None:
                self._adversarial(captured, inputs, outputs)
        return outputs

    def _adversarial(self, captured, inputs, outputs):
        records = [self.records[int(inp["image_id"])] for inp in inputs]
        attacked = fgsm_images(self.attacker, inputs, records, self.epsilon, self.seed)
        for i, (inp, out, image) in enumerate(zip(inputs, outputs, attacked)):
            inst = out["instances"]
            if image is None:  # no ground truth to attack: no negatives from this image
                inst.safe_features_adv = torch.full_like(inst.safe_features, float("nan"))
                continue
            images = self.model.preprocess_image([dict(inp, image=image)])
            self.model.backbone(images.tensor)
            self._pool(captured, [inp], [out], images.tensor.shape[-2:], "safe_features_adv")
