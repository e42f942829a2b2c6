"""ffs_det: a Detectron2 plugin for object-level out-of-distribution detection (FFS, VOS)."""
from setuptools import find_packages, setup

setup(
    name="ffs_det",
    version="0.1.0",
    description="Flow feature synthesis (FFS) and VOS outlier-aware object detection for Detectron2, "
    "plus a shared feature-density OOD toolbox for image-level benchmarks",
    packages=find_packages(include=["ffs_det", "ffs_det.*"]),
    python_requires=">=3.9",
    install_requires=[
        "torch>=2.1",
        "torchvision>=0.16",
        "FrEIA>=0.2",
        "numpy",
        "scipy",
        "scikit-learn",
        "matplotlib",
        "tqdm",
        "Pillow",
        "pyyaml",
        "fvcore",
        "iopath",
        "pycocotools>=2.0.2",
        "scikit-image",
    ],
    extras_require={
        # detectron2 itself is installed separately (see README): it is not on PyPI.
        "test": ["pytest>=7", "hypothesis", "pytorch-ood==0.4.0", "faiss-cpu"],
        "bench": ["normflows", "psutil", "faiss-cpu"],
        # the KNN scorer uses faiss when it is installed (scikit-learn otherwise)
        "faiss": ["faiss-cpu"],
    },
)
