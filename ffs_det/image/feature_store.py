"""An on-disk store of per-sample arrays (penultimate features, logits, labels) with JSON metadata.

Layout of a store folder::

    meta.json      {"format": "ffs_det.feature_store", "version": 1, "length": N,
                    "arrays": {"features": {"file": "features.npy", "shape": [N, D], "dtype": "float32"}, ...},
                    "info": {...free-form: model, dataset, transform...}}
    features.npy   (N, D)   logits.npy (N, C)   labels.npy (N,)

The writer preallocates each ``.npy`` as a memory map in a temporary folder and fills it chunk by chunk,
so a set larger than memory streams to disk; the folder is renamed into place only when all ``N`` rows
are written. The reader opens the arrays as read-only memory maps with ``allow_pickle=False`` and checks
every file against the metadata.
"""
import json
import os
import tokenize
from typing import Dict, Iterator, Mapping, Optional, Sequence, Tuple

import numpy as np

from ..atomic_io import atomic_dir

__all__ = ["FeatureStore", "FeatureStoreWriter", "FORMAT", "VERSION"]

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
    """A read-only view of a store folder; arrays are memory-mapped (``store["features"]``)."""

    def __init__(self, path: str):
        self.path = path
        meta_path = os.path.join(path, META)
        if not os.path.isdir(path):
            raise FileNotFoundError(f"feature store {path} does not exist (create it with the 'extract' step)")
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
        self.meta = meta
        self.length = length
        self.info = meta.get("info", {})
        self._arrays: Dict[str, np.ndarray] = {}
        for name, spec in meta["arrays"].items():
            self._arrays[name] = self._open(name, spec)

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
        if arr.shape != want_shape or arr.dtype != want_dtype:
            raise ValueError(f"{file}: holds {arr.dtype}{list(arr.shape)}, {META} says {want_dtype}{list(want_shape)}")
        if arr.shape[0] != self.length:
            raise ValueError(f"{file}: {arr.shape[0]} rows, the store has {self.length}")
        return arr

    def __contains__(self, name: str) -> bool:
        return name in self._arrays

    def __getitem__(self, name: str) -> np.ndarray:
        if name not in self._arrays:
            raise KeyError(f"feature store {self.path} has no array {name!r} (it has {sorted(self._arrays)})")
        return self._arrays[name]

    def __len__(self) -> int:
        return self.length

    def names(self):
        return sorted(self._arrays)

    def dim(self, name: str) -> int:
        """Width of a 2-D array (e.g. the feature dimension)."""
        arr = self[name]
        if arr.ndim != 2:
            raise ValueError(f"{self.path}: {name} is not 2-D (shape {arr.shape})")
        return arr.shape[1]

    def chunks(self, name: str, size: int = 65536) -> Iterator[np.ndarray]:
        """In-memory copies of consecutive row blocks of one array."""
        arr = self[name]
        for start in range(0, self.length, size):
            yield np.array(arr[start:start + size])

    def load(self, name: str) -> np.ndarray:
        """An in-memory copy of a whole array."""
        return np.array(self[name])

    def __repr__(self) -> str:
        shapes = ", ".join(f"{k}={list(v.shape)}" for k, v in self._arrays.items())
        return f"FeatureStore({self.path!r}, {shapes})"
