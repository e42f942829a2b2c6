"""Config resolution and set-up shared by the command-line tools."""
import logging
import os
from pathlib import Path

import torch

from detectron2.config import get_cfg
from detectron2.engine import default_setup

from ..config import add_ffs_config

__all__ = ["CONFIGS_DIR", "resolve_config_file", "build_cfg", "setup_cfg", "ConfigError"]

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
        try:
            cfg.merge_from_file(resolved)
        except KeyError as e:
            raise ConfigError(f"{resolved}: {e.args[0] if e.args else e}") from None
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
    return cfg


def setup_cfg(args):
    """Build, freeze and log the config of a detectron2-style ``args`` (``config_file``, ``opts``)."""
    if args.config_file:
        args.config_file = resolve_config_file(args.config_file)  # default_setup reads it to log it
    cfg = build_cfg(args.config_file, args.opts)
    cfg.freeze()
    default_setup(cfg, args)
    return cfg
