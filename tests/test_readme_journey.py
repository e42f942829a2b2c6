"""The README's "your own COCO json" journey stays true: its command block, extracted from README.md and run by bash
as written, trains, applies and evaluates a detector on a generated COCO set.

The only substitutions are the ones the block documents: ``DATA`` and ``OUT`` (paths), ``EXTRA`` (more config
overrides, here a 4-iteration schedule on 96 px images) and ``python`` (the interpreter running the tests)."""
import json
import math
import os
import re
import subprocess
import sys

from detector_utils import write_tiny_coco
from repo_paths import REPO_ROOT

BLOCK = re.compile(r"<!-- journey:own-coco -->\s*```bash\n(.*?)```\s*<!-- /journey -->", flags=re.S)
# no ImageNet weights offline (a randomly initialised trunk), 4 iterations of 2 images at 96 px, and every box kept
# at inference, so that the detections of so short a training reach eval_ood
EXTRA = ('MODEL.WEIGHTS "" SOLVER.IMS_PER_BATCH 2 SOLVER.MAX_ITER 4 SOLVER.STEPS (3,) SOLVER.WARMUP_ITERS 1 '
         "FFS.START_ITER 2 INPUT.MIN_SIZE_TRAIN (96,) INPUT.MIN_SIZE_TEST 96 DATALOADER.NUM_WORKERS 0 "
         "MODEL.ROI_HEADS.SCORE_THRESH_TEST 0.0")


def _journey_block() -> str:
    with open(os.path.join(REPO_ROOT, "README.md"), encoding="utf-8") as f:
        blocks = BLOCK.findall(f.read())
    assert len(blocks) == 1, f"README.md holds {len(blocks)} own-coco journey blocks"
    return blocks[0]


def _write_data(data):
    """train.json, val.json and ood.json of generated images under ``data/images``, as the block expects."""
    for split, num_images, seed in (("train", 8, 0), ("val", 4, 1), ("ood", 4, 2)):
        json_path, _ = write_tiny_coco(str(data / "images" / split), num_images=num_images, size=96, seed=seed)
        with open(json_path) as f:
            coco = json.load(f)
        for image in coco["images"]:
            image["file_name"] = f"{split}/images/{image['file_name']}"
        (data / f"{split}.json").write_text(json.dumps(coco))


def test_the_own_coco_journey_runs_as_written(tmp_path):
    block = _journey_block()
    assert ".venv" not in block and "python tools/eval_ood.py" in block  # the block calls the user's `python`
    _write_data(tmp_path / "data")
    out = tmp_path / "run"
    env = dict(os.environ, DATA=str(tmp_path / "data"), OUT=str(out), EXTRA=EXTRA, OMP_NUM_THREADS="1",
               PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    proc = subprocess.run(["bash", "-eu", "-o", "pipefail", "-c", block], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    metrics = json.loads((out / "ood" / "metrics.json").read_text())["mine_ood"]
    assert metrics["n_id"] > 0 and metrics["n_ood"] > 0
    for key in ("fpr95", "auroc"):
        assert math.isfinite(metrics[key]) and 0.0 <= metrics[key] <= 1.0, metrics
