"""Train the tiny flow model for 4 iterations in 2 CPU processes; each rank saves its final state.

Usage: ddp_train.py OUT_DIR COCO_JSON IMAGE_ROOT
"""
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # detector_utils

import torch  # noqa: E402
from detectron2.engine import launch  # noqa: E402


def main(out_dir, json_path, image_root):
    from detectron2.data.datasets import register_coco_instances
    from detectron2.utils import comm

    from detector_utils import tiny_opts
    from ffs_det.engine import Trainer
    from ffs_det.engine.setup import build_cfg

    register_coco_instances("tiny_train", {}, json_path, image_root)
    cfg = build_cfg("Shapes/ffs_mobilenet.yaml", tiny_opts(os.path.join(out_dir, "train"), "flow", max_iter=4,
                                                             start_iter=2))
    trainer = Trainer(cfg)
    model = trainer.model.module if hasattr(trainer.model, "module") else trainer.model
    init = model.roi_heads.energy_margin.logistic.weight.detach().clone()
    trainer.resume_or_load(resume=False)
    trainer.train()
    torch.save({"iter": trainer.iter, "model": model.state_dict(), "init_logistic_weight": init},
               os.path.join(out_dir, f"rank{comm.get_rank()}.pth"))


if __name__ == "__main__":
    launch(main, 2, dist_url="auto", args=tuple(sys.argv[1:4]))
