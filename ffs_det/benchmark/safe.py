"""SAFE's costs on the shapes detector: inference with its box features read by hooks during detection (no
second backbone pass), the training set's extra FGSM step (a training-mode forward and backward, then a backbone
pass on the perturbed image), and the meta-classifier's fit."""
from typing import Dict

import numpy as np
import torch

from ..data.shapes import ID_CLASSES, render_scene
from ..density.scorers import build_scorer
from ..evaluation.safe import SafeFeatureModel
from .detector import shapes_inputs
from .timing import interleaved, paired_ratio, summarize

__all__ = ["time_safe"]


def _records(num_images: int, seed: int) -> Dict[int, dict]:
    """The ground truth of :func:`shapes_inputs`' scenes (same seeds), as dataset records in image pixels."""
    out = {}
    for i in range(num_images):
        pixels, objects = render_scene(np.random.default_rng([seed, 0, i]), ID_CLASSES)
        out[i] = {"image_id": i, "height": pixels.shape[0], "width": pixels.shape[1],
                  "annotations": [{"bbox": list(box), "category_id": cls, "iscrowd": 0} for cls, box, _ in objects]}
    return out


def time_safe(model: torch.nn.Module, cfg, num_images: int, warmup: int, repeats: int, seed: int = 0,
              device: str = "cpu", fit_rows: int = 20_000) -> Dict:
    """Seconds per pass over ``num_images`` scenes of plain inference, inference with SAFE's features
    (``safe``), and with the training set's FGSM copies too (``safe_fit``); their time ratios to plain; and the
    MLP's fit time on ``fit_rows`` clean + perturbed rows of the shapes width (280)."""
    images = shapes_inputs(cfg, num_images, seed + 1, train=False)
    for i, image in enumerate(images):
        image["image_id"] = i
    records = _records(num_images, seed + 1)
    model.eval()
    runners = {"plain": model, "safe": SafeFeatureModel(model), "safe_fit": SafeFeatureModel(model, records=records)}

    def run(name):
        with torch.no_grad():
            for image in images:
                runners[name]([image])

    times = interleaved({name: (lambda n=name: run(n)) for name in runners}, warmup, repeats, device)
    out = {name: dict(summarize(t), images=num_images) for name, t in times.items()}
    out["ratios"] = {f"{n}/plain": paired_ratio(times[n], times["plain"]) for n in ("safe", "safe_fit")}
    rng = np.random.default_rng(seed)
    clean = rng.normal(size=(fit_rows, 280)).astype(np.float32)
    adv = clean + 0.5 + rng.normal(size=clean.shape).astype(np.float32)
    fit = interleaved({"mlp": lambda: build_scorer("safe").fit(clean, adversarial=adv)}, 0, max(1, repeats // 3),
                      device)
    out["mlp_fit"] = dict(summarize(fit["mlp"]), rows=fit_rows, dim=280, epochs=5)
    return out
