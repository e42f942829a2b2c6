#!/usr/bin/env python
"""The embedded default (what `make demo` runs): the synthetic shapes world on CPU, plain vs VOS vs FFS.

Generates the world, trains the three detectors with the same seed, applies each to the ID and OOD test
sets, evaluates FPR95/AUROC with the VOS/FFS protocol and prints one comparison table. Everything goes
to --output-dir (default demo_output/); a second run reuses what is there unless --fresh.
Trailing KEY VALUE pairs override the three configs (e.g. SOLVER.MAX_ITER 200 for a quick look).
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

import ffs_det.modeling  # noqa: E402,F401
from ffs_det.demo import METHODS, run_demo  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", default="demo_output", help="where everything is written")
    parser.add_argument("--methods", default=",".join(METHODS),
                        help=f"comma-separated subset of {','.join(METHODS)} (default: all)")
    parser.add_argument("--fresh", action="store_true", help="regenerate, retrain and re-evaluate everything")
    parser.add_argument("--num-train", type=int, default=None, help="shapes training images (default 600)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the shapes world")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch CPU threads (default: torch's choice; 1 is steadier on a busy machine)")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides: KEY VALUE ...")
    args = parser.parse_args(argv)
    methods = [m for m in args.methods.split(",") if m]
    unknown = sorted(set(methods) - set(METHODS))
    if unknown or not methods:
        parser.error(f"--methods: unknown {unknown or 'empty list'}; choose from {','.join(METHODS)}")
    counts = {"train": args.num_train} if args.num_train else None
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"ffs_det demo: shapes world, methods {', '.join(methods)}, outputs in {args.output_dir}/")
    result = run_demo(args.output_dir, methods, fresh=args.fresh, opts=args.opts, counts=counts,
                      seed=args.seed)
    print()
    print(result["table"])
    print(f"\nwall time {result['wall_seconds']:.0f} s; table in {os.path.join(args.output_dir, 'summary.md')}")


if __name__ == "__main__":
    main()
