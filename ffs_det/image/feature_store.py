"""An on-disk store of per-sample arrays (penultimate features, logits, labels) with JSON metadata.

Layout of a store folder::

    meta.json      {"format": "ffs_det.feature_store", "version": 1, "length": N,
                    "arrays": {"features": {"file": "features.npy", "shape": [N, D], "dtype": "float32"}, ...},
                    "info": {...free-form: model, dataset, transform...}}
    features.npy   (N, D)   logits.npy (N, C)   labels.npy (N,)

The writer preallocates each ``.npy`` as a memory map in a temporary folder and fills it chunk by chunk,
so a set larger than memory streams to disk; the folder is renamed into place only when all ``N`` rows
are written. The reader opens the arrays as read-only memory maps with ``allow_pickle=False`` and checks
every file against the metadata. A store extracted by several processes is a folder of complete stores
``shard-00000-of-00004/`` ... ``shard-00003-of-00004/`` (consecutive rows of the dataset each, see
:func:`shard_rows`; each records ``"shard": [I, N]`` in its info), read as one.

A writer only ever replaces a folder that is absent, empty, or a complete unsharded store (its ``meta.json``
of this format and only the files it lists), see :func:`check_store_target`: a folder holding anything else
is refused, and nothing is deleted.
"""
import json
import os
import re
import tokenize
from typing import Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from ..atomic_io import atomic_dir, check_folder_path
from ..density.streaming import ConcatRows, NpyRows, Rows

__all__ = ["FeatureStore", "FeatureStoreWriter", "FORMAT", "VERSION", "shard_name", "shard_dirs", "shard_rows",
           "check_store_target", "is_store_folder"]

FORMAT = "ffs_det.feature_store"
VERSION = 1
META = "meta.json"


class FeatureStoreWriter:
    """Write ``length`` rows of named arrays into a new store at ``path``, chunk by chunk.

    ``columns`` maps each array name to ``(per-row shape, dtype)``, e.g. ``{"features": ((512,), "float32"),
    "labels": ((), "int64")}``. Use as a context manager; the store appears at ``path`` on a clean exit.
    """

    def __init__(self, path: str, length: int, columns: Mapping[str, Tuple[Sequence[int], str]],
                 info: Optional[dict] = None):
        if int(length) < 0:
            raise ValueError(f"{path}: store length must be >= 0, got {length}")
        if not columns:
            raise ValueError(f"{path}: a store needs at least one array")
        self.path, self.length, self.info = path, int(length), dict(info or {})
        self.columns = {}
        for name, (shape, dtype) in columns.items():
            if not name.isidentifier():
                raise ValueError(f"{path}: array name {name!r} must be an identifier")
            self.columns[name] = (tuple(int(s) for s in shape), np.dtype(dtype))
        self.rows = 0
        self._ctx = self._tmp = None
        self._maps: Dict[str, np.memmap] = {}

    def __enter__(self) -> "FeatureStoreWriter":
        check_store_target(self.path)
        self._ctx = atomic_dir(self.path)
        self._tmp = self._ctx.__enter__()
        for name, (shape, dtype) in self.columns.items():
            self._maps[name] = np.lib.format.open_memmap(os.path.join(self._tmp, name + ".npy"), mode="w+",
                                                         dtype=dtype, shape=(self.length, *shape))
        return self

    def append(self, **chunk) -> None:
        """Write the next rows; every array of the store must be given, with the same number of rows."""
        if self._tmp is None:
            raise RuntimeError("FeatureStoreWriter.append outside its 'with' block")
        if set(chunk) != set(self.columns):
            raise ValueError(f"{self.path}: append() got arrays {sorted(chunk)}, the store has {sorted(self.columns)}")
        n = None
        for name, value in chunk.items():
            arr = _to_numpy(value)
            shape, _ = self.columns[name]
            if arr.shape[1:] != shape:
                raise ValueError(f"{self.path}: {name} rows have shape {arr.shape[1:]}, expected {shape}")
            if n is not None and arr.shape[0] != n:
                raise ValueError(f"{self.path}: arrays in one append() have different row counts")
            n = arr.shape[0]
        if self.rows + n > self.length:
            raise ValueError(f"{self.path}: {self.rows + n} rows written, the store was declared with {self.length}")
        for name, value in chunk.items():
            self._maps[name][self.rows:self.rows + n] = _to_numpy(value)
        self.rows += n

    def __exit__(self, exc_type, exc, tb):
        try:
            if exc_type is None:
                if self.rows != self.length:
                    raise ValueError(f"{self.path}: only {self.rows} of {self.length} rows were written")
                self._finish()
        except BaseException as e:
            self._close_maps()
            self._ctx.__exit__(type(e), e, e.__traceback__)
            raise
        self._close_maps()
        return self._ctx.__exit__(exc_type, exc, tb)

    def _finish(self) -> None:
        arrays = {}
        for name, mm in self._maps.items():
            mm.flush()
            shape, dtype = self.columns[name]
            arrays[name] = {"file": name + ".npy", "shape": [self.length, *shape], "dtype": dtype.str}
        meta = {"format": FORMAT, "version": VERSION, "length": self.length, "arrays": arrays, "info": self.info}
        check_store_target(self.path)  # again just before the folder is replaced: nothing else appeared there
        with open(os.path.join(self._tmp, META), "w", encoding="utf-8") as f:
            json.dump(meta, f, indent=2)
            f.flush()
            os.fsync(f.fileno())

    def _close_maps(self) -> None:
        for mm in self._maps.values():
            mm.flush()
        self._maps = {}  # dropping the last reference unmaps the files


def _to_numpy(value) -> np.ndarray:
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    return np.asarray(value)


class FeatureStore:
    """A read-only view of a store folder: ``store["features"]`` is a memory map of the array,
    ``store.rows("features")`` a row source that fitting reads block by block (:mod:`ffs_det.density.streaming`).

    A folder holding ``shard-I-of-N`` stores (written by ``extract --shard I/N``) is read as one store, the
    shards in order; every shard must be complete. ``store[name]`` of a sharded store is an in-memory
    concatenation; :meth:`rows` and :meth:`chunks` read it without one.
    """

    def __init__(self, path: str):
        self.path = path
        if not os.path.isdir(path):
            raise FileNotFoundError(f"feature store {path} does not exist (create it with the 'extract' step)")
        self.shards: List["FeatureStore"] = []
        if not os.path.isfile(os.path.join(path, META)) and shard_dirs(path):
            self._open_shards()
            return
        meta = read_meta(path)
        self.meta = meta
        self.length = meta["length"]
        self.info = meta.get("info", {})
        self._arrays: Dict[str, np.ndarray] = {}
        for name, spec in meta["arrays"].items():
            self._arrays[name] = self._open(name, spec)

    def _open_shards(self) -> None:
        found = shard_dirs(self.path)
        counts = sorted({n for _, n in found})
        if len(counts) != 1:
            raise ValueError(f"feature store {self.path} mixes shards of different counts {counts}")
        n = counts[0]
        have = {i for i, _ in found}
        missing = [i for i in range(n) if i not in have or not os.path.isfile(
            os.path.join(self.path, shard_name(i, n), META))]
        if missing:
            raise FileNotFoundError(f"feature store {self.path} is sharded {n} ways but shard(s) {missing} are "
                                    f"missing or incomplete (still extracting?)")
        self.shards = [FeatureStore(os.path.join(self.path, shard_name(i, n))) for i in range(n)]
        for i, part in enumerate(self.shards):
            found = part.info.get("shard")
            if found != [i, n]:
                raise ValueError(f"{part.path}: its meta.json says it holds shard {found!r} (info 'shard'), not "
                                 f"{[i, n]} as the folder name says (a shard folder copied or renamed?)")
        total = sum(len(p) for p in self.shards)
        for i, part in enumerate(self.shards):
            want = len(shard_rows(total, (i, n)))
            if len(part) != want:
                raise ValueError(f"{part.path}: {len(part)} rows, but shard {i} of {n} of a {total}-row set holds "
                                 f"{want} (shards extracted from different sets, or a shard folder copied?)")
        first = self.shards[0]
        for i, part in enumerate(self.shards[1:], 1):
            a, b = first._layout(), part._layout()
            if a != b:
                raise ValueError(f"{part.path}: arrays {b} differ from shard 0's {a}")
            if _unsharded_info(part.info) != _unsharded_info(first.info):
                ours, theirs = _flat(_unsharded_info(part.info)), _flat(_unsharded_info(first.info))
                diff = [f"{k} {ours.get(k)!r} vs {theirs.get(k)!r}" for k in sorted(set(ours) | set(theirs))
                        if ours.get(k) != theirs.get(k)]
                raise ValueError(f"{part.path}: extracted with other settings than shard 0 ({', '.join(diff)})")
        self.length = sum(len(p) for p in self.shards)
        self.info = _unsharded_info(first.info)
        self.meta = {"format": FORMAT, "version": VERSION, "length": self.length, "shards": n, "info": self.info}

    def _layout(self) -> dict:
        rows = {name: self.rows(name) for name in self.names()}
        return {name: (r.dtype.str, list(r.shape[1:])) for name, r in rows.items()}

    def _open(self, name: str, spec: dict) -> np.ndarray:
        meta_path = os.path.join(self.path, META)
        if not (isinstance(spec, dict) and isinstance(spec.get("file"), str) and isinstance(spec.get("shape"), list)
                and "dtype" in spec):
            raise ValueError(f"{meta_path}: array {name!r} needs 'file' (a string), 'shape' (a list) and 'dtype', "
                             f"got {spec!r}")
        try:
            np.dtype(spec["dtype"])
        except TypeError:
            raise ValueError(f"{meta_path}: array {name!r} has an unknown dtype {spec['dtype']!r}") from None
        file = os.path.join(self.path, os.path.basename(spec["file"]))
        if not os.path.isfile(file):
            raise FileNotFoundError(f"{file} is missing from feature store {self.path}")
        try:
            arr = np.load(file, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError, EOFError, SyntaxError, TypeError, tokenize.TokenError) as e:  # corrupt header
            raise ValueError(f"{file}: unreadable or truncated array ({type(e).__name__}: {e})") from None
        want_shape, want_dtype = tuple(spec["shape"]), np.dtype(spec["dtype"])
        if len(want_shape) == 0:
            raise ValueError(f"{meta_path}: array {name!r} has shape [] (0-d); every array of a store needs one row "
                             f"per sample (shape [{self.length}, ...])")
        if arr.ndim == 0:
            raise ValueError(f"{file}: a 0-d array ({arr.dtype}[]), {META} says {want_dtype}{list(want_shape)}; every "
                             f"array of a store needs one row per sample (shape [{self.length}, ...])")
        if arr.shape != want_shape or arr.dtype != want_dtype:
            raise ValueError(f"{file}: holds {arr.dtype}{list(arr.shape)}, {META} says {want_dtype}{list(want_shape)}")
        if arr.shape[0] != self.length:
            raise ValueError(f"{file}: {arr.shape[0]} rows, the store has {self.length}")
        return arr

    def _check_name(self, name: str) -> None:
        if name not in self:
            raise KeyError(f"feature store {self.path} has no array {name!r} (it has {self.names()})")

    def __contains__(self, name: str) -> bool:
        return name in (self.shards[0] if self.shards else self._arrays)

    def __getitem__(self, name: str) -> np.ndarray:
        self._check_name(name)
        if self.shards:
            return np.concatenate([p[name] for p in self.shards])
        return self._arrays[name]

    def rows(self, name: str) -> Rows:
        """One array as a row source read on demand (``pread``, no memory map): what streaming fits take,
        e.g. ``scorer.fit(store.rows("features"), store.rows("labels"))``."""
        self._check_name(name)
        if self.shards:
            return ConcatRows([p.rows(name) for p in self.shards])
        return NpyRows(self._arrays[name].filename)

    def __len__(self) -> int:
        return self.length

    def names(self):
        return self.shards[0].names() if self.shards else sorted(self._arrays)

    def dim(self, name: str) -> int:
        """Width of a 2-D array (e.g. the feature dimension)."""
        shape = self.rows(name).shape
        if len(shape) != 2:
            raise ValueError(f"{self.path}: {name} is not 2-D (shape {shape})")
        return shape[1]

    def chunks(self, name: str, size: int = 65536) -> Iterator[np.ndarray]:
        """In-memory copies of consecutive row blocks of one array."""
        for _, block in self.rows(name).blocks(size):
            yield block

    def read(self, name: str, start: int, stop: int) -> np.ndarray:
        """An in-memory copy of rows ``start:stop`` of one array."""
        return self.rows(name).read(start, stop)

    def check_finite(self, names: Sequence[str] = ("features", "logits"), block_rows: int = 65536) -> None:
        """ValueError naming the file when a float array among ``names`` (those the store has) holds NaN or
        infinite values; reads each array once, block by block."""
        if self.shards:
            for part in self.shards:
                part.check_finite(names, block_rows)
            return
        for name in names:
            if name not in self._arrays or self._arrays[name].dtype.kind not in "fc":
                continue
            rows = NpyRows(self._arrays[name].filename)
            bad, first = 0, None
            for start, block in rows.blocks(block_rows):
                row_bad = ~np.isfinite(block.reshape(len(block), -1)).all(axis=1)
                if row_bad.any():
                    first = start + int(np.argmax(row_bad)) if first is None else first
                    bad += int(row_bad.sum())
            if bad:
                raise ValueError(f"{self._arrays[name].filename}: {bad} of {self.length} rows of {name!r} hold NaN or "
                                 f"infinite values (first at row {first}); scorers cannot use them: re-extract the "
                                 f"store with a classifier that gives finite outputs")

    def load(self, name: str) -> np.ndarray:
        """An in-memory copy of a whole array."""
        return np.array(self[name])

    def __repr__(self) -> str:
        shapes = ", ".join(f"{k}={list(self.rows(k).shape)}" for k in self.names())
        sharded = f", {len(self.shards)} shards" if self.shards else ""
        return f"FeatureStore({self.path!r}, {shapes}{sharded})"


def shard_name(index: int, count: int) -> str:
    """Folder of shard ``index`` of ``count`` inside a sharded store."""
    return f"shard-{index:05d}-of-{count:05d}"


def shard_dirs(path: str) -> List[Tuple[int, int]]:
    """``(index, count)`` of the shard folders (complete or not) in ``path``."""
    out = []
    for entry in os.listdir(path):
        m = _SHARD.fullmatch(entry)
        if m and os.path.isdir(os.path.join(path, entry)):
            out.append((int(m.group(1)), int(m.group(2))))
    return sorted(out)


_SHARD = re.compile(r"shard-(\d{5})-of-(\d{5})")


def shard_rows(n: int, shard: Tuple[int, int]) -> range:
    """The consecutive rows of a set of ``n`` that shard ``(I, N)`` extracts."""
    i, count = shard
    return range(n * i // count, n * (i + 1) // count)


def check_store_target(path: str) -> None:
    """ValueError unless a store may be written at ``path``: it is absent, an empty folder, or an unsharded
    store (a ``meta.json`` of this format and only the files it lists), which is replaced as a whole. A
    folder holding other files, or a sharded store, is refused: the writer never deletes what it did not
    write."""
    check_folder_path(path)
    if os.path.islink(path):
        raise ValueError(f"output folder {path} is a symbolic link; give the folder it points to (nothing was written)")
    if not os.path.isdir(path):
        return
    entries = set(os.listdir(path))
    if not entries:
        return
    ours = set()
    meta = _store_meta(path) if META in entries else None
    if meta is not None:
        ours = {META} | {os.path.basename(spec["file"]) for spec in meta["arrays"].values()
                         if isinstance(spec, dict) and isinstance(spec.get("file"), str)}
    other = sorted((entries - ours) | {e for e in entries & ours if not os.path.isfile(os.path.join(path, e))})
    if not other:
        return
    shards = [shard_name(i, n) for i, n in shard_dirs(path)]
    if shards and not ours:
        shown = ", ".join(shards[:2]) + (", ..." if len(shards) > 2 else "")
        raise ValueError(f"output folder {path} holds a sharded feature store ({shown}); remove it or choose a new "
                         f"folder to extract it unsharded, or extract into it with --shard (nothing was written)")
    shown = ", ".join(other[:3]) + (f", ... ({len(other) - 3} more)" if len(other) > 3 else "")
    raise ValueError(f"output folder {path} holds files image_ood did not write ({shown}); choose a new or empty "
                     f"folder, or remove them (nothing was written)")


def _store_meta(path: str) -> Optional[dict]:
    """The ``meta.json`` of ``path`` when it is one of this format with an ``arrays`` object, else None."""
    try:
        with open(os.path.join(path, META), encoding="utf-8") as f:
            meta = json.load(f)
    except (OSError, ValueError):
        return None
    ok = isinstance(meta, dict) and meta.get("format") == FORMAT and isinstance(meta.get("arrays"), dict)
    return meta if ok else None


def is_store_folder(path: str) -> bool:
    """Whether ``path`` holds an unsharded store's ``meta.json`` (complete or not) or shard folders."""
    return os.path.isdir(path) and (_store_meta(path) is not None or bool(shard_dirs(path)))


def _flat(info, prefix: str = "") -> dict:
    """``{"model": {"init_seed": 0}}`` -> ``{"model.init_seed": 0}``."""
    if not isinstance(info, dict) or not info:
        return {prefix[:-1]: info} if prefix else {}
    out = {}
    for k, v in info.items():
        out.update(_flat(v, f"{prefix}{k}."))
    return out


def _unsharded_info(info: dict) -> dict:
    return {k: v for k, v in (info or {}).items() if k != "shard"}


def read_meta(path: str) -> dict:
    """The checked ``meta.json`` of an unsharded store folder."""
    meta_path = os.path.join(path, META)
    if not os.path.isfile(meta_path):
        raise FileNotFoundError(f"{meta_path} is missing: {path} is not a complete feature store")
    try:
        with open(meta_path, encoding="utf-8") as f:
            meta = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{meta_path}: corrupted metadata ({e})") from None
    found = meta.get("format") if isinstance(meta, dict) else None
    if found != FORMAT:
        raise ValueError(f"{meta_path}: not a feature store (format {found!r}, expected {FORMAT!r})")
    if meta.get("version") != VERSION:
        raise ValueError(f"{meta_path}: store version {meta.get('version')!r}, this code reads {VERSION}")
    length, arrays = meta.get("length"), meta.get("arrays")
    if not isinstance(length, int) or isinstance(length, bool) or length < 0:
        raise ValueError(f"{meta_path}: 'length' must be a non-negative integer, got {length!r}")
    if not isinstance(arrays, dict) or not arrays:
        raise ValueError(f"{meta_path}: 'arrays' must be a non-empty object, got {arrays!r}")
    return meta
