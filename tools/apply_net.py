#!/usr/bin/env python
"""Run a trained detector on registered test sets; write per-detection records, COCO detections and mAP.

  tools/apply_net.py --config-file VOC/ffs_regnetx.yaml --test-dataset voc_custom_val \\
      --test-dataset coco_ood_val --inference-config Inference/standard_nms.yaml \\
      MODEL.WEIGHTS output/VOC/ffs_regnetx/model_final.pth

Writes <output-dir>/<dataset>/{records.npz, coco_detections.json, metrics.json} for each --test-dataset
(default output dir: <OUTPUT_DIR of the config>/inference) and prints where. Every dataset, its images and its
output folder are checked before anything is written. Feed the records to
tools/eval_ood.py. For post-hoc box scores (tools/compare_scores.py), add --save-features and, for the ID
training set, --proposals-of: its foreground proposals' features (proposals.npz) to fit densities on:

  tools/apply_net.py --config-file Shapes/vanilla_mobilenet.yaml --save-features --proposals-of shapes_train \
      --test-dataset shapes_train --test-dataset shapes_val --test-dataset shapes_ood MODEL.WEIGHTS model.pth

For SAFE (compare_scores --scorer safe) add --safe-fit-of shapes_train: every set's records get the backbone
features SAFE reads, and the training set's also those of its boxes in FGSM-perturbed images.

A stock detectron2 Faster R-CNN config (ROI_HEADS.NAME StandardROIHeads) and its checkpoint (.pth) work as
they are; .pkl weights need --allow-pickle. Trailing KEY VALUE pairs override the config. A wrong input (config key, dataset,
checkpoint of another architecture or class count, unreadable image) ends the run with one
`error: ...` line and exit status 2 (1 when writing fails; ffs_det/exit_status.py).
"""
import argparse
import json
import logging
import os
import sys

from detectron2.utils.logger import setup_logger

from ffs_det.atomic_io import child_folder
from ffs_det.data import add_dataset_args, apply_dataset_args
from ffs_det.engine.setup import build_cfg
from ffs_det.evaluation.apply import apply_model, check_dataset, load_model
from ffs_det.exit_status import INPUT_ERRORS, OK, error


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True, help="training config (looked up under configs/ too)")
    parser.add_argument("--test-dataset", action="append", required=True,
                        help="registered dataset to run on (repeatable), e.g. voc_custom_val, coco_ood_val")
    parser.add_argument("--inference-config", default="",
                        help="config merged after --config-file, e.g. Inference/standard_nms.yaml")
    parser.add_argument("--output-dir", default="", help="default: <OUTPUT_DIR>/inference")
    parser.add_argument("--save-features", action="store_true",
                        help="also store each detection's box feature (for box-level density scorers)")
    parser.add_argument("--feature-space", choices=("preactivation", "output"), default="preactivation",
                        help="space of the stored box features: the box head's last layer before its final ReLU "
                             "(default; dense, where post-hoc densities score best) or its output (what the "
                             "classifier sees; FFS.OUTPUT_FEATURE_SPACE)")
    parser.add_argument("--proposals-of", action="append", default=[], metavar="DATASET",
                        help="for this --test-dataset (annotated in the model's classes: the ID training set) also "
                             "store the features of its foreground proposals (IoU >= 0.5 with a ground-truth box), "
                             "its ground-truth boxes and up to 10 background proposals per image in proposals.npz "
                             "(repeatable)")
    parser.add_argument("--max-proposals-per-image", type=int, default=50,
                        help="foreground proposals kept per image for --proposals-of (a seeded random choice)")
    parser.add_argument("--flow-loglik", action="store_true",
                        help="FFS models: also store each detection's log-density under the trained flow "
                             "(records key flow_loglik, for eval_ood --score-key flow_loglik)")
    parser.add_argument("--safe", action="store_true",
                        help="also store SAFE's box features (safe_features: the backbone's shortcut conv + BN "
                             "outputs averaged over each box, read during detection) for compare_scores / "
                             "score_boxes --scorer safe")
    parser.add_argument("--safe-fit-of", action="append", default=[], metavar="DATASET",
                        help="for this --test-dataset (the ID training set) also store the features of the same "
                             "boxes in FGSM-perturbed images (safe_features_adv), which SAFE's MLP is fitted on; "
                             "implies --safe (repeatable)")
    parser.add_argument("--safe-epsilon", type=float, default=8.0,
                        help="FGSM step of --safe-fit-of on the 0-255 pixel scale (default 8, SAFE's)")
    parser.add_argument("--allow-pickle", action="store_true",
                        help="read MODEL.WEIGHTS ending in .pkl with pickle, which RUNS CODE FROM THE FILE: only for "
                             "files from a source you trust (without it a .pkl is refused)")
    add_dataset_args(parser)
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides: KEY VALUE ...")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    setup_logger(name="detectron2")
    setup_logger(name="ffs_det")
    opts = list(args.opts) + (["FFS.OUTPUT_BOX_FEATURES", "True"] if args.save_features else []) + (
        ["FFS.OUTPUT_FLOW_LOGLIK", "True"] if args.flow_loglik else []) + (
        ["FFS.OUTPUT_FEATURE_SPACE", args.feature_space] if args.save_features or args.proposals_of else [])
    try:
        for flag, names in (("--proposals-of", args.proposals_of), ("--safe-fit-of", args.safe_fit_of)):
            unknown = sorted(set(names) - set(args.test_dataset))
            if unknown:
                raise ValueError(f"{flag} {', '.join(unknown)}: not among the --test-dataset names")
        if not args.safe_epsilon > 0:
            raise ValueError(f"--safe-epsilon must be > 0, got {args.safe_epsilon}")
        if args.max_proposals_per_image < 0:
            raise ValueError(f"--max-proposals-per-image must be >= 0, got {args.max_proposals_per_image}")
        cfg = build_cfg(args.config_file, opts, extra_files=[args.inference_config])
        apply_dataset_args(args)
        out_root = args.output_dir or os.path.join(cfg.OUTPUT_DIR, "inference")
        if len(set(args.test_dataset)) != len(args.test_dataset):
            raise ValueError(f"--test-dataset: a dataset is given twice ({', '.join(args.test_dataset)})")
        targets = {dataset: child_folder(out_root, dataset) for dataset in args.test_dataset}
        model = load_model(cfg, allow_pickle=args.allow_pickle)
        if args.safe or args.safe_fit_of:
            from ffs_det.evaluation.safe import safe_layers

            safe_layers(model)  # a backbone SAFE has no layers for: refused before any dataset is run
    except INPUT_ERRORS as e:
        return error(e)
    dicts = {}
    for dataset, target in targets.items():  # every dataset and output folder before anything is written
        try:
            needs = [what for what, names in (("proposal features", args.proposals_of),
                                              ("SAFE's perturbed objects", args.safe_fit_of)) if dataset in names]
            dicts[dataset] = check_dataset(dataset, target, (cfg, model, " and ".join(needs)) if needs else None)
        except INPUT_ERRORS as e:
            return error(e, f"{dataset}: ")
    for dataset, target in targets.items():
        try:
            proposals = ({"max_per_image": args.max_proposals_per_image} if dataset in args.proposals_of else None)
            safe = ({"adversarial": dataset in args.safe_fit_of, "epsilon": args.safe_epsilon}
                    if args.safe or args.safe_fit_of else None)
            result = apply_model(cfg, dataset, target, model=model, proposals=proposals, dicts=dicts[dataset],
                                 safe=safe)
        except INPUT_ERRORS + (OSError,) as e:  # OSError: writing failed (status 1)
            return error(e, f"{dataset}: ")
        logging.getLogger("ffs_det").info("%s", json.dumps(result["summary"].get("bbox", {})))
        print(f"{dataset}: {result['summary']['num_detections']} detections on "
              f"{result['summary']['num_images']} images; wrote")
        for kind, path in result["paths"].items():
            print(f"  {kind:10s} {path}")
    return OK


if __name__ == "__main__":
    sys.exit(main())
