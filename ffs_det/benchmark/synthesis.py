"""The synthesis step alone: FFS ``FlowTailSynthesizer.sample`` vs VOS ``GaussianTailSynthesizer.sample``.

Two settings: the embedded shapes configs' (read from ``configs/Shapes``) and the papers' (1024-d box
features, 20 classes; VOS: queues of 1000 per class and 10000 draws per class; FFS: 200 latents through
the default 2-block GLOW flow with 2048-wide subnets). The VOS queues are filled with random features;
the flow is freshly initialised (its sampling cost does not depend on its weights). VOS's ``observe`` of one
step's foreground rows is timed too: with the running covariance the statistics are updated there.
"""
from typing import Dict

import torch

from ..density import FeatureFlow, build_synthesizer
from .timing import interleaved, paired_ratio, summarize

__all__ = ["PAPER_SETTINGS", "settings_from_cfgs", "build_synthesizers", "fill_queues", "time_synthesis"]

PAPER_SETTINGS = {
    "dim": 1024, "num_classes": 20,
    # a step's foreground boxes: 4 images x 512 RoIs x 25% foreground
    "vos": {"queue_size": 1000, "sample_from": 10000, "select": 1, "covariance": "running", "step_rows": 512},
    "ffs": {"sample_from": 200, "select": 1, "coupling": "glow", "blocks": 2, "hidden": 2048, "clamp": 2.0},
}


def settings_from_cfgs(vos_cfg, ffs_cfg) -> Dict:
    """The synthesis settings of the VOS and FFS configs (feature width = the box head's FC_DIM)."""
    return {
        "dim": ffs_cfg.MODEL.ROI_BOX_HEAD.FC_DIM, "num_classes": ffs_cfg.MODEL.ROI_HEADS.NUM_CLASSES,
        "vos": {"queue_size": vos_cfg.FFS.QUEUE_SIZE, "sample_from": vos_cfg.FFS.SAMPLE_FROM,
                "select": vos_cfg.FFS.SELECT, "covariance": vos_cfg.FFS.COV_UPDATE,
                "step_rows": int(vos_cfg.SOLVER.IMS_PER_BATCH * vos_cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE
                                 * vos_cfg.MODEL.ROI_HEADS.POSITIVE_FRACTION)},
        "ffs": {"sample_from": ffs_cfg.FFS.SAMPLE_FROM, "select": ffs_cfg.FFS.SELECT,
                "coupling": ffs_cfg.FFS.FLOW.COUPLING, "blocks": ffs_cfg.FFS.FLOW.BLOCKS,
                "hidden": ffs_cfg.FFS.FLOW.HIDDEN, "clamp": ffs_cfg.FFS.FLOW.CLAMP},
    }


def build_synthesizers(settings: Dict, device: str = "cpu", seed: int = 0):
    torch.manual_seed(seed)
    dim, classes, v, f = settings["dim"], settings["num_classes"], settings["vos"], settings["ffs"]
    vos = build_synthesizer("gaussian", dim, classes, queue_size=v["queue_size"], sample_from=v["sample_from"],
                            select=v["select"], covariance=v.get("covariance", "running")).to(device)
    fill_queues(vos)
    flow = FeatureFlow(dim, coupling=f["coupling"], blocks=f["blocks"], hidden=f["hidden"], clamp=f["clamp"])
    ffs = build_synthesizer("flow", dim, classes, flow=flow, sample_from=f["sample_from"],
                            select=f["select"]).to(device)
    return {"vos": vos, "ffs": ffs}


def fill_queues(vos) -> None:
    """Every class queue of a Gaussian (VOS) synthesizer full of N(0, I) features, through ``observe`` (which keeps
    its running statistics), so that it synthesises."""
    device = vos.queue.device
    vos.observe(torch.randn(vos.num_classes * vos.queue_size, vos.dim, device=device),
                torch.arange(vos.num_classes, device=device).repeat_interleave(vos.queue_size))


def time_synthesis(settings: Dict, warmup: int, repeats: int, device: str = "cpu") -> Dict:
    """Median times of ``sample()`` of each strategy, and of VOS's ``observe`` of one step's foreground rows
    (``vos_observe``: its queue update, and with the running covariance the statistics' update)."""
    synths = build_synthesizers(settings, device)
    shapes = {}
    gen = torch.Generator().manual_seed(1)
    rows = settings["vos"].get("step_rows", 512)
    step = (torch.randn(rows, settings["dim"], generator=gen).to(device),
            torch.randint(0, settings["num_classes"], (rows,), generator=gen).to(device))

    def run(name):
        shapes[name] = list(synths[name].sample().shape)

    calls = {name: (lambda n=name: run(n)) for name in synths}
    calls["vos_observe"] = lambda: synths["vos"].observe(*step)
    times = interleaved(calls, warmup, repeats, device)
    out = {name: dict(summarize(t), output_shape=shapes.get(name)) for name, t in times.items()}
    out["settings"] = settings
    out["ratios"] = {"ffs/vos": paired_ratio(times["ffs"], times["vos"])}
    return out
