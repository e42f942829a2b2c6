"""Load the checkpoints the VOS and FFS authors released into ffs_det's model.

The released models (VOS: deeplearning-wisc/vos, VOC and BDD "VOS-RegNet"; FFS: nish03/FFS, VOC, BDD and
Youtube-VIS ``model_final.pth``) are detectron2 checkpoints, ``{"model": state_dict, "optimizer", "scheduler",
"iteration"}``. Their trunk, FPN, RPN, box head and box predictor carry the same state-dict names as ffs_det's
(both build detectron2's ``RegNet``, ``FPN``, ``StandardRPNHead``, ``FastRCNNConvFCHead`` and
``FastRCNNOutputLayers``). Their ROI heads (VOS ``detection/modeling/roihead_gmm.py``, FFS
``Flow-Feature-Synthesis/detection/modeling/flow_generator.py``) name the rest differently:

================================================  ================================================  ===========
released                                          ffs_det                                           change
================================================  ================================================  ===========
``roi_heads.flow_model.module_list.*`` (FFS)      ``roi_heads.synthesizer.flow.inn.module_list.*``  none
``roi_heads.weight_energy.weight`` (1, K)         ``roi_heads.energy_margin.class_weights`` (K,)    reshape
``roi_heads.logistic_regression.{weight,bias}``   ``roi_heads.energy_margin.logistic.*``            none
================================================  ================================================  ===========

Dropped knowingly: ``roi_heads.weight_energy.bias`` (it only feeds the released code's zero-valued dummy loss),
``pixel_mean`` / ``pixel_std`` (ffs_det takes them from the config; checked equal), the anchor generator's
``cell_anchors.*`` (rebuilt from the config), and the optimizer, scheduler and iteration (a converted model
starts a fresh run). ffs_det keys with no released counterpart keep a new model's values: the VOS feature
queues (empty, as the released code has them after a restart: it never saved them) and the flow's running
feature statistics (unused unless ``FFS.FLOW.STANDARDIZE``). Any other key, in either direction, is an error
naming it.

``drop_classes`` removes classes from a checkpoint trained with more outputs than its data has (the released
FFS BDD model: ``NUM_CLASSES`` 10 on the 8-class BDD100K MOT frames, so classes 8 and 9 were trained only as
negatives): their rows of the classifier and box regressor and their energy weights. That changes the model a
little: its softmax and energy run over 8 inlier logits instead of 10 (docs/paper_parity.md).

The released flow stores its permutations (``perm``, ``perm_inv``: FrEIA's ``PermuteRandom`` parameters); a
checkpoint saved without them (an older FrEIA) takes them from the new model when ``fill_permutations`` (the
config seeds them as the released code, ``FFS.FLOW.PERMUTATION_SEEDS per_block`` with ``FFS.FLOW.SEED`` 0).

Files are read with ``torch.load(weights_only=True)``, so a checkpoint cannot run code; the converted file is
written atomically.
"""
import logging
import os
import re
from typing import Dict, Sequence, Tuple

import torch

from ..atomic_io import atomic_open, file_sha256

__all__ = ["convert_state_dict", "convert_checkpoint", "RENAMED", "DROPPED", "FRESH"]

logger = logging.getLogger(__name__)

# released prefix -> ffs_det prefix
RENAMED = {
    "roi_heads.flow_model.": "roi_heads.synthesizer.flow.inn.",
    "roi_heads.logistic_regression.": "roi_heads.energy_margin.logistic.",
}
ENERGY_WEIGHTS = ("roi_heads.weight_energy.weight", "roi_heads.energy_margin.class_weights")
# released keys with no ffs_det counterpart (pattern -> why dropping them changes nothing)
DROPPED = {
    r"roi_heads\.weight_energy\.bias": "feeds only the released code's zero-valued dummy loss",
    r"pixel_(mean|std)": "taken from MODEL.PIXEL_MEAN / MODEL.PIXEL_STD (checked equal)",
    r"proposal_generator\.anchor_generator\.cell_anchors\.\d+": "rebuilt from MODEL.ANCHOR_GENERATOR",
}
# ffs_det keys with no released counterpart: a new model's values are what the released code has
# (the synthesis draw stream: a new model's, which has not drawn yet)
FRESH = (r"roi_heads\.synthesizer\.(queue|count)", r"roi_heads\.synthesizer\.(running_mean|running_var|stats_count)",
         r"roi_heads\.synthesizer\._extra_state")


def _matches(patterns, key: str) -> bool:
    return any(re.fullmatch(p, key) for p in patterns)


def _rename(key: str) -> str:
    if key == ENERGY_WEIGHTS[0]:
        return ENERGY_WEIGHTS[1]
    for old, new in RENAMED.items():
        if key.startswith(old):
            return new + key[len(old):]
    return key


def _drop_class_rows(key: str, value: torch.Tensor, drop: Sequence[int], num_classes: int) -> torch.Tensor:
    """Remove the dropped classes from the classifier (K + 1 rows), the class-specific box regressor (4K rows)
    and the energy weights (K entries) of a checkpoint with ``num_classes`` = K outputs."""
    keep = [c for c in range(num_classes) if c not in set(drop)]
    if key.startswith("roi_heads.box_predictor.cls_score."):
        return value[keep + [num_classes]]  # the background row stays last
    if key.startswith("roi_heads.box_predictor.bbox_pred.") and value.shape[0] == 4 * num_classes:
        return value[[4 * c + j for c in keep for j in range(4)]]
    if key == ENERGY_WEIGHTS[1]:
        return value[keep]
    return value


def convert_state_dict(released: Dict[str, torch.Tensor], model_state: Dict[str, torch.Tensor],
                       pixel_mean: Sequence[float] = (), pixel_std: Sequence[float] = (),
                       drop_classes: Sequence[int] = (), source: str = "checkpoint",
                       fill_permutations: bool = False) -> Dict[str, torch.Tensor]:
    """The released ``state_dict`` under ffs_det's names, complete for ``model_state`` (a new model's state dict,
    which also gives the values of :data:`FRESH` keys). Raises ValueError naming every unknown, missing or
    misshapen key (``source`` names the file)."""
    num_released = released["roi_heads.box_predictor.cls_score.weight"].shape[0] - 1 \
        if "roi_heads.box_predictor.cls_score.weight" in released else None
    if drop_classes and (num_released is None or not all(0 <= c < num_released for c in drop_classes)):
        raise ValueError(f"{source}: --drop-classes {list(drop_classes)} are not classes of its classifier "
                         f"({num_released} classes)")
    out, unknown, shapes = {}, [], []
    for key, value in released.items():
        if not torch.is_tensor(value):
            raise ValueError(f"{source}: {key!r} is a {type(value).__name__}, not a tensor")
        if _matches(DROPPED, key):
            want = {"pixel_mean": pixel_mean, "pixel_std": pixel_std}.get(key)
            if want is not None and len(want) and (value.numel() != len(want) or not torch.allclose(
                    value.reshape(-1).float(), torch.tensor(want, dtype=torch.float32))):
                raise ValueError(f"{source}: {key} is {value.reshape(-1).tolist()} but this config's "
                                 f"MODEL.{key.upper()} is {list(want)}; use the config the model was trained with")
            continue
        name = _rename(key)
        if key == ENERGY_WEIGHTS[0]:
            value = value.reshape(-1)
        if drop_classes:
            value = _drop_class_rows(name, value, drop_classes, num_released)
        if name not in model_state:
            unknown.append(key)
        elif tuple(value.shape) != tuple(model_state[name].shape):
            shapes.append(f"{key}: checkpoint {tuple(value.shape)} vs model {tuple(model_state[name].shape)}")
        else:
            out[name] = value.to(model_state[name].dtype)
    fresh = FRESH + ((r"roi_heads\.synthesizer\.flow\.inn\.module_list\.\d+\.perm(_inv)?",) if fill_permutations else ())
    missing = [k for k in model_state if k not in out and not _matches(fresh, k)]
    problems = []
    if unknown:
        problems.append(f"{len(unknown)} keys ffs_det has no place for: {', '.join(unknown)}")
    if missing:
        problems.append(f"{len(missing)} keys of this config's model are missing: {', '.join(missing)}")
    if shapes:
        problems.append(f"{len(shapes)} keys have another shape: {'; '.join(shapes)}")
    if problems:
        hint = (" (another MODEL.ROI_HEADS.NUM_CLASSES? the released FFS BDD model needs --drop-classes 8,9)"
                if any("box_predictor" in s for s in shapes) else "")
        raise ValueError(f"{source} does not convert to this config's model: {'; '.join(problems)}{hint}")
    for key in model_state:
        if key not in out:
            out[key] = model_state[key].clone()
    return out


def _read(path: str) -> Tuple[Dict[str, torch.Tensor], dict]:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a pickle weights_only refuses, a truncated or foreign file
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"checkpoint {path}: cannot be read as a torch checkpoint without running code "
                         f"({type(e).__name__}: {first})") from None
    if isinstance(data, dict) and isinstance(data.get("model"), dict):
        return data["model"], {k: v for k, v in data.items() if k != "model"}
    if isinstance(data, dict) and data and all(isinstance(k, str) for k in data):
        return data, {}
    raise ValueError(f"checkpoint {path}: holds no model state dict (expected a dict with 'model')")


def convert_checkpoint(cfg, src: str, dst: str, drop_classes: Sequence[int] = (),
                       class_names: Sequence[str] = ()) -> Dict:
    """Convert the released checkpoint ``src`` for the model of ``cfg`` and write it to ``dst``
    (``{"model": state dict, "class_names", "converted_from": {"path", "sha256", "iteration"}}``). The written
    file loads with ``MODEL.WEIGHTS dst`` like a checkpoint ffs_det trained. Returns a summary."""
    from detectron2.modeling import build_model

    released, extra = _read(src)
    cfg = cfg.clone()
    cfg.defrost()
    cfg.MODEL.DEVICE = "cpu"
    model_state = build_model(cfg).state_dict()
    released_permutations = cfg.FFS.FLOW.PERMUTATION_SEEDS == "per_block" and cfg.FFS.FLOW.SEED == 0
    state = convert_state_dict(released, model_state, cfg.MODEL.PIXEL_MEAN, cfg.MODEL.PIXEL_STD, drop_classes,
                               source=f"checkpoint {src}", fill_permutations=released_permutations)
    blob = {"model": state, "converted_from": {"path": os.path.abspath(src), "sha256": file_sha256(src),
                                               "iteration": extra.get("iteration")}}
    if class_names:
        if len(class_names) != cfg.MODEL.ROI_HEADS.NUM_CLASSES:
            raise ValueError(f"{len(class_names)} class names for MODEL.ROI_HEADS.NUM_CLASSES "
                             f"{cfg.MODEL.ROI_HEADS.NUM_CLASSES}")
        blob["class_names"] = list(class_names)
    with atomic_open(dst, "wb") as f:
        torch.save(blob, f)
    names = {k: _rename(k) for k in released}
    from_released = set(names.values())
    return {"keys": len(state), "renamed": sum(1 for k, name in names.items() if name != k),
            "dropped": [k for k in released if _matches(DROPPED, k)],
            "fresh": [k for k in state if k not in from_released], "drop_classes": list(drop_classes)}
