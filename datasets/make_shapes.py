#!/usr/bin/env python
"""Generate the synthetic shapes world (ID: circle/square/triangle; OOD: star/cross/ring/hexagon; far OOD: crops
of real photographs).

  python datasets/make_shapes.py                       # 600/600/600 images into $FFS_DATASETS/shapes or datasets/shapes
  python datasets/make_shapes.py --output datasets/shapes --num-train 600 --num-val 600 --num-ood 600 --seed 0

--output is the shapes folder itself (registered as <dataset_dir>/shapes). Splits already generated with
the same seed and size are kept unless --force. See ffs_det/data/shapes.py for what the world contains.
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ffs_det.data.paths import default_dataset_dir  # noqa: E402
from ffs_det.data.shapes import DEFAULT_COUNTS, generate_world  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", default=os.path.join(default_dataset_dir(), "shapes"),
                   help="the shapes folder to write (default: <$FFS_DATASETS or datasets>/shapes)")
    p.add_argument("--num-train", type=int, default=DEFAULT_COUNTS["train"])
    p.add_argument("--num-val", type=int, default=DEFAULT_COUNTS["val"])
    p.add_argument("--num-ood", type=int, default=DEFAULT_COUNTS["ood"])
    p.add_argument("--num-far-ood", type=int, default=DEFAULT_COUNTS["far_ood"],
                   help="far-OOD images: crops of real photographs (ffs_det/data/photos.py)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--force", action="store_true", help="regenerate splits that are already up to date")
    args = p.parse_args(argv)
    for key in ("num_train", "num_val", "num_ood", "num_far_ood"):
        if getattr(args, key) < 0:
            p.error(f"--{key.replace('_', '-')} must be >= 0")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    t0 = time.perf_counter()
    counts = {"train": args.num_train, "val": args.num_val, "ood": args.num_ood, "far_ood": args.num_far_ood}
    result = generate_world(args.output, counts, seed=args.seed, force=args.force)
    for split, info in result.items():
        if info.get("skipped"):
            print(f"{split:5s}: up to date, kept {info['json']}")
        else:
            print(f"{split:5s}: {info['images']} images, {info['boxes']} boxes -> {info['json']}")
    print(f"shapes world in {args.output} ({time.perf_counter() - t0:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
