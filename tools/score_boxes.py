#!/usr/bin/env python
"""Add a box-level density score (any registered scorer) to detection records, for eval_ood.

  tools/apply_net.py --config-file Shapes/ffs_mobilenet.yaml --save-features \\
      --test-dataset shapes_train --test-dataset shapes_val --test-dataset shapes_ood MODEL.WEIGHTS model.pth
  tools/score_boxes.py --scorer knn --option k=10 --train out/inference/shapes_train/records.npz \\
      --records out/inference/shapes_val/records.npz --records out/inference/shapes_ood/records.npz \\
      --output-dir out/knn
  tools/eval_ood.py --id out/knn/shapes_val/records.npz --ood out/knn/shapes_ood/records.npz \\
      --score-key knn --output-dir out/knn/report

The scorer is fitted as tools/compare_scores.py fits it (ffs_det/evaluation/box_scores.py): every 5th training
image is held out (it calibrates compare_scores' fused score), and the others give the fit: the foreground
proposals of --proposals (apply_net --proposals-of; labels = ground-truth classes), else the training
detections matched to ground truth (else score >= --min-score; labels = predicted classes). Each --records file
is copied to <output-dir>/<dataset>/records.npz with one more array named after the scorer (or --key). SAFE (--scorer safe) is
fitted on every training detection of the fit images against its FGSM-perturbed copy (apply_net --safe-fit-of)
and scores the records' safe_features (apply_net --safe). Scorers that read the classifier's final layer (react,
vim, ash, scale, fdbd, nnguide; heat with --option priors=energy) get the inlier rows of the box predictor's
classification layer from the checkpoint the records name (meta weights, or --weights where it was moved; its
SHA-256 must be the records'; .pkl refused) and score the box head's output (the ReLU of pre-activation features).
"""
import argparse
import json
import sys

from ffs_det.density.scorers import SCORERS
from ffs_det.evaluation.box_scores import add_box_scores
from ffs_det.exit_status import INPUT_ERRORS, OK, error


def _option(text):
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    try:
        return name, json.loads(value)
    except json.JSONDecodeError:
        return name, value


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scorer", required=True, choices=sorted(SCORERS), help="registered scorer")
    p.add_argument("--train", required=True, help="records of the ID training set, with --save-features")
    p.add_argument("--proposals", default=None,
                   help="proposals.npz of the training set (apply_net --proposals-of) to fit on")
    p.add_argument("--records", required=True, action="append", help="records to score (repeatable)")
    p.add_argument("--output-dir", required=True)
    p.add_argument("--min-score", type=float, default=0.5,
                   help="training detections kept when the records have no ground-truth matches")
    p.add_argument("--weights", default=None, metavar="PATH",
                   help="the checkpoint that wrote the records, where it is now (default: the records' meta weights); "
                        "for scorers of the classifier's final layer, checked against the records' weights_sha256")
    p.add_argument("--key", default="", help="name of the added array (default: the scorer's name)")
    p.add_argument("--option", type=_option, action="append", default=[],
                   help="scorer argument NAME=VALUE (JSON value), e.g. k=10 (repeatable)")
    args = p.parse_args(argv)
    try:
        written = add_box_scores(args.scorer, args.train, args.records, args.output_dir, args.min_score,
                                 args.key, proposals=args.proposals, weights=args.weights, **dict(args.option))
    except INPUT_ERRORS + (OSError,) as e:
        return error(e)
    for path in written:
        print(f"wrote {path}")
    return OK


if __name__ == "__main__":
    sys.exit(main())
