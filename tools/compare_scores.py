#!/usr/bin/env python
"""Every box-level OOD score of a detector on the same kept detections: the energy, FFS's flow log-density,
post-hoc densities of the box features and their fused score, in one table.

  tools/apply_net.py --config-file Shapes/vanilla_mobilenet.yaml --save-features --proposals-of shapes_train \\
      --test-dataset shapes_train --test-dataset shapes_val --test-dataset shapes_ood \\
      --test-dataset shapes_far_ood --output-dir out/inference MODEL.WEIGHTS model.pth
  tools/compare_scores.py --train out/inference/shapes_train/records.npz \\
      --proposals out/inference/shapes_train/proposals.npz --id out/inference/shapes_val/records.npz \\
      --ood out/inference/shapes_ood/records.npz --ood out/inference/shapes_far_ood/records.npz \\
      --output-dir out/scores

The detections that count, the threshold and the FPR95 point are eval_ood's (--protocol, --thres). The
training images are split by image id: every 5th image calibrates the fused score, the others fit the scorers:
on the foreground proposals of --proposals (apply_net --proposals-of; recommended: many boxes per object),
else on the training detections matched to ground truth. The fused score (--fuse) sums the parts' z-scores
(standardised on the calibration images' ID detections), each weighted by how well it separates those
detections from the same images' background proposals: no OOD data is used anywhere. SAFE (--scorer safe) reads
the backbone features apply_net --safe stores and is fitted on the training set's detections and their
FGSM-perturbed copies (apply_net --safe-fit-of on the training set). Scorers that read the classifier's final
layer (react, vim, ash, scale, fdbd, nnguide; heat with --option heat.priors=energy) get the inlier rows of the
box predictor's classification layer from the checkpoint the records name (meta weights, or --weights where it
was moved; its SHA-256 must be the records'; read without running code from it, .pkl refused), and the box
head's output features (the ReLU of pre-activation features); the other scorers read the stored features and
no checkpoint is read for them. Writes scores.md,
scores.csv, scores.json, roc_<ood set>.png and hist_<score>_<ood set>.png into --output-dir (written whole: a
rerun replaces an earlier report there; a folder holding other files is refused).
"""
import argparse
import json
import sys

from ffs_det.density.scorers import SCORERS
from ffs_det.evaluation.box_scores import DEFAULT_FUSE, POSTHOC_SCORERS, REPORT_MARKER, compare_box_scores, \
    render_box_scores
from ffs_det.evaluation.ood_report import PROTOCOLS
from ffs_det.atomic_io import check_replaceable_folder, replace_folder
from ffs_det.exit_status import INPUT_ERRORS, OK, error


def _option(text):
    """``SCORER.NAME=VALUE`` -> ``(scorer, name, value)`` (value parsed as JSON when it is JSON)."""
    key, sep, value = text.partition("=")
    scorer, dot, name = key.partition(".")
    if not sep or not dot or not scorer or not name:
        raise argparse.ArgumentTypeError(f"expected SCORER.NAME=VALUE (e.g. knn.k=10), got {text!r}")
    try:
        return scorer, name, json.loads(value)
    except json.JSONDecodeError:
        return scorer, name, value


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train", required=True, help="records of the ID training set (apply_net --save-features)")
    p.add_argument("--proposals", default=None,
                   help="proposals.npz of the ID training set (apply_net --proposals-of): the scorers are fitted on "
                        "its foreground proposals; without it, on the matched training detections")
    p.add_argument("--id", required=True, help="records of the ID test set")
    p.add_argument("--ood", required=True, action="append", help="records of an OOD test set (repeatable)")
    p.add_argument("--output-dir", required=True)
    p.add_argument("--scorer", action="append", choices=sorted(SCORERS), default=None,
                   help=f"post-hoc scorer (repeatable; default: {' '.join(POSTHOC_SCORERS)})")
    p.add_argument("--fuse", nargs="+", action="append", default=None, metavar="SCORE",
                   help="parts of a fused score: energy, flow_loglik or scorers (repeatable, one fused score each; "
                        f"default: {'; '.join(' '.join(f) for f in DEFAULT_FUSE)}, those whose parts are computed)")
    p.add_argument("--no-fuse", action="store_true", help="no fused score")
    p.add_argument("--option", type=_option, action="append", default=[],
                   help="scorer argument SCORER.NAME=VALUE (JSON value), e.g. knn.k=10 (repeatable)")
    p.add_argument("--protocol", choices=sorted(PROTOCOLS), default="papers",
                   help="which detections count (eval_ood's --protocol; default papers)")
    p.add_argument("--thres", type=float, default=None, help="detection threshold (default: the protocol's)")
    p.add_argument("--weights", default=None, metavar="PATH",
                   help="the checkpoint that wrote the records, where it is now (default: the records' meta weights); "
                        "read only for scorers of the classifier's final layer, and checked against the records' "
                        "weights_sha256")
    p.add_argument("--min-score", type=float, default=0.5,
                   help="training detections used when the training records have no ground-truth matches")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    scorers = tuple(dict.fromkeys(args.scorer or POSTHOC_SCORERS))
    options = {}
    for scorer, name, value in args.option:
        if scorer not in scorers:
            return error(ValueError(f"--option {scorer}.{name}: {scorer!r} is not among the scorers "
                                    f"({', '.join(scorers)})"))
        options.setdefault(scorer, {})[name] = value
    try:
        check_replaceable_folder(args.output_dir, REPORT_MARKER)  # before any work
        fuse = [] if args.no_fuse else None if args.fuse is None else [tuple(f) for f in args.fuse]
        comparison, info = compare_box_scores(args.train, args.id, args.ood, scorers=scorers, fuse=fuse,
                                              thres=args.thres, min_score=args.min_score, options=options,
                                              protocol=args.protocol, proposals=args.proposals,
                                              weights=args.weights)
        if info["failed"]:
            raise ValueError("; ".join(f"{k}: {v}" for k, v in info["failed"].items()))
        files = render_box_scores(comparison, info)
    except INPUT_ERRORS as e:
        return error(e)
    try:
        replace_folder(args.output_dir, files, REPORT_MARKER)
    except OSError as e:
        return error(e)
    print(files["scores.md"].decode().strip("`\n"))
    print(f"wrote {len(files)} files to {args.output_dir}")
    return OK


if __name__ == "__main__":
    sys.exit(main())
