"""Atomic creation of a folder (a feature store): it is filled under a temporary name next to its target
and renamed into place, so readers never see a half-written folder. Single files use
:mod:`ffs_det.atomic_io`."""
import contextlib
import os
import shutil
import tempfile
import uuid
from typing import Iterator

__all__ = ["atomic_dir"]


def _read_umask() -> int:
    umask = os.umask(0o022)
    os.umask(umask)
    return umask


_UMASK = _read_umask()  # read once: os.umask can only be read by setting it


@contextlib.contextmanager
def atomic_dir(path: str) -> Iterator[str]:
    """Yield a new temporary folder next to ``path``; it takes the place of ``path`` (replacing an existing
    folder) when the block succeeds and is deleted when it fails."""
    path = os.path.abspath(path)
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=parent)
    os.chmod(tmp, 0o777 & ~_UMASK)  # mkdtemp makes it private (0700); give it a plain mkdir's mode
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if os.path.lexists(path):
        if not os.path.isdir(path) or os.path.islink(path):
            shutil.rmtree(tmp, ignore_errors=True)
            raise FileExistsError(f"{path} exists and is not a folder; refusing to replace it")
        old = os.path.join(parent, f".{os.path.basename(path)}.{uuid.uuid4().hex[:8]}.old")
        os.rename(path, old)
    os.rename(tmp, path)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
