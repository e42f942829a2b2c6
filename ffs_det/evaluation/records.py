"""Per-detection records: one ``.npz`` per (model, dataset), written by apply_net and read by eval_ood
(docs/records.md: the format for users, and how another detector writes it).

This module is the format's one definition: the arrays (:data:`REQUIRED`, :data:`OPTIONAL`, and the
:data:`PROPOSAL_ARRAYS` of proposal records) with their dtypes, the meta keys (:data:`REQUIRED_META`,
:func:`feature_space`, :func:`proposal_meta`), and the checks of :func:`validate_records`. Writers cast what they
collect with :func:`as_record_array`.

Any other array is allowed if its first dimension is N (e.g. a box-level scorer's output). When ``features``
are present, ``meta["feature_space"]`` says which: ``"output"`` (the box head's output, what the classifier
sees) or ``"preactivation"`` (its last layer before the final ReLU); records without the key hold output
features.

Proposal records (``proposals.npz``, ``apply_net --proposals-of``; :mod:`.proposals`) use the same format for
the boxes of an annotated set's foreground proposals, ground-truth boxes and background proposals, with
``meta["kind"] = "proposals"``, ``meta["proposals"]`` (the extraction settings) and the two arrays of
:data:`PROPOSAL_ARRAYS`. ``meta`` is a JSON object stored as a string: ``dataset``, ``model``, ``num_classes``
(K), ``class_names`` (K names), ``config``, and ``num_gt`` (the number of ground-truth boxes, required with
``gt_matched``); apply_net also writes ``image_files`` (``{image id: file name}`` of every image of the set),
``weights_sha256`` and, on a set annotated in the model's classes, ``papers_threshold`` (the released VOS/FFS
detection threshold from COCOeval: ``{"threshold", "unrounded", "per_class"}``, :mod:`.coco_eval`); more keys
are allowed. Files are written atomically and read with ``allow_pickle=False``; every problem is a ValueError
naming the file and the key.
"""
import io
import json
import os
import tokenize
import zipfile
import zlib
from typing import Dict, Tuple

import numpy as np

from ..atomic_io import atomic_open

__all__ = ["REQUIRED", "OPTIONAL", "PROPOSAL_ARRAYS", "REQUIRED_META", "INFERENCE_KEYS", "save_records",
           "load_records", "validate_records", "as_record_array", "feature_space", "proposal_meta",
           "proposal_foreground", "same_detections", "inference_settings", "check_detections", "check_same_model",
           "config_datasets"]

# what numpy raises on a corrupt archive or .npy header (its header parser uses ast and tokenize)
_CORRUPT = (OSError, EOFError, SyntaxError, TypeError, tokenize.TokenError, zipfile.BadZipFile, zlib.error)

# The arrays of records, N detections in K inlier classes: key -> (dtype, number of dimensions)
REQUIRED = {
    "image_id": (np.int64, 1),  # dataset image id
    "boxes": (np.float32, 2),  # (N, 4) XYXY, absolute pixels
    "pred_class": (np.int64, 1),  # predicted class in [0, K)
    "score": (np.float32, 1),  # detection score: softmax probability of pred_class
    "energy": (np.float32, 1),  # logsumexp of the K inlier logits (higher = more ID)
    "logits": (np.float32, 2),  # (N, K + 1) class logits, last column = background
}
OPTIONAL = {
    "features": (np.float32, 2),  # (N, D) box features, in the space feature_space(meta) names
    "gt_matched": (np.bool_, 1),  # matched a ground-truth box of its class (IoU >= 0.5); needs meta num_gt
    "flow_loglik": (np.float32, 1),  # FFS models: log-density (nats) of the box under the trained flow
    "safe_features": (np.float32, 2),  # (N, S) SAFE's backbone features of each box (.safe)
    "safe_features_adv": (np.float32, 2),  # training set: the same boxes in FGSM-perturbed images (NaN rows for
                                           # images without ground truth)
}
# the two more arrays of proposal records (meta kind "proposals")
PROPOSAL_ARRAYS = {
    "gt_class": (np.int64, 1),  # class of the best-overlapping ground-truth box; K for a background proposal
    "iou": (np.float32, 1),  # that overlap (1 for a ground-truth box)
}
REQUIRED_META = ("dataset", "model", "num_classes", "class_names", "config")
RESERVED_KEYS = ("file", "allow_pickle")  # names np.savez would take as its own arguments
PROPOSALS_KIND = "proposals"  # meta kind of proposal records
_FINITE = ("boxes", "score", "energy")


# the config keys that change which detections (boxes, scores, features) inference gives for one checkpoint
INFERENCE_KEYS = ("INPUT.MIN_SIZE_TEST", "INPUT.MAX_SIZE_TEST", "INPUT.FORMAT", "MODEL.PIXEL_MEAN", "MODEL.PIXEL_STD",
                  "MODEL.RPN.PRE_NMS_TOPK_TEST", "MODEL.RPN.POST_NMS_TOPK_TEST", "MODEL.RPN.NMS_THRESH",
                  "MODEL.ROI_HEADS.NMS_THRESH_TEST", "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "TEST.DETECTIONS_PER_IMAGE",
                  "TEST.AUG.ENABLED")


def as_record_array(key: str, values) -> np.ndarray:
    """``values`` as the records array ``key`` (of :data:`REQUIRED`, :data:`OPTIONAL` or
    :data:`PROPOSAL_ARRAYS`): a copy in its dtype, what a writer of records stores."""
    dtype, _ = {**REQUIRED, **OPTIONAL, **PROPOSAL_ARRAYS}[key]
    return np.asarray(values).astype(dtype)


def feature_space(meta: dict) -> str:
    """Which box features the records' ``features`` are: ``"output"`` or ``"preactivation"`` (records written
    before meta ``feature_space`` existed hold output features)."""
    return meta.get("feature_space", "output")


def proposal_meta(meta: dict, settings: dict) -> dict:
    """The meta of the proposal records of the set whose detection records have ``meta``: kind
    :data:`PROPOSALS_KIND`, the extraction ``settings`` (whose ``space`` is their feature space), and none of the
    detections' ``num_gt`` and ``papers_threshold``."""
    out = dict(meta, kind=PROPOSALS_KIND, feature_space=settings["space"], proposals=settings)
    for key in ("papers_threshold", "num_gt"):
        out.pop(key, None)
    return out


def same_detections(a: Dict[str, np.ndarray], b: Dict[str, np.ndarray]) -> bool:
    """Whether two records' arrays hold the same detections (image ids, scores and boxes): one set's records
    under two names."""
    return all(k in a and k in b and np.array_equal(a[k], b[k]) for k in ("image_id", "score", "boxes"))


def _config(meta: dict) -> dict:
    """The records' ``config`` (a YAML dump, read with ``yaml.safe_load``) as a dict; {} when unreadable."""
    import yaml

    text = meta.get("config")
    try:
        cfg = yaml.safe_load(text) if isinstance(text, str) else None
    except yaml.YAMLError:
        return {}
    return cfg if isinstance(cfg, dict) else {}


def _lookup(cfg: dict, key: str):
    for part in key.split("."):
        if not isinstance(cfg, dict) or part not in cfg:
            return None
        cfg = cfg[part]
    return cfg


def inference_settings(meta: dict) -> Dict[str, object]:
    """The :data:`INFERENCE_KEYS` values of the records' ``config`` (those it has)."""
    cfg = _config(meta)
    return {k: v for k in INFERENCE_KEYS for v in [_lookup(cfg, k)] if v is not None}


def config_datasets(meta: dict, which: str) -> Tuple[str, ...]:
    """``DATASETS.TRAIN`` or ``DATASETS.TEST`` of the records' ``config`` (() when unknown)."""
    value = _lookup(_config(meta), f"DATASETS.{which}")
    return tuple(str(v) for v in value) if isinstance(value, (list, tuple)) else ()


def check_detections(path: str, meta: dict) -> None:
    """ValueError when the records ``path`` are proposal records (``meta["kind"] == "proposals"``), which hold
    an annotated set's proposals and ground-truth boxes, not the model's detections."""
    if meta.get("kind") == PROPOSALS_KIND:
        raise ValueError(f"records {path} are proposal records (apply_net --proposals-of: proposals and "
                         "ground-truth boxes to fit scorers on), not detections; give the records.npz of that "
                         "folder")


def check_same_model(ref_role: str, ref_path: str, ref_meta: dict, role: str, path: str, meta: dict) -> None:
    """ValueError unless the records ``path`` (``role``, e.g. "OOD") come from the model and inference settings of
    the records ``ref_path`` (``ref_role``, e.g. "ID"): the same class names, checkpoint (SHA-256, when both
    records carry it) and :data:`INFERENCE_KEYS` values (when both carry a config)."""
    if meta.get("class_names") != ref_meta.get("class_names"):
        raise ValueError(f"{role} records {path} come from a model with classes {meta.get('class_names')}, "
                         f"the {ref_role} records {ref_path} from one with {ref_meta.get('class_names')}")
    sha = meta.get("weights_sha256"), ref_meta.get("weights_sha256")
    if None not in sha and sha[0] != sha[1]:
        raise ValueError(f"{role} records {path} come from another checkpoint than the {ref_role} records {ref_path} "
                         f"(weights sha256 {str(sha[0])[:12]}... vs {str(sha[1])[:12]}..., "
                         f"{meta.get('weights')} vs {ref_meta.get('weights')}); rerun apply_net on every set with "
                         "one checkpoint")
    mine, ref = inference_settings(meta), inference_settings(ref_meta)
    differ = [k for k in INFERENCE_KEYS if k in mine and k in ref and mine[k] != ref[k]]
    if differ:
        shown = ", ".join(f"{k} {mine[k]!r} vs {ref[k]!r}" for k in differ)
        raise ValueError(f"{role} records {path} were made with other inference settings than the {ref_role} "
                         f"records {ref_path} ({shown}); rerun apply_net on every set with one config")


def _schema(key: str):
    """``(dtype, number of dimensions)`` that :func:`validate_records` checks array ``key`` for, or None."""
    return REQUIRED.get(key) or OPTIONAL.get(key)


def _fail(path: str, key: str, msg: str):
    raise ValueError(f"records {path}: {key!r}: {msg}")


def validate_records(arrays: Dict[str, np.ndarray], meta: dict, path: str = "<memory>") -> int:
    """Check keys, dtypes, shapes and meta; return N. Raises ValueError naming ``path`` and the key."""
    if "meta" in arrays:
        _fail(path, "meta", "'meta' is reserved for the JSON metadata; pass it as meta")
    for key in RESERVED_KEYS:
        if key in arrays:
            _fail(path, key, "is not a usable array name (numpy's savez takes it as an argument)")
    for key in REQUIRED:
        if key not in arrays:
            _fail(path, key, f"missing (required: {', '.join(REQUIRED)})")
    n = int(np.shape(arrays["image_id"])[0]) if np.ndim(arrays["image_id"]) else -1
    for key, arr in arrays.items():
        if not isinstance(arr, np.ndarray):
            _fail(path, key, f"must be a numpy array, got {type(arr).__name__}")
        if arr.dtype.kind not in "biuf":
            _fail(path, key, f"must be a numeric or bool array, got dtype {arr.dtype}")
        want = _schema(key)
        if want is not None:
            dtype, ndim = want
            if arr.dtype != dtype:
                _fail(path, key, f"dtype must be {np.dtype(dtype).name}, got {arr.dtype}")
            if arr.ndim != ndim:
                _fail(path, key, f"must have {ndim} dimension(s), got shape {arr.shape}")
        if arr.ndim == 0 or arr.shape[0] != n:
            _fail(path, key, f"length {arr.shape[0] if arr.ndim else 'scalar'} does not match image_id ({n})")
    if arrays["boxes"].shape[1] != 4:
        _fail(path, "boxes", f"must be (N, 4) XYXY, got shape {arrays['boxes'].shape}")
    for key in _FINITE:
        bad = ~np.isfinite(arrays[key])
        if bad.any():
            _fail(path, key, f"{int(bad.sum())} values are NaN or infinite")

    if not isinstance(meta, dict):
        _fail(path, "meta", f"must be a JSON object, got {type(meta).__name__}")
    for key in REQUIRED_META:
        if key not in meta:
            _fail(path, "meta", f"missing key {key!r} (required: {', '.join(REQUIRED_META)})")
    k = meta["num_classes"]
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        _fail(path, "meta", f"num_classes must be a positive integer, got {k!r}")
    names = meta["class_names"]
    if not isinstance(names, list) or len(names) != k or not all(isinstance(s, str) for s in names):
        _fail(path, "meta", f"class_names must be a list of {k} strings, got {names!r}")
    if arrays["logits"].shape[1] != k + 1:
        _fail(path, "logits", f"must have num_classes + 1 = {k + 1} columns, got shape {arrays['logits'].shape}")
    pc = arrays["pred_class"]
    if n and (pc.min() < 0 or pc.max() >= k):
        _fail(path, "pred_class", f"values must be in [0, {k}), got range [{pc.min()}, {pc.max()}]")
    if "gt_matched" in arrays:
        num_gt = meta.get("num_gt")
        if not isinstance(num_gt, int) or isinstance(num_gt, bool) or num_gt < 0:
            _fail(path, "meta", f"num_gt must be a non-negative integer when gt_matched is present, got {num_gt!r}")
        if int(arrays["gt_matched"].sum()) > num_gt:
            _fail(path, "gt_matched", f"{int(arrays['gt_matched'].sum())} matches but only num_gt={num_gt} boxes")
    return n


def proposal_foreground(arrays: Dict[str, np.ndarray], num_classes: int) -> np.ndarray:
    """Boolean ``(N,)``: the rows of proposal records that are foreground (a ground-truth box, or a proposal
    overlapping one enough), those a density is fitted on; background proposals have ``gt_class == K``."""
    return arrays["gt_class"] < int(num_classes)


def _coerce(key: str, arr) -> np.ndarray:
    """Cast the known keys to their dtype when that loses nothing (e.g. float64 -> float32, int32 -> int64)."""
    arr = np.asarray(arr)
    want = _schema(key)
    if want is None or arr.dtype == want[0]:
        return arr
    dtype = np.dtype(want[0])
    ok = (dtype.kind == "f" and arr.dtype.kind in "fiu") or (dtype.kind == "i" and arr.dtype.kind in "iu"
                                                              and np.can_cast(arr.dtype, dtype))
    return arr.astype(dtype) if ok else arr


def save_records(path: str, arrays: Dict[str, np.ndarray], meta: dict) -> str:
    """Validate and write records to ``path`` atomically (temp file + ``os.replace``). Returns ``path``.

    Known keys are cast to their dtype when the cast is safe (floats to float32, narrower ints to int64).
    """
    arrays = {k: _coerce(k, v) for k, v in arrays.items()}
    validate_records(arrays, meta, path)
    try:
        meta_json = json.dumps(meta, allow_nan=False)
    except (TypeError, ValueError) as e:
        _fail(path, "meta", f"not JSON-serialisable ({e})")
    buf = io.BytesIO()
    np.savez_compressed(buf, meta=np.array(meta_json), **arrays)
    with atomic_open(path, "wb") as f:
        f.write(buf.getvalue())
    return path


def load_records(path: str) -> Tuple[Dict[str, np.ndarray], dict]:
    """``(arrays, meta)`` from a records file, validated. FileNotFoundError if absent, else ValueError."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"records file not found: {path}")
    if not zipfile.is_zipfile(path):
        raise ValueError(f"records {path}: not an .npz (zip) archive ({os.path.getsize(path)} bytes; "
                         "write records with apply_net or save_records)")
    try:
        npz = np.load(path, allow_pickle=False)
    except (ValueError, *_CORRUPT) as e:
        raise ValueError(f"records {path}: not a readable .npz file ({e})") from None
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise ValueError(f"records {path}: not an .npz archive (a single array of shape {np.shape(npz)})")
    arrays = {}
    with npz:
        for key in npz.files:
            try:
                arrays[key] = npz[key]
            except ValueError as e:
                if "allow_pickle" in str(e):  # an object array
                    _fail(path, key, f"cannot be read without pickle ({e})")
                _fail(path, key, f"corrupt entry ({e})")
            except _CORRUPT as e:
                _fail(path, key, f"corrupt entry ({type(e).__name__}: {e})")
    if "meta" not in arrays:
        _fail(path, "meta", "missing (a JSON string with dataset, model, num_classes, class_names, config)")
    raw = arrays.pop("meta")
    if raw.dtype.kind != "U" or raw.ndim != 0:
        _fail(path, "meta", f"must be a JSON string, got dtype {raw.dtype} shape {raw.shape}")
    try:
        meta = json.loads(str(raw))
    except json.JSONDecodeError as e:
        _fail(path, "meta", f"invalid JSON ({e})")
    except RecursionError:
        _fail(path, "meta", "JSON nested too deeply to read")
    validate_records(arrays, meta, path)
    return arrays, meta
