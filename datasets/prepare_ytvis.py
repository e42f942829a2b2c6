#!/usr/bin/env python
"""Youtube-VIS 2021 train videos -> per-frame COCO json split by video into vis21_train / vis21_val.

  python datasets/prepare_ytvis.py --annotations datasets/Youtube-VIS/train/instances.json

See datasets/README.md and ffs_det/data/converters/ytvis.py.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ffs_det.data.converters.ytvis import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
