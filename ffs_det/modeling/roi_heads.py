"""FFSROIHeads: detectron2's StandardROIHeads plus outlier synthesis and an energy margin.

Training, on top of the usual box classification/regression losses:

* the synthesis strategy (``cfg.FFS.SYNTHESIS``) observes the detached foreground box features and their
  classes; with ``"flow"`` (FFS) it returns the flow's NLL, reported as ``loss_flow_nll`` (times
  ``NLL_WEIGHT``); with ``"gaussian"`` (VOS) it fills its class queues;
* from iteration ``START_ITER`` (read from detectron2's event storage) the strategy synthesises outlier
  features; they go through the box predictor's classification layer, and the weighted energies of the
  inlier (foreground) and outlier boxes are separated by a logistic regression: ``loss_energy_margin``
  (times ``ENERGY_LOSS_WEIGHT``; exactly 0 before ``START_ITER``).

With ``SYNTHESIS: "none"`` the head is plain Faster R-CNN. Inference is detectron2's: each output
``Instances`` also carries ``logits`` (all K+1 class logits of the box) and ``energy`` (log-sum-exp of the
K inlier-class logits; higher = more in-distribution), and optionally ``features`` (the box feature).
"""
import logging
from typing import Dict, List

import torch

from detectron2.config import configurable
from detectron2.modeling.roi_heads import ROI_HEADS_REGISTRY, StandardROIHeads
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import get_event_storage

from ..density import build_flow, build_synthesizer
from ..density.synthesis import OutlierSynthesizer
from .energy import EnergyMargin

__all__ = ["FFSROIHeads"]

logger = logging.getLogger(__name__)


@ROI_HEADS_REGISTRY.register()
class FFSROIHeads(StandardROIHeads):
    @configurable
    def __init__(self, *, synthesizer: OutlierSynthesizer, energy_margin: EnergyMargin = None,
                 start_iter: int = 0, energy_loss_weight: float = 0.1, nll_weight: float = 1e-4,
                 output_box_features: bool = False, nonfinite: str = "raise", **kwargs):
        super().__init__(**kwargs)
        if nonfinite not in ("raise", "skip"):
            raise ValueError(f"FFS.NONFINITE must be 'raise' or 'skip', got {nonfinite!r}")
        self.synthesizer = synthesizer
        self.energy_margin = energy_margin
        self.start_iter = start_iter
        self.energy_loss_weight = energy_loss_weight
        self.nll_weight = nll_weight
        self.output_box_features = output_box_features
        self.nonfinite = nonfinite

    @classmethod
    def from_config(cls, cfg, input_shape):
        ret = super().from_config(cfg, input_shape)
        f = cfg.FFS
        kind = f.SYNTHESIS
        shape = ret["box_head"].output_shape
        dim = shape.channels * (shape.height or 1) * (shape.width or 1)
        flow = None
        if kind == "flow":
            flow = build_flow(dim, coupling=f.FLOW.COUPLING, blocks=f.FLOW.BLOCKS, hidden=f.FLOW.HIDDEN,
                              clamp=f.FLOW.CLAMP, seed=f.FLOW.SEED)
        num_classes = cfg.MODEL.ROI_HEADS.NUM_CLASSES
        ret.update(
            synthesizer=build_synthesizer(kind, dim, num_classes, flow=flow, sample_from=f.SAMPLE_FROM,
                                          select=f.SELECT, queue_size=f.QUEUE_SIZE, eps=f.COV_EPS),
            energy_margin=EnergyMargin(num_classes) if kind != "none" else None,
            start_iter=f.START_ITER,
            energy_loss_weight=f.ENERGY_LOSS_WEIGHT,
            nll_weight=f.NLL_WEIGHT,
            output_box_features=f.OUTPUT_BOX_FEATURES,
            nonfinite=f.NONFINITE,
        )
        return ret

    def _forward_box(self, features: Dict[str, torch.Tensor], proposals: List[Instances]):
        features = [features[f] for f in self.box_in_features]
        box_features = self.box_pooler(features, [x.proposal_boxes for x in proposals])
        box_features = self.box_head(box_features).flatten(1)
        predictions = self.box_predictor(box_features)

        if not self.training:
            instances, kept = self.box_predictor.inference(predictions, proposals)
            self._attach_outputs(instances, kept, predictions[0], box_features, proposals)
            return instances

        losses = self.box_predictor.losses(predictions, proposals)
        losses.update(self._outlier_losses(box_features, predictions[0], proposals))
        if self.train_on_pred_boxes:
            with torch.no_grad():
                pred_boxes = self.box_predictor.predict_boxes_for_gt_classes(predictions, proposals)
                for proposals_per_image, pred_boxes_per_image in zip(proposals, pred_boxes):
                    proposals_per_image.proposal_boxes = Boxes(pred_boxes_per_image)
        return losses

    def _outlier_losses(self, box_features, logits, proposals) -> Dict[str, torch.Tensor]:
        gt_classes = torch.cat([p.gt_classes for p in proposals]) if proposals else logits.new_zeros(0).long()
        fg = (gt_classes >= 0) & (gt_classes < self.num_classes)
        losses = {}
        for name, value in self.synthesizer.observe(box_features[fg], gt_classes[fg]).items():
            losses[name] = self.nll_weight * value if name == "loss_flow_nll" else value
        if self.energy_margin is not None:
            iteration = get_event_storage().iter
            if iteration >= self.start_iter:
                outliers = self.synthesizer.sample().to(box_features.dtype)
                outlier_logits = self.box_predictor.cls_score(outliers)
                margin = self.energy_margin(logits[fg, :-1], outlier_logits[:, :-1])
                losses["loss_energy_margin"] = self.energy_loss_weight * margin
            else:
                losses["loss_energy_margin"] = logits.new_zeros(())
        return self._guard_nonfinite(losses)

    def _guard_nonfinite(self, losses: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        for name, value in list(losses.items()):
            if torch.isfinite(value).all():
                continue
            iteration = get_event_storage().iter
            if self.nonfinite == "raise":
                raise FloatingPointError(
                    f"{name} is {value.item()} at iteration {iteration} (FFS.SYNTHESIS={self.synthesizer.kind}); "
                    "set FFS.NONFINITE skip to drop such steps' outlier losses instead")
            logger.warning("%s is %s at iteration %d: skipped for this step", name, value.item(), iteration)
            get_event_storage().put_scalar(f"ffs/nonfinite_skipped_{name}", 1.0)
            losses[name] = value.new_zeros(())
        return losses

    def _attach_outputs(self, instances, kept, logits, box_features, proposals):
        num_per_image = [len(p) for p in proposals]
        for inst, keep, logits_i, feats_i in zip(instances, kept, logits.split(num_per_image),
                                                 box_features.split(num_per_image)):
            inst.logits = logits_i[keep]
            inst.energy = torch.logsumexp(inst.logits[:, :-1], dim=1)
            if self.output_box_features:
                inst.features = feats_i[keep]
