"""FFSROIHeads: detectron2's StandardROIHeads plus outlier synthesis and an energy margin.

Training, on top of the usual box classification/regression losses:

* the synthesis strategy (``cfg.FFS.SYNTHESIS``) observes the detached foreground features and their
  classes, in ``FFS.FEATURE_SPACE``: the box head's output (as in VOS/FFS) or its last layer before the final
  ReLU (``"preactivation"``); with ``"flow"`` (FFS) it returns the flow's NLL, reported as ``loss_flow_nll``
  (times ``NLL_WEIGHT``); with ``"gaussian"`` (VOS) it fills its class queues;
* from iteration ``START_ITER`` (read from detectron2's event storage) the strategy synthesises outliers
  in that space; they are mapped to what the box predictor sees (the box head's ReLU for
  ``"preactivation"``, then ``FFS.OUTLIER_MAP``), go through its classification layer, and the weighted
  energies of the inlier (foreground) and outlier boxes are separated by a logistic regression
  (:mod:`.energy`): ``loss_energy_margin`` (times ``ENERGY_LOSS_WEIGHT``; exactly 0 before ``START_ITER`` and
  while the strategy has no outliers, e.g. until every VOS queue is full);
* every ``FFS.LOG_PERIOD`` iterations the event storage (metrics.json, TensorBoard) gets ``ffs/*``
  diagnostics: the flow's NLL per box, where the outliers lie (share of negative / active entries, norm,
  log-density percentile among the step's foreground features), inlier and outlier energies and the
  margin's accuracy on each side (inliers, outliers) and balanced.

With ``SYNTHESIS: "none"`` the head is plain Faster R-CNN. Inference is detectron2's: each output
``Instances`` also carries ``logits`` (all K+1 class logits of the box) and ``energy`` (log-sum-exp of the
K inlier-class logits; higher = more in-distribution), with the flow synthesis and ``FFS.OUTPUT_FLOW_LOGLIK``
``flow_loglik`` (the log-density
of the box's feature in ``FFS.FEATURE_SPACE`` under the trained flow and its standardisation, in nats:
another OOD score, higher = more in-distribution), and optionally ``features`` (the box feature, in
``FFS.OUTPUT_FEATURE_SPACE``: the box head's output or its pre-activation).
"""
import logging
from typing import Dict, List, Optional

import torch
from torch import nn

from detectron2.config import configurable
from detectron2.modeling.roi_heads import ROI_HEADS_REGISTRY, StandardROIHeads
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import get_event_storage

from ..density import build_synthesizer
from ..density.flow import seeded_init
from ..density.flow_training import FlowConfig
from ..density.synthesis import OutlierSynthesizer
from .energy import EnergyMargin

__all__ = ["FFSROIHeads"]

logger = logging.getLogger(__name__)


FEATURE_SPACES = ("output", "preactivation")
OUTLIER_MAPS = ("none", "sigmoid")


def flow_config(flow_cfg) -> FlowConfig:
    """How to build the flow of ``cfg.FFS.FLOW``: coupling, blocks, hidden width, clamp, seed, initialisation
    and permutation seeding (it trains with the detector, by ``FFS.FLOW.BASE_LR`` and ``CLIP_GRAD_NORM``)."""
    return FlowConfig(coupling=flow_cfg.COUPLING, blocks=flow_cfg.BLOCKS, hidden=flow_cfg.HIDDEN,
                      clamp=flow_cfg.CLAMP, seed=flow_cfg.SEED, init=flow_cfg.INIT,
                      permutation_seeds=flow_cfg.PERMUTATION_SEEDS)


@ROI_HEADS_REGISTRY.register()
class FFSROIHeads(StandardROIHeads):
    @configurable
    def __init__(self, *, synthesizer: OutlierSynthesizer, energy_margin: EnergyMargin = None,
                 start_iter: int = 0, energy_loss_weight: float = 0.1, nll_weight: float = 1e-4,
                 feature_space: str = "output", outlier_map: str = "none", output_box_features: bool = False,
                 output_flow_loglik: bool = False, output_feature_space: str = "output", hardest_outliers: int = 0,
                 nonfinite: str = "raise", log_period: int = 20, **kwargs):
        """
        Args (besides StandardROIHeads'):
            synthesizer: the outlier-synthesis strategy (:mod:`ffs_det.density.synthesis`); it observes
                the foreground features of ``feature_space`` and samples outliers in that space.
            energy_margin: the energy-margin regulariser; None for plain training.
            start_iter: first iteration (event-storage count) with synthesis and the margin loss.
            energy_loss_weight: weight of ``loss_energy_margin``.
            nll_weight: weight of the flow's NLL, ``loss_flow_nll``.
            feature_space: "output" (the box head's output) or "preactivation" (its last layer before the
                final ReLU, which then maps synthetic outliers into the support of the real features).
            outlier_map: "none" or "sigmoid", applied to synthetic outliers before the classifier.
            output_box_features: attach each detection's box feature to the output Instances.
            output_feature_space: the space of those features: "output" (the box head's output, what the box
                predictor sees) or "preactivation" (its last layer before the final ReLU), whatever
                ``feature_space`` the synthesis uses.
            output_flow_loglik: with flow synthesis, attach each detection's log-density under the flow.
            hardest_outliers: if > 0, the margin trains on this many of the synthesised outliers, those with
                the highest energy; 0: on all of them.
            nonfinite: "raise" or "skip" for a non-finite flow NLL or margin loss.
            log_period: iterations between the ``ffs/*`` diagnostics written to the event storage.
        """
        super().__init__(**kwargs)
        if nonfinite not in ("raise", "skip"):
            raise ValueError(f"FFS.NONFINITE must be 'raise' or 'skip', got {nonfinite!r}")
        if feature_space not in FEATURE_SPACES:
            raise ValueError(f"FFS.FEATURE_SPACE must be one of {FEATURE_SPACES}, got {feature_space!r}")
        if outlier_map not in OUTLIER_MAPS:
            raise ValueError(f"FFS.OUTLIER_MAP must be one of {OUTLIER_MAPS}, got {outlier_map!r}")
        if output_feature_space not in FEATURE_SPACES:
            raise ValueError(f"FFS.OUTPUT_FEATURE_SPACE must be one of {FEATURE_SPACES}, got {output_feature_space!r}")
        # whether the box head ends in a ReLU after other layers, i.e. has a pre-activation space
        self.has_preactivation = (isinstance(self.box_head, nn.Sequential) and len(self.box_head) > 1
                                  and isinstance(self.box_head[-1], nn.ReLU))
        for key, space in (("FEATURE_SPACE", feature_space), ("OUTPUT_FEATURE_SPACE", output_feature_space)):
            if space == "preactivation" and not self.has_preactivation:
                raise ValueError(f"FFS.{key} 'preactivation' needs a box head whose last layer is a ReLU "
                                 f"(e.g. FastRCNNConvFCHead with NUM_FC >= 1); got {type(self.box_head).__name__}")
        self.synthesizer = synthesizer
        self.energy_margin = energy_margin
        self.start_iter = start_iter
        self.energy_loss_weight = energy_loss_weight
        self.nll_weight = nll_weight
        self.feature_space = feature_space
        self.outlier_map = outlier_map
        self.output_box_features = output_box_features
        self.output_flow_loglik = output_flow_loglik
        self.output_feature_space = output_feature_space
        if hardest_outliers < 0:
            raise ValueError(f"FFS.HARDEST_OUTLIERS must be >= 0, got {hardest_outliers}")
        self.hardest_outliers = int(hardest_outliers)
        self.nonfinite = nonfinite
        self.log_period = max(int(log_period), 1)

    @classmethod
    def from_config(cls, cfg, input_shape):
        ret = super().from_config(cfg, input_shape)
        f = cfg.FFS
        kind = f.SYNTHESIS
        shape = ret["box_head"].output_shape
        dim = shape.channels * (shape.height or 1) * (shape.width or 1)
        num_classes = cfg.MODEL.ROI_HEADS.NUM_CLASSES
        # the flow and the margin draw their initial weights from a CPU generator seeded with FLOW.SEED: the global
        # random streams (detector initialisation, data order, proposal sampling on every device) are the same
        # whatever FFS.SYNTHESIS is, and no CUDA generator is seeded here
        with seeded_init(f.FLOW.SEED):
            flow = flow_config(f.FLOW).build(dim, seeded=False) if kind == "flow" else None
            synthesizer = build_synthesizer(kind, dim, num_classes, flow=flow, sample_from=f.SAMPLE_FROM,
                                            select=f.SELECT, queue_size=f.QUEUE_SIZE, eps=f.COV_EPS,
                                            covariance=f.COV_UPDATE,
                                            standardize=f.FLOW.STANDARDIZE, momentum=f.FLOW.STATS_MOMENTUM,
                                            seed=None if f.SAMPLE_SEED < 0 else f.SAMPLE_SEED)
            energy_margin = None
            if kind != "none":
                energy_margin = EnergyMargin(num_classes, outlier_temperature=f.OUTLIER_TEMPERATURE,
                                             reduction=f.MARGIN_REDUCTION, weight_init=f.ENERGY_WEIGHT_INIT)
        ret.update(
            synthesizer=synthesizer,
            energy_margin=energy_margin,
            start_iter=f.START_ITER,
            energy_loss_weight=f.ENERGY_LOSS_WEIGHT,
            nll_weight=f.NLL_WEIGHT,
            feature_space=f.FEATURE_SPACE,
            outlier_map=f.OUTLIER_MAP,
            output_box_features=f.OUTPUT_BOX_FEATURES,
            output_flow_loglik=f.OUTPUT_FLOW_LOGLIK,
            output_feature_space=f.OUTPUT_FEATURE_SPACE,
            hardest_outliers=f.HARDEST_OUTLIERS,
            nonfinite=f.NONFINITE,
            log_period=f.LOG_PERIOD,
        )
        return ret

    def head_features(self, pooled: torch.Tensor):
        """``(output, preactivation)`` of the box head on pooled box features: its output ``(N, D)`` (what the
        box predictor sees) and its last layer before the final ReLU ``(N, D)``, computed by the same layers in
        one pass; the latter is None for a box head that does not end in a ReLU."""
        if not self.has_preactivation:
            return self.box_head(pooled).flatten(1), None
        x = pooled
        for layer in list(self.box_head)[:-1]:
            x = layer(x)
        pre = x.flatten(1)
        return self.box_head[-1](pre), pre

    def _box_features(self, pooled: torch.Tensor):
        """``(box features, features of the synthesis space, pre-activation features or None)``."""
        out, pre = self.head_features(pooled)
        return out, (out if self.feature_space == "output" else pre), pre

    def to_box_features(self, synthetic: torch.Tensor) -> torch.Tensor:
        """Map features of the synthesis space (e.g. synthetic outliers) to what the box predictor sees."""
        if self.feature_space == "preactivation":
            synthetic = self.box_head[-1](synthetic)
        if self.outlier_map == "sigmoid":
            synthetic = torch.sigmoid(synthetic)
        return synthetic

    @torch.no_grad()
    def synthesize_outliers(self, n: int, max_draws: int = 1000,
                            generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Up to ``n`` synthetic outliers of the trained synthesizer, as the box predictor sees them ``(M, D)``;
        fewer (possibly none) when it cannot synthesise (plain training, VOS queues not full). Their draws come
        from ``generator`` (on the model's device) when given, else from the synthesizer's stream."""
        out, count = [], 0
        for _ in range(max_draws):
            if count >= n:
                break
            batch = self.synthesizer.sample(generator)
            if batch.shape[0] == 0:
                break
            out.append(self.to_box_features(batch))
            count += batch.shape[0]
        if not out:
            return self.synthesizer.sample(generator)[:0]
        return torch.cat(out)[:n]

    def _forward_box(self, features: Dict[str, torch.Tensor], proposals: List[Instances]):
        features = [features[f] for f in self.box_in_features]
        pooled = self.box_pooler(features, [x.proposal_boxes for x in proposals])
        box_features, space_features, pre = self._box_features(pooled)
        predictions = self.box_predictor(box_features)

        if not self.training:
            instances, kept = self.box_predictor.inference(predictions, proposals)
            saved = box_features if self.output_feature_space == "output" else pre
            self._attach_outputs(instances, kept, predictions[0], saved, space_features, proposals)
            return instances

        losses = self.box_predictor.losses(predictions, proposals)
        losses.update(self._outlier_losses(box_features, space_features, predictions[0], proposals))
        if self.train_on_pred_boxes:
            with torch.no_grad():
                pred_boxes = self.box_predictor.predict_boxes_for_gt_classes(predictions, proposals)
                for proposals_per_image, pred_boxes_per_image in zip(proposals, pred_boxes):
                    proposals_per_image.proposal_boxes = Boxes(pred_boxes_per_image)
        return losses

    def _outlier_losses(self, box_features, space_features, logits, proposals) -> Dict[str, torch.Tensor]:
        gt_classes = torch.cat([p.gt_classes for p in proposals]) if proposals else logits.new_zeros(0).long()
        fg = (gt_classes >= 0) & (gt_classes < self.num_classes)
        losses = {}
        observed = self.synthesizer.observe(space_features[fg], gt_classes[fg])
        for name, value in observed.items():
            losses[name] = self.nll_weight * value if name == "loss_flow_nll" else value
        storage = get_event_storage()
        log_now = (storage.iter + 1) % self.log_period == 0
        if log_now and "loss_flow_nll" in observed:
            storage.put_scalar("ffs/flow_nll_per_box", float(observed["loss_flow_nll"].detach()), smoothing_hint=False)
        if self.energy_margin is None:
            return self._guard_nonfinite(losses)
        if storage.iter < self.start_iter:
            losses["loss_energy_margin"] = logits.new_zeros(())
            return self._guard_nonfinite(losses)
        synthetic = self.synthesizer.sample().to(box_features.dtype)
        outliers = self.to_box_features(synthetic)
        if outliers.shape[0] == 0:
            # no outliers yet (VOS: a class queue is not full): no margin loss, as in the original VOS
            losses["loss_energy_margin"] = logits.new_zeros(())
        else:
            outlier_logits = self.box_predictor.cls_score(outliers)
            if 0 < self.hardest_outliers < outliers.shape[0]:
                with torch.no_grad():
                    energy = self.energy_margin.energy(outlier_logits[:, :-1], self.energy_margin.outlier_temperature)
                hard = torch.topk(energy, self.hardest_outliers).indices
                synthetic, outliers, outlier_logits = synthetic[hard], outliers[hard], outlier_logits[hard]
            margin = self.energy_margin(logits[fg, :-1], outlier_logits[:, :-1])
            losses["loss_energy_margin"] = self.energy_loss_weight * margin
            if log_now:
                self._log_synthesis(storage, box_features[fg], space_features[fg], logits[fg, :-1], synthetic,
                                    outliers, outlier_logits[:, :-1])
        return self._guard_nonfinite(losses)

    @torch.no_grad()
    def _log_synthesis(self, storage, inliers, inlier_space, inlier_logits, synthetic, outliers, outlier_logits):
        """Where this step's synthetic outliers lie relative to the real foreground features (``ffs/*``)."""
        stats = {"num_outliers": float(outliers.shape[0]),
                 # share of entries outside the support of ReLU features (negative), and of active entries
                 "outlier_negative_frac": float((outliers < 0).float().mean()),
                 "outlier_active_frac": float((outliers > 0).float().mean()),
                 "outlier_norm": float(outliers.norm(dim=1).median())}
        if inliers.shape[0]:
            stats.update(inlier_negative_frac=float((inliers < 0).float().mean()),
                         inlier_active_frac=float((inliers > 0).float().mean()),
                         inlier_norm=float(inliers.norm(dim=1).median()))
            # percentile of each outlier's log-density among the step's inliers (0: below every inlier)
            ref = self.synthesizer.log_prob(inlier_space.detach())
            lp = self.synthesizer.log_prob(synthetic)
            if torch.isfinite(ref).all() and torch.isfinite(lp).all():
                pct = (ref[None, :] < lp[:, None]).float().mean(dim=1) * 100
                stats["outlier_loglik_percentile"] = float(pct.mean())
        stats.update(self.energy_margin.diagnostics(inlier_logits, outlier_logits))
        for name, value in stats.items():
            storage.put_scalar(f"ffs/{name}", value, smoothing_hint=False)

    def _guard_nonfinite(self, losses: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        # one host synchronisation per step for all of them; the per-loss check only when one is not finite
        if not losses or bool(torch.stack([torch.isfinite(v).all() for v in losses.values()]).all()):
            return losses
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

    def _attach_outputs(self, instances, kept, logits, box_features, space_features, proposals):
        num_per_image = [len(p) for p in proposals]
        with_flow = self.output_flow_loglik and self.synthesizer.kind == "flow"
        for inst, keep, logits_i, feats_i, space_i in zip(instances, kept, logits.split(num_per_image),
                                                          box_features.split(num_per_image),
                                                          space_features.split(num_per_image)):
            inst.logits = logits_i[keep]
            inst.energy = torch.logsumexp(inst.logits[:, :-1], dim=1)
            if with_flow:  # the trained flow's log-density of the kept boxes (FFS.FEATURE_SPACE), in nats
                inst.flow_loglik = self.synthesizer.log_prob(space_i[keep])
            if self.output_box_features:  # in FFS.OUTPUT_FEATURE_SPACE
                inst.features = feats_i[keep]
