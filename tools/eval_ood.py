#!/usr/bin/env python
"""OOD-detection metrics (VOS/FFS protocol) from the records that tools/apply_net.py writes.

  tools/eval_ood.py --id out/inference/voc_custom_val/records.npz \\
      --ood out/inference/coco_ood_val/records.npz --ood out/inference/openimages_ood_val/records.npz \\
      --output-dir out/ood_report
  tools/eval_ood.py --id ID.npz --ood OOD.npz --thres 0.5 --score-key score --output-dir DIR

Detections with score >= the threshold are kept (default: the optimal-F1 threshold on the annotated ID
records); FPR95 / AUROC / AUPR-In / AUPR-Out of the kept ID vs OOD --score-key values (higher = more ID) are
printed and written to DIR/metrics.json, DIR/metrics.csv, DIR/roc.png and DIR/hist_<set>.png.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ffs_det.evaluation.ood_report import format_table, run_report  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--id", required=True, metavar="ID_RECORDS", help="records .npz of the ID test set")
    p.add_argument("--ood", required=True, action="append", metavar="OOD_RECORDS",
                   help="records .npz of an OOD test set (repeatable)")
    p.add_argument("--thres", type=float, help="detection-score threshold (default: optimal F1 on the ID records)")
    p.add_argument("--score-key", default="energy",
                   help="1-D records array used as the OOD score, higher = more ID (default: energy; e.g. score)")
    p.add_argument("--output-dir", required=True, help="folder for metrics.json, metrics.csv and plots")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        report, paths = run_report(args.id, args.ood, args.output_dir, args.thres, args.score_key)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(format_table(report))
    print(f"wrote {', '.join(os.path.basename(p) for p in paths)} to {args.output_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
