"""The papers' evaluation protocol: COCOeval threshold, keep rule and FPR95 point, against independent
computations on hand-built sets where they differ from the global-F1 protocol."""
import json

import numpy as np
import pytest

from ffs_det.density.metrics import ood_metrics, optimal_f1_threshold
from ffs_det.evaluation.coco_eval import evaluate_boxes
from ffs_det.evaluation.detections import annotate_matches
from ffs_det.evaluation.ood_report import evaluate_ood
from ffs_det.evaluation.records import save_records
from records_factory import records_meta

CLASSES = ["cat", "dog"]


def _jitter(box, dx):
    x0, y0, x1, y1 = box
    return [x0 + dx, y0 + dx, x1 + dx, y1 + dx]


def _hand_built_set(tmp_path, name):
    """Six 100x100 images with one or two ground-truth boxes each (category ids 3 and 7 in the json), and
    detections at varied IoU and scores; registered in detectron2's catalog as ``name``."""
    from detectron2.data import DatasetCatalog
    from detectron2.data.datasets import register_coco_instances

    rng = np.random.default_rng(4)
    images, annotations, dets = [], [], []
    for i in range(1, 7):
        images.append({"id": i, "file_name": f"{i}.png", "width": 100, "height": 100})
        for j in range(1 + i % 2):
            c = (i + j) % 2
            box = [10.0 + 40 * j, 10.0, 40.0 + 40 * j, 50.0]
            annotations.append({"id": len(annotations) + 1, "image_id": i, "category_id": (3, 7)[c],
                                "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]],
                                "area": (box[2] - box[0]) * (box[3] - box[1]), "iscrowd": 0})
            # a tight detection, a loose one (IoU ~0.6: a match at 0.5, not at 0.75) and a wrong class
            dets.append((i, c, _jitter(box, 1.0), float(rng.uniform(0.3, 0.95))))
            dets.append((i, c, _jitter(box, 7.0), float(rng.uniform(0.1, 0.9))))
            dets.append((i, 1 - c, _jitter(box, 2.0), float(rng.uniform(0.05, 0.6))))
        dets.append((i, i % 2, [60.0, 60.0, 90.0, 95.0], float(rng.uniform(0.05, 0.8))))  # a false positive
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations,
                                "categories": [{"id": 3, "name": "cat"}, {"id": 7, "name": "dog"}]}))
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        from detectron2.data import MetadataCatalog
        MetadataCatalog.remove(name)
    register_coco_instances(name, {}, str(path), str(tmp_path))
    n = len(dets)
    logits = rng.normal(0, 1, (n, 3)).astype(np.float32)
    arrays = {"image_id": np.array([d[0] for d in dets], np.int64),
              "pred_class": np.array([d[1] for d in dets], np.int64),
              "boxes": np.array([d[2] for d in dets], np.float32),
              "score": np.array([d[3] for d in dets], np.float32), "logits": logits}
    arrays["energy"] = np.log(np.exp(logits[:, :2]).sum(1)).astype(np.float32)
    return str(path), arrays


def _independent_threshold(gt_json, arrays):
    """The released code's rule, written out per class with loops over COCOeval's arrays."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt = COCO(gt_json)
    res = gt.loadRes([{"image_id": int(i), "category_id": (3, 7)[int(c)], "score": float(s),
                       "bbox": [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])]}
                      for i, c, b, s in zip(arrays["image_id"], arrays["pred_class"], arrays["boxes"], arrays["score"])])
    ev = COCOeval(gt, res, "bbox")
    ev.evaluate()
    ev.accumulate()
    per_class = []
    for k in range(2):
        best, best_f1 = 0, -np.inf
        for r, recall in enumerate(ev.params.recThrs):
            p = np.mean([ev.eval["precision"][t, r, k, 0, 2] for t in range(10)])
            f1 = 2 * p * recall / (p + recall) if p + recall > 0 else -np.inf
            if f1 > best_f1:
                best, best_f1 = r, f1
        per_class.append(np.mean([ev.eval["scores"][t, best, k, 0, 2] for t in range(10)]))
    kept = [s for s in per_class if s != 0]
    return float(np.mean(kept)), per_class


def test_papers_threshold_from_cocoeval_and_eval_ood_uses_it(tmp_path):
    gt_json, arrays = _hand_built_set(tmp_path, "protocol_id")
    coco = evaluate_boxes("protocol_id", arrays, list(range(1, 7)), CLASSES)
    want, per_class = _independent_threshold(gt_json, arrays)
    got = coco["papers_threshold"]
    assert got["unrounded"] == pytest.approx(want, abs=1e-12)
    assert got["threshold"] == round(want, 4)
    assert [got["per_class"][c] for c in CLASSES] == pytest.approx(per_class, abs=1e-12)
    # the set's AP as COCOeval computes it (category ids 3 and 7 mapped to the model's classes 0 and 1)
    assert 0 < coco["bbox"]["AP50"] <= 100 and coco["bbox"]["AP"] < coco["bbox"]["AP50"]
    assert set(coco["bbox"]) >= {"AP", "AP50", "AP75", "APs", "APm", "APl", "AP-cat", "AP-dog"}

    # the global-F1 threshold of the same detections (IoU 0.5, greedy) is another one
    from detectron2.data import DatasetCatalog
    num_gt = annotate_matches(arrays, DatasetCatalog.get("protocol_id"))
    t_global, _ = optimal_f1_threshold(arrays["score"], arrays["gt_matched"], n_positive_total=num_gt)
    assert abs(t_global - got["threshold"]) > 0.01

    id_path = save_records(str(tmp_path / "id.npz"), arrays,
                           records_meta("protocol_id", CLASSES, num_gt=num_gt, papers_threshold=got))
    ood = {k: v[::-1].copy() for k, v in arrays.items() if k != "gt_matched"}
    ood["energy"] = ood["energy"] - 1.0
    ood_path = save_records(str(tmp_path / "ood.npz"), ood, records_meta("protocol_ood", CLASSES))
    ev = evaluate_ood(id_path, [ood_path])
    assert ev.protocol == "papers" and ev.threshold == got["threshold"]
    logits = arrays["logits"].astype(np.float64)
    max_prob = (np.exp(logits) / np.exp(logits).sum(1, keepdims=True))[:, :-1].max(1)
    np.testing.assert_array_equal(ev.kept["protocol_id"], max_prob >= got["threshold"])
    old = evaluate_ood(id_path, [ood_path], protocol="global-f1")
    assert old.threshold == pytest.approx(t_global) and old.f1 is not None


def test_a_class_without_ground_truth_is_left_out(tmp_path):
    gt_json, arrays = _hand_built_set(tmp_path, "protocol_one_class")
    data = json.loads(open(gt_json).read())
    data["annotations"] = [a for a in data["annotations"] if a["category_id"] == 3]
    with open(gt_json, "w") as f:
        json.dump(data, f)
    got = evaluate_boxes("protocol_one_class", arrays, list(range(1, 7)), CLASSES)["papers_threshold"]
    assert got["per_class"]["dog"] is None and got["per_class"]["cat"] > 0
    assert got["unrounded"] == got["per_class"]["cat"]  # the released code would average a -1 in


def test_keep_rule_keeps_both_classes_of_a_box_that_straddle_the_threshold(tmp_path):
    # one box, two detections: class 0 (probability 0.5) and class 1 (0.3); background 0.15, class 2 0.05
    probs = np.array([0.5, 0.3, 0.05, 0.15])
    logits = np.tile(np.log(probs).astype(np.float32), (2, 1))
    box = np.array([[10, 10, 50, 50]] * 2, np.float32)
    base = {"image_id": np.array([1, 1]), "boxes": box, "pred_class": np.array([0, 1]),
            "score": np.array([0.5, 0.3], np.float32), "logits": logits,
            "energy": np.log(np.exp(logits[:, :3]).sum(1)).astype(np.float32)}
    id_path = save_records(str(tmp_path / "id.npz"), {**base, "energy": base["energy"] + np.float32(1)},
                           records_meta("id"))
    ood_path = save_records(str(tmp_path / "ood.npz"), {**base, "image_id": np.array([2, 2])}, records_meta("ood"))
    papers = evaluate_ood(id_path, [ood_path], thres=0.4)
    assert papers.kept["id"].tolist() == [True, True] and papers.metrics("ood")["n_ood"] == 2
    own = evaluate_ood(id_path, [ood_path], thres=0.4, protocol="global-f1")
    assert own.kept["id"].tolist() == [True, False] and own.metrics("ood")["n_id"] == 1
    # the released MSP baseline: softmax over the inlier logits only (0.5 / 0.85 here, not the 0.5 with background)
    msp = evaluate_ood(id_path, [ood_path], thres=0.4, score_key="msp")
    np.testing.assert_allclose(msp.kept_values("msp", "id"), [0.5 / 0.85] * 2, rtol=1e-6)


def _released_fpr(id_scores, ood_scores, level=0.95):
    """FPR at the TPR closest to ``level``: every distinct threshold from the lowest ID score up is a
    candidate, scanned from the lowest threshold (highest TPR) up; the first closest one wins."""
    candidates = sorted(t for t in np.unique(np.r_[id_scores, ood_scores]) if t >= id_scores.min())
    best, best_gap = None, np.inf
    for t in candidates:
        gap = abs(np.mean(id_scores >= t) - level)
        if gap < best_gap:
            best, best_gap = t, gap
    return float(np.mean(ood_scores >= best)), best


@pytest.mark.parametrize("seed", range(6))
def test_fpr95_at_the_closest_tpr(seed):
    rng = np.random.default_rng(seed)
    id_scores, ood_scores = rng.normal(1, 1, 57 + seed), rng.normal(0, 1, 80)
    if seed % 2:
        id_scores, ood_scores = np.round(id_scores, 1), np.round(ood_scores, 1)
    closest = ood_metrics(id_scores, ood_scores, fpr_point="closest")
    fpr, threshold = _released_fpr(id_scores, ood_scores)
    assert closest["fpr95"] == pytest.approx(fpr, abs=1e-12) and closest["fpr95_threshold"] == threshold


def test_fpr95_conventions_differ_where_the_closest_tpr_is_below_95():
    # 39 ID scores 10..48: the TPR closest to 95% is 37/39 = 94.9% (threshold 12), below it; the first TPR
    # >= 95% is 38/39 (threshold 11), which also keeps the OOD score at 11
    id_scores = np.arange(39, dtype=float) + 10
    ood_scores = np.array([11.0, 12.5, 30.0, 0.0, 5.0])
    first = ood_metrics(id_scores, ood_scores)
    closest = ood_metrics(id_scores, ood_scores, fpr_point="closest")
    assert first["fpr95_threshold"] == 11.0 and first["fpr95"] == pytest.approx(3 / 5)
    assert closest["fpr95_threshold"] == 12.0 and closest["fpr95"] == pytest.approx(2 / 5)
    assert closest["auroc"] == first["auroc"]
    with pytest.raises(ValueError, match="fpr_point"):
        ood_metrics(id_scores, ood_scores, fpr_point="nearest")
