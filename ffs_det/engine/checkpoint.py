"""DetectionCheckpointer with three guarantees detectron2's does not give.

* **Atomic files.** A checkpoint (and the ``last_checkpoint`` tag) is written to a temporary file and
  renamed into place, so a run killed while saving leaves the previous checkpoint and tag intact; it never
  leaves a truncated ``model_*.pth`` that ``--resume`` would pick up.
* **No non-finite checkpoints.** ``save`` refuses (``FloatingPointError`` naming the tensors) to write a
  model whose floating-point parameters or buffers hold NaN or Inf, so a diverged run cannot overwrite a
  good checkpoint with a broken one.
* **Whole-model loads fail loudly.** detectron2 only logs a warning for checkpoint keys that are missing or
  have another shape, which is right for initialising from ImageNet/backbone weights but silently yields a
  half-random detector when evaluating. With ``full_model=True`` (evaluation, apply_net) any key needed for
  inference that is missing or has another shape is a :class:`CheckpointMismatchError` naming the file, how
  many keys differ, examples, and the likely cause; the training-only modules (flow, synthesis queues,
  energy-margin weights) may differ. Resuming from ``last_checkpoint`` requires every key, those included.

Unreadable files (missing, truncated, not a checkpoint, or a pickle that ``torch.load(weights_only=True)``
refuses) raise ``FileNotFoundError`` / ``ValueError`` naming the file. ``.pth`` and pycls ``.pyth`` files are
read with ``weights_only=True`` onto the CPU (tensors saved on a GPU load on a machine without one). Files
ending in ``.pkl`` (detectron2 and Caffe2 model-zoo weights) can only be read with :mod:`pickle`, which runs
code from the file: they are refused (ValueError naming the file) unless the checkpointer is built with
``allow_pickle=True`` (the tools' ``--allow-pickle``), for files from a source the user trusts.
"""
import logging
import os
from typing import List, Tuple

import torch

from detectron2.checkpoint import DetectionCheckpointer

from ..atomic_io import atomic_open, atomic_write_text

__all__ = ["SafeCheckpointer", "CheckpointMismatchError", "CheckpointSaveError", "nonfinite_tensors",
           "pickle_refused", "TRAINING_ONLY_PREFIXES"]

logger = logging.getLogger(__name__)

# state-dict prefixes of modules used only during training (flow, queues, energy-margin weights): a
# checkpoint without them still gives the same detections and energies
TRAINING_ONLY_PREFIXES = ("roi_heads.synthesizer.", "roi_heads.energy_margin.")
# the synthesis draw stream: checkpoints written before it was saved lack it; resuming one starts a new stream
STREAM_KEY = "roi_heads.synthesizer._extra_state"


class CheckpointMismatchError(ValueError):
    """A checkpoint does not fit the model built from the config; the message names file and keys."""


class CheckpointSaveError(OSError):
    """A checkpoint could not be written (e.g. a full disk); the message names it and what was kept."""


def _reason(e: BaseException) -> str:
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    text = str(e).strip().splitlines()
    return text[-1] if text else type(e).__name__


def nonfinite_tensors(state_dict) -> List[Tuple[str, int, int]]:
    """``(name, number of NaN/Inf values, number of values)`` of every floating tensor that is not finite."""
    bad = []
    for name, value in state_dict.items():
        if torch.is_tensor(value) and value.is_floating_point():
            n = int((~torch.isfinite(value.detach())).sum())
            if n:
                bad.append((name, n, value.numel()))
    return bad


def pickle_refused(filename: str) -> str:
    """The message refusing a ``.pkl`` checkpoint read without the opt-in."""
    return (f"checkpoint {filename}: a .pkl file can only be read with pickle, which runs code from the file; "
            "pass --allow-pickle if you trust its source, or convert it once to a .pth state dict")


def _examples(items, k=3) -> str:
    items = list(items)
    more = f", ... ({len(items) - k} more)" if len(items) > k else ""
    return ", ".join(items[:k]) + more


class SafeCheckpointer(DetectionCheckpointer):
    """``DetectionCheckpointer(model, save_dir, full_model=False, **checkpointables)``; see the module doc."""

    def __init__(self, model, save_dir="", *, full_model: bool = False, class_names=None,
                 allow_pickle: bool = False, **kwargs):
        super().__init__(model, save_dir, **kwargs)
        self.full_model = full_model
        self.allow_pickle = allow_pickle  # read .pkl files (pickle: runs code from the file)
        self.class_names = list(class_names) if class_names else None  # saved with every checkpoint
        self._all_keys = False  # resuming: the training-only modules must match as well

    # ---- saving ---------------------------------------------------------------------------------
    def save(self, name: str, **kwargs) -> None:
        if not self.save_dir or not self.save_to_disk:
            return
        state = self.model.state_dict()
        bad = nonfinite_tensors(state)
        if bad:
            detail = _examples(f"{k} ({n} of {total} values)" for k, n, total in bad)
            raise FloatingPointError(
                f"refusing to save checkpoint {name!r}: {len(bad)} model tensors hold NaN or Inf: {detail}. "
                "Training diverged; the previous checkpoint is kept (lower SOLVER.BASE_LR, or see FFS.NONFINITE)")
        data = {"model": state}
        if self.class_names:
            data["class_names"] = self.class_names
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)
        basename = f"{name}.pth"
        save_file = os.path.join(self.save_dir, basename)
        self.logger.info("Saving checkpoint to %s", save_file)
        try:
            with atomic_open(save_file, "wb") as f:
                torch.save(data, f)
            self.tag_last_checkpoint(basename)
        except (OSError, RuntimeError) as e:  # torch.save reports a full disk as RuntimeError
            kept = self.get_checkpoint_file() if self.has_checkpoint() else None
            raise CheckpointSaveError(f"cannot save checkpoint {save_file}: {_reason(e)}; "
                                      + (f"the previous checkpoint {kept} is kept (resume from it with --resume "
                                         "once there is room)" if kept else "no earlier checkpoint exists")) from None

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        atomic_write_text(os.path.join(self.save_dir, "last_checkpoint"), last_filename_basename)

    # ---- loading --------------------------------------------------------------------------------
    def resume_or_load(self, path: str, *, resume: bool = True):
        if resume and self.has_checkpoint():
            last = self.get_checkpoint_file()
            if not os.path.isfile(last):
                raise FileNotFoundError(f"{os.path.join(self.save_dir, 'last_checkpoint')} names {last}, which does "
                                        "not exist; delete last_checkpoint to start over or restore the file")
            full, self.full_model, self._all_keys = self.full_model, True, True  # our own checkpoint
            try:
                return self.load(last)
            finally:
                self.full_model, self._all_keys = full, False
        return self.load(path, checkpointables=[])

    def load(self, path, *args, **kwargs):
        if path and "://" not in path and not os.path.isfile(path):
            raise FileNotFoundError(f"checkpoint not found: {path}")
        self._loading = path
        return super().load(path, *args, **kwargs)

    def _torch_load(self, f):
        try:  # explicit: torch < 2.6 defaults to weights_only=False, which runs code from the file
            return torch.load(f, map_location="cpu", weights_only=True)
        except Exception as e:  # truncated zip, not a torch file, or a pickle weights_only refuses
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ValueError(f"checkpoint {f}: cannot be read as a torch checkpoint ({type(e).__name__}: "
                             f"{first})") from None

    def _load_file(self, filename):
        if filename.endswith(".pkl") and not self.allow_pickle:
            raise ValueError(pickle_refused(filename))
        if filename.endswith(".pyth"):
            data = self._pycls_file(filename)
        else:
            data = super()._load_file(filename)
        if not isinstance(data, dict) or not isinstance(data.get("model"), dict):
            raise ValueError(f"checkpoint {filename}: holds no model state dict")
        return data

    def _pycls_file(self, filename):
        """A pycls ``.pyth`` file (the RegNetX ImageNet weights), read as detectron2 reads it (its
        ``model_state``, without BatchNorm counters, matched by name heuristics) but onto the CPU and with
        ``weights_only``: detectron2 reads it with a bare ``torch.load``, which fails for tensors saved on a GPU
        on a machine without one, and with torch < 2.6 runs code from the file."""
        data = self._torch_load(filename)
        state = data.get("model_state") if isinstance(data, dict) else None
        if not isinstance(state, dict):
            raise ValueError(f"checkpoint {filename}: a .pyth (pycls) file must hold a 'model_state' dict")
        model = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
        return {"model": model, "__author__": "pycls", "matching_heuristics": True}

    def _load_model(self, checkpoint):
        incompatible = super()._load_model(checkpoint)
        if self.full_model:
            self._check_full_model(incompatible)
        return incompatible

    def _check_full_model(self, incompatible) -> None:
        model_keys = list(self.model.state_dict())
        skip = () if self._all_keys else TRAINING_ONLY_PREFIXES
        missing = [k for k in incompatible.missing_keys if not (skip and k.startswith(skip))]
        if STREAM_KEY in missing:
            missing.remove(STREAM_KEY)
            logger.warning("checkpoint %s holds no synthesis draw stream (saved by an earlier version): the "
                           "resumed run draws from a new stream", getattr(self, "_loading", "?"))
        shapes = [x for x in incompatible.incorrect_shapes if not (skip and x[0].startswith(skip))]
        if not missing and not shapes:
            return
        parts = []
        if missing:
            parts.append(f"{len(missing)} of the model's {len(model_keys)} keys are missing from it "
                         f"(e.g. {_examples(missing)})")
        if shapes:
            parts.append(f"{len(shapes)} have another shape (e.g. "
                         + _examples(f"{k}: checkpoint {tuple(a)} vs model {tuple(b)}" for k, a, b in shapes) + ")")
        if len(missing) > len(model_keys) // 2:
            cause = "it was saved from another architecture (MODEL.BACKBONE / config file)"
        elif shapes and any(k.startswith("roi_heads.box_predictor.") for k, _, _ in shapes) and all(
                k.startswith(("roi_heads.box_predictor.", "roi_heads.energy_margin.", "roi_heads.synthesizer.queue"))
                for k, _, _ in shapes):
            cause = "it was trained with another MODEL.ROI_HEADS.NUM_CLASSES"
        elif shapes and all(k.startswith(TRAINING_ONLY_PREFIXES) for k, _, _ in shapes):
            cause = "its flow or synthesis settings (FFS.FLOW.*, FFS.QUEUE_SIZE) differ from this config's"
        else:
            cause = "it was saved from a different model configuration"
        raise CheckpointMismatchError(f"checkpoint {getattr(self, '_loading', '?')} does not fit the model of this "
                                      f"config: {'; '.join(parts)}; {cause}")
