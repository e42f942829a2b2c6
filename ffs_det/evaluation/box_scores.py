"""Box-level density scores: fit a registered scorer on ID training box features, score record files.

The detector's own OOD score is the energy of each box's logits. Any scorer of
:mod:`ffs_det.density.scorers` can be compared with it on the same boxes: run ``tools/apply_net.py
--save-features`` on the ID training set and on the test sets, then :func:`add_box_scores` fits the scorer
on the training boxes (those matched to a ground-truth box when the records say so, else those with
``score >= min_score``; labels = predicted classes) and writes a copy of each test records file with one
more array, named after the scorer, for ``tools/eval_ood.py --score-key <name>``. Input files are never
modified.
"""
import os
from typing import Dict, List, Sequence

import numpy as np

from ..atomic_io import child_folder
from ..density.scorers import fit_and_score
from .records import load_records, save_records

__all__ = ["add_box_scores"]


def _features(arrays, meta, path):
    if "features" not in arrays:
        raise ValueError(f"records {path}: 'features': missing; rerun tools/apply_net.py with --save-features")
    return arrays["features"]


def _inputs(arrays, meta, path) -> Dict[str, np.ndarray]:
    # box features, plus the inlier-class logits for logit-based scorers (msp, energy, react, ...)
    return {"features": _features(arrays, meta, path), "logits": arrays["logits"][:, :-1]}


def add_box_scores(scorer: str, train_records: str, record_paths: Sequence[str], output_dir: str,
                   min_score: float = 0.5, key: str = "", **scorer_kwargs) -> List[str]:
    """Fit ``scorer`` on ``train_records`` and write each of ``record_paths`` with an added ``key`` array
    (default: the scorer's name) to ``output_dir/<dataset>/records.npz``. Returns the written paths."""
    key = key or scorer
    train, train_meta = load_records(train_records)
    feats = _features(train, train_meta, train_records)
    keep = train["gt_matched"] if "gt_matched" in train else train["score"] >= min_score
    if not keep.any():
        rule = "matched to a ground-truth box" if "gt_matched" in train else f"with score >= {min_score}"
        raise ValueError(f"records {train_records}: no training detections {rule} to fit {scorer!r} on")
    loaded = {}
    for path in record_paths:
        arrays, meta = load_records(path)
        if key in arrays:
            raise ValueError(f"records {path}: {key!r}: already present; choose another --key")
        if _features(arrays, meta, path).shape[1] != feats.shape[1]:
            raise ValueError(f"records {path}: 'features': width {arrays['features'].shape[1]} != "
                             f"{feats.shape[1]} of the training records {train_records}")
        loaded[path] = (arrays, meta)
    train_inputs = {k: v[keep] for k, v in _inputs(train, train_meta, train_records).items()}
    scores = fit_and_score(scorer, train_inputs, train["pred_class"][keep],
                           {p: _inputs(a, m, p) for p, (a, m) in loaded.items()}, **scorer_kwargs)
    names = [m.get("dataset") or os.path.splitext(os.path.basename(p))[0] for p, (_, m) in loaded.items()]
    if len(set(names)) != len(names):
        raise ValueError(f"two record files are of the same dataset ({names}); score them separately")
    for path, name in zip(loaded, names):
        child_folder(output_dir, name, f"records {path}: dataset name")  # before anything is written
    written = []
    for (path, (arrays, meta)), name in zip(loaded.items(), names):
        arrays = dict(arrays, **{key: scores[path].astype(np.float32)})
        meta = dict(meta, box_scores={**meta.get("box_scores", {}),
                                      key: {"scorer": scorer, "train_records": os.path.abspath(train_records),
                                            "fitted_on": int(keep.sum())}})
        written.append(save_records(os.path.join(child_folder(output_dir, name), "records.npz"), arrays, meta))
    return written
