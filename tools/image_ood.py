#!/usr/bin/env python
"""Image-level OOD detection benchmark: extract classifier features, fit OOD scorers, report FPR95 / AUROC /
AUPR with ROC and histogram plots.

Examples::

    # the embedded real-data benchmark (Fashion-MNIST vs digits and textures; CPU, minutes)
    python tools/image_ood.py --threads 1 fashion-benchmark --output-dir output/fashion

    # ImageNet (ResNet-50 weights from a local file) vs Textures / iNaturalist / SUN / Places folders
    python tools/image_ood.py run --model resnet50 --weights resnet50.pth \\
        --id-train folder:/data/imagenet/train --max-train 100000 --id-test folder:/data/imagenet/val \\
        --ood textures=folder:/data/dtd/images --ood inaturalist=folder:/data/iNaturalist \\
        --ood sun=folder:/data/SUN --ood places=folder:/data/Places --output-dir output/imagenet

See ``python tools/image_ood.py SUBCOMMAND --help`` and docs/image_benchmark.md.
"""
import sys

from ffs_det.image.cli import main

if __name__ == "__main__":
    sys.exit(main())
