"""Config resolution and set-up shared by the command-line tools."""
import contextlib
import errno
import fcntl
import logging
import os
import re
from pathlib import Path
from typing import List, Tuple

import torch
import yaml

from detectron2.config import get_cfg
from detectron2.engine import default_setup

from ..config import add_ffs_config
from ..exit_status import one_line
from .checkpoint import pickle_refused

__all__ = ["CONFIGS_DIR", "resolve_config_file", "build_cfg", "setup_cfg", "ConfigError", "check_inputs",
           "claim_output_dir", "check_config_file"]

logger = logging.getLogger(__name__)

CONFIGS_DIR = Path(__file__).resolve().parents[2] / "configs"


class ConfigError(ValueError):
    """A config file or key the user gave is wrong; the message names it."""


def resolve_config_file(path: str) -> str:
    """``path`` as given if it exists, else the same relative path under the repository's ``configs/``."""
    if os.path.isfile(path):
        return path
    candidate = CONFIGS_DIR / path
    if not os.path.isabs(path) and candidate.is_file():
        return str(candidate)
    raise ConfigError(f"config file not found: {path!r} (also looked for {candidate})")


def build_cfg(config_file: str = "", opts=(), *, extra_files=(), cpu_fallback: bool = True):
    """A detectron2 config with ffs_det's keys, merged from ``config_file``, then each of ``extra_files``
    (e.g. an inference config), then ``opts`` (KEY VALUE ...)."""
    cfg = get_cfg()
    add_ffs_config(cfg)
    for path in [config_file, *extra_files]:
        if not path:
            continue
        resolved = resolve_config_file(path)
        check_config_file(resolved)
        try:
            # allow_unsafe=False: a python tag (!!python/object/apply:...) is refused instead of run
            cfg.merge_from_file(resolved, allow_unsafe=False)
        except KeyError as e:
            raise ConfigError(f"{resolved}: {e.args[0] if e.args else e}") from None
        except (ValueError, TypeError, AssertionError, AttributeError) as e:  # yacs: a value of the wrong type
            raise ConfigError(f"{resolved}: {_merge_error(e)}") from None
    if len(opts) % 2:
        raise ConfigError(f"config overrides must be KEY VALUE pairs, got an odd number: {list(opts)}")
    try:
        cfg.merge_from_list(list(opts))
    except (KeyError, ValueError, AssertionError) as e:
        raise ConfigError(f"command-line override: {e.args[0] if e.args else e}") from None
    if cpu_fallback and cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        logger.warning("MODEL.DEVICE=%s but no GPU is available: running on CPU", cfg.MODEL.DEVICE)
        cfg.MODEL.DEVICE = "cpu"
    if cfg.FFS.SYNTHESIS not in ("flow", "gaussian", "none"):
        raise ConfigError(f"FFS.SYNTHESIS must be 'flow', 'gaussian' or 'none', got {cfg.FFS.SYNTHESIS!r}")
    if cfg.FFS.COV_UPDATE not in ("running", "exact"):
        raise ConfigError(f"FFS.COV_UPDATE must be 'running' or 'exact', got {cfg.FFS.COV_UPDATE!r}")
    if cfg.FFS.NONFINITE not in ("raise", "skip"):
        raise ConfigError(f"FFS.NONFINITE must be 'raise' or 'skip', got {cfg.FFS.NONFINITE!r}")
    if cfg.FFS.LOG_PERIOD < 1:
        raise ConfigError(f"FFS.LOG_PERIOD must be >= 1, got {cfg.FFS.LOG_PERIOD}")
    return cfg


def _type_name(t: str) -> str:
    t = t.strip()
    return "a section of keys" if t.endswith("CfgNode'>") else t.replace("<class '", "").replace("'>", "")


def _merge_error(e: BaseException) -> str:
    """yacs' type-mismatch message without its dump of the whole section, on one line."""
    text = str(e.args[0]) if e.args else type(e).__name__
    m = re.match(r"Type mismatch \((.+?) vs\. (.+?)\) with values \((.*) vs\. (.*)\) for config key: (\S+)\s*$",
                 text, re.S)
    if m:
        want, got, _, value, key = m.groups()
        shown = value if "\n" not in value.strip() and len(value) <= 60 else "a section of keys"
        return f"{key} must be {_type_name(want)}, got {_type_name(got)} {shown}".rstrip()
    return one_line(e) if text.strip() else type(e).__name__


def _yaml_tag(e: "yaml.constructor.ConstructorError") -> str:
    problem = e.problem or ""
    tag = problem.split("tag", 1)[1].strip(" '\"") if "tag" in problem else problem
    return tag.replace("tag:yaml.org,2002:", "!!")


def _base_files(path: str, value) -> List[str]:
    """The files a ``_BASE_`` value names, resolved as detectron2 does (relative to the including file)."""
    bases = value if isinstance(value, list) else [value]
    if not all(isinstance(b, str) and b for b in bases):
        raise ConfigError(f"{path}: _BASE_ must be a file name or a list of file names, got {value!r}")
    out = []
    for base in bases:
        base = os.path.expanduser(base)
        if not base.startswith(("/", "https://", "http://")):
            base = os.path.join(os.path.dirname(path), base)
        out.append(base)
    return out


def check_config_file(path: str, _chain: Tuple[str, ...] = ()) -> None:
    """Check a config file and its ``_BASE_`` chain before detectron2 merges them, so that each problem is one
    ConfigError naming the file (and line): YAML syntax, python tags (refused, never constructed), a file
    that is empty or not a mapping, a missing ``_BASE_`` and a chain that includes a file twice."""
    chain = _chain + (os.path.abspath(path),)
    where = path if not _chain else f"{chain[0]} (its _BASE_ {path})"
    if chain[-1] in _chain:
        raise ConfigError(f"{chain[0]}: its _BASE_ chain includes {path} again: "
                          f"{' -> '.join(os.path.basename(c) for c in chain)}")
    if not os.path.isfile(path):
        raise ConfigError(f"{where}: _BASE_ file not found" if _chain else f"config file not found: {path!r}")
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except yaml.constructor.ConstructorError as e:
        line = f":{e.problem_mark.line + 1}" if e.problem_mark else ""
        at = f"{path}{line}" if not _chain else f"{chain[0]} (its _BASE_ {path}{line})"
        raise ConfigError(f"{at}: YAML tag {_yaml_tag(e)} is not allowed in a config file (config files hold plain "
                          "values; nothing in them is run)") from None
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark
        at = f", line {mark.line + 1} column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{where}: not valid YAML{at}: {e.problem or e.context}") from None
    except (yaml.YAMLError, UnicodeDecodeError, OSError) as e:
        raise ConfigError(f"{where}: cannot be read as YAML ({type(e).__name__}: {e})") from None
    if not isinstance(data, dict):
        got = "nothing (an empty file)" if data is None else f"a {type(data).__name__}"
        raise ConfigError(f"{where}: a config file must be a mapping of KEY: value, got {got}")
    if "_BASE_" in data:
        for base in _base_files(path, data["_BASE_"]):
            if base.startswith(("https://", "http://")):
                continue
            check_config_file(base, chain)


def _is_local(path: str) -> bool:
    return bool(path) and "://" not in path


def check_schedule(cfg) -> None:
    """ConfigError when the synthesis would never start (``FFS.START_ITER >= SOLVER.MAX_ITER``)."""
    if cfg.FFS.SYNTHESIS != "none" and cfg.FFS.START_ITER >= cfg.SOLVER.MAX_ITER:
        raise ConfigError(f"FFS.START_ITER {cfg.FFS.START_ITER} >= SOLVER.MAX_ITER {cfg.SOLVER.MAX_ITER}: "
                          f"FFS.SYNTHESIS {cfg.FFS.SYNTHESIS!r} would never synthesise an outlier and train a "
                          "plain detector; lower FFS.START_ITER (or set FFS.SYNTHESIS none)")


def check_inputs(cfg, eval_only: bool = False, world_size: int = 1, allow_pickle: bool = False) -> None:
    """Checks that need no model: the datasets the run reads (training and test sets; the test sets are
    evaluated when training ends) are registered and on disk, the training sets have
    ``MODEL.ROI_HEADS.NUM_CLASSES`` classes, ``SOLVER.IMS_PER_BATCH`` splits over ``world_size`` processes,
    and a local ``MODEL.WEIGHTS`` exists (required for evaluation) and is not a ``.pkl`` (pickle) file unless
    ``allow_pickle``. Raises ConfigError / FileNotFoundError /
    ValueError naming the key, dataset or file.
    """
    from ..data.catalog import require_datasets
    from ..data.validate import check_num_classes

    weights = cfg.MODEL.WEIGHTS
    if eval_only and not weights:
        raise ConfigError("--eval-only needs MODEL.WEIGHTS (a trained checkpoint)")
    if _is_local(weights) and not os.path.isfile(weights):
        raise FileNotFoundError(f"MODEL.WEIGHTS: checkpoint not found: {weights}")
    if weights.endswith(".pkl") and not allow_pickle:
        raise ConfigError(f"MODEL.WEIGHTS: {pickle_refused(weights)}")
    if not eval_only and not cfg.DATASETS.TRAIN:
        raise ConfigError("DATASETS.TRAIN is empty: nothing to train on")
    if not eval_only and (cfg.SOLVER.IMS_PER_BATCH < 1 or cfg.SOLVER.IMS_PER_BATCH % world_size):
        raise ConfigError(f"SOLVER.IMS_PER_BATCH must be a positive multiple of the number of processes "
                          f"({world_size}), got {cfg.SOLVER.IMS_PER_BATCH}")
    if not eval_only:
        check_schedule(cfg)
    # training also evaluates DATASETS.TEST when it ends: check those now rather than after training
    require_datasets(list(cfg.DATASETS.TEST) if eval_only else [*cfg.DATASETS.TRAIN, *cfg.DATASETS.TEST])
    if not eval_only:
        check_num_classes(cfg)


def launch_environment(cfg, num_processes: int) -> dict:
    """Environment for the training processes detectron2's launcher spawns on this machine.

    The launcher picks the NCCL backend and one GPU per process whenever CUDA is available, whatever
    ``MODEL.DEVICE`` says; CPU processes need gloo (NCCL has no CPU tensors, DDP over CPU parameters fails).
    For a CPU config with several processes the GPUs are hidden from them (``CUDA_VISIBLE_DEVICES=""``), so
    the launcher picks gloo. A CUDA config asking for more processes than there are GPUs is refused here,
    before spawning (the launcher would fail in every process). Returns the variables to set."""
    if num_processes <= 1:
        return {}
    if cfg.MODEL.DEVICE.startswith("cpu"):
        return {"CUDA_VISIBLE_DEVICES": ""}
    if cfg.MODEL.DEVICE.startswith("cuda") and torch.cuda.is_available():
        count = torch.cuda.device_count()
        if num_processes > count:
            raise ConfigError(f"--num-gpus {num_processes} with MODEL.DEVICE {cfg.MODEL.DEVICE}, but this machine has "
                              f"{count} GPU(s): use --num-gpus {count}, or MODEL.DEVICE cpu for CPU processes")
    return {}


# files that mark OUTPUT_DIR as holding a (possibly interrupted) training run
RUN_FILES = ("last_checkpoint", "model_final.pth", "metrics.json")


@contextlib.contextmanager
def claim_output_dir(output_dir: str, resume: bool):
    """Hold ``OUTPUT_DIR`` for one training: refuse a folder another training holds (an advisory lock on
    ``<OUTPUT_DIR>/.train.lock``, released when the process ends), and, without ``resume``, a folder that
    already holds a run, which training would overwrite (model_final.pth) and append to (metrics.json)."""
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise ConfigError(f"OUTPUT_DIR {output_dir} exists and is not a folder")
    try:
        os.makedirs(output_dir, exist_ok=True)
        lock = open(os.path.join(output_dir, ".train.lock"), "a")
    except OSError as e:
        raise ConfigError(f"OUTPUT_DIR {output_dir} cannot be written: {e.strerror or e}") from None
    with lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigError(f"OUTPUT_DIR {output_dir} is in use by another training (it holds "
                              f"{lock.name}); wait for it or choose another OUTPUT_DIR") from None
        except OSError as e:  # a file system without flock (e.g. Lustre or NFS without a lock manager)
            if e.errno not in (errno.ENOSYS, errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL):
                raise ConfigError(f"OUTPUT_DIR {output_dir}: cannot lock {lock.name}: {e.strerror or e}") from None
            logger.warning("OUTPUT_DIR %s: the file system does not support locks (%s); a second training "
                           "into it would not be refused", output_dir, e.strerror)
        # an empty metrics.json is what a run that failed before its first step leaves: not a run
        found = [name for name in RUN_FILES if os.path.isfile(os.path.join(output_dir, name))
                 and (name != "metrics.json" or os.path.getsize(os.path.join(output_dir, name)) > 0)]
        if found and not resume:
            raise ConfigError(f"OUTPUT_DIR {output_dir} already holds a training run ({', '.join(found)}); pass "
                              "--resume to continue it, or delete those files or choose another OUTPUT_DIR to "
                              "start over (nothing was changed)")
        yield


# where ``--eval-only`` writes (config.yaml, log.txt, inference/) below OUTPUT_DIR: never over a training's files
EVAL_SUBDIR = "eval"


def eval_output_dir(output_dir: str) -> str:
    """The folder ``--eval-only`` writes into for a config whose ``OUTPUT_DIR`` is ``output_dir``."""
    return os.path.join(output_dir, EVAL_SUBDIR)


def setup_cfg(args):
    """Build, freeze and log the config of a detectron2-style ``args`` (``config_file``, ``opts``). With
    ``args.eval_only`` the config's ``OUTPUT_DIR`` becomes :func:`eval_output_dir` of it, so an evaluation of a
    training run's checkpoint never replaces that run's config.yaml or evaluation files."""
    if args.config_file:
        args.config_file = resolve_config_file(args.config_file)  # default_setup reads it to log it
    cfg = build_cfg(args.config_file, args.opts)
    if getattr(args, "eval_only", False):
        cfg.OUTPUT_DIR = eval_output_dir(cfg.OUTPUT_DIR)
    cfg.freeze()
    default_setup(cfg, args)
    return cfg
