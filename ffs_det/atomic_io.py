"""Atomic writes: a reader sees either the old file (folder) or the complete new one, never a partial one.

Files: each writer fills a temporary file in the destination folder, flushes it to disk, then
``os.replace``-s it over the destination. Folders (:func:`atomic_dir`, :func:`replace_folder`): filled under
a temporary name next to the target and renamed into place, so files of two writes never mix.
:func:`child_folder` joins a name (e.g. a dataset's) as one folder below a root; :func:`file_sha256`
fingerprints a file (e.g. which checkpoint made some outputs).
Renames are atomic on POSIX and Windows when both names are on the same file system. A file gets the
permissions a plain ``open()`` would give it (an existing file's mode is kept), a folder a plain mkdir's.
"""
import contextlib
import hashlib
import json
import math
import os
import shutil
import tempfile
import uuid
from typing import IO, Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

__all__ = ["atomic_open", "atomic_write_bytes", "atomic_write_text", "atomic_write_json", "finite_json", "json_bytes",
           "atomic_dir", "check_replaceable_folder", "replace_folder", "file_sha256", "child_folder",
           "check_folder_path", "check_replaceable_tree", "replace_folder_keeping"]


def _read_umask() -> int:
    umask = os.umask(0o022)
    os.umask(umask)
    return umask


# read once: os.umask can only be read by setting it, which would race with other threads creating files
_UMASK = _read_umask()


def _new_file_mode(path: str) -> int:
    try:
        return os.stat(path).st_mode & 0o7777
    except FileNotFoundError:
        return 0o666 & ~_UMASK


@contextlib.contextmanager
def atomic_open(path: str, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary file next to ``path``; on a clean exit it replaces ``path``, on an error it is removed."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open supports modes 'w' and 'wb', not {mode!r}")
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix="." + os.path.basename(path) + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8", "newline": ""})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _new_file_mode(path))  # mkstemp creates the file private (0600)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


def atomic_write_bytes(path: str, data: bytes) -> None:
    with atomic_open(path, "wb") as f:
        f.write(data)


def atomic_write_text(path: str, text: str) -> None:
    with atomic_open(path, "w") as f:
        f.write(text)


def finite_json(obj: Any) -> Any:
    """``obj`` with every NaN or infinite float (also numpy's) replaced by None, so that it is valid JSON (which has
    no NaN): e.g. an AP of a class without ground truth."""
    if isinstance(obj, dict):
        return {k: finite_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_json(v) for v in obj]
    if isinstance(obj, float) or type(obj).__module__ == "numpy" and hasattr(obj, "dtype") and obj.dtype.kind == "f":
        return float(obj) if math.isfinite(float(obj)) else None
    return obj


def json_bytes(obj: Any, indent: int = None, default: Callable = None) -> bytes:
    """``obj`` as strict JSON text (NaN/inf as null, :func:`finite_json`) plus a newline, UTF-8 encoded."""
    return (json.dumps(finite_json(obj), indent=indent, default=default, allow_nan=False) + "\n").encode()


def atomic_write_json(path: str, obj: Any, indent: int = None, default: Callable = None) -> None:
    """``obj`` as strict JSON (:func:`json_bytes`), written atomically."""
    atomic_write_bytes(path, json_bytes(obj, indent, default))


def _sibling_tmp_dir(path: str) -> Tuple[str, str]:
    """``(parent, new temporary folder)`` next to the absolute ``path``, with a plain mkdir's mode (mkdtemp makes
    it private, 0700)."""
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=parent)
    os.chmod(tmp, 0o777 & ~_UMASK)
    return parent, tmp


def _write_files(folder: str, files: Dict[str, bytes]) -> None:
    """Write ``files`` (relative name with ``/`` -> contents) below ``folder``, each flushed to disk."""
    for name, data in files.items():
        target = os.path.join(folder, *name.split("/"))
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with open(target, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())


@contextlib.contextmanager
def atomic_dir(path: str) -> Iterator[str]:
    """Yield a new temporary folder next to ``path``; it takes the place of ``path`` (replacing an existing
    folder) when the block succeeds and is deleted when it fails. Killed between the two renames, ``path``
    is absent and the previous folder is kept beside it as ``.<name>.<hex>.old``."""
    path = os.path.abspath(path)
    parent, tmp = _sibling_tmp_dir(path)
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
    try:
        os.rename(tmp, path)
    except BaseException:  # e.g. another writer created ``path`` in between: put the previous folder back
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and not os.path.lexists(path):
            os.rename(old, path)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def check_replaceable_folder(path: str, marker: Optional[str] = None, allowed: Sequence[str] = (),
                             tool: str = "this tool") -> None:
    """ValueError unless ``path`` may be replaced: absent, empty, or holding only what an earlier run of
    ``tool`` wrote: the names in ``allowed``, and those listed in its ``marker`` file (see
    :func:`replace_folder`)."""
    check_folder_path(path)
    if os.path.isdir(path):
        entries = set(os.listdir(path))
        ours = set(allowed)
        if marker is not None and marker in entries:  # the files an earlier call wrote (top-level names)
            try:
                with open(os.path.join(path, marker)) as f:
                    ours |= {str(name).split("/")[0] for name in json.load(f)} | {marker}
            except (OSError, ValueError, TypeError):
                pass
        other = sorted(entries - ours)
        if other:
            shown = ", ".join(other[:3]) + (f", ... ({len(other) - 3} more)" if len(other) > 3 else "")
            raise ValueError(f"output folder {path} holds files {tool} did not write ({shown}); choose a new or "
                             "empty folder, or remove them (nothing was written)")


def replace_folder(path: str, files: Dict[str, bytes], marker: str) -> List[str]:
    """Write ``files`` (relative name -> contents) as the whole content of the folder ``path``, as one
    generation (:func:`atomic_dir`): a rerun leaves no file of the previous one. The file ``marker`` (a JSON
    list of the files) is written with them: an existing ``path`` is replaced only if it is empty or holds
    only what an earlier call wrote; a folder with other files raises ValueError naming some of them and is
    left as it is. Returns the written paths (``path`` joined with each name).
    """
    check_replaceable_folder(path, marker)
    with atomic_dir(path) as tmp:
        _write_files(tmp, {**files, marker: (json.dumps(sorted(files), indent=1) + "\n").encode()})
    return [os.path.join(path, *name.split("/")) for name in files]


def check_folder_path(path: str, what: str = "output folder") -> None:
    """ValueError unless ``path`` is a folder or can be created as one: ``path`` itself, or the nearest of its
    parents that exists, is a file (where ``os.makedirs`` would fail with a bare ``[Errno 17] File exists``
    or ``[Errno 20] Not a directory``)."""
    if os.path.lexists(path) and not os.path.isdir(path):
        raise ValueError(f"{what} {path} exists and is not a folder")
    parent = os.path.dirname(os.path.abspath(path))
    while not os.path.lexists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise ValueError(f"{what} {path} cannot be created: {parent} exists and is not a folder")


def _marker_names(path: str, marker: str) -> List[str]:
    try:
        with open(os.path.join(path, marker), encoding="utf-8") as f:
            names = json.load(f)
    except (OSError, ValueError):
        return []
    return [n for n in names if isinstance(n, str)] if isinstance(names, list) else []


def check_replaceable_tree(path: str, marker: str, keep: Sequence[str] = (), tool: str = "this tool") -> None:
    """ValueError unless :func:`replace_folder_keeping` may replace ``path``: absent, empty, or holding only
    the files an earlier call listed in its ``marker`` file (at any depth, with the folders leading to
    them) and the entries ``keep`` (relative paths, kept as they are). Stricter than
    :func:`check_replaceable_folder`, which accepts anything below a listed top-level name."""
    check_folder_path(path)
    if os.path.islink(path):
        raise ValueError(f"output folder {path} is a symbolic link; give the folder it points to "
                         "(nothing was written)")
    if not os.path.isdir(path):
        return
    listed = _marker_names(path, marker) if os.path.isfile(os.path.join(path, marker)) else []
    owned_trees = {n.rstrip("/") for n in listed if n.endswith("/")} | {k.strip("/") for k in keep}
    owned_files = {n for n in listed if not n.endswith("/")} | {marker}
    parents = {os.path.dirname(n) for n in owned_files | owned_trees}
    for name in list(parents):
        while name:
            name = os.path.dirname(name)
            parents.add(name)
    other = []
    for root, dirs, files in os.walk(path):
        rel_root = os.path.relpath(root, path).replace(os.sep, "/")
        rel_root = "" if rel_root == "." else rel_root + "/"
        for d in sorted(dirs):
            rel = rel_root + d
            if rel not in owned_trees and (rel not in parents or os.path.islink(os.path.join(root, d))):
                other.append(rel + "/")
        dirs[:] = [d for d in dirs if rel_root + d in parents and rel_root + d not in owned_trees
                   and not os.path.islink(os.path.join(root, d))]
        other += [rel_root + f for f in sorted(files) if rel_root + f not in owned_files | owned_trees]
    if other:
        shown = ", ".join(other[:3]) + (f", ... ({len(other) - 3} more)" if len(other) > 3 else "")
        raise ValueError(f"output folder {path} holds files {tool} did not write ({shown}); choose a new or "
                         "empty folder, or remove them (nothing was written)")


def replace_folder_keeping(path: str, files: Dict[str, bytes], marker: str, keep: Sequence[str] = (),
                           tool: str = "this tool") -> List[str]:
    """:func:`replace_folder` that carries the entries ``keep`` (relative paths, e.g. a cache folder
    ``work``) of the existing ``path`` over into the new generation instead of deleting them: ``files`` and
    ``marker`` are written to a temporary folder, the kept entries are renamed into it, and it takes the
    place of ``path``. Any other file of the previous generation is gone afterwards; a folder holding files
    not listed in its ``marker`` (nor kept) raises ValueError (:func:`check_replaceable_tree`) and is left as
    it is. The marker lists the written files and, with a trailing ``/``, the kept folders. If the swap
    fails, the kept entries are moved back; killed between the renames, they are in the temporary folder
    ``.<name>.<hex>.tmp`` beside ``path``. Returns the written paths.
    """
    keep = [k.strip("/") for k in keep]
    for k in keep:
        if not k or k.startswith("..") or os.path.isabs(k) or any(n == k or n.startswith(k + "/") for n in files):
            raise ValueError(f"cannot keep {k!r} in {path}: not a relative path below it, or written as a report file")
    check_replaceable_tree(path, marker, keep, tool)
    path = os.path.abspath(path)
    kept = [k for k in keep if os.path.lexists(os.path.join(path, *k.split("/")))]
    listing = sorted(files) + sorted(k + "/" for k in kept)
    parent, tmp = _sibling_tmp_dir(path)
    try:
        _write_files(tmp, {**files, marker: (json.dumps(listing, indent=1) + "\n").encode()})
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    moved: List[str] = []
    old = None
    try:
        for k in kept:
            dst = os.path.join(tmp, *k.split("/"))
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            os.rename(os.path.join(path, *k.split("/")), dst)
            moved.append(k)
        if os.path.lexists(path):
            old = os.path.join(parent, f".{os.path.basename(path)}.{uuid.uuid4().hex[:8]}.old")
            os.rename(path, old)
        os.rename(tmp, path)
    except BaseException:
        restored = True
        try:
            if old is not None and not os.path.lexists(path):
                os.rename(old, path)
            for k in reversed(moved):
                os.rename(os.path.join(tmp, *k.split("/")), os.path.join(path, *k.split("/")))
        except OSError:
            restored = False  # leave the temporary folder (with the kept entries) for the user
        if restored:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return [os.path.join(path, *name.split("/")) for name in files]


_SHA256: Dict[Tuple[str, int, int], str] = {}


def file_sha256(path: str) -> str:
    """SHA-256 of a file's contents (cached per path, size and modification time)."""
    st = os.stat(path)
    key = (os.path.abspath(path), st.st_size, st.st_mtime_ns)
    if key not in _SHA256:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        _SHA256[key] = h.hexdigest()
    return _SHA256[key]


def child_folder(root: str, name: str, what: str = "dataset name") -> str:
    """``root/name`` for a ``name`` that is one plain path component; ValueError for names such as ``..``,
    ``a/b`` or an absolute path, which would write outside ``root``."""
    if (not isinstance(name, str) or name in ("", ".", "..") or "/" in name or "\\" in name or "\0" in name
            or os.path.isabs(name)):
        raise ValueError(f"{what} {name!r} cannot name a folder below {root} (it would write outside it); "
                         "use a plain name without '/', '\\' or '..'")
    return os.path.join(root, name)
