"""Converters from the benchmarks' native annotation formats to COCO json (no detectron2 needed).

One module per source; each has a ``main(argv)`` CLI used by the scripts in ``datasets/``. All of them
apply the box rule of :mod:`ffs_det.data.boxes` and write their json atomically.
"""
