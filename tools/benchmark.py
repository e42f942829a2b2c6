#!/usr/bin/env python
"""Measure ffs_det's speed and memory in one run; print a table and write JSON.

    python tools/benchmark.py --quick --output benchmark.json     # seconds
    python tools/benchmark.py --output benchmark.json             # minutes (the numbers in docs/benchmark.md)
    python tools/benchmark.py --device cuda                       # on a GPU
    python tools/benchmark.py --sections fit_memory,extraction    # some sections only
"""
import argparse
import logging
import sys
import warnings


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny sizes (seconds); for smoke tests")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda[:N]")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default=None, help="write the results as JSON to this file")
    parser.add_argument("--sections", default=None,
                        help="comma-separated sections to run (default: all, but paper_detector only on a GPU): "
                             "training_step, inference, synthesis, paper_detector, metrics, flow_fit, knn, memory, "
                             "fit_memory, extraction")
    args = parser.parse_args(argv)

    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    logging.getLogger("ffs_det.detectron2_compat").setLevel(logging.ERROR)
    from ffs_det.benchmark import format_measurements, run_benchmark, write_json

    try:
        sections = [x.strip() for x in args.sections.split(",") if x.strip()] if args.sections else None
        results = run_benchmark(quick=args.quick, device=args.device, threads=args.threads, seed=args.seed,
                                log=lambda m: print(f"[benchmark] {m}", file=sys.stderr, flush=True),
                                sections=sections)
    except ValueError as e:
        parser.error(str(e))
    print(format_measurements(results))
    if args.output:
        write_json(results, args.output)
        print(f"results written to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
