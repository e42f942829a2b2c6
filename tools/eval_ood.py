#!/usr/bin/env python
"""OOD-detection metrics from the records that tools/apply_net.py writes.

  tools/eval_ood.py --id out/inference/voc_custom_val/records.npz \\
      --ood out/inference/coco_ood_val/records.npz --ood out/inference/openimages_ood_val/records.npz \\
      --output-dir out/ood_report
  tools/eval_ood.py --id ID.npz --ood OOD.npz --thres 0.5 --score-key score --output-dir DIR

--protocol papers (default) is the released VOS/FFS evaluation: the detection threshold apply_net computed
with COCOeval on the annotated ID set (per-class optimal F1 over IoU 0.50:0.95, averaged), a box kept when
its maximum inlier-class probability reaches it, FPR95 at the TPR closest to 95%. --protocol global-f1: one
optimal F1 at IoU 0.5 over all classes, a detection kept when its own class score reaches it, FPR95 at the
first TPR >= 95%. --thres replaces either threshold. FPR95 / AUROC / AUPR-In / AUPR-Out of the kept ID vs
OOD --score-key values (higher = more ID) are printed (with the protocol) and written to DIR/metrics.json,
DIR/metrics.csv, DIR/roc.png and DIR/hist_<set>.png (DIR is written whole: a rerun replaces an earlier
report there, and a folder holding other files is refused). With --draw N, N images per set (the image
files the records name; older records: built-in datasets under --dataset-dir) are drawn into
DIR/images/<set>/ with the kept detections: green when the OOD score keeps them as ID (95%-TPR cut), red
when it flags them as OOD.
"""
import argparse
import os
import sys

from ffs_det.evaluation.ood_report import PROTOCOLS, format_table, run_report
from ffs_det.exit_status import INPUT_ERRORS, OK, error


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--id", required=True, metavar="ID_RECORDS", help="records .npz of the ID test set")
    p.add_argument("--ood", required=True, action="append", metavar="OOD_RECORDS",
                   help="records .npz of an OOD test set (repeatable)")
    p.add_argument("--protocol", choices=sorted(PROTOCOLS), default="papers",
                   help="which detections count and where FPR95 is read (default: papers, the released VOS/FFS "
                        "evaluation; global-f1: one optimal F1 at IoU 0.5, own class score, first TPR >= 95%%)")
    p.add_argument("--thres", type=float,
                   help="detection threshold (default: the protocol's, from the annotated ID records)")
    p.add_argument("--score-key", default="energy",
                   help="1-D records array used as the OOD score, higher = more ID (default: energy; e.g. score, "
                        "flow_loglik, or msp: the max softmax over the inlier logits, computed from the logits)")
    p.add_argument("--output-dir", required=True, help="folder for metrics.json, metrics.csv and plots")
    p.add_argument("--draw", type=int, default=0, metavar="N",
                   help="also draw the kept detections on N images per set (red = flagged OOD)")
    p.add_argument("--dataset-dir", default=None, help="dataset root for --draw on records without image files (default: $FFS_DATASETS or datasets)")
    args = p.parse_args(argv)
    if args.draw < 0:
        p.error("--draw must be >= 0")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        report, paths = run_report(args.id, args.ood, args.output_dir, args.thres, args.score_key, args.draw,
                                   args.dataset_dir, protocol=args.protocol)
    except INPUT_ERRORS + (OSError,) as e:  # bad records or --output-dir: status 2; writing failed: 1
        return error(e)
    print(format_table(report))
    names = [os.path.relpath(p, args.output_dir) for p in paths]
    drawn = [n for n in names if n.startswith("images" + os.sep)]
    listed = ", ".join(n for n in names if n not in drawn) + (f" and {len(drawn)} drawn images" if drawn else "")
    print(f"wrote {listed} to {args.output_dir}")
    return OK


if __name__ == "__main__":
    sys.exit(main())
