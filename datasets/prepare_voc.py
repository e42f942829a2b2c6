#!/usr/bin/env python
"""PASCAL VOC 2007+2012 XML -> COCO json in the VOC_0712_converted layout.

  python datasets/prepare_voc.py --devkit /data/VOCdevkit --output datasets/VOC_0712_converted

See datasets/README.md and ffs_det/data/converters/voc.py.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ffs_det.data.converters.voc import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
