#!/usr/bin/env python
"""The embedded default (what `make demo` runs): the synthetic shapes world on CPU, plain vs VOS vs FFS
over training seeds.

  tools/demo.py --seeds 0,1,2 --jobs 2 --threads 1      # what `make demo` runs: 3 methods x 3 seeds
  tools/demo.py --seeds 0 --methods vanilla,ffs SOLVER.MAX_ITER 200 FFS.START_ITER 130   # a quick look

Generates the world, then for every method and seed trains the detector with that SEED (as
tools/train_net.py does), applies it to the ID test set, the near-OOD set (unseen shapes) and the far-OOD set
(crops of real photographs), evaluates FPR95/AUROC with the released VOS/FFS protocol (eval_ood's default,
docs/paper_parity.md) and compares every box-level score on the same detections (tools/compare_scores.py's
path: post-hoc densities fitted on the training set's proposals, and their fused score); prints mean ± std per
method, the paired per-seed comparison against vanilla, the per-seed rows and the box-score tables. Everything goes to --output-dir (default demo_output/); a job whose outputs exist with the
same settings is reused unless --fresh. Trailing KEY VALUE pairs override every method's config.
"""
import argparse
import os
import sys

from ffs_det.data.shapes import DEFAULT_COUNTS
from ffs_det.demo import METHODS, DemoJobsFailed, run_demo
from ffs_det.exit_status import FAILED, INPUT_ERRORS, OK, error


def _ints(text):
    try:
        return [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", default="demo_output", help="where everything is written")
    parser.add_argument("--methods", default=",".join(METHODS),
                        help=f"comma-separated subset of {','.join(METHODS)} (default: all)")
    parser.add_argument("--seeds", type=_ints, default=[0],
                        help="comma-separated distinct training seeds >= 0 (cfg.SEED), the same for every method "
                             "(default: 0)")
    parser.add_argument("--jobs", type=int, default=1, help="(method, seed) jobs run at once, one process each")
    parser.add_argument("--fresh", action="store_true", help="regenerate, retrain and re-evaluate everything")
    parser.add_argument("--num-train", type=int, default=None,
                        help=f"shapes training images (default {DEFAULT_COUNTS['train']})")
    parser.add_argument("--num-val", type=int, default=None,
                        help=f"shapes ID test images (default {DEFAULT_COUNTS['val']})")
    parser.add_argument("--num-ood", type=int, default=None,
                        help=f"shapes OOD test images (default {DEFAULT_COUNTS['ood']})")
    parser.add_argument("--num-far-ood", type=int, default=None,
                        help=f"far-OOD test images, crops of real photographs (default {DEFAULT_COUNTS['far_ood']})")
    parser.add_argument("--world-seed", "--seed", dest="world_seed", type=int, default=0,
                        help="seed of the shapes world (not of training: see --seeds)")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch CPU threads per job (default: torch's choice; 1 is steadier on a busy machine)")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides: KEY VALUE ...")
    args = parser.parse_args(argv)
    methods = [m for m in args.methods.split(",") if m]  # run_demo checks them, the seeds, jobs and counts
    counts = {k: v for k, v in (("train", args.num_train), ("val", args.num_val), ("ood", args.num_ood),
                                ("far_ood", args.num_far_ood)) if v is not None}
    print(f"ffs_det demo: shapes world, methods {', '.join(methods)}, seeds {','.join(map(str, args.seeds))}, "
          f"outputs in {args.output_dir}/")
    failed = None
    try:
        result = run_demo(args.output_dir, methods, seeds=args.seeds, jobs=args.jobs, fresh=args.fresh,
                          opts=args.opts, counts=counts or None, world_seed=args.world_seed, threads=args.threads)
    except DemoJobsFailed as e:
        if len(e.args) < 2:
            return error(e)
        failed, result = e.args
    except INPUT_ERRORS as e:
        return error(e)
    print()
    print(result["table"])
    if failed:
        print(f"\nerror: {failed}", file=sys.stderr)
        return FAILED
    print(f"\nwall time {result['wall_seconds']:.0f} s; table in {os.path.join(args.output_dir, 'summary.md')}")
    return OK


if __name__ == "__main__":
    sys.exit(main())
