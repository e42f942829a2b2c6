#!/usr/bin/env python
"""COCO val2017 images with no object of an ID benchmark's classes (COCO OOD sets).

  python datasets/prepare_coco_ood.py --instances datasets/COCO/annotations/instances_val2017.json --id-benchmark voc

See datasets/README.md and ffs_det/data/converters/coco_ood.py.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ffs_det.data.converters.coco_ood import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
