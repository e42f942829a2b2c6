#!/usr/bin/env python
"""Train (or, with --eval-only, evaluate) a plain / VOS / FFS detector through detectron2's launcher.

  tools/train_net.py --config-file VOC/ffs_regnetx.yaml --num-gpus 4
  tools/train_net.py --config-file Shapes/ffs_mobilenet.yaml --num-gpus 2     # 2 CPU processes (gloo)
  tools/train_net.py --config-file VOC/ffs_regnetx.yaml --eval-only MODEL.WEIGHTS output/VOC/ffs_regnetx/model_final.pth

A --config-file that does not exist as given is looked up under configs/. Without GPUs, --num-gpus N
runs N CPU processes; so does a config with MODEL.DEVICE cpu on a machine with GPUs (they are hidden from
its processes, which then use gloo). Trailing KEY VALUE pairs override the config. An OUTPUT_DIR that
already holds a run is continued with --resume and otherwise refused, as is one another training is using.
--eval-only writes its config.yaml, log and inference/ into OUTPUT_DIR/eval, never over a training's files.
MODEL.WEIGHTS ending in .pkl are read with pickle, which runs code from the file: they are refused unless
--allow-pickle is given. On SIGTERM training finishes its step, saves a checkpoint, says so and exits with
status 143; --resume continues it. A wrong input (config key, dataset path, class count, checkpoint, an
image that cannot be read, also one found while training) ends the run with one `error: ...` line and exit
status 2; a run that fails while training (non-finite loss, full disk) with one line and status 1
(ffs_det/exit_status.py).
"""
import contextlib
import multiprocessing
import os
import signal
import sys

from torch.multiprocessing import ProcessExitedException

from detectron2.engine import default_argument_parser, launch
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from ffs_det.data import add_dataset_args, apply_dataset_args
from ffs_det.engine import Trainer
from ffs_det.engine.checkpoint import CheckpointSaveError, SafeCheckpointer
from ffs_det.engine.setup import build_cfg, check_inputs, claim_output_dir, eval_output_dir, launch_environment, \
    setup_cfg
from ffs_det.engine.trainer import TrainingInterrupted
from ffs_det.exit_status import BAD_INPUT, FAILED, INPUT_ERRORS, INTERRUPTED, error

# errors whose message names the problem (file, key, loss and iteration): printed as one line
ONE_LINE_ERRORS = INPUT_ERRORS + (FloatingPointError, CheckpointSaveError)


def _forward_sigterm(signum, frame):
    """In the launching process of several training processes: pass SIGTERM on to them (each finishes its
    step and the checkpoint is saved) and keep waiting for them."""
    for child in multiprocessing.active_children():
        os.kill(child.pid, signal.SIGTERM)


def launch_training(args):
    """detectron2's launch; with several processes, SIGTERM is forwarded to them and a process that ended
    with an error (already printed on one line) or after SIGTERM gives the launcher's exit status."""
    if max(args.num_gpus, 1) * args.num_machines > 1:
        signal.signal(signal.SIGTERM, _forward_sigterm)
    try:
        launch(main, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
               dist_url=args.dist_url, args=(args,))
    except ProcessExitedException as e:  # a training process exited with a status (its message is printed)
        sys.exit(e.exit_code if e.exit_code in (FAILED, BAD_INPUT, INTERRUPTED) else FAILED)


def run(args):
    apply_dataset_args(args)
    cfg = setup_cfg(args)
    setup_logger(output=cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="ffs_det")
    if args.eval_only:  # cfg.OUTPUT_DIR is <OUTPUT_DIR>/eval; --resume reads <OUTPUT_DIR>/last_checkpoint
        model = Trainer.build_model(cfg)
        SafeCheckpointer(model, save_dir=os.path.dirname(cfg.OUTPUT_DIR), full_model=True,
                         allow_pickle=args.allow_pickle).resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
        return Trainer.test(cfg, model)
    trainer = Trainer(cfg, allow_pickle=args.allow_pickle)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


def main(args):
    try:
        return run(args)
    except ONE_LINE_ERRORS as e:
        sys.exit(error(e))
    except TrainingInterrupted as e:
        if comm.is_main_process():
            print(f"interrupted: {e}", file=sys.stderr)
        sys.exit(INTERRUPTED)


def parse_args(argv=None):
    parser = default_argument_parser(epilog=__doc__)
    add_dataset_args(parser)
    parser.add_argument("--allow-pickle", action="store_true",
                        help="read MODEL.WEIGHTS ending in .pkl (detectron2/Caffe2 model-zoo files) with pickle, "
                             "which RUNS CODE FROM THE FILE: only for files from a source you trust (without it a "
                             ".pkl is refused)")
    return parser.parse_args(argv)


if __name__ == "__main__":
    args = parse_args()
    with contextlib.ExitStack() as stack:
        try:  # fail fast, before spawning processes, on a wrong config file or key, dataset or class count
            apply_dataset_args(args)
            cfg = build_cfg(args.config_file, args.opts)
            check_inputs(cfg, eval_only=args.eval_only, world_size=max(args.num_gpus, 1) * args.num_machines,
                         allow_pickle=args.allow_pickle)
            os.environ.update(launch_environment(cfg, args.num_gpus))  # CPU processes: gloo, even where CUDA is
            if args.machine_rank == 0:  # one training (evaluation) per OUTPUT_DIR (its eval/), never overwritten
                stack.enter_context(claim_output_dir(eval_output_dir(cfg.OUTPUT_DIR), resume=True) if args.eval_only
                                    else claim_output_dir(cfg.OUTPUT_DIR, resume=args.resume))
        except INPUT_ERRORS as e:
            sys.exit(error(e))
        launch_training(args)
