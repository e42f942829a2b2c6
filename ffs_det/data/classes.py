"""Class lists of the detection benchmarks, and which COCO / OpenImages classes overlap them.

The ID class lists (names and order) are those of the VOS/FFS benchmark json files: category id ``i + 1``
is ``CLASSES[i]``. The overlap tables say which classes of an OOD source depict the same concept as an
ID class; an OOD image may contain none of them ("rm_overlap").
"""
from typing import Dict, FrozenSet, Tuple

__all__ = [
    "VOC_CLASSES", "VOC_XML_NAMES", "BDD_CLASSES", "BDD_TRACK_CLASSES", "BDD_LABEL_ALIASES", "VIS21_CLASSES",
    "COCO_OVERLAP", "OPENIMAGES_OVERLAP", "coco_overlap", "openimages_overlap",
]

# PASCAL VOC in the VOS order, with COCO-style names.
VOC_CLASSES: Tuple[str, ...] = (
    "person", "bird", "cat", "cow", "dog", "horse", "sheep", "airplane", "bicycle", "boat", "bus", "car",
    "motorcycle", "train", "bottle", "chair", "dining table", "potted plant", "couch", "tv",
)
# VOC XML <name> -> VOC_CLASSES entry (the names that differ; others are identical).
VOC_XML_NAMES: Dict[str, str] = {
    "aeroplane": "airplane", "diningtable": "dining table", "motorbike": "motorcycle",
    "pottedplant": "potted plant", "sofa": "couch", "tvmonitor": "tv",
}

# BDD100K detection classes (the 10 of the BDD100K detection benchmark).
BDD_CLASSES: Tuple[str, ...] = (
    "pedestrian", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle", "traffic light",
    "traffic sign",
)
# BDD100K MOT (tracking) detection labels, as FFS registers its bdd_tracking_2k sets: the first 8 of the above.
BDD_TRACK_CLASSES: Tuple[str, ...] = BDD_CLASSES[:8]
# Label names of the 2018 release (bdd100k_labels_images_*.json) -> BDD_CLASSES; det_20 labels use
# BDD_CLASSES names directly. Other labels ("drivable area", "lane", "other vehicle", "trailer", ...) are
# not detection classes and are skipped.
BDD_LABEL_ALIASES: Dict[str, str] = {"person": "pedestrian", "bike": "bicycle", "motor": "motorcycle"}

# Youtube-VIS 2021: all 40 categories, ids 1..40 in this order.
VIS21_CLASSES: Tuple[str, ...] = (
    "airplane", "bear", "bird", "boat", "car", "cat", "cow", "deer", "dog", "duck", "earless_seal",
    "elephant", "fish", "flying_disc", "fox", "frog", "giant_panda", "giraffe", "horse", "leopard", "lizard",
    "monkey", "motorbike", "mouse", "parrot", "person", "rabbit", "shark", "skateboard", "snake",
    "snowboard", "squirrel", "surfboard", "tennis_racket", "tiger", "train", "truck", "turtle", "whale",
    "zebra",
)

# ID benchmark -> COCO category names depicting an ID concept.
COCO_OVERLAP: Dict[str, FrozenSet[str]] = {
    "voc": frozenset(VOC_CLASSES),
    "bdd": frozenset({"person", "car", "truck", "bus", "train", "motorcycle", "bicycle", "traffic light",
                      "stop sign"}),
    # 'mouse' is an animal in Youtube-VIS but a computer mouse in COCO: no overlap. Animals without a COCO
    # class (deer, fox, shark, ...) overlap nothing; duck/parrot are birds, giant_panda is a bear.
    "vis": frozenset({"airplane", "bear", "bird", "boat", "car", "cat", "cow", "dog", "elephant", "frisbee",
                      "giraffe", "horse", "motorcycle", "person", "skateboard", "snowboard", "surfboard",
                      "tennis racket", "train", "truck", "zebra"}),
}

_OI_PERSON = ("Person", "Man", "Woman", "Boy", "Girl", "Human body", "Human face", "Human head", "Human hand",
              "Human arm", "Human leg", "Human foot", "Human hair", "Human eye", "Human mouth", "Human nose",
              "Human ear", "Human beard")
_OI_VEHICLE = ("Vehicle", "Land vehicle", "Car", "Limousine", "Taxi", "Van", "Ambulance", "Bus", "Truck",
               "Train", "Motorcycle", "Bicycle", "Bicycle wheel", "Vehicle registration plate")
# ID benchmark -> OpenImages (v4-v7) display names depicting an ID concept (the class hierarchy flattened
# by hand; extend with --exclude-classes-file).
OPENIMAGES_OVERLAP: Dict[str, FrozenSet[str]] = {
    "voc": frozenset(_OI_PERSON + _OI_VEHICLE + (
        "Bird", "Duck", "Goose", "Swan", "Eagle", "Falcon", "Owl", "Parrot", "Penguin", "Sparrow", "Chicken",
        "Turkey", "Ostrich", "Raven", "Magpie", "Woodpecker", "Blue jay", "Canary", "Cat", "Cattle", "Bull",
        "Dog", "Horse", "Sheep", "Airplane", "Aircraft", "Boat", "Canoe", "Gondola", "Jet ski", "Barge",
        "Bottle", "Chair", "Table", "Kitchen & dining room table", "Coffee table", "Houseplant", "Flowerpot",
        "Couch", "Sofa bed", "Studio couch", "Loveseat", "Television")),
    "bdd": frozenset(_OI_PERSON + _OI_VEHICLE + ("Traffic light", "Traffic sign", "Stop sign")),
}


def coco_overlap(id_benchmark: str) -> FrozenSet[str]:
    if id_benchmark not in COCO_OVERLAP:
        raise ValueError(f"unknown ID benchmark {id_benchmark!r}; choose from {', '.join(sorted(COCO_OVERLAP))}")
    return COCO_OVERLAP[id_benchmark]


def openimages_overlap(id_benchmark: str) -> FrozenSet[str]:
    if id_benchmark not in OPENIMAGES_OVERLAP:
        raise ValueError(f"unknown ID benchmark {id_benchmark!r}; choose from "
                         f"{', '.join(sorted(OPENIMAGES_OVERLAP))}")
    return OPENIMAGES_OVERLAP[id_benchmark]
