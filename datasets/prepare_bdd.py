#!/usr/bin/env python
"""BDD100K detection labels -> COCO json (10 classes).

  python datasets/prepare_bdd.py --labels bdd100k_labels_images_train.json \\
      --images datasets/BDD100k/images/100k/train --output datasets/BDD100k/train_bdd_converted.json

See datasets/README.md and ffs_det/data/converters/bdd.py.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ffs_det.data.converters.bdd import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
