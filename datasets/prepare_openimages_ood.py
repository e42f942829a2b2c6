#!/usr/bin/env python
"""OpenImages images with no ID-benchmark class -> COCO json (OpenImages OOD set).

  python datasets/prepare_openimages_ood.py --boxes validation-annotations-bbox.csv \\
      --class-descriptions class-descriptions-boxable.csv --images /data/openimages/validation \\
      --output datasets/OpenImages/ood_classes_rm_overlap

See datasets/README.md and ffs_det/data/converters/openimages.py.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ffs_det.data.converters.openimages import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
