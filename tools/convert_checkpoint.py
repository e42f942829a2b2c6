#!/usr/bin/env python
"""Convert a checkpoint the VOS or FFS authors released into one ffs_det loads.

  tools/convert_checkpoint.py --config-file VOC/ffs_regnetx.yaml --input ffs_voc_model_final.pth \\
      --output weights/ffs_voc_released.pth
  tools/convert_checkpoint.py --config-file BDD/ffs_regnetx.yaml --input ffs_bdd_model_final.pth \\
      --output weights/ffs_bdd_released.pth --drop-classes 8,9

Renames the authors' ROI-head keys (flow_model, weight_energy, logistic_regression) to ffs_det's, keeps the
trunk, FPN, RPN and box head/predictor as they are, and refuses any key it has no place for or the model
misses, by name (mapping in ffs_det/engine/released.py, docs/paper_parity.md). The checkpoint is read without
running code (torch.load weights_only). The output is written whole or not at all, carries the class names
of the config's training set, and is refused if it exists. Evaluate it like a model ffs_det trained:
tools/apply_net.py --config-file <same config> ... MODEL.WEIGHTS <output>. Exit status 2 and one error line
for a wrong input.
"""
import argparse
import os
import sys

from ffs_det.data import add_dataset_args, apply_dataset_args, get_thing_classes
from ffs_det.engine.released import convert_checkpoint
from ffs_det.engine.setup import build_cfg
from ffs_det.exit_status import INPUT_ERRORS, OK, error


def _classes(text: str):
    try:
        return [int(c) for c in text.split(",") if c.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated class indices, got {text!r}") from None


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", required=True, help="the ffs_det config of the model (looked up under configs/)")
    p.add_argument("--input", required=True, help="the released checkpoint (.pth)")
    p.add_argument("--output", required=True, help="the converted checkpoint to write (must not exist)")
    p.add_argument("--drop-classes", type=_classes, default=[], metavar="I,J",
                   help="classes of the checkpoint's classifier to remove (the released FFS BDD model: 8,9)")
    add_dataset_args(p)
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides: KEY VALUE ...")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        if os.path.exists(args.output):
            raise ValueError(f"--output {args.output} exists; choose a new file (nothing was written)")
        cfg = build_cfg(args.config_file, list(args.opts) + ["MODEL.WEIGHTS", ""])
        apply_dataset_args(args)
        names = []
        if cfg.DATASETS.TRAIN:
            try:
                names = get_thing_classes(cfg.DATASETS.TRAIN[0])
            except FileNotFoundError:  # a registered set whose files are elsewhere: no class names then
                names = []
        if len(names) != cfg.MODEL.ROI_HEADS.NUM_CLASSES:
            names = []
        summary = convert_checkpoint(cfg, args.input, args.output, args.drop_classes, names)
    except INPUT_ERRORS + (OSError,) as e:
        return error(e)
    print(f"wrote {args.output}: {summary['keys']} keys ({summary['renamed']} renamed; dropped "
          f"{', '.join(summary['dropped']) or 'none'}; new-model values for {', '.join(summary['fresh']) or 'none'}"
          + (f"; classes {summary['drop_classes']} removed" if summary["drop_classes"] else "") + ")")
    return OK


if __name__ == "__main__":
    sys.exit(main())
